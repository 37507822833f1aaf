// async_acquire with callbacks, std::future and C++20 coroutines; waiting, timeouts, close().
#include <doctest/doctest.h>

#include <sys/epoll.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <optional>

#include "servers/echo_server.hpp"
#include "support.hpp"

#include "servers/net.hpp"

#if defined(__cpp_impl_coroutine) && defined(CONNPOOL_HAS_CO_AWAIT)
#define CONNPOOL_TEST_COROUTINES 1
// The awaitable operators came with cancellation slots (Asio 1.19, Boost 1.77).
#if defined(CONNPOOL_HAS_CANCELLATION_SLOTS)
#if defined(CONNPOOL_USE_BOOST_ASIO)
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/redirect_error.hpp>
#else
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/redirect_error.hpp>
#endif
#define CONNPOOL_TEST_AWAITABLE_OPERATORS 1
#endif
#endif

using namespace std::chrono_literals;
using connpool::tcp_pool;
using test::eventually;

namespace {
struct result {
  connpool::error_code ec;
  tcp_pool::lease lease;
  bool done = false;
};

/// Run `io` until `r.done`, for at most `limit`.
bool run_until(net::io_context& io, const result& r, std::chrono::milliseconds limit = 3000ms) {
  const auto end = std::chrono::steady_clock::now() + limit;
  io.restart();
  while (!r.done && std::chrono::steady_clock::now() < end) io.run_one_for(10ms);
  return r.done;
}

/// The event masks of every epoll registration of `fd` in this process, read from the kernel
/// (/proc/self/fdinfo of each epoll descriptor).
std::vector<unsigned> epoll_masks(int fd) {
  std::vector<unsigned> out;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fdinfo")) {
    std::ifstream in(e.path());
    std::string line;
    while (std::getline(in, line)) {
      int tfd = -1;
      unsigned events = 0;
      if (std::sscanf(line.c_str(), "tfd: %d events: %x", &tfd, &events) == 2 && tfd == fd) out.push_back(events);
    }
  }
  return out;
}

auto into(result& r) {
  return [&r](connpool::error_code ec, tcp_pool::lease l) {
    r.ec = ec;
    r.lease = std::move(l);
    r.done = true;
  };
}
}  // namespace

TEST_CASE("async: callback on a user io_context, fresh then reused") {
  test::fd_guard fds;
  {
    test::echo_server server(test::loopback());
    net::io_context io;
    tcp_pool pool(io);
    result r;
    pool.async_acquire(server.endpoint(), into(r));
    CHECK_FALSE(r.done);  // never completes inside the initiating call
    REQUIRE(run_until(io, r));
    REQUIRE_FALSE(r.ec);
    CHECK_FALSE(r.lease.reused());
    CHECK(test::roundtrip(r.lease, "hi") == "hi");
    r.lease.release();
    result r2;
    pool.async_acquire(server.endpoint(), into(r2));
    REQUIRE(run_until(io, r2));
    CHECK(r2.lease.reused());
    r2.lease.release();
    CHECK(pool.stats().created == 1);
  }
}

// Asio's reactor keeps EPOLLOUT registered for the life of a socket that once waited for a connect;
// with it, every ACK that frees send space wakes the reactor that runs your I/O. The pool connects
// on a socket of its own and hands out the descriptor registered afresh.
TEST_CASE("async: a connection made by async_acquire is registered for reading only") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  net::io_context io;
  tcp_pool pool(io);
  result r;
  pool.async_acquire(server.endpoint(), into(r));
  REQUIRE(run_until(io, r));
  REQUIRE_FALSE(r.ec);
  CHECK_FALSE(r.lease.reused());
  CHECK(test::roundtrip(r.lease, "x") == "x");
  const auto masks = epoll_masks(r.lease.socket().native_handle());
  CHECK(masks.size() == 2);  // the reactor of `io`, and the pool's idle watch
  bool watched = false;
  for (unsigned m : masks) {
    CHECK((m & EPOLLOUT) == 0);
    watched = watched || (m & (EPOLLIN | EPOLLRDHUP | EPOLLET)) == (EPOLLRDHUP | EPOLLET);
  }
  CHECK(watched);
  r.lease.release();
}

TEST_CASE("async: use_future on the default pool") {
  test::echo_server server(test::loopback());
  test::fd_guard fds;
  {
    tcp_pool pool;
    auto f = pool.async_acquire(server.endpoint(), net::use_future);
    REQUIRE(f.wait_for(3s) == std::future_status::ready);
    auto l = f.get();
    // Dialled on the pool's thread, then moved to the unrun socket context: the pool's thread
    // must not be woken by this socket's traffic.
    CHECK(l.socket().get_executor() != pool.get_executor());
    CHECK(test::roundtrip(l, "future") == "future");
    l.release();
    net::ip::tcp::endpoint dead;
    {
      test::echo_server gone(test::loopback());
      dead = gone.endpoint();
    }
    auto f2 = pool.async_acquire(dead, net::use_future);
    REQUIRE(f2.wait_for(3s) == std::future_status::ready);
    try {
      f2.get();
      FAIL("connect to a closed port succeeded");
    } catch (const connpool::system_error& e) {
      CHECK(e.code() == net::error::connection_refused);
    }
    CHECK(pool.stats().idle == 1);
  }
}

TEST_CASE("async: a waiter gets the released connection; acquire_timeout; close() fails waiters") {
  test::echo_server server(test::loopback());
  net::io_context io;
  auto o = connpool::pool_options{};
  o.max_per_endpoint = 1;
  o.acquire_timeout = 200ms;
  tcp_pool pool(io, o);
  result first;
  pool.async_acquire(server.endpoint(), into(first));
  REQUIRE(run_until(io, first));
  REQUIRE_FALSE(first.ec);

  SUBCASE("released to the waiter") {
    result second;
    pool.async_acquire(server.endpoint(), into(second));
    CHECK(pool.stats().waiting == 1);
    first.lease.release();
    REQUIRE(run_until(io, second));
    CHECK_FALSE(second.ec);
    CHECK(second.lease.reused());
  }
  SUBCASE("times out") {
    result second;
    const auto t0 = std::chrono::steady_clock::now();
    pool.async_acquire(server.endpoint(), into(second));
    REQUIRE(run_until(io, second));
    CHECK(second.ec == connpool::error::acquire_timeout);
    CHECK(std::chrono::steady_clock::now() - t0 >= 200ms);
    CHECK(pool.stats().waiting == 0);
    CHECK(pool.stats().acquire_timeouts == 1);
  }
  SUBCASE("pool closed") {
    result second;
    pool.async_acquire(server.endpoint(), into(second));
    pool.close();
    REQUIRE(run_until(io, second));
    CHECK(second.ec == connpool::error::pool_closed);
    result third;
    pool.async_acquire(server.endpoint(), into(third));
    REQUIRE(run_until(io, third));
    CHECK(third.ec == connpool::error::pool_closed);
  }
}

TEST_CASE("async: completion runs on the handler's associated executor") {
  test::echo_server server(test::loopback());
  net::io_context pool_io, handler_io;
  tcp_pool pool(pool_io);
  result r;
  std::thread::id ran_on;
  pool.async_acquire(server.endpoint(),
                     net::bind_executor(handler_io, [&](connpool::error_code ec, tcp_pool::lease l) {
                       ran_on = std::this_thread::get_id();
                       r.ec = ec;
                       r.lease = std::move(l);
                       r.done = true;
                     }));
  // The pool's context alone never runs the handler.
  pool_io.run_for(100ms);
  CHECK_FALSE(r.done);
  REQUIRE(run_until(handler_io, r));
  CHECK(ran_on == std::this_thread::get_id());
  CHECK_FALSE(r.ec);
  r.lease.release();
}

TEST_CASE("async: connect timeout") {
  test::full_backlog fb;
  connpool::pool_options o;
  o.connect_timeout = 150ms;
  tcp_pool pool(fb.io, o);
  result r;
  pool.async_acquire(fb.acc.local_endpoint(), into(r));
  REQUIRE(run_until(fb.io, r));
  CHECK(r.ec == connpool::error::connect_timeout);
  CHECK(pool.stats().open() == 0);
  CHECK(pool.stats().connect_failed == 1);
}

TEST_CASE("async: destroying the default pool fails a queued acquire and a connect in flight with pool_closed") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  test::full_backlog fb;
  std::optional<tcp_pool::lease> held;  // outlives the pool
  std::future<tcp_pool::lease> queued, dialling;
  {
    connpool::pool_options o;
    o.max_per_endpoint = 1;
    o.connect_timeout = 20s;
    o.acquire_timeout = 20s;
    tcp_pool pool(o);
    held = pool.acquire(server.endpoint());
    queued = pool.async_acquire(server.endpoint(), net::use_future);
    dialling = pool.async_acquire(fb.acc.local_endpoint(), net::use_future);
    REQUIRE(eventually([&] {
      auto s = pool.stats();
      return s.waiting == 1 && s.connecting == 1;
    }));
  }
  for (auto* f : {&queued, &dialling}) {
    REQUIRE(f->wait_for(3s) == std::future_status::ready);
    try {
      f->get();
      FAIL("acquire succeeded on a destroyed pool");
    } catch (const connpool::system_error& e) {
      CHECK(e.code() == connpool::error::pool_closed);
    }
  }
  held.reset();
}

// A queued async acquire is granted a connection whose peer closed during the previous lease (no
// watch has run: the context is not being run). The pool is destroyed before the grant is probed on
// the context; the probe fails, and the acquire completes with pool_closed. The pool's state, kept
// alive for that leased connection, must then be freed (its descriptors closed), not leaked.
TEST_CASE("async: a grant that fails its probe after the pool is gone completes and frees the pool") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  net::io_context io;
  result r;
  {
    connpool::pool_options o;
    o.max_per_endpoint = 1;
    tcp_pool pool(io, o);
    auto l = pool.acquire(server.endpoint());
    pool.async_acquire(server.endpoint(), into(r));
    REQUIRE(server.wait_accepted(1));
    server.close_all();
    REQUIRE(eventually([&] {
      return test::client_sockets(server.endpoint(), connpool::diag::tcp_state::close_wait) == 1;
    }));
    l.release();  // granted to the queued acquire; its probe runs on `io`
    CHECK(pool.stats().waiting == 0);
    CHECK(pool.stats().leased == 1);
  }
  REQUIRE(run_until(io, r));
  CHECK(r.ec == connpool::error::pool_closed);
  CHECK_FALSE(r.lease);
  io.restart();
  io.poll();
}

// The same grant, but the context is destroyed without ever running it: the handler is destroyed
// unrun, and the connection it held must be closed and the pool's state freed.
TEST_CASE("async: a grant destroyed unrun with its context gives its connection back") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  bool called = false;
  {
    net::io_context io;
    connpool::pool_options o;
    o.max_per_endpoint = 1;
    auto pool = std::make_unique<tcp_pool>(io, o);
    auto l = pool->acquire(server.endpoint());
    pool->async_acquire(server.endpoint(), [&](connpool::error_code, tcp_pool::lease) { called = true; });
    l.release();  // granted to the queued acquire: a handler posted to `io`, never run
    CHECK(pool->stats().leased == 1);
    pool.reset();
  }
  CHECK_FALSE(called);
  CHECK(eventually([&] { return server.counts().live == 0; }));
}

TEST_CASE("async: a default pool destroyed from its own completion handler") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto pool = std::make_unique<tcp_pool>();
  std::promise<std::thread::id> done;
  pool->async_acquire(server.endpoint(), [&](connpool::error_code ec, tcp_pool::lease l) {
    if (!ec) l.release();
    pool.reset();  // on the pool's own thread
    done.set_value(std::this_thread::get_id());
  });
  auto f = done.get_future();
  REQUIRE(f.wait_for(3s) == std::future_status::ready);
  CHECK(f.get() != std::this_thread::get_id());
  CHECK_FALSE(pool);
}

#ifdef CONNPOOL_TEST_COROUTINES
TEST_CASE("async: 200 coroutines on one thread share 8 connections") {
  test::fd_guard fds;
  {
    test::echo_server server(test::loopback());
    net::io_context io(1);
    connpool::pool_options o;
    o.max_per_endpoint = 8;
    tcp_pool pool(io, o);
    int ok = 0, failed = 0;
    auto ep = server.endpoint();
    for (int i = 0; i < 200; ++i) {
      net::co_spawn(
          io,
          [&, i]() -> net::awaitable<void> {
            auto l = co_await pool.async_acquire(ep, net::use_awaitable);
            const std::string msg = "m" + std::to_string(i);
            co_await net::async_write(l.socket(), net::buffer(msg), net::use_awaitable);
            std::string back(msg.size(), '\0');
            co_await net::async_read(l.socket(), net::buffer(back), net::use_awaitable);
            if (back == msg)
              ++ok;
            else
              ++failed;
            l.release();
          },
          [&](std::exception_ptr e) {
            if (e) ++failed;
          });
    }
    io.run_for(10s);
    CHECK(ok == 200);
    CHECK(failed == 0);
    auto s = pool.stats();
    CHECK(s.created <= 8);
    CHECK(s.idle == s.created);
    CHECK(s.waiting == 0);
  }
}
#endif

#if defined(CONNPOOL_HAS_CANCELLATION_SLOTS)
TEST_CASE("async: cancellation stops a waiting acquire and a connect in flight, promptly, leaving the pool as it was") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  net::io_context io;
  connpool::pool_options o;
  o.max_per_endpoint = 1;
  o.acquire_timeout = 5000ms;
  o.connect_timeout = 5000ms;
  tcp_pool pool(io, o);
  auto held = pool.acquire(server.endpoint());
  for (auto type : {net::cancellation_type::terminal, net::cancellation_type::partial, net::cancellation_type::total}) {
    net::cancellation_signal sig;
    result r;
    pool.async_acquire(server.endpoint(), net::bind_cancellation_slot(sig.slot(), into(r)));
    CHECK(pool.stats().waiting == 1);
    const auto t0 = std::chrono::steady_clock::now();
    sig.emit(type);
    REQUIRE(run_until(io, r));
    CHECK(std::chrono::steady_clock::now() - t0 < 1s);  // not the 5 s acquire_timeout
    CHECK(r.ec == net::error::operation_aborted);
    CHECK_FALSE(r.lease);
    CHECK(pool.stats().waiting == 0);
    CHECK(pool.stats().acquire_timeouts == 0);
  }
  held.release();  // no waiter left to take it
  CHECK(pool.stats().idle == 1);

  // A connect that would hang until its deadline (the listener's queue is full).
  test::full_backlog fb;
  net::cancellation_signal sig;
  result r;
  pool.async_acquire(fb.acc.local_endpoint(), net::bind_cancellation_slot(sig.slot(), into(r)));
  CHECK(eventually([&] {
    io.restart();
    io.poll();
    return pool.stats(fb.acc.local_endpoint()).connecting == 1;
  }));
  const auto t0 = std::chrono::steady_clock::now();
  sig.emit(net::cancellation_type::terminal);
  REQUIRE(run_until(io, r));
  CHECK(std::chrono::steady_clock::now() - t0 < 1s);
  CHECK(r.ec == net::error::operation_aborted);
  const auto s = pool.stats(fb.acc.local_endpoint());
  CHECK(s.connecting == 0);
  CHECK(s.connect_failed == 0);
  CHECK(s.open() == 0);
  // A cancellation after the acquire completed does nothing.
  net::cancellation_signal late;
  result ok;
  pool.async_acquire(server.endpoint(), net::bind_cancellation_slot(late.slot(), into(ok)));
  REQUIRE(run_until(io, ok));
  CHECK_FALSE(ok.ec);
  late.emit(net::cancellation_type::terminal);
  CHECK(ok.lease);
  ok.lease.release();
  CHECK(pool.stats().idle == 1);
}

TEST_CASE("async_run: a cancellation stops its acquire, or its exchange's pending reads; no retry, nothing leaked") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  net::io_context io;
  connpool::pool_options o;
  o.max_per_endpoint = 1;
  o.acquire_timeout = 5000ms;
  tcp_pool pool(io, o);
  bool started = false;
  // An exchange that waits for a byte the echo server never sends (nothing was written).
  auto wait_for_byte = [&started](tcp_pool::lease& l, tcp_pool::run_done done) {
    started = true;
    auto buf = std::make_shared<char>();
    net::async_read(l.socket(), net::buffer(buf.get(), 1), [buf, done](connpool::error_code ec, std::size_t) { done(ec); });
  };
  auto into_ec = [](result& r) {
    return [&r](connpool::error_code ec) {
      r.ec = ec;
      r.done = true;
    };
  };

  // Waiting for a connection (max_per_endpoint is held): the acquire stops, fn never runs.
  auto held = pool.acquire(server.endpoint());
  for (auto type : {net::cancellation_type::terminal, net::cancellation_type::partial, net::cancellation_type::total}) {
    net::cancellation_signal sig;
    result r;
    pool.async_run(server.endpoint(), connpool::retry::idempotent, wait_for_byte,
                   net::bind_cancellation_slot(sig.slot(), into_ec(r)));
    CHECK(pool.stats().waiting == 1);
    const auto t0 = std::chrono::steady_clock::now();
    sig.emit(type);
    REQUIRE(run_until(io, r));
    CHECK(std::chrono::steady_clock::now() - t0 < 1s);  // not the 5 s acquire_timeout
    CHECK(r.ec == net::error::operation_aborted);
    CHECK_FALSE(started);
    CHECK(pool.stats().waiting == 0);
  }
  held.release();
  REQUIRE(pool.stats().idle == 1);

  auto run_until_started = [&] {
    io.restart();
    const auto until = std::chrono::steady_clock::now() + 3s;
    while (!started && std::chrono::steady_clock::now() < until) io.run_one_for(10ms);
    return started;
  };
  // During the exchange (its request may have gone out): partial and total are ignored; terminal
  // ends its pending read with operation_aborted, the lease is discarded, no retry.
  {
    net::cancellation_signal sig;
    result r;
    pool.async_run(server.endpoint(), connpool::retry::idempotent, wait_for_byte,
                   net::bind_cancellation_slot(sig.slot(), into_ec(r)));
    REQUIRE(run_until_started());
    sig.emit(net::cancellation_type::partial);
    sig.emit(net::cancellation_type::total);
    io.restart();
    io.poll();
    CHECK_FALSE(r.done);
    CHECK(pool.stats().leased == 1);
    sig.emit(net::cancellation_type::terminal);
    REQUIRE(run_until(io, r));
    CHECK(r.ec == net::error::operation_aborted);
    const auto s = pool.stats();
    CHECK(s.discarded == 1);
    CHECK(s.retries == 0);
    CHECK(s.retries_refused == 0);
    CHECK(s.open() == 0);
  }
  // A read the exchange starts after the cancellation (nothing was pending then) fails at once:
  // the socket was shut down, not only its pending operations cancelled.
  {
    net::cancellation_signal sig;
    result r;
    tcp_pool::lease* lease = nullptr;
    tcp_pool::run_done later;
    started = false;
    pool.async_run(server.endpoint(), connpool::retry::idempotent,
                   [&](tcp_pool::lease& l, tcp_pool::run_done done) {
                     started = true;
                     lease = &l;
                     later = std::move(done);
                   },
                   net::bind_cancellation_slot(sig.slot(), into_ec(r)));
    REQUIRE(run_until_started());
    sig.emit(net::cancellation_type::terminal);
    auto buf = std::make_shared<char>();
    net::async_read(lease->socket(), net::buffer(buf.get(), 1),
                    [buf, d = later](connpool::error_code ec, std::size_t) { d(ec); });
    REQUIRE(run_until(io, r));  // within 3 s: the echo server never sends a byte
    CHECK(r.ec == net::error::operation_aborted);
    CHECK(pool.stats().discarded == 2);
    CHECK(pool.stats().open() == 0);
  }

  // A cancellation after the operation completed does nothing.
  net::cancellation_signal late;
  result ok;
  pool.async_run(server.endpoint(), connpool::retry::never,
                 [](tcp_pool::lease& l, tcp_pool::run_done done) {
                   auto buf = std::make_shared<std::string>("x");
                   net::async_write(l.socket(), net::buffer(*buf), [&l, buf, done](connpool::error_code ec, std::size_t) {
                     if (ec) return done(ec);
                     net::async_read(l.socket(), net::buffer(&(*buf)[0], 1),
                                     [buf, done](connpool::error_code rec, std::size_t) { done(rec); });
                   });
                 },
                 net::bind_cancellation_slot(late.slot(), into_ec(ok)));
  REQUIRE(run_until(io, ok));
  CHECK_FALSE(ok.ec);
  late.emit(net::cancellation_type::terminal);
  io.restart();
  io.poll();
  CHECK(pool.stats().idle == 1);
  CHECK(pool.stats().released == 2);  // the lease held at first, and this one
}

TEST_CASE("async_run: cancellations racing each step on two threads: one completion each, nothing leaked") {
  // The pool's work and the exchange's completions run on either of two threads; each operation's
  // handler and its cancellation on a strand of their own, emitted at once after the initiation,
  // so that it meets the acquire, the grant on its way, the exchange or the end. (TSan runs it.)
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  net::io_context io;
  connpool::pool_options o;
  o.max_per_endpoint = 4;
  tcp_pool pool(io, o);
  constexpr int n = 200;
  std::atomic<int> completions{0}, ok{0}, aborted{0}, other{0};
  std::vector<std::unique_ptr<net::cancellation_signal>> sigs;
  for (int i = 0; i < n; ++i) sigs.push_back(std::make_unique<net::cancellation_signal>());
  test::io_thread t1(io), t2(io);  // (stopped before the signals go: a late timer may still emit)
  auto echo_one = [](tcp_pool::lease& l, tcp_pool::run_done done) {
    auto buf = std::make_shared<std::string>("x");
    net::async_write(l.socket(), net::buffer(*buf), [&l, buf, done](connpool::error_code ec, std::size_t) {
      if (ec) return done(ec);
      net::async_read(l.socket(), net::buffer(&(*buf)[0], 1), [buf, done](connpool::error_code rec, std::size_t) { done(rec); });
    });
  };
  for (int i = 0; i < n; ++i) {
    auto strand = net::make_strand(io);
    net::cancellation_signal& sig = *sigs[static_cast<std::size_t>(i)];
    net::post(strand, [&, strand, i] {
      pool.async_run(server.endpoint(), connpool::retry::idempotent, echo_one,
                     net::bind_cancellation_slot(sig.slot(), net::bind_executor(strand, [&](connpool::error_code ec) {
                       ++(ec ? (ec == net::error::operation_aborted ? aborted : other) : ok);
                       ++completions;
                     })));
      // At once, after a turn of the strand, after 0 to 1.2 ms (a round trip here is about
      // 50 us), or never.
      if (i % 4 == 0) return sig.emit(net::cancellation_type::terminal);
      if (i % 4 == 1) return net::post(strand, [&sig] { sig.emit(net::cancellation_type::terminal); });
      if (i % 4 == 3) return;
      auto t = std::make_shared<net::steady_timer>(strand, std::chrono::microseconds(100 * (i % 13)));
      t->async_wait([&sig, t](connpool::error_code) { sig.emit(net::cancellation_type::terminal); });
    });
  }
  REQUIRE(eventually([&] { return completions.load() == n; }, 10000ms));
  CHECK(other.load() == 0);
  CHECK(ok.load() + aborted.load() == n);
  CHECK(aborted.load() >= n / 4);  // at least those cancelled at once
  CHECK(ok.load() >= n / 4);       // at least those never cancelled
  MESSAGE("completed " << ok.load() << ", cancelled " << aborted.load());
  CHECK(eventually([&] {
    const auto st = pool.stats();
    return st.leased == 0 && st.waiting == 0 && st.connecting == 0;
  }));
  const auto st = pool.stats();
  CHECK(st.open() == st.idle);
  CHECK(st.retries == 0);
  pool.close();
}

#else
TEST_CASE("async: cancellation (skipped: this Asio has no cancellation slots)") {
  MESSAGE("SKIPPED: Asio " << CONNPOOL_ASIO_VERSION / 100000 << "." << CONNPOOL_ASIO_VERSION / 100 % 1000
                           << " has no per-operation cancellation (Asio 1.19 / Boost 1.77 added it)");
}
#endif

#if defined(CONNPOOL_TEST_AWAITABLE_OPERATORS)
TEST_CASE("async: awaitable operators: an acquire raced against a timer is cancelled when the timer wins") {
  using namespace net::experimental::awaitable_operators;
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  net::io_context io;
  connpool::pool_options o;
  o.max_per_endpoint = 1;
  o.acquire_timeout = 5000ms;
  tcp_pool pool(io, o);
  auto held = pool.acquire(server.endpoint());
  bool timer_won = false;
  std::size_t waiting_after = 99;
  result done;
  net::co_spawn(
      io,
      [&]() -> net::awaitable<void> {
        net::steady_timer t(io, 50ms);
        auto which = co_await (pool.async_acquire(server.endpoint(), net::use_awaitable) ||
                               t.async_wait(net::use_awaitable));
        timer_won = which.index() == 1;
        waiting_after = pool.stats().waiting;
        done.done = true;
      },
      net::detached);
  const auto t0 = std::chrono::steady_clock::now();
  REQUIRE(run_until(io, done));
  CHECK(std::chrono::steady_clock::now() - t0 < 2s);  // not the 5 s acquire_timeout
  CHECK(timer_won);
  CHECK(waiting_after == 0);
  held.release();
  CHECK(pool.stats().idle == 1);
}

TEST_CASE("async: awaitable operators: async_run raced against a timer that fn cancels is cancelled mid-exchange") {
  using namespace net::experimental::awaitable_operators;
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  net::io_context io;
  tcp_pool pool(io, connpool::pool_options{});
  bool timer_won = false;
  result done;
  // The other branch: a timer that never expires, which the exchange cancels once its read is
  // pending (so the winner is decided mid-exchange, whatever the machine's speed).
  net::steady_timer gate(io, std::chrono::steady_clock::time_point::max());
  connpool::error_code gate_ec;
  net::co_spawn(
      io,
      [&]() -> net::awaitable<void> {
        // The echo server sends nothing unasked: the exchange's read waits until it is cancelled.
        auto which = co_await (pool.async_run(server.endpoint(), connpool::retry::idempotent,
                                              [&gate](tcp_pool::lease& l, tcp_pool::run_done d) {
                                                auto buf = std::make_shared<char>();
                                                net::async_read(l.socket(), net::buffer(buf.get(), 1),
                                                                [buf, d](connpool::error_code ec, std::size_t) { d(ec); });
                                                gate.cancel();
                                              },
                                              net::use_awaitable) ||
                               gate.async_wait(net::redirect_error(net::use_awaitable, gate_ec)));
        timer_won = which.index() == 1;
        done.done = true;
      },
      net::detached);
  REQUIRE(run_until(io, done));  // (within 3 s: without the cancellation, the read waits for ever)
  CHECK(timer_won);
  CHECK(gate_ec == net::error::operation_aborted);
  const auto s = pool.stats();
  CHECK(s.discarded == 1);
  CHECK(s.open() == 0);
}
#endif

// ------------------------------------------------------------------------------ setup steps

namespace {
/// Run `io` until `count` reaches `n`, for at most 2 s.
bool run_until_count(net::io_context& io, const int& count, int n) {
  io.restart();
  const auto end = std::chrono::steady_clock::now() + 2s;
  while (count < n && std::chrono::steady_clock::now() < end) io.run_one_for(10ms);
  return count >= n;
}

/// A setup step that says hello to the echo server and expects it back, counting its runs.
struct hello_step {
  std::shared_ptr<std::atomic<int>> runs = std::make_shared<std::atomic<int>>(0);
  void operator()(tcp_pool::socket_type& s, const tcp_pool::endpoint_type&, tcp_pool::setup_done done) const {
    ++*runs;
    auto buf = std::make_shared<std::string>("hello\n");
    net::async_write(s, net::buffer(*buf), [&s, buf, done](connpool::error_code ec, std::size_t) {
      if (ec) return done(ec);
      net::async_read(s, net::buffer(*buf), [buf, done](connpool::error_code rec, std::size_t) {
        done(rec ? rec : (*buf == "hello\n" ? connpool::error_code() : net::error::invalid_argument));
      });
    });
  }
};
}  // namespace

TEST_CASE("setup: runs on every new connection before it is handed out, sync and async; never on reuse") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  for (bool own_thread : {true, false}) {
    CAPTURE(own_thread);
    net::io_context io;
    std::optional<tcp_pool> pool;
    if (own_thread) pool.emplace(); else pool.emplace(io);
    hello_step step;
    pool->set_setup(step);
    // A synchronous acquire (on the pool built on `io`, a thread runs io meanwhile).
    std::thread runner;
    auto guard = net::make_work_guard(io);
    if (!own_thread) runner = std::thread([&] { io.run(); });
    auto l = pool->acquire(server.endpoint());
    CHECK(*step.runs == 1);
    CHECK_FALSE(l.reused());
    CHECK(test::roundtrip(l, "after setup") == "after setup");  // the stream is in step
    l.release();
    auto again = pool->acquire(server.endpoint());
    CHECK(again.reused());
    CHECK(*step.runs == 1);  // not on reuse
    again.release();
    guard.reset();
    if (runner.joinable()) {
      io.stop();
      runner.join();
    }
    // An asynchronous acquire that connects.
    auto held = pool->acquire(server.endpoint());  // the idle one
    std::promise<tcp_pool::lease> p;
    auto f = p.get_future();
    pool->async_acquire(server.endpoint(), [&p](connpool::error_code ec, tcp_pool::lease nl) {
      if (ec) p.set_exception(std::make_exception_ptr(connpool::system_error(ec)));
      else p.set_value(std::move(nl));
    });
    if (!own_thread) {
      io.restart();
      const auto end = std::chrono::steady_clock::now() + 3s;
      while (f.wait_for(0s) != std::future_status::ready && std::chrono::steady_clock::now() < end) io.run_one_for(10ms);
    }
    REQUIRE(f.wait_for(3s) == std::future_status::ready);
    auto fresh = f.get();
    CHECK(*step.runs == 2);
    CHECK(test::roundtrip(fresh, "async") == "async");
    fresh.release();
    held.release();
    const auto s = pool->stats();
    CHECK(s.created == 2);
    CHECK(s.connect_failed == 0);
  }
}

TEST_CASE("setup: a failing, hanging or throwing step fails the acquire and its connection; nothing leaks") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto o = connpool::pool_options();
  o.connect_timeout = 300ms;
  o.acquire_timeout = 2000ms;
  tcp_pool pool(o);
  auto kept = std::make_shared<std::vector<tcp_pool::setup_done>>();
  std::mutex kept_mu;
  int mode = 0;
  pool.set_setup([&](tcp_pool::socket_type&, const tcp_pool::endpoint_type&, tcp_pool::setup_done done) {
    if (mode == 0) return done(net::error::access_denied);  // fails
    if (mode == 1) {  // never calls done (keeps it, to call it late)
      std::lock_guard<std::mutex> lk(kept_mu);
      kept->push_back(std::move(done));
      return;
    }
    throw std::runtime_error("setup threw");
  });
  connpool::error_code ec;
  auto l = pool.acquire(server.endpoint(), ec);
  CHECK(ec == net::error::access_denied);
  CHECK_FALSE(l);
  mode = 1;
  const auto t0 = std::chrono::steady_clock::now();
  l = pool.acquire(server.endpoint(), ec);
  CHECK(ec == connpool::error::connect_timeout);
  CHECK(std::chrono::steady_clock::now() - t0 < 1500ms);
  {
    std::lock_guard<std::mutex> lk(kept_mu);
    REQUIRE(kept->size() == 1);
    kept->front()(connpool::error_code());  // too late: ignored
  }
  mode = 2;
  l = pool.acquire(server.endpoint(), ec);
  CHECK(ec == connpool::error::setup_failed);
  const auto s = pool.stats();
  CHECK(s.created == 0);
  CHECK(s.connect_failed == 3);
  CHECK(s.open() == 0);
  // Without a step again, connections are made as before.
  pool.set_setup(nullptr);
  l = pool.acquire(server.endpoint(), ec);
  CHECK_FALSE(ec);
  CHECK(test::roundtrip(l, "plain") == "plain");
  l.release();
  CHECK(eventually([&] { return server.counts().accepted >= 4; }));
}

TEST_CASE("setup: close() ends a step in progress with pool_closed; the async path's deadline too") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  net::io_context io;
  auto o = connpool::pool_options();
  o.connect_timeout = 300ms;
  tcp_pool pool(io, o);
  int entered = 0;
  pool.set_setup([&](tcp_pool::socket_type&, const tcp_pool::endpoint_type&, tcp_pool::setup_done) {
    ++entered;  // and never done
  });
  result timed;
  const auto t0 = std::chrono::steady_clock::now();
  pool.async_acquire(server.endpoint(), into(timed));
  REQUIRE(run_until(io, timed));
  CHECK(timed.ec == connpool::error::connect_timeout);
  CHECK(std::chrono::steady_clock::now() - t0 < 1500ms);
  CHECK(entered == 1);
  result closed;
  pool.async_acquire(server.endpoint(), into(closed));
  REQUIRE(run_until_count(io, entered, 2));  // connected, in its setup step
  CHECK_FALSE(closed.done);
  pool.close();
  REQUIRE(run_until(io, closed));
  CHECK(closed.ec == connpool::error::pool_closed);
  CHECK(pool.stats().open() == 0);
  CHECK(pool.stats().created == 0);
}

TEST_CASE("setup: on the async path a failing or throwing step fails the acquire; a cancelled acquire ends its step") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  net::io_context io;
  auto o = connpool::pool_options();
  o.connect_timeout = 2000ms;
  tcp_pool pool(io, o);
  int mode = 0, entered = 0;
  pool.set_setup([&](tcp_pool::socket_type&, const tcp_pool::endpoint_type&, tcp_pool::setup_done done) {
    ++entered;
    if (mode == 0) return done(net::error::access_denied);
    if (mode == 1) throw std::runtime_error("setup threw");
    // mode 2: never done
  });
  result failed;
  pool.async_acquire(server.endpoint(), into(failed));
  REQUIRE(run_until(io, failed));
  CHECK(failed.ec == net::error::access_denied);
  mode = 1;
  result threw;
  pool.async_acquire(server.endpoint(), into(threw));
  REQUIRE(run_until(io, threw));
  CHECK(threw.ec == connpool::error::setup_failed);
  auto s = pool.stats();
  CHECK(s.connect_failed == 2);
  CHECK(s.created == 0);
#if defined(CONNPOOL_HAS_CANCELLATION_SLOTS)
  mode = 2;
  net::cancellation_signal sig;
  result cancelled;
  pool.async_acquire(server.endpoint(), net::bind_cancellation_slot(sig.slot(), into(cancelled)));
  REQUIRE(run_until_count(io, entered, 3));  // in its step
  const auto t0 = std::chrono::steady_clock::now();
  sig.emit(net::cancellation_type::terminal);
  REQUIRE(run_until(io, cancelled));
  CHECK(std::chrono::steady_clock::now() - t0 < 1s);  // not the 2 s connect_timeout
  CHECK(cancelled.ec == net::error::operation_aborted);
  s = pool.stats();
  CHECK(s.connect_failed == 2);  // a cancellation is not a failure
  CHECK(s.open() == 0);
#endif
}

TEST_CASE("setup: a synchronous acquire: close() ends its step; on the pool's own thread it fails at once") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto o = connpool::pool_options();
  o.connect_timeout = 3000ms;
  o.acquire_timeout = 3000ms;
  std::optional<tcp_pool> pool(std::in_place, o);
  std::atomic<int> entered{0};
  pool->set_setup([&](tcp_pool::socket_type&, const tcp_pool::endpoint_type&, tcp_pool::setup_done) {
    ++entered;  // never done
  });
  auto closer = std::async(std::launch::async, [&] {
    const auto end = std::chrono::steady_clock::now() + 2s;
    while (entered == 0 && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(1ms);
    pool->close();
  });
  connpool::error_code ec;
  const auto t0 = std::chrono::steady_clock::now();
  auto l = pool->acquire(server.endpoint(), ec);
  closer.get();
  CHECK(entered == 1);
  CHECK(ec == connpool::error::pool_closed);
  CHECK(std::chrono::steady_clock::now() - t0 < 2500ms);  // not the 3 s deadline
  CHECK(pool->stats().open() == 0);

  // A synchronous acquire from a completion handler on the default pool's own thread.
  tcp_pool own;
  own.set_setup([](tcp_pool::socket_type&, const tcp_pool::endpoint_type&, tcp_pool::setup_done done) { done({}); });
  std::promise<connpool::error_code> inner;
  auto held = own.acquire(server.endpoint());  // a connection made with the step, from this thread: fine
  own.async_acquire(server.endpoint(), [&](connpool::error_code, tcp_pool::lease l1) {
    connpool::error_code iec;
    auto l2 = own.acquire(server.endpoint(), iec);  // needs a new connection, on the pool's thread
    inner.set_value(iec);
    l1.release();
  });
  auto f = inner.get_future();
  REQUIRE(f.wait_for(3s) == std::future_status::ready);
  CHECK(f.get() == net::error::would_block);
  held.release();
}

// ------------------------------------------------------------------------------ health checks

namespace {
/// A health check the test steers: says hello and expects it back (mode ok), fails at once (fail),
/// throws (throw_), or never calls done (hang). Counts its runs.
struct steered_check {
  enum mode_t { ok, fail, throw_, hang };
  std::shared_ptr<std::atomic<int>> runs = std::make_shared<std::atomic<int>>(0);
  std::shared_ptr<std::atomic<int>> mode = std::make_shared<std::atomic<int>>(ok);
  void operator()(tcp_pool::socket_type& s, const tcp_pool::endpoint_type& ep, tcp_pool::setup_done done) const {
    ++*runs;
    switch (mode->load()) {
      case fail: return done(net::error::connection_refused);
      case throw_: throw std::runtime_error("check threw");
      case hang: return;
      default: hello_step()(s, ep, std::move(done));
    }
  }
};
}  // namespace

TEST_CASE("health: a connection idle past validate_after_idle is checked before hand-out, sync and async; one used since is not") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  for (bool own_thread : {true, false}) {
    CAPTURE(own_thread);
    net::io_context io;
    auto o = connpool::pool_options();
    o.validate_after_idle = 0ms;  // every hand-out from idle
    std::optional<tcp_pool> pool;
    if (own_thread) pool.emplace(o); else pool.emplace(io, o);
    steered_check check;
    pool->set_health_check(check);
    std::thread runner;
    auto guard = net::make_work_guard(io);
    if (!own_thread) runner = std::thread([&] { io.run(); });
    auto l = pool->acquire(server.endpoint());
    CHECK(*check.runs == 0);  // a new connection: no check
    l.release();
    l = pool->acquire(server.endpoint());
    CHECK(l.reused());
    CHECK(*check.runs == 1);
    CHECK(test::roundtrip(l, "after check") == "after check");  // the stream is in step
    l.release();
    // Asynchronously.
    std::promise<tcp_pool::lease> p;
    auto f = p.get_future();
    pool->async_acquire(server.endpoint(), [&p](connpool::error_code ec, tcp_pool::lease nl) {
      if (ec) p.set_exception(std::make_exception_ptr(connpool::system_error(ec)));
      else p.set_value(std::move(nl));
    });
    REQUIRE(f.wait_for(3s) == std::future_status::ready);
    auto a = f.get();
    CHECK(a.reused());
    CHECK(*check.runs == 2);
    CHECK(test::roundtrip(a, "async") == "async");
    a.release();
    guard.reset();
    if (runner.joinable()) {
      io.stop();
      runner.join();
    }
    auto s = pool->stats();
    CHECK(s.created == 1);
    CHECK(s.reused == 2);
    CHECK(s.validation_failed == 0);
  }
  // With the default validate_after_idle (1 s), a connection released just now is not checked.
  tcp_pool pool;
  steered_check check;
  pool.set_health_check(check);
  pool.acquire(server.endpoint()).release();
  auto l = pool.acquire(server.endpoint());
  CHECK(l.reused());
  CHECK(*check.runs == 0);
  l.release();
}

TEST_CASE("health: a failing, throwing or hanging check closes the connection; the acquire takes the next one or connects") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto o = connpool::pool_options();
  o.validate_after_idle = 0ms;
  o.validate_timeout = 200ms;
  tcp_pool pool(o);
  steered_check check;
  pool.set_health_check(check);
  for (int mode : {steered_check::fail, steered_check::throw_, steered_check::hang}) {
    CAPTURE(mode);
    *check.mode = steered_check::ok;
    auto a = pool.acquire(server.endpoint());
    auto b = pool.acquire(server.endpoint());
    a.release();
    b.release();
    const auto before = pool.stats();
    REQUIRE(before.idle == 2);
    *check.mode = mode;
    const int runs = *check.runs;
    const auto t0 = std::chrono::steady_clock::now();
    auto l = pool.acquire(server.endpoint());  // both idle ones fail: a new connection
    CHECK(std::chrono::steady_clock::now() - t0 < 1500ms);
    CHECK_FALSE(l.reused());
    CHECK(*check.runs == runs + 2);
    CHECK(test::roundtrip(l, "fresh") == "fresh");
    const auto s = pool.stats();
    CHECK(s.validation_failed == before.validation_failed + 2);
    CHECK(s.reused == before.reused);  // failed checks are not reuses
    CHECK(s.created == before.created + 1);
    CHECK(s.idle == 0);
    l.discard();
  }
  CHECK(pool.stats().open() == 0);
  // The server saw every failed connection closed (by RST).
  CHECK(eventually([&] { return server.counts().live == 0; }));
}

TEST_CASE("health: the async path: a failed check moves on; the acquire's deadline and cancellation end a check") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  net::io_context io;
  auto o = connpool::pool_options();
  o.validate_after_idle = 0ms;
  o.validate_timeout = 5000ms;
  o.acquire_timeout = 300ms;
  tcp_pool pool(io, o);
  steered_check check;
  pool.set_health_check(check);
  {
    result r1, r2;
    pool.async_acquire(server.endpoint(), into(r1));
    pool.async_acquire(server.endpoint(), into(r2));
    REQUIRE(run_until(io, r1));
    REQUIRE(run_until(io, r2));
    REQUIRE(r1.lease);
    REQUIRE(r2.lease);
    r1.lease.release();
    r2.lease.release();
  }
  *check.mode = steered_check::fail;
  result failed;
  pool.async_acquire(server.endpoint(), into(failed));
  REQUIRE(run_until(io, failed));
  REQUIRE_FALSE(failed.ec);
  CHECK_FALSE(failed.lease.reused());
  CHECK(pool.stats().validation_failed == 2);
  failed.lease.release();
  // A hanging check is cut by the acquire's deadline (300 ms), not validate_timeout (5 s).
  *check.mode = steered_check::hang;
  result cut;
  const auto t0 = std::chrono::steady_clock::now();
  pool.async_acquire(server.endpoint(), into(cut));
  REQUIRE(run_until(io, cut));
  CHECK(std::chrono::steady_clock::now() - t0 < 2s);
  CHECK(cut.ec == connpool::error::acquire_timeout);
  CHECK(pool.stats().validation_failed == 3);
  CHECK(pool.stats().open() == 0);
#if defined(CONNPOOL_HAS_CANCELLATION_SLOTS)
  *check.mode = steered_check::ok;
  {
    result r;
    pool.async_acquire(server.endpoint(), into(r));
    REQUIRE(run_until(io, r));
    REQUIRE(r.lease);
    r.lease.release();
  }
  *check.mode = steered_check::hang;
  const int runs = *check.runs;
  net::cancellation_signal sig;
  result cancelled;
  pool.async_acquire(server.endpoint(), net::bind_cancellation_slot(sig.slot(), into(cancelled)));
  io.restart();
  for (const auto end = std::chrono::steady_clock::now() + 2s; *check.runs == runs && std::chrono::steady_clock::now() < end;)
    io.run_one_for(10ms);
  REQUIRE(*check.runs == runs + 1);  // in its check
  sig.emit(net::cancellation_type::terminal);
  REQUIRE(run_until(io, cancelled));
  CHECK(cancelled.ec == net::error::operation_aborted);
  const auto s = pool.stats();
  CHECK(s.validation_failed == 3);  // cancelled, not failed: closed as discarded
  CHECK(s.open() == 0);
#endif
}

TEST_CASE("health: try_acquire leaves a connection that needs its check idle; close() ends a check in progress") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto o = connpool::pool_options();
  o.validate_after_idle = 0ms;
  o.validate_timeout = 3000ms;
  o.acquire_timeout = 3000ms;
  tcp_pool pool(o);
  steered_check check;
  pool.set_health_check(check);
  pool.acquire(server.endpoint()).release();
  CHECK_FALSE(pool.try_acquire(server.endpoint()));
  CHECK(pool.stats().idle == 1);
  CHECK(pool.stats().reused == 0);
  CHECK(*check.runs == 0);
  *check.mode = steered_check::hang;
  auto closer = std::async(std::launch::async, [&] {
    const auto end = std::chrono::steady_clock::now() + 2s;
    while (*check.runs == 0 && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(1ms);
    pool.close();
  });
  connpool::error_code ec;
  const auto t0 = std::chrono::steady_clock::now();
  auto l = pool.acquire(server.endpoint(), ec);
  closer.get();
  CHECK(*check.runs == 1);
  CHECK(ec == connpool::error::pool_closed);
  CHECK(std::chrono::steady_clock::now() - t0 < 2500ms);
  CHECK(pool.stats().open() == 0);
  CHECK(pool.stats().pool_closed == 1);
}

TEST_CASE("health: ping_interval checks idle connections in the background, keeps them idle, closes those that fail") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  for (bool own_thread : {true, false}) {
    CAPTURE(own_thread);
    net::io_context io;
    auto o = connpool::pool_options();
    o.ping_interval = 50ms;
    o.validate_after_idle = 1h;  // only the background checks
    std::optional<tcp_pool> pool;
    if (own_thread) pool.emplace(o); else pool.emplace(io, o);
    steered_check check;
    pool->set_health_check(check);
    std::thread runner;
    auto guard = net::make_work_guard(io);
    if (!own_thread) runner = std::thread([&] { io.run(); });
    auto a = pool->acquire(server.endpoint());
    auto b = pool->acquire(server.endpoint());
    a.release();
    b.release();
    // Each idle connection is checked again and again, and stays idle.
    CHECK(eventually([&] { return *check.runs >= 6; }));
    auto s = pool->stats();
    CHECK(s.idle + s.leased == 2);
    CHECK(s.validation_failed == 0);
    // Checks run while acquires take the connections: the stream stays in step.
    for (int i = 0; i < 20; ++i) {
      auto l = pool->acquire(server.endpoint());
      CHECK(test::roundtrip(l, "between pings") == "between pings");
      l.release();
      std::this_thread::sleep_for(5ms);  // pacing, so that checks fall between the leases
    }
    // Checks start failing: every connection closes, without an acquire.
    *check.mode = steered_check::fail;
    CHECK(eventually([&] { return pool->stats().open() == 0; }));
    s = pool->stats();
    CHECK(s.validation_failed == s.created);
    CHECK(s.created >= 2);
    CHECK(eventually([&] { return server.counts().live == 0; }));
    pool->close();
    guard.reset();
    if (runner.joinable()) {
      io.stop();
      runner.join();
    }
  }
}

TEST_CASE("health: a hanging background check is cut by validate_timeout; close() ends one in progress") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto o = connpool::pool_options();
  o.ping_interval = 20ms;
  o.validate_timeout = 100ms;
  o.validate_after_idle = 1h;
  tcp_pool pool(o);
  steered_check check;
  *check.mode = steered_check::hang;
  pool.set_health_check(check);
  pool.acquire(server.endpoint()).release();
  CHECK(eventually([&] { return pool.stats().validation_failed == 1; }));
  CHECK(pool.stats().open() == 0);
  // One in progress when the pool closes: its connection closes too.
  pool.acquire(server.endpoint()).release();
  CHECK(eventually([&] { return *check.runs == 2; }));
  pool.close();
  CHECK(eventually([&] { return server.counts().live == 0; }));
  CHECK(pool.stats().open() == 0);
}

TEST_CASE("health: a synchronous acquire on the default pool's own thread that needs a check fails at once") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto o = connpool::pool_options();
  o.validate_after_idle = 0ms;
  tcp_pool own(o);
  own.set_health_check(steered_check());
  own.acquire(server.endpoint()).release();
  auto held = own.acquire(server.endpoint());  // checked from this thread: fine
  auto second = own.acquire(server.endpoint());
  second.release();
  std::promise<connpool::error_code> inner;
  own.async_acquire(server.endpoint(), [&](connpool::error_code, tcp_pool::lease l1) {
    l1.release();
    connpool::error_code iec;
    auto l2 = own.acquire(server.endpoint(), iec);  // needs its check, on the pool's thread
    inner.set_value(iec);
  });
  auto f = inner.get_future();
  REQUIRE(f.wait_for(3s) == std::future_status::ready);
  CHECK(f.get() == net::error::would_block);
  CHECK(own.stats().idle == 1);  // left for an acquire that can check it
  held.release();
}

TEST_CASE("health: a connection retired while its background check runs closes at once; a sync acquire on the pool's thread does not wait for checks") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto o = connpool::pool_options();
  o.ping_interval = 20ms;
  o.validate_timeout = 10s;
  o.validate_after_idle = 1h;
  o.idle_timeout = 300ms;
  o.max_per_endpoint = 1;
  tcp_pool pool(o);
  steered_check check;
  *check.mode = steered_check::hang;
  pool.set_health_check(check);
  pool.acquire(server.endpoint()).release();
  REQUIRE(eventually([&] { return *check.runs == 1; }));  // its check hangs
  // On the pool's own thread, a synchronous acquire would wait for a connection whose check needs
  // that thread: it fails at once instead.
  std::promise<connpool::error_code> inner;
  net::post(pool.get_executor(), [&] {
    connpool::error_code iec;
    auto l = pool.acquire(server.endpoint(), iec);
    inner.set_value(iec);
  });
  auto f = inner.get_future();
  REQUIRE(f.wait_for(3s) == std::future_status::ready);
  CHECK(f.get() == net::error::would_block);
  // idle_timeout retires it mid-check: the socket closes then, not when the 10 s check would end.
  CHECK(eventually([&] { return pool.stats().idle_timeout == 1; }));
  CHECK(eventually([&] { return server.counts().live == 0; }, 2000ms));
  CHECK(pool.stats().open() == 0);
  CHECK(pool.stats().validation_failed == 0);
}
