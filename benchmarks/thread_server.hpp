// A loopback echo server for the benchmarks with one thread per connection, the way memcached
// workers, many RPC servers and sidecars serve a connection: a blocking accept loop per listening
// port, and one thread per accepted connection doing blocking recv/send. It runs in a child process
// so that its CPU time is not mixed with the client's; SO_REUSEADDR; TCP_NODELAY on every
// connection. Beside echo_server_process (one Asio thread serving every connection).
#ifndef CONNPOOL_BENCH_THREAD_SERVER_HPP
#define CONNPOOL_BENCH_THREAD_SERVER_HPP

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <system_error>
#include <thread>
#include <vector>

#include <asio/ip/tcp.hpp>

namespace bench {

class thread_echo_server_process {
 public:
  /// Fork a server listening on `ports` fresh loopback ports. Call before starting any thread: the
  /// child is forked from this process as it is.
  explicit thread_echo_server_process(std::size_t ports) {
    std::vector<int> listeners;
    auto fail = [&](const char* what) {
      const int e = errno;
      for (int fd : listeners) ::close(fd);
      throw std::system_error(e, std::system_category(), what);
    };
    for (std::size_t i = 0; i < ports; ++i) {
      const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0) fail("socket");
      listeners.push_back(fd);
      const int one = 1;
      if (::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) fail("SO_REUSEADDR");
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a.sin_port = 0;
      if (::bind(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) fail("bind");
      if (::listen(fd, 4096) != 0) fail("listen");
      socklen_t len = sizeof a;
      if (::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) fail("getsockname");
      endpoints_.emplace_back(asio::ip::make_address_v4("127.0.0.1"), ntohs(a.sin_port));
    }
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) fail("pipe2");
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) std::_Exit(0);  // the parent died before prctl
      std::vector<int> keep = listeners;
      keep.push_back(fds[0]);
      close_inherited_except(keep);
      serve(listeners, fds[0]);
      std::_Exit(0);
    }
    const int fork_errno = errno;
    ::close(fds[0]);
    stop_fd_ = fds[1];
    for (int fd : listeners) ::close(fd);
    if (pid_ < 0) {
      ::close(stop_fd_);
      throw std::system_error(fork_errno, std::system_category(), "fork");
    }
  }

  /// Kills the server (SIGKILL) and reaps it.
  ~thread_echo_server_process() { kill(); }
  thread_echo_server_process(const thread_echo_server_process&) = delete;
  thread_echo_server_process& operator=(const thread_echo_server_process&) = delete;

  /// SIGKILL the server and reap it, waiting at most 5 s: the kernel closes its sockets (FIN, or
  /// RST where a request sat unread), which ends any client blocked reading from it.
  void kill() {
    if (pid_ < 0) return;
    ::kill(pid_, SIGKILL);
    ::close(stop_fd_);
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    int status = 0;
    while (::waitpid(pid_, &status, WNOHANG) == 0 && std::chrono::steady_clock::now() < give_up)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    pid_ = -1;
  }

  const asio::ip::tcp::endpoint& endpoint(std::size_t i) const { return endpoints_.at(i); }

 private:
  /// Close every descriptor above stderr except those in `keep`, so that the child holds none of
  /// the parent's sockets (as echo_server_process does).
  static void close_inherited_except(std::vector<int> keep) {
    std::sort(keep.begin(), keep.end());
    int from = 3;
    for (int fd : keep) {
      if (fd > from) ::close_range(static_cast<unsigned>(from), static_cast<unsigned>(fd - 1), 0);
      from = std::max(from, fd + 1);
    }
    ::close_range(static_cast<unsigned>(from), ~0U, 0);
  }

  /// One connection: echo what arrives until end of stream or an error.
  static void echo(int fd) {
    char buf[16384];
    for (;;) {
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n == 0) break;
      if (n < 0) {
        if (errno == EINTR) continue;
        break;
      }
      for (ssize_t off = 0; off < n;) {
        const ssize_t w = ::send(fd, buf + off, static_cast<std::size_t>(n - off), MSG_NOSIGNAL);
        if (w < 0) {
          if (errno == EINTR) continue;
          ::close(fd);
          return;
        }
        off += w;
      }
    }
    ::close(fd);
  }

  /// Blocking accept loop on one listener, a thread per accepted connection.
  static void accept_loop(int listener) {
    for (;;) {
      const int fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
          continue;
        }
        return;
      }
      const int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      try {
        std::thread(echo, fd).detach();
      } catch (const std::system_error&) {
        ::close(fd);  // no thread to be had: refuse this connection
      }
    }
  }

  /// The child: an accept thread per listener; the main thread waits for the parent to close the
  /// stop pipe (or die: PR_SET_PDEATHSIG), then exits without joining anything.
  static void serve(const std::vector<int>& listeners, int stop_fd) {
    for (int l : listeners) std::thread(accept_loop, l).detach();
    char c;
    while (::read(stop_fd, &c, 1) < 0 && errno == EINTR) {
    }
    std::_Exit(0);
  }

  std::vector<asio::ip::tcp::endpoint> endpoints_;
  pid_t pid_ = -1;
  int stop_fd_ = -1;
};

}  // namespace bench

#endif
