// The listener (#14, part 1): each event, with its fields, from real sockets on loopback.
#include <doctest/doctest.h>

#include <mutex>
#include <string>
#include <vector>

#include "servers/echo_server.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using connpool::acquire_source;
using connpool::close_reason;
using connpool::event_kind;
using connpool::tcp_pool;
using test::eventually;

namespace {

/// What the listener saw, copied (the event's pointers are valid during the call only).
struct seen_event {
  event_kind kind;
  bool has_endpoint = false;
  net::ip::tcp::endpoint endpoint;
  std::string backend;
  connpool::error_code error;
  std::chrono::nanoseconds duration;
  acquire_source source;
  bool waited;
  close_reason reason;
  std::uint64_t uses;
};

struct recorder {
  std::mutex m;
  std::vector<seen_event> events;
  tcp_pool::listener listener() {
    return [this](const tcp_pool::event& e) {
      seen_event s{e.kind, e.endpoint != nullptr, e.endpoint ? *e.endpoint : net::ip::tcp::endpoint{},
                   e.backend ? e.backend->name : std::string(), e.error, e.duration, e.source, e.waited,
                   e.reason, e.uses};
      std::lock_guard<std::mutex> lk(m);
      events.push_back(s);
    };
  }
  std::vector<seen_event> take() {
    std::lock_guard<std::mutex> lk(m);
    return std::exchange(events, {});
  }
  std::vector<event_kind> kinds() {
    std::vector<event_kind> k;
    for (auto& e : take()) k.push_back(e.kind);
    return k;
  }
  std::size_t count(event_kind k) {
    std::lock_guard<std::mutex> lk(m);
    std::size_t n = 0;
    for (auto& e : events)
      if (e.kind == k) ++n;
    return n;
  }
};

}  // namespace

TEST_CASE("events: connect, acquire, release, discard and close, each with its fields") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  recorder r;  // first: the pools' last events (their closes) come from their destructors
  tcp_pool pool;
  pool.set_listener(r.listener());

  auto l = pool.acquire(server.endpoint());
  auto ev = r.take();
  REQUIRE(ev.size() == 3);
  CHECK(ev[0].kind == event_kind::connect_started);
  CHECK(ev[0].endpoint == server.endpoint());
  CHECK(ev[1].kind == event_kind::connect_succeeded);
  CHECK(ev[1].endpoint == server.endpoint());
  CHECK(ev[1].duration > 0ns);
  CHECK_FALSE(ev[1].error);
  CHECK(ev[2].kind == event_kind::acquired);
  CHECK(ev[2].source == acquire_source::connect);
  CHECK_FALSE(ev[2].waited);
  CHECK(ev[2].duration >= ev[1].duration);

  CHECK(test::roundtrip(l, "x") == "x");
  l.release();
  ev = r.take();
  REQUIRE(ev.size() == 1);
  CHECK(ev[0].kind == event_kind::released);
  CHECK(ev[0].duration > 0ns);

  l = pool.acquire(server.endpoint());
  ev = r.take();
  REQUIRE(ev.size() == 1);
  CHECK(ev[0].kind == event_kind::acquired);
  CHECK(ev[0].source == acquire_source::idle);

  l.discard();
  ev = r.take();
  REQUIRE(ev.size() == 2);
  CHECK(ev[0].kind == event_kind::discarded);
  CHECK(ev[1].kind == event_kind::closed);
  CHECK(ev[1].reason == close_reason::discarded);
  CHECK(ev[1].uses == 2);
  CHECK(ev[1].duration > 0ns);
  CHECK(ev[1].endpoint == server.endpoint());
  CHECK(std::string(connpool::to_string(ev[1].reason)) == "discarded");

  // A refused connect: started, failed with the error, and the acquire's failure.
  const auto refused = server.endpoint();
  connpool::pool_options o;
  o.acquire_timeout = 2000ms;
  tcp_pool other(o);
  other.set_listener(r.listener());
  {
    net::io_context io;
    net::ip::tcp::acceptor a(io, test::loopback());
    const auto gone = a.local_endpoint();
    a.close();
    connpool::error_code ec;
    CHECK_FALSE(other.acquire(gone, ec));
    ev = r.take();
    REQUIRE(ev.size() == 3);
    CHECK(ev[0].kind == event_kind::connect_started);
    CHECK(ev[1].kind == event_kind::connect_failed);
    CHECK(ev[1].error == net::error::connection_refused);
    CHECK(ev[2].kind == event_kind::acquire_failed);
    CHECK(ev[2].error == net::error::connection_refused);
    CHECK(ev[2].endpoint == gone);
  }
  (void)refused;

  // A lease begun while no listener was set reports a zero lease time, not a stale one.
  pool.set_listener(nullptr);
  l = pool.acquire(server.endpoint());
  pool.set_listener(r.listener());
  l.release();
  ev = r.take();
  REQUIRE(ev.size() == 1);
  CHECK(ev[0].kind == event_kind::released);
  CHECK(ev[0].duration == 0ns);
}

TEST_CASE("events: a connect that close() stops ends with connect_failed (pool_closed)") {
  test::fd_guard fds;
  test::full_backlog backlog;  // connects stay in SYN_SENT
  net::io_context io;
  recorder r;
  tcp_pool pool(io);
  pool.set_listener(r.listener());
  connpool::error_code got;
  bool done = false;
  pool.async_acquire(backlog.acc.local_endpoint(), [&](connpool::error_code ec, tcp_pool::lease) {
    got = ec;
    done = true;
  });
  CHECK(eventually([&] {
    io.poll();
    return r.count(event_kind::connect_started) == 1;
  }));
  pool.close();
  CHECK(eventually([&] {
    io.poll();
    return done;
  }));
  CHECK(got == connpool::error::pool_closed);
  auto ev = r.take();
  REQUIRE(ev.size() == 3);
  CHECK(ev[0].kind == event_kind::connect_started);
  CHECK(ev[1].kind == event_kind::connect_failed);
  CHECK(ev[1].error == connpool::error::pool_closed);
  CHECK(ev[1].endpoint == backlog.acc.local_endpoint());
  CHECK(ev[2].kind == event_kind::acquire_failed);
  CHECK(ev[2].error == connpool::error::pool_closed);
}

TEST_CASE("events: a queued acquire is reported as waited; too_many_waiters as a failure; the peer's close with its reason") {
  test::fd_guard fds;
  net::io_context io;
  net::ip::tcp::acceptor acceptor(io, test::loopback());
  const auto ep = acceptor.local_endpoint();
  connpool::pool_options o;
  o.max_per_endpoint = 1;
  o.max_waiting_per_endpoint = 1;
  o.acquire_timeout = 3000ms;
  recorder r;
  tcp_pool pool(io, o);
  pool.set_listener(r.listener());

  tcp_pool::lease held;
  pool.async_acquire(ep, [&](connpool::error_code ec, tcp_pool::lease l) {
    REQUIRE(!ec);
    held = std::move(l);
  });
  CHECK(eventually([&] {
    io.poll();
    return static_cast<bool>(held);
  }));
  net::ip::tcp::socket peer(io);
  acceptor.accept(peer);
  r.take();

  bool second = false;
  pool.async_acquire(ep, [&](connpool::error_code ec, tcp_pool::lease l) {
    CHECK(!ec);
    second = true;
    l.release();
  });
  connpool::error_code third_ec;
  pool.async_acquire(ep, [&](connpool::error_code ec, tcp_pool::lease) { third_ec = ec; });
  CHECK(eventually([&] {
    io.poll();
    return static_cast<bool>(third_ec);
  }));
  CHECK(third_ec == connpool::error::too_many_waiters);
  auto ev = r.take();
  REQUIRE(ev.size() == 1);
  CHECK(ev[0].kind == event_kind::acquire_failed);
  CHECK(ev[0].error == connpool::error::too_many_waiters);
  CHECK(ev[0].endpoint == ep);

  held.release();
  CHECK(eventually([&] {
    io.poll();
    return second;
  }));
  ev = r.take();
  REQUIRE(ev.size() == 3);
  CHECK(ev[0].kind == event_kind::released);
  CHECK(ev[1].kind == event_kind::acquired);
  CHECK(ev[1].waited);
  CHECK(ev[1].source == acquire_source::idle);
  CHECK(ev[2].kind == event_kind::released);

  // The peer closes the idle connection: the idle watch closes it, reported as peer_closed.
  peer.close();
  CHECK(eventually([&] {
    io.poll();
    return r.count(event_kind::closed) == 1;
  }));
  ev = r.take();
  REQUIRE(ev.size() == 1);
  CHECK(ev[0].reason == close_reason::peer_closed);
  CHECK(ev[0].uses == 2);

  // Removed: nothing more.
  pool.set_listener(nullptr);
  auto again = pool.acquire(ep);
  again.discard();
  io.poll();
  CHECK(r.take().empty());
}

TEST_CASE("events: a named backend's events name it") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  recorder r;  // first: the pools' last events (their closes) come from their destructors
  tcp_pool pool;
  pool.set_listener(r.listener());
  const connpool::host h("127.0.0.1", server.endpoint().port());
  auto l = pool.acquire(h);
  l.release();
  auto ev = r.take();
  REQUIRE(ev.size() == 4);
  CHECK(ev[0].kind == event_kind::connect_started);
  CHECK(ev[0].backend == "127.0.0.1");
  CHECK_FALSE(ev[0].has_endpoint);  // no address yet
  CHECK(ev[1].kind == event_kind::connect_succeeded);
  CHECK(ev[1].endpoint == server.endpoint());
  CHECK(ev[2].kind == event_kind::acquired);
  CHECK(ev[2].backend == "127.0.0.1");
  CHECK(ev[3].kind == event_kind::released);
  CHECK(ev[3].backend == "127.0.0.1");
}
