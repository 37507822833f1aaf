// Test servers in a child process: the benchmarks' loopback servers (their CPU time is then not
// mixed with the client's) and the fault tests' server that dies by SIGKILL. One mechanism,
// server_process: the listeners are opened in the parent (so the ports are known and listening when
// the constructor returns), the child closes every descriptor it inherited but its own (it holds none
// of the parent's connections, so it may be forked while the parent has threads and sockets), dies
// with the parent (PR_SET_PDEATHSIG), and exits when the parent closes the control pipe. kill()
// SIGKILLs and reaps it; restart() starts it again on the same ports (SO_REUSEADDR).
//
// The server models that run in the child:
//   echo_server_process         one Asio thread serves every connection
//   thread_echo_server_process  a blocking accept loop per port and a thread per connection doing
//                               blocking recv/send, the way memcached workers, many RPC servers and
//                               sidecars serve a connection
//   closing_server_process      accepts N connections, then on close_all() closes them all (FIN)
//                               and tells the parent the time of each close
// Linux only (close_range, PR_SET_PDEATHSIG). No doctest: the benchmarks use it too.
#ifndef CONNPOOL_TESTS_SERVERS_SERVER_PROCESS_HPP
#define CONNPOOL_TESTS_SERVERS_SERVER_PROCESS_HPP

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "servers/net.hpp"

namespace test {

/// In a forked child: close every descriptor above stderr except those in `keep`.
inline void close_inherited_except(std::vector<int> keep) {
  std::sort(keep.begin(), keep.end());
  int from = 3;
  for (int fd : keep) {
    if (fd > from) ::close_range(static_cast<unsigned>(from), static_cast<unsigned>(fd - 1), 0);
    from = std::max(from, fd + 1);
  }
  ::close_range(static_cast<unsigned>(from), ~0U, 0);
}

/// Read or write exactly `n` bytes on a pipe; false at end of stream or on an error.
inline bool read_all(int fd, void* p, std::size_t n) {
  auto* b = static_cast<char*>(p);
  while (n > 0) {
    const ssize_t r = ::read(fd, b, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    b += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}
inline bool write_all(int fd, const void* p, std::size_t n) {
  auto* b = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t r = ::write(fd, b, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    b += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

/// `n` loopback endpoints with port 0: fresh ports.
inline std::vector<net::ip::tcp::endpoint> fresh_loopback_ports(std::size_t n) {
  return std::vector<net::ip::tcp::endpoint>(n, {net::ip::make_address("127.0.0.1"), 0});
}

/// What a server model gets in the child.
struct child_io {
  std::vector<net::ip::tcp::endpoint> endpoints;
  std::vector<int> listeners;  // listening, one per endpoint
  int control = -1;            // from the parent; end of stream: stop (the parent stopped the server)
  int reply = -1;              // to the parent
};

class server_process {
 public:
  /// Runs in the child; the child exits when it returns.
  using model = std::function<void(const child_io&)>;

  /// Fork a child that runs `serve` on a listener on each of `where` (port 0: a fresh port),
  /// SO_REUSEADDR, backlog 4096. The listeners are open when this returns.
  server_process(std::vector<net::ip::tcp::endpoint> where, model serve)
      : endpoints_(std::move(where)), serve_(std::move(serve)) {
    start();
  }
  /// Stops the server: closes the control pipe (the child exits) and reaps it; SIGKILL if it has
  /// not exited within 5 s.
  ~server_process() {
    if (pid_ < 0) return;
    close_pipes();
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    int status = 0;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > give_up) {
        ::kill(pid_, SIGKILL);
        while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
        }
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  server_process(const server_process&) = delete;
  server_process& operator=(const server_process&) = delete;

  /// SIGKILL the server and reap it: the kernel closes its sockets (FIN, or RST where a request
  /// sat unread), which ends any client blocked reading from it. Nothing listens any more.
  void kill() {
    if (pid_ < 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    close_pipes();
    pid_ = -1;
  }

  /// Kill the server if it runs, and start it again on the same ports.
  void restart() {
    kill();
    start();
  }

  const net::ip::tcp::endpoint& endpoint(std::size_t i) const { return endpoints_.at(i); }

 protected:
  /// To the child's control pipe, and from its reply pipe.
  bool send(const void* p, std::size_t n) { return pid_ >= 0 && write_all(control_, p, n); }
  bool receive(void* p, std::size_t n) { return pid_ >= 0 && read_all(reply_, p, n); }

 private:
  static void fail(const char* what, int e, const std::vector<int>& fds) {
    for (int fd : fds) ::close(fd);
    throw std::system_error(e, std::system_category(), what);
  }

  void start() {
    std::vector<int> fds;  // listeners, then the pipes' ends: closed on failure
    for (auto& ep : endpoints_) {
      const int fd = ::socket(ep.protocol().family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0) fail("socket", errno, fds);
      fds.push_back(fd);
      const int one = 1;
      net::ip::tcp::endpoint bound;
      socklen_t len = static_cast<socklen_t>(bound.capacity());
      if (::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
          ::bind(fd, ep.data(), static_cast<socklen_t>(ep.size())) != 0 || ::listen(fd, 4096) != 0 ||
          ::getsockname(fd, bound.data(), &len) != 0)
        fail("listen", errno, fds);
      ep = bound;  // port 0: the port it got, for endpoint() and restart()
    }
    const std::vector<int> listeners = fds;
    int control[2], reply[2];
    if (::pipe2(control, O_CLOEXEC) != 0) fail("pipe2", errno, fds);
    fds.insert(fds.end(), {control[0], control[1]});
    if (::pipe2(reply, O_CLOEXEC) != 0) fail("pipe2", errno, fds);
    fds.insert(fds.end(), {reply[0], reply[1]});
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) std::_Exit(0);  // the parent died before prctl
      std::vector<int> keep = listeners;
      keep.insert(keep.end(), {control[0], reply[1]});
      close_inherited_except(keep);
      serve_(child_io{endpoints_, listeners, control[0], reply[1]});
      std::_Exit(0);
    }
    if (pid < 0) fail("fork", errno, fds);
    for (int fd : listeners) ::close(fd);
    ::close(control[0]);
    ::close(reply[1]);
    pid_ = pid;
    control_ = control[1];
    reply_ = reply[0];
  }

  void close_pipes() {
    ::close(control_);
    ::close(reply_);
    control_ = reply_ = -1;
  }

  std::vector<net::ip::tcp::endpoint> endpoints_;
  model serve_;
  pid_t pid_ = -1;
  int control_ = -1, reply_ = -1;
};

/// One Asio thread serves every connection (TCP_NODELAY): echo what arrives.
class echo_server_process : public server_process {
 public:
  /// A server listening on `ports` fresh loopback ports.
  explicit echo_server_process(std::size_t ports) : echo_server_process(fresh_loopback_ports(ports)) {}
  /// A server listening on each of `where` (port 0: a fresh port; else, say, the port of one that
  /// was killed).
  explicit echo_server_process(const std::vector<net::ip::tcp::endpoint>& where) : server_process(where, serve) {}

 private:
  struct session : std::enable_shared_from_this<session> {
    explicit session(net::ip::tcp::socket s) : sock(std::move(s)) {}
    net::ip::tcp::socket sock;
    char buf[16384];
    void read() {
      sock.async_read_some(net::buffer(buf), [self = shared_from_this()](connpool::error_code ec, std::size_t n) {
        if (ec) return;  // EOF or reset: the socket closes when the last handler goes
        net::async_write(self->sock, net::buffer(self->buf, n), [self](connpool::error_code wec, std::size_t) {
          if (!wec) self->read();
        });
      });
    }
  };

  static void accept(net::ip::tcp::acceptor& a) {
    a.async_accept([&a](connpool::error_code ec, net::ip::tcp::socket s) {
      if (!ec) {
        connpool::error_code ignored;
        s.set_option(net::ip::tcp::no_delay(true), ignored);
        std::make_shared<session>(std::move(s))->read();
      }
      accept(a);
    });
  }

  static void serve(const child_io& io) {
    net::io_context ctx(1);
    std::vector<net::ip::tcp::acceptor> acceptors;
    for (std::size_t i = 0; i < io.listeners.size(); ++i)
      acceptors.emplace_back(ctx, io.endpoints[i].protocol(), io.listeners[i]);
    for (auto& a : acceptors) accept(a);
    net::posix::stream_descriptor stop(ctx, io.control);
    char c;
    stop.async_read_some(net::buffer(&c, 1), [&](connpool::error_code, std::size_t) { ctx.stop(); });
    ctx.run();
  }
};

/// A thread per connection with blocking I/O (TCP_NODELAY): echo what arrives.
class thread_echo_server_process : public server_process {
 public:
  /// A server listening on `ports` fresh loopback ports.
  explicit thread_echo_server_process(std::size_t ports) : server_process(fresh_loopback_ports(ports), serve) {}

 private:
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

  /// An accept thread per listener; the main thread waits for the control pipe to end (or a byte),
  /// then exits without joining anything.
  static void serve(const child_io& io) {
    for (int l : io.listeners) std::thread(accept_loop, l).detach();
    char c;
    while (::read(io.control, &c, 1) < 0 && errno == EINTR) {
    }
  }
};

/// One port; accepts `n` connections, then, on close_all(), closes them all (FIN; nothing unread)
/// and tells the time of each close.
class closing_server_process : public server_process {
 public:
  explicit closing_server_process(std::size_t n)
      : server_process(fresh_loopback_ports(1), [n](const child_io& io) { serve(io, n); }), n_(n) {}

  /// Close every connection (once all `n` are accepted); the steady_clock time of each close, in
  /// nanoseconds since its epoch (CLOCK_MONOTONIC, the same in both processes). Empty on failure.
  std::vector<std::int64_t> close_all() {
    std::vector<std::int64_t> at(n_);
    if (!send("c", 1) || !receive(at.data(), at.size() * sizeof at[0])) at.clear();
    return at;
  }

 private:
  static void serve(const child_io& io, std::size_t n) {
    std::vector<int> conns;
    while (conns.size() < n) {
      // events 0 on the control pipe: only its end (the parent stopped the server) wakes us up.
      pollfd p[2] = {{io.listeners[0], POLLIN, 0}, {io.control, 0, 0}};
      if (::poll(p, 2, -1) < 0) {
        if (errno == EINTR) continue;
        return;
      }
      if (p[1].revents) return;
      const int c = ::accept(io.listeners[0], nullptr, nullptr);
      if (c < 0) return;
      conns.push_back(c);
    }
    char cmd;
    if (!read_all(io.control, &cmd, 1)) return;
    std::vector<std::int64_t> at(n);
    for (std::size_t i = 0; i < n; ++i) {
      ::close(conns[i]);
      at[i] = std::chrono::duration_cast<std::chrono::nanoseconds>(
                  std::chrono::steady_clock::now().time_since_epoch())
                  .count();
    }
    write_all(io.reply, at.data(), at.size() * sizeof at[0]);
  }

  std::size_t n_;
};

}  // namespace test

#endif
