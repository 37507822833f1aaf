// Real servers no one here wrote (redis-server, nginx, memcached), run as child processes by the
// tests and benchmarks: find the executable, spawn it with its output sent to /dev/null, and SIGKILL
// and reap it on destruction. No doctest: the benchmarks use it too.
#ifndef CONNPOOL_TESTS_SERVERS_SPAWN_HPP
#define CONNPOOL_TESTS_SERVERS_SPAWN_HPP

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <initializer_list>
#include <string>
#include <vector>

#include "servers/net.hpp"

extern char** environ;

namespace test {

/// The first of `paths` that is an executable file, or empty.
inline std::string find_exe(std::initializer_list<const char*> paths) {
  for (const char* p : paths)
    if (::access(p, X_OK) == 0) return p;
  return {};
}

/// A free TCP port on 127.0.0.1 (free when this returns; the caller binds it soon after).
inline unsigned short free_port() {
  net::io_context io;
  net::ip::tcp::acceptor a(io, net::ip::tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
  return a.local_endpoint().port();
}

/// A child process running `args` (args[0]: the executable's path), its stdout and stderr to
/// /dev/null; SIGKILLed and reaped on destruction.
class spawned_process {
 public:
  explicit spawned_process(std::vector<std::string> args) {
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    ::posix_spawn_file_actions_init(&fa);
    ::posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    ::posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    if (::posix_spawn(&pid_, argv[0], &fa, nullptr, argv.data(), environ) != 0) pid_ = -1;
    ::posix_spawn_file_actions_destroy(&fa);
  }
  ~spawned_process() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }
  spawned_process(const spawned_process&) = delete;
  spawned_process& operator=(const spawned_process&) = delete;
  bool started() const { return pid_ > 0; }

 private:
  pid_t pid_ = -1;
};

}  // namespace test

#endif
