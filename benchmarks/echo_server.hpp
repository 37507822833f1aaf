// A loopback echo server for the benchmarks, run in a child process so that its CPU time is not
// mixed with the client's. SO_REUSEADDR; one thread; one listening port per benchmark mode.
#ifndef CONNPOOL_BENCH_ECHO_SERVER_HPP
#define CONNPOOL_BENCH_ECHO_SERVER_HPP

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include <asio.hpp>

namespace bench {

class echo_server_process {
 public:
  /// Fork a server listening on `ports` fresh loopback ports. Call before starting any thread.
  explicit echo_server_process(std::size_t ports) {
    std::vector<asio::ip::tcp::acceptor> acceptors;
    asio::io_context io(1);
    for (std::size_t i = 0; i < ports; ++i) {
      acceptors.emplace_back(io);
      auto& a = acceptors.back();
      a.open(asio::ip::tcp::v4());
      a.set_option(asio::socket_base::reuse_address(true));
      a.bind({asio::ip::make_address("127.0.0.1"), 0});
      a.listen(4096);
      endpoints_.push_back(a.local_endpoint());
    }
    int fds[2];
    if (::pipe(fds) != 0) std::abort();
    io.notify_fork(asio::io_context::fork_prepare);
    pid_ = ::fork();
    if (pid_ == 0) {
      io.notify_fork(asio::io_context::fork_child);
      ::close(fds[1]);
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      serve(io, acceptors, fds[0]);
      std::_Exit(0);
    }
    io.notify_fork(asio::io_context::fork_parent);
    ::close(fds[0]);
    stop_fd_ = fds[1];
    for (auto& a : acceptors) a.close();
  }
  ~echo_server_process() {
    ::close(stop_fd_);  // the child sees EOF and exits
    int status = 0;
    ::waitpid(pid_, &status, 0);
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

  static void serve(asio::io_context& io, std::vector<asio::ip::tcp::acceptor>& acceptors, int stop_fd) {
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
