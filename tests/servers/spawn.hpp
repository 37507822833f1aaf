// Real servers no one here wrote (redis-server, nginx, memcached), run as child processes by the
// tests and benchmarks: find the executable, spawn it with its output sent to /dev/null, and SIGKILL
// and reap it on destruction. No doctest: the benchmarks use it too.
#ifndef CONNPOOL_TESTS_SERVERS_SPAWN_HPP
#define CONNPOOL_TESTS_SERVERS_SPAWN_HPP

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sys/stat.h>

#include <fstream>
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

/// nginx's executable, or empty if it is not installed.
inline std::string nginx_exe() { return find_exe({"/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"}); }

/// Write an nginx configuration for a server of its own in the new directory `dir` (its pid file,
/// error log and temporary files there; no daemon, no master, no access log), with keep-alive for
/// `keepalive_timeout` and 1,000,000 requests, room for `connections`, and `server` the body of its
/// one server block (listen and locations). Returns the configuration's path, or empty if `dir`
/// could not be made (one left by an earlier run is reused) or the file not written. Run it with
/// {nginx_exe(), "-p", dir, "-c", path}.
inline std::string write_nginx_conf(const std::string& dir, const std::string& keepalive_timeout,
                                    const std::string& server, int connections = 512) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return {};
  const std::string path = dir + "/nginx.conf";
  std::ofstream conf(path);
  conf << "daemon off;\nmaster_process off;\npid " << dir << "/nginx.pid;\nerror_log " << dir << "/error.log;\n";
  if (connections > 512) conf << "worker_rlimit_nofile " << 2 * connections << ";\n";
  conf << "events { worker_connections " << connections << "; }\nhttp {\n  access_log off;\n"
       << "  client_body_temp_path " << dir << "/body;\n  proxy_temp_path " << dir << "/proxy;\n"
       << "  fastcgi_temp_path " << dir << "/fastcgi;\n  uwsgi_temp_path " << dir << "/uwsgi;\n"
       << "  scgi_temp_path " << dir << "/scgi;\n"
       << "  keepalive_timeout " << keepalive_timeout << ";\n  keepalive_requests 1000000;\n"
       << "  server {\n" << server << "  }\n}\n";
  conf.close();
  return conf.fail() ? std::string() : path;
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
