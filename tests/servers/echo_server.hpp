// Test servers: an in-process Asio echo server on one thread of its own, that the tests drive. It
// can close, reset or send stray bytes on every connection it holds, close each connection after a
// few echoes, stop listening, restart on the same port, or run the soak's chaos (at random: close,
// reset, stall, garbage, stray bytes a little later). It keeps one record of what it did to each
// client port and when (poisoned_at()): the dead hand-out classifier (outcome.hpp) reads it.
#ifndef CONNPOOL_TESTS_SERVERS_ECHO_SERVER_HPP
#define CONNPOOL_TESTS_SERVERS_ECHO_SERVER_HPP

#include <algorithm>
#include <atomic>
#include <cassert>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <type_traits>

#include "servers/net.hpp"

#include "../support.hpp"

namespace test {

/// How the server saw a connection end.
struct server_counts {
  std::size_t accepted = 0, live = 0, eof = 0, reset = 0;
};

/// What the server did to a connection that leaves it unusable to the client, and when (after the
/// syscall that did it returned): "close" (FIN), "reset" (RST), "stray bytes" (unrequested) or
/// "restart" (FIN, the listener closed and opened again).
struct poison {
  std::chrono::steady_clock::time_point at;
  std::string what;
};

template <class Protocol>
class basic_echo_server {
 public:
  using endpoint_type = typename Protocol::endpoint;
  using socket_type = typename Protocol::socket;
  static constexpr bool is_tcp = std::is_same_v<Protocol, net::ip::tcp>;

  explicit basic_echo_server(const endpoint_type& where) : acceptor_(io_) {
    open(where);
    endpoint_ = acceptor_.local_endpoint();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~basic_echo_server() {
    run([this] {
      connpool::error_code ignored;
      acceptor_.close(ignored);
      for (auto& [id, s] : sessions_) {
        s->socket.close(ignored);
        s->timer.cancel();
      }
      sessions_.clear();
    });
    work_.reset();
    io_.stop();
    thread_.join();
  }
  basic_echo_server(const basic_echo_server&) = delete;
  basic_echo_server& operator=(const basic_echo_server&) = delete;

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
        connpool::error_code ignored;
        s->socket.shutdown(net::socket_base::shutdown_both, ignored);
        s->socket.close(ignored);
        s->timer.cancel();
        poisoned(*s, "close");
      }
      sessions_.clear();
    });
  }
  /// Close every server-side connection with RST.
  void reset_all() {
    run([this] {
      for (auto& [id, s] : sessions_) {
        connpool::error_code ignored;
        s->socket.set_option(net::socket_base::linger(true, 0), ignored);
        s->socket.close(ignored);
        s->timer.cancel();
        poisoned(*s, "reset");
      }
      sessions_.clear();
    });
  }
  /// Send unsolicited bytes on every connection.
  void send_all(const std::string& bytes) {
    run([this, bytes] {
      for (auto& [id, s] : sessions_) {
        net::write(s->socket, net::buffer(bytes));
        poisoned(*s, "stray bytes");
      }
    });
  }
  /// Close each connection (FIN) after it has echoed between 1 and `n` messages, at random;
  /// 0: never. Each such close is recorded ("close", see closed_at()).
  void close_after(std::size_t n) { close_after_ = n; }

  /// Stop accepting; pending connects are refused once the listener is closed.
  void stop_listening() {
    run([this] {
      connpool::error_code ignored;
      acceptor_.close(ignored);
    });
  }

  /// Close the listener and every connection (FIN, recorded as "restart"), then listen again on
  /// the same port.
  void restart() {
    static_assert(is_tcp, "restart() binds the same TCP port again");
    run([this] {
      connpool::error_code ignored;
      acceptor_.close(ignored);
      for (auto& [id, s] : sessions_) {
        s->socket.shutdown(net::socket_base::shutdown_both, ignored);
        s->socket.close(ignored);
        s->timer.cancel();
        poisoned(*s, "restart");
      }
      sessions_.clear();
      open(endpoint_);
    });
  }

  /// The soak's chaos, on every message from now on: messages are `message_size` bytes, and for
  /// each the server, at random (a generator seeded with `seed`), closes instead of answering (2%),
  /// resets instead (2%), stalls, never answering nor reading again (2%), answers with garbage
  /// (2%), or answers and 1 ms later sends stray bytes (2%); otherwise it echoes.
  void chaos(std::size_t message_size, std::uint32_t seed = 20261125) {
    assert(message_size > 0 && message_size <= sizeof(session::buf));
    run([this, message_size, seed] {
      chaos_message_ = message_size;
      rng_.seed(seed);
    });
  }

  /// What the server first did to the connection from client port `port` (the last one accepted
  /// from that port) that left it unusable, and when, if it did. TCP only.
  std::optional<poison> poisoned_at(unsigned short port) {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = records_.find(port);
    if (it == records_.end()) return std::nullopt;
    return it->second.first;
  }
  /// When the server closed the connection from client port `port` with FIN (close_after(),
  /// close_all(), chaos or restart()), if that is what it first did to it.
  std::optional<std::chrono::steady_clock::time_point> closed_at(unsigned short port) {
    const auto p = poisoned_at(port);
    if (!p || (p->what != "close" && p->what != "restart")) return std::nullopt;
    return p->at;
  }
  /// How many times the server did each thing: the poisons above, and "stall" and "garbage".
  std::map<std::string, std::size_t> actions() {
    std::lock_guard<std::mutex> lk(mu_);
    return actions_;
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
    session(socket_type s, std::uint64_t id) : socket(std::move(s)), timer(socket.get_executor()), id(id) {}
    socket_type socket;
    net::steady_timer timer;
    std::uint64_t id;
    unsigned short port = 0;  // the client's, TCP only
    char buf[4096];
    std::size_t echoed = 0;
    std::size_t close_at = 0;
  };
  using session_ptr = std::shared_ptr<session>;

  void run(std::function<void()> f) { run_on(io_, std::move(f)); }

  void open(const endpoint_type& where) {
    acceptor_.open(where.protocol());
    if constexpr (is_tcp) acceptor_.set_option(net::socket_base::reuse_address(true));
    acceptor_.bind(where);
    acceptor_.listen();
    accept();
  }

  /// Count what the server did to a connection, and record it if it is the first poison of the
  /// connection that holds its port now: not of an earlier one from the same port that the server
  /// still held (a stalled one, or one whose stray bytes were due).
  void poisoned(const session& s, const char* what) {
    std::lock_guard<std::mutex> lk(mu_);
    ++actions_[what];
    auto it = records_.find(s.port);
    if (it != records_.end() && it->second.session == s.id && !it->second.first)
      it->second.first = poison{std::chrono::steady_clock::now(), what};
  }
  void count(const char* what) {
    std::lock_guard<std::mutex> lk(mu_);
    ++actions_[what];
  }

  void accept() {
    acceptor_.async_accept([this](connpool::error_code ec, socket_type sock) {
      if (ec) return;
      auto s = std::make_shared<session>(std::move(sock), next_id_++);
      if constexpr (is_tcp) {
        connpool::error_code ignored;
        // In chaos mode, without Nagle: stray bytes leave at once instead of waiting for the
        // client's next request to acknowledge the echo, so they reach idle connections and the
        // pool's probe meets them (about 300 unexpected_data a 10 s soak, against 2 to 5 with Nagle).
        if (chaos_message_) s->socket.set_option(net::ip::tcp::no_delay(true), ignored);
        s->port = s->socket.remote_endpoint(ignored).port();
        std::lock_guard<std::mutex> lk(mu_);
        records_[s->port] = record{s->id, std::nullopt};  // the port's new connection starts clean
      }
      sessions_[s->id] = s;
      ++counts_.accepted;
      read(s);
      accept();
    });
  }

  void read(const session_ptr& s) {
    auto on_read = [this, s](connpool::error_code ec, std::size_t n) {
      if (ec) return end(s, ec);
      if (chaos_message_) return chaos_answer(s, n);
      answer(s, n, false);
    };
    if (chaos_message_)
      net::async_read(s->socket, net::buffer(s->buf, chaos_message_), on_read);
    else
      s->socket.async_read_some(net::buffer(s->buf), on_read);
  }

  void chaos_answer(const session_ptr& s, std::size_t n) {
    const unsigned roll = rng_() % 100;
    connpool::error_code ignored;
    if (roll < 2) {  // close instead of answering
      s->socket.shutdown(net::socket_base::shutdown_both, ignored);
      drop(s);
      return poisoned(*s, "close");
    }
    if (roll < 4) {  // reset instead of answering
      s->socket.set_option(net::socket_base::linger(true, 0), ignored);
      drop(s);
      return poisoned(*s, "reset");
    }
    if (roll < 6) return count("stall");  // never answer, never read again
    if (roll < 8) {                       // garbage instead of the echo
      std::fill(s->buf, s->buf + n, '#');
      count("garbage");
    }
    answer(s, n, roll >= 8 && roll < 10);
  }

  /// Send back the `n` bytes in the buffer; then, with `stray_later`, stray bytes 1 ms later
  /// (while the connection likely sits idle in the pool); then close_after(), or read on.
  void answer(const session_ptr& s, std::size_t n, bool stray_later) {
    net::async_write(s->socket, net::buffer(s->buf, n), [this, s, stray_later](connpool::error_code ec, std::size_t) {
      if (ec) return end(s, ec);
      if (stray_later) {
        s->timer.expires_after(std::chrono::milliseconds(1));
        s->timer.async_wait([this, s](connpool::error_code tec) {
          if (tec || !s->socket.is_open()) return;
          connpool::error_code ignored;
          s->socket.write_some(net::buffer("stray", 5), ignored);
          if (!ignored) poisoned(*s, "stray bytes");
        });
      }
      if (const std::size_t limit = close_after_) {
        if (s->close_at == 0) s->close_at = 1 + rng_() % limit;
        if (++s->echoed >= s->close_at) {
          connpool::error_code ignored;
          s->socket.shutdown(net::socket_base::shutdown_both, ignored);
          drop(s);
          return poisoned(*s, "close");
        }
      }
      read(s);
    });
  }

  /// The server closes a connection of its own accord.
  void drop(const session_ptr& s) {
    connpool::error_code ignored;
    s->socket.close(ignored);
    s->timer.cancel();
    sessions_.erase(s->id);
  }

  /// A connection ended by the client (or an error).
  void end(const session_ptr& s, connpool::error_code ec) {
    if (sessions_.erase(s->id) == 0) return;  // closed by us
    if (ec == net::error::eof)
      ++counts_.eof;
    else
      ++counts_.reset;
    connpool::error_code ignored;
    s->socket.close(ignored);
    s->timer.cancel();
  }

  net::io_context io_;
  net::executor_work_guard<net::io_context::executor_type> work_ = net::make_work_guard(io_);
  net::basic_socket_acceptor<Protocol> acceptor_;
  endpoint_type endpoint_;
  // On the server's thread only:
  std::map<std::uint64_t, session_ptr> sessions_;
  std::uint64_t next_id_ = 0;
  server_counts counts_;
  std::size_t chaos_message_ = 0;  // 0: plain echo
  std::minstd_rand rng_{42};
  std::atomic<std::size_t> close_after_{0};
  // Read by the test's threads too:
  struct record {
    std::uint64_t session;        // the last connection accepted from the port
    std::optional<poison> first;  // what the server first did to it
  };
  std::mutex mu_;
  std::map<unsigned short, record> records_;  // by client port, TCP only
  std::map<std::string, std::size_t> actions_;
  std::thread thread_;
};

using echo_server = basic_echo_server<net::ip::tcp>;

}  // namespace test

#endif
