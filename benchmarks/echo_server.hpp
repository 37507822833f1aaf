// A loopback echo server for the benchmarks, run in a child process so that its CPU time is not
// mixed with the client's. SO_REUSEADDR; one thread; one listening port per benchmark mode.
#ifndef CONNPOOL_BENCH_ECHO_SERVER_HPP
#define CONNPOOL_BENCH_ECHO_SERVER_HPP

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <system_error>
#include <vector>

#include <asio.hpp>

namespace bench {

class echo_server_process {
 public:
  /// Fork a server listening on `ports` fresh loopback ports. Call before starting any thread.
  explicit echo_server_process(std::size_t ports)
      : echo_server_process(std::vector<asio::ip::tcp::endpoint>(ports, {asio::ip::make_address("127.0.0.1"), 0})) {}

  /// Fork a server listening on each of `where` (port 0: a fresh port). SO_REUSEADDR, so a server
  /// can be started again on the port of one that was killed. The child closes every descriptor it
  /// inherited except its listeners, so it holds none of the parent's connections; it may be
  /// started while the parent has threads and sockets.
  explicit echo_server_process(const std::vector<asio::ip::tcp::endpoint>& where) {
    std::vector<int> listeners;
    {
      asio::io_context setup(1);
      for (const auto& ep : where) {
        asio::ip::tcp::acceptor a(setup);
        a.open(ep.protocol());
        a.set_option(asio::socket_base::reuse_address(true));
        a.bind(ep);
        a.listen(4096);
        endpoints_.push_back(a.local_endpoint());
        listeners.push_back(a.release());
      }
    }
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) std::abort();
    pid_ = ::fork();
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      std::vector<int> keep = listeners;
      keep.push_back(fds[0]);
      std::sort(keep.begin(), keep.end());
      int from = 3;
      for (int fd : keep) {
        if (fd > from) ::close_range(static_cast<unsigned>(from), static_cast<unsigned>(fd - 1), 0);
        from = fd + 1;
      }
      ::close_range(static_cast<unsigned>(from), ~0U, 0);
      serve(where, listeners, fds[0]);
      std::_Exit(0);
    }
    ::close(fds[0]);
    stop_fd_ = fds[1];
    for (int fd : listeners) ::close(fd);
    if (pid_ < 0) throw std::system_error(errno, std::system_category(), "fork");
  }
  ~echo_server_process() {
    if (pid_ < 0) return;
    ::close(stop_fd_);  // the child sees EOF and exits
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }
  echo_server_process(const echo_server_process&) = delete;
  echo_server_process& operator=(const echo_server_process&) = delete;

  /// SIGKILL the server and reap it: the kernel closes its sockets (FIN, or RST where a request
  /// sat unread).
  void kill() {
    if (pid_ < 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    ::close(stop_fd_);
    pid_ = -1;
  }

  const asio::ip::tcp::endpoint& endpoint(std::size_t i) const { return endpoints_.at(i); }

 private:
  struct session : std::enable_shared_from_this<session> {
    explicit session(asio::ip::tcp::socket s) : sock(std::move(s)) {}
    asio::ip::tcp::socket sock;
    char buf[16384];
    void read() {
      sock.async_read_some(asio::buffer(buf), [self = shared_from_this()](std::error_code ec, std::size_t n) {
        if (ec) return;  // EOF or reset: the socket closes when the last handler goes
        asio::async_write(self->sock, asio::buffer(self->buf, n), [self](std::error_code wec, std::size_t) {
          if (!wec) self->read();
        });
      });
    }
  };

  static void accept(asio::ip::tcp::acceptor& a) {
    a.async_accept([&a](std::error_code ec, asio::ip::tcp::socket s) {
      if (!ec) {
        s.set_option(asio::ip::tcp::no_delay(true));
        std::make_shared<session>(std::move(s))->read();
      }
      accept(a);
    });
  }

  static void serve(const std::vector<asio::ip::tcp::endpoint>& where, const std::vector<int>& listeners,
                    int stop_fd) {
    asio::io_context io(1);
    std::vector<asio::ip::tcp::acceptor> acceptors;
    for (std::size_t i = 0; i < listeners.size(); ++i) acceptors.emplace_back(io, where[i].protocol(), listeners[i]);
    for (auto& a : acceptors) accept(a);
    asio::posix::stream_descriptor stop(io, stop_fd);
    char c;
    stop.async_read_some(asio::buffer(&c, 1), [&](std::error_code, std::size_t) { io.stop(); });
    io.run();
  }

  std::vector<asio::ip::tcp::endpoint> endpoints_;
  pid_t pid_ = -1;
  int stop_fd_ = -1;
};

}  // namespace bench

#endif
