// Test support: an in-process Asio echo server that can be told to close, reset or send stray
// bytes to the connections it holds, and bounded waits.
#ifndef CONNPOOL_TESTS_SUPPORT_HPP
#define CONNPOOL_TESTS_SUPPORT_HPP

#include <dirent.h>
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>

#include <asio.hpp>
#include <doctest/doctest.h>

#include "connpool/connpool.hpp"
#include "connpool/diag.hpp"

namespace test {

using namespace std::chrono_literals;

/// Poll `pred` until it holds or `limit` passes. For waiting on effects that have no event we can
/// block on from the test (the pool's background thread closing a socket). Returns pred().
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = 3000ms) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return pred();
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

/// Run `f` on the thread that runs `io`, and wait until it has run.
inline void run_on(asio::io_context& io, const std::function<void()>& f) {
  std::promise<void> done;
  asio::post(io, [&] {
    f();
    done.set_value();
  });
  done.get_future().wait();
}

/// How the server saw a connection end.
struct server_counts {
  std::size_t accepted = 0, live = 0, eof = 0, reset = 0;
};

template <class Protocol>
class basic_echo_server {
 public:
  using endpoint_type = typename Protocol::endpoint;
  using socket_type = typename Protocol::socket;

  explicit basic_echo_server(const endpoint_type& where) : acceptor_(io_) {
    acceptor_.open(where.protocol());
    if constexpr (std::is_same_v<Protocol, asio::ip::tcp>) acceptor_.set_option(asio::socket_base::reuse_address(true));
    acceptor_.bind(where);
    acceptor_.listen();
    endpoint_ = acceptor_.local_endpoint();
    accept();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~basic_echo_server() {
    run([this] {
      std::error_code ignored;
      acceptor_.close(ignored);
      for (auto& [id, s] : sessions_) s->socket.close(ignored);
      sessions_.clear();
    });
    io_.stop();
    thread_.join();
  }

  endpoint_type endpoint() const { return endpoint_; }

  /// Wait (bounded) until the server has accepted `n` connections in all: a client's connect
  /// completes in the kernel before the server's accept handler has run.
  bool wait_accepted(std::size_t n) {
    return eventually([&] { return counts().accepted >= n; });
  }

  /// Close every server-side connection with FIN.
  void close_all() {
    run([this] {
      for (auto& [id, s] : sessions_) {
        std::error_code ignored;
        s->socket.shutdown(asio::socket_base::shutdown_both, ignored);
        s->socket.close(ignored);
      }
      sessions_.clear();
    });
  }
  /// Close every server-side connection with RST.
  void reset_all() {
    run([this] {
      for (auto& [id, s] : sessions_) {
        std::error_code ignored;
        s->socket.set_option(asio::socket_base::linger(true, 0), ignored);
        s->socket.close(ignored);
      }
      sessions_.clear();
    });
  }
  /// Send unsolicited bytes on every connection.
  void send_all(const std::string& bytes) {
    run([this, bytes] {
      for (auto& [id, s] : sessions_) asio::write(s->socket, asio::buffer(bytes));
    });
  }
  /// Close each connection (FIN) after it has echoed between 1 and `n` messages, at random;
  /// 0: never. The time of each such close is kept by the client's port (closed_at()).
  void close_after(std::size_t n) { close_after_ = n; }

  /// When the server closed (close_after) the connection from client port `port`, if it did.
  std::optional<std::chrono::steady_clock::time_point> closed_at(unsigned short port) {
    std::lock_guard<std::mutex> lk(closed_mu_);
    auto it = closed_at_.find(port);
    if (it == closed_at_.end()) return std::nullopt;
    return it->second;
  }
  /// Stop accepting; pending connects are refused once the listener is closed.
  void stop_listening() {
    run([this] {
      std::error_code ignored;
      acceptor_.close(ignored);
    });
  }

  server_counts counts() {
    server_counts c;
    run([&] {
      c = counts_;
      c.live = sessions_.size();
    });
    return c;
  }

 private:
  struct session {
    explicit session(socket_type s) : socket(std::move(s)) {}
    socket_type socket;
    char buf[4096];
    std::size_t echoed = 0;
    std::size_t close_at = 0;
  };

  void run(std::function<void()> f) { run_on(io_, std::move(f)); }

  void accept() {
    acceptor_.async_accept([this](std::error_code ec, socket_type s) {
      if (ec) return;
      auto ss = std::make_shared<session>(std::move(s));
      const auto id = next_id_++;
      if constexpr (std::is_same_v<Protocol, asio::ip::tcp>) {
        std::error_code ignored;
        std::lock_guard<std::mutex> lk(closed_mu_);
        closed_at_.erase(ss->socket.remote_endpoint(ignored).port());  // the port is in use again
      }
      sessions_[id] = ss;
      ++counts_.accepted;
      read(id, ss);
      accept();
    });
  }

  void read(std::uint64_t id, std::shared_ptr<session> s) {
    s->socket.async_read_some(asio::buffer(s->buf), [this, id, s](std::error_code ec, std::size_t n) {
      if (ec) return end(id, s, ec);
      asio::async_write(s->socket, asio::buffer(s->buf, n), [this, id, s](std::error_code wec, std::size_t) {
        if (wec) return end(id, s, wec);
        if (const std::size_t limit = close_after_) {
          if (s->close_at == 0) s->close_at = 1 + rng_() % limit;
          if (++s->echoed >= s->close_at) {
            std::error_code ignored;
            unsigned short port = 0;
            if constexpr (std::is_same_v<Protocol, asio::ip::tcp>) port = s->socket.remote_endpoint(ignored).port();
            s->socket.shutdown(asio::socket_base::shutdown_both, ignored);
            s->socket.close(ignored);
            {
              std::lock_guard<std::mutex> lk(closed_mu_);
              closed_at_[port] = std::chrono::steady_clock::now();
            }
            sessions_.erase(id);
            return;
          }
        }
        read(id, s);
      });
    });
  }

  void end(std::uint64_t id, const std::shared_ptr<session>& s, std::error_code ec) {
    if (sessions_.erase(id) == 0) return;  // closed by us
    if (ec == asio::error::eof)
      ++counts_.eof;
    else
      ++counts_.reset;
    std::error_code ignored;
    s->socket.close(ignored);
  }

  asio::io_context io_;
  asio::basic_socket_acceptor<Protocol> acceptor_;
  endpoint_type endpoint_;
  std::map<std::uint64_t, std::shared_ptr<session>> sessions_;
  std::uint64_t next_id_ = 0;
  server_counts counts_;
  std::atomic<std::size_t> close_after_{0};
  std::minstd_rand rng_{42};
  std::mutex closed_mu_;
  std::map<unsigned short, std::chrono::steady_clock::time_point> closed_at_;
  std::thread thread_;
};

using echo_server = basic_echo_server<asio::ip::tcp>;

inline asio::ip::tcp::endpoint loopback() { return {asio::ip::make_address("127.0.0.1"), 0}; }

/// A listener whose accept queue is full: further connects stay in SYN_SENT (loopback, no root).
struct full_backlog {
  asio::io_context io;
  asio::ip::tcp::acceptor acc{io};
  std::vector<asio::ip::tcp::socket> fillers;
  full_backlog() {
    acc.open(asio::ip::tcp::v4());
    acc.bind(loopback());
    acc.listen(0);
    // Fill the queue: connects that complete without accept. Stop once one does not.
    for (int i = 0; i < 8; ++i) {
      fillers.emplace_back(io);
      auto& s = fillers.back();
      s.open(asio::ip::tcp::v4());
      s.non_blocking(true);
      auto target = acc.local_endpoint();
      (void)::connect(s.native_handle(), target.data(), static_cast<socklen_t>(target.size()));
      pollfd p{s.native_handle(), POLLOUT, 0};
      if (::poll(&p, 1, 200) == 0) break;  // this one is stuck in SYN_SENT: queue full
    }
  }
};

/// One request/response through a lease; returns the echo.
template <class Lease>
std::string roundtrip(Lease& l, const std::string& msg) {
  asio::write(l.socket(), asio::buffer(msg));
  std::string back(msg.size(), '\0');
  asio::read(l.socket(), asio::buffer(back));
  return back;
}

/// The pool still works: a fresh connection (not reused) carries an exchange, and goes back.
template <class Pool>
void check_fresh_roundtrip(Pool& pool, const typename Pool::endpoint_type& ep) {
  auto l = pool.acquire(ep);
  CHECK_FALSE(l.reused());
  CHECK(roundtrip(l, "after") == "after");
  l.release();
}

/// A scenario that cannot run here (no root, a tool missing) when `why` is not empty: it is
/// skipped with the reason, or fails when CONNPOOL_REQUIRE_FAULTS is set (CI, which has them all).
inline bool cannot_run(const std::string& why) {
  if (why.empty()) return false;
  if (std::getenv("CONNPOOL_REQUIRE_FAULTS")) {
    FAIL_CHECK("required scenario cannot run: " << why);
  } else {
    MESSAGE("SKIPPED: " << why);
  }
  return true;
}

/// The process's open descriptors, each as "N -> what it refers to" (socket:[inode], a path...).
inline std::set<std::string> descriptor_set() {
  std::set<std::string> out;
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) return out;
  const int self = ::dirfd(d);
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.' || std::atoi(e->d_name) == self) continue;
    char target[512];
    const std::string link = std::string("/proc/self/fd/") + e->d_name;
    const ssize_t n = ::readlink(link.c_str(), target, sizeof target);
    out.insert(std::string(e->d_name) + " -> " + (n > 0 ? std::string(target, static_cast<std::size_t>(n)) : "?"));
  }
  ::closedir(d);
  return out;
}

#if defined(__SANITIZE_THREAD__)
#define CONNPOOL_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CONNPOOL_TEST_TSAN 1
#endif
#endif

/// Descriptors open now that were not open in `before`: what a test leaked. Descriptors that
/// closed meanwhile (a sanitizer runtime's own, say) do not count against it. Under clang's
/// ThreadSanitizer, pipes do not count either: its runtime starts llvm-symbolizer on a pipe pair
/// the first time it symbolizes (to match a suppression) and keeps it open. connpool itself opens
/// no pipes (sockets, epoll and eventfd only).
inline std::string opened_since(const std::set<std::string>& before) {
  std::string leaked;
  for (const auto& fd : descriptor_set()) {
#ifdef CONNPOOL_TEST_TSAN
    if (fd.find("-> pipe:") != std::string::npos) continue;
#endif
    if (!before.count(fd)) leaked += (leaked.empty() ? "" : ", ") + fd;
  }
  return leaked;
}

/// Every descriptor a test opens is closed by its end (bounded wait): declare one first.
struct fd_guard {
  std::set<std::string> before = descriptor_set();
  ~fd_guard() {
    std::string leaked;
    const bool none = eventually([&] { return (leaked = opened_since(before)).empty(); });
    CHECK_MESSAGE(none, "descriptors left open: " << leaked);
  }
};

inline std::size_t client_sockets(const asio::ip::tcp::endpoint& server, connpool::diag::tcp_state st) {
  std::error_code ec;
  return connpool::diag::census(server, ec)[st];
}

}  // namespace test

#endif
