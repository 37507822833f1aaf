// Behaviour of basic_pool on real loopback sockets: reuse, checks, watch, limits, connect,
// retiring, leases, shutdown, errors.
#include <doctest/doctest.h>

#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <signal.h>
#include <spawn.h>

#include <atomic>
#include <condition_variable>
#include <future>
#include <string>
#include <set>
#include <fstream>
#include <filesystem>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "servers/echo_server.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using connpool::tcp_pool;
using connpool::diag::tcp_state;
using test::eventually;

namespace {

connpool::pool_options quick() {
  connpool::pool_options o;
  o.acquire_timeout = 2000ms;
  o.connect_timeout = 2000ms;
  return o;
}

unsigned short local_port(tcp_pool::lease& l) { return l.socket().local_endpoint().port(); }

}  // namespace

TEST_CASE("errors: category, messages, connpool::error_code support") {
  connpool::error_code ec = connpool::error::acquire_timeout;
  CHECK(std::string(ec.category().name()) == "connpool");
  CHECK(ec.message() == "timed out waiting to acquire a connection");
  CHECK(ec == connpool::error::acquire_timeout);
  CHECK(ec != connpool::error::connect_timeout);
  CHECK(connpool::make_error_code(connpool::error::pool_closed).message() == "connection pool is closed");
  CHECK(connpool::error_category().message(999) == "unknown connpool error");
}

TEST_CASE("options: bad values are rejected with invalid_options") {
  connpool::pool_options o;
  o.idle_timeout = -1ms;
  try {
    tcp_pool pool(o);
    FAIL("constructor accepted a negative idle_timeout");
  } catch (const connpool::system_error& e) {
    CHECK(e.code() == connpool::error::invalid_options);
  }
}

TEST_CASE("reuse: the most recently released idle connection is handed out first") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  tcp_pool pool(quick());
  auto a = pool.acquire(server.endpoint());
  auto b = pool.acquire(server.endpoint());
  CHECK_FALSE(a.reused());
  CHECK(test::roundtrip(a, "ping") == "ping");
  const auto pa = local_port(a), pb = local_port(b);
  a.release();
  b.release();
  CHECK_FALSE(a);
  CHECK(pool.stats().idle == 2);
  auto c = pool.acquire(server.endpoint());
  CHECK(c.reused());
  CHECK(local_port(c) == pb);
  auto d = pool.acquire(server.endpoint());
  CHECK(local_port(d) == pa);
  CHECK(test::roundtrip(d, "again") == "again");
  c.release();
  d.release();
  auto s = pool.stats();
  CHECK(s.created == 2);
  CHECK(s.reused == 2);
  CHECK(s.released == 4);
  CHECK(server.counts().accepted == 2);
}

TEST_CASE("affinity: a thread gets back the connection it released last; others get the most recent") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  tcp_pool pool(quick());
  auto mine = pool.acquire(server.endpoint());
  tcp_pool::lease theirs;
  std::thread([&] { theirs = pool.acquire(server.endpoint()); }).join();
  const auto pm = local_port(mine), pt = local_port(theirs);
  mine.release();                                   // this thread's last
  std::thread([&] { theirs.release(); }).join();  // the most recently released
  auto again = pool.acquire(server.endpoint());
  CHECK(local_port(again) == pm);
  CHECK(again.reused());
  tcp_pool::lease other;
  std::thread([&] { other = pool.acquire(server.endpoint()); }).join();
  CHECK(local_port(other) == pt);
  CHECK(test::roundtrip(again, "mine") == "mine");
  // Taken and released by another thread since: no longer this thread's, so the most recent.
  again.release();  // this thread's last: pm
  std::thread([&] {
    auto l = pool.acquire(server.endpoint());  // a new thread has no last: the most recent, pm
    CHECK(local_port(l) == pm);
    other.release();  // pt is the most recent now
    l.release();      // and then pm again, by this thread
  }).join();
  auto third = pool.acquire(server.endpoint());
  CHECK(local_port(third) == pm);  // most recent (released by the other thread), not by affinity
  third.release();
  CHECK(pool.stats().created == 2);
}

TEST_CASE("affinity: a pool recreated at the same address never takes the old pool's connection for its own") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  std::optional<tcp_pool> pool;
  for (int round = 0; round < 3; ++round) {
    pool.emplace(quick());  // the same object address every round
    auto a = pool->acquire(server.endpoint());
    auto b = pool->acquire(server.endpoint());
    b.release();
    a.release();  // this thread's last, in the arena the pool frees when destroyed
    auto c = pool->acquire(server.endpoint());
    CHECK(c.reused());
    CHECK(test::roundtrip(c, "x") == "x");
    c.release();
    pool.reset();  // ASan would report a read of the freed arena through the stale hint
  }
}

// A pool on an io_context nobody runs has no idle watch and no timers: only the probe at hand-out
// can catch a dead idle connection. That isolates the probe.
TEST_CASE("probe before hand-out: EOF, reset and stray bytes are never handed out") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  net::io_context unrun;
  tcp_pool pool(unrun, quick());
  auto ep = server.endpoint();

  SUBCASE("peer closed") {
    pool.acquire(ep).release();
    REQUIRE(server.wait_accepted(1));
    server.close_all();
    REQUIRE(eventually([&] { return test::client_sockets(ep, tcp_state::close_wait) == 1; }));
    auto l = pool.acquire(ep);
    CHECK_FALSE(l.reused());
    CHECK(test::roundtrip(l, "x") == "x");
    CHECK(pool.stats().peer_closed == 1);
    l.release();
  }
  SUBCASE("peer reset") {
    pool.acquire(ep).release();
    REQUIRE(server.wait_accepted(1));
    connpool::error_code ec;
    const auto closed_before = connpool::diag::census(ec)[tcp_state::close];
    server.reset_all();
    // A reset socket has no peer any more, so it cannot be filtered by endpoint.
    REQUIRE(eventually([&] { return connpool::diag::census(ec)[tcp_state::close] == closed_before + 1; }));
    auto l = pool.acquire(ep);
    CHECK_FALSE(l.reused());
    CHECK(pool.stats().peer_reset == 1);
    l.release();
  }
  SUBCASE("stray bytes") {
    pool.acquire(ep).release();
    REQUIRE(server.wait_accepted(1));
    server.send_all("junk");
    auto l = pool.acquire(ep);
    // The bytes may still be in flight on a slow machine; then the first probe passes. Retry.
    for (int i = 0; i < 200 && l.reused() && pool.stats().unexpected_data == 0; ++i) {
      l.release();
      std::this_thread::sleep_for(1ms);
      l = pool.acquire(ep);
    }
    CHECK_FALSE(l.reused());
    CHECK(pool.stats().unexpected_data == 1);
    l.release();
  }
  SUBCASE("all idle dead: each one tried, then a new connection") {
    std::vector<tcp_pool::lease> ls;
    for (int i = 0; i < 3; ++i) ls.push_back(pool.acquire(ep));
    for (auto& l : ls) l.release();
    REQUIRE(server.wait_accepted(3));
    server.close_all();
    REQUIRE(eventually([&] { return test::client_sockets(ep, tcp_state::close_wait) == 3; }));
    auto l = pool.acquire(ep);
    CHECK_FALSE(l.reused());
    auto s = pool.stats();
    CHECK(s.peer_closed == 3);
    CHECK(s.idle == 0);
    CHECK(s.leased == 1);
    CHECK(test::client_sockets(ep, tcp_state::close_wait) == 0);
    l.release();
  }
  CHECK(test::client_sockets(ep, tcp_state::close_wait) == 0);
}

// release() makes no syscall where the idle watch runs: a FIN or RST that came during the lease
// was recorded by the watch (or the watch finds the connection idle when it gets to the event), and
// unread bytes are caught by the probe before the next hand-out.
TEST_CASE("release: a FIN or RST that came during the lease is not kept; unread bytes never reach a lease") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  tcp_pool pool(quick());
  auto ep = server.endpoint();

  SUBCASE("FIN while leased") {
    auto l = pool.acquire(ep);
    REQUIRE(server.wait_accepted(1));
    server.close_all();
    REQUIRE(eventually([&] { return test::client_sockets(ep, tcp_state::close_wait) == 1; }));
    l.release();
    CHECK(eventually([&] { return pool.stats().idle == 0 && pool.stats().peer_closed == 1; }));
  }
  SUBCASE("RST while leased") {
    auto l = pool.acquire(ep);
    REQUIRE(server.wait_accepted(1));
    connpool::error_code ec;
    const auto closed_before = connpool::diag::census(ec)[tcp_state::close];
    server.reset_all();
    // The reset has arrived when the socket is in CLOSE (it has no peer any more to filter by).
    REQUIRE(eventually([&] { return connpool::diag::census(ec)[tcp_state::close] == closed_before + 1; }));
    l.release();
    CHECK(eventually([&] { return pool.stats().idle == 0 && pool.stats().peer_reset == 1; }));
    CHECK(pool.stats().peer_closed == 0);
  }
  SUBCASE("unread response: kept without a syscall, then caught by the probe before hand-out") {
    auto l = pool.acquire(ep);
    net::write(l.socket(), net::buffer("hello", 5));
    char c;
    l.socket().receive(net::buffer(&c, 1), net::socket_base::message_peek);  // response arrived, unread
    l.release();
    CHECK(pool.stats().idle == 1);
    auto next = pool.acquire(ep);
    CHECK_FALSE(next.reused());
    CHECK(pool.stats().unexpected_data == 1);
    CHECK(test::roundtrip(next, "clean") == "clean");
    next.release();
  }
  CHECK(eventually([&] { return test::client_sockets(ep, tcp_state::close_wait) == 0; }));
}

TEST_CASE("idle watch: FIN or RST on an idle connection closes it without any acquire") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  tcp_pool pool(quick());
  auto ep = server.endpoint();
  std::vector<tcp_pool::lease> ls;
  for (int i = 0; i < 5; ++i) ls.push_back(pool.acquire(ep));
  for (auto& l : ls) l.release();
  REQUIRE(pool.stats().idle == 5);
  REQUIRE(server.wait_accepted(5));

  SUBCASE("FIN") {
    server.close_all();
    CHECK(eventually([&] { return pool.stats().idle == 0; }));
    CHECK(pool.stats().peer_closed == 5);
  }
  SUBCASE("RST") {
    server.reset_all();
    CHECK(eventually([&] { return pool.stats().idle == 0; }));
    CHECK(pool.stats().peer_reset == 5);
  }
  CHECK(eventually([&] { return test::client_sockets(ep, tcp_state::close_wait) == 0; }));  // closed just after idle drops
  CHECK(test::client_sockets(ep, tcp_state::established) == 0);
  test::check_fresh_roundtrip(pool, ep);
}

TEST_CASE("limits: acquire waits at max_per_endpoint and gets the released connection") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto o = quick();
  o.max_per_endpoint = 1;
  tcp_pool pool(o);
  auto ep = server.endpoint();
  auto first = pool.acquire(ep);
  const auto port = local_port(first);
  std::promise<unsigned short> got;
  std::thread t([&] {
    auto l = pool.acquire(ep);
    got.set_value(local_port(l));
    l.release();
  });
  REQUIRE(eventually([&] { return pool.stats().waiting == 1; }));
  first.release();
  auto f = got.get_future();
  REQUIRE(f.wait_for(2s) == std::future_status::ready);
  CHECK(f.get() == port);
  t.join();
  // No exchange ran on it, so the server's accept may still be on its way (seen under ASan).
  CHECK(server.wait_accepted(1));
  CHECK(server.counts().accepted == 1);
}

TEST_CASE("limits: waiters are served first come, first served") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto o = quick();
  o.max_per_endpoint = 1;
  tcp_pool pool(o);
  auto ep = server.endpoint();
  auto held = pool.acquire(ep);
  std::mutex m;
  std::vector<int> order;
  std::vector<std::thread> ts;
  for (int i = 0; i < 4; ++i) {
    ts.emplace_back([&, i] {
      auto l = pool.acquire(ep);
      {
        std::lock_guard<std::mutex> lk(m);
        order.push_back(i);
      }
      l.release();
    });
    REQUIRE(eventually([&] { return pool.stats().waiting == static_cast<std::size_t>(i + 1); }));
  }
  held.release();
  for (auto& t : ts) t.join();
  CHECK(order == std::vector<int>{0, 1, 2, 3});
}

TEST_CASE("limits: acquire_timeout bounds the wait") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto o = quick();
  o.max_per_endpoint = 1;
  o.acquire_timeout = 100ms;
  tcp_pool pool(o);
  auto held = pool.acquire(server.endpoint());
  connpool::error_code ec;
  const auto t0 = std::chrono::steady_clock::now();
  auto l = pool.acquire(server.endpoint(), ec);
  const auto waited = std::chrono::steady_clock::now() - t0;
  CHECK(ec == connpool::error::acquire_timeout);
  CHECK_FALSE(l);
  CHECK(waited >= 100ms);
  CHECK(waited < 2s);
  CHECK(pool.stats().acquire_timeouts == 1);
  CHECK(pool.stats().waiting == 0);
  CHECK_THROWS_AS(pool.acquire(server.endpoint()), connpool::system_error);
}

TEST_CASE("limits: max_total evicts the least recently used idle connection of another endpoint") {
  test::fd_guard fds;
  test::echo_server a(test::loopback()), b(test::loopback()), c(test::loopback());
  auto o = quick();
  o.max_total = 2;
  tcp_pool pool(o);
  pool.acquire(a.endpoint()).release();
  pool.acquire(b.endpoint()).release();
  auto l = pool.acquire(c.endpoint());  // room is made by closing a's (older) idle connection
  CHECK(pool.stats().surplus == 1);
  CHECK(pool.stats(a.endpoint()).idle == 0);
  CHECK(pool.stats(b.endpoint()).idle == 1);
  CHECK(pool.stats().open() == 2);
  l.release();
}

TEST_CASE("limits: max_idle_per_endpoint closes the surplus") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto o = quick();
  o.max_idle_per_endpoint = 1;
  tcp_pool pool(o);
  auto x = pool.acquire(server.endpoint());
  auto y = pool.acquire(server.endpoint());
  x.release();
  y.release();
  CHECK(pool.stats().idle == 1);
  CHECK(pool.stats().surplus == 1);
}

TEST_CASE("limits: max_uses closes a connection after its last lease; max_waiting_per_endpoint fails fast") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto o = quick();
  o.max_uses = 2;
  o.max_per_endpoint = 1;
  o.max_waiting_per_endpoint = 1;
  o.acquire_timeout = 3000ms;
  tcp_pool pool(o);
  auto l = pool.acquire(server.endpoint());
  l.release();
  l = pool.acquire(server.endpoint());
  CHECK(l.reused());
  // One acquire may wait for it (another thread); the next fails at once.
  auto waiter = std::async(std::launch::async, [&] {
    connpool::error_code ec;
    auto w = pool.acquire(server.endpoint(), ec);
    return std::make_pair(ec, w.reused());
  });
  REQUIRE(eventually([&] { return pool.stats().waiting == 1; }));
  connpool::error_code ec;
  const auto t0 = std::chrono::steady_clock::now();
  auto refused = pool.acquire(server.endpoint(), ec);
  CHECK(ec == connpool::error::too_many_waiters);
  CHECK(std::chrono::steady_clock::now() - t0 < 1s);
  CHECK(pool.stats().waiters_rejected == 1);
  l.release();  // its second lease: closed; the waiter connects afresh
  auto [wec, wreused] = waiter.get();
  CHECK_FALSE(wec);
  CHECK_FALSE(wreused);
  const auto s = pool.stats();
  CHECK(s.max_uses == 1);
  CHECK(s.created == 2);
}

TEST_CASE("options: out-of-range values are rejected, naming the field; the kernel's maxima are accepted") {
  auto rejected = [](const char* field, auto set) {
    connpool::pool_options o;
    set(o);
    CHECK(std::string(o.invalid_field()) == field);
    CHECK(o.validate() == connpool::error::invalid_options);
    try {
      tcp_pool pool(o);
      FAIL("constructor accepted a bad " << field);
    } catch (const connpool::system_error& e) {
      CHECK(e.code() == connpool::error::invalid_options);
      CHECK(std::string(e.what()).find(field) != std::string::npos);
    }
  };
  rejected("connect_timeout", [](auto& o) { o.connect_timeout = -1ms; });
  rejected("endpoint_grace", [](auto& o) { o.endpoint_grace = -1ms; });
  rejected("validate_after_idle", [](auto& o) { o.validate_after_idle = -1ms; });
  rejected("validate_timeout", [](auto& o) { o.validate_timeout = 0ms; });
  rejected("ping_interval", [](auto& o) { o.ping_interval = -1ms; });
  rejected("keepalive_idle", [](auto& o) { o.keepalive_idle = 32768s; });
  rejected("keepalive_interval", [](auto& o) { o.keepalive_interval = 32768s; });
  rejected("keepalive_count", [](auto& o) { o.keepalive_count = 128; });
  rejected("user_timeout", [](auto& o) { o.user_timeout = std::chrono::milliseconds(1ll << 31); });
  rejected("user_timeout", [](auto& o) { o.user_timeout = std::chrono::milliseconds(1ll << 32); });
  // The largest values the kernel takes work end to end.
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto o = quick();
  o.keepalive_idle = 32767s;
  o.keepalive_interval = 32767s;
  o.keepalive_count = 127;
  o.user_timeout = std::chrono::milliseconds((1ll << 31) - 1);
  CHECK(o.invalid_field() == nullptr);
  tcp_pool pool(o);
  auto l = pool.acquire(server.endpoint());
  CHECK(test::roundtrip(l, "max") == "max");
}

TEST_CASE("options: durations up to milliseconds::max() mean never, without overflow") {
  using connpool::detail::later;
  using connpool::detail::never;
  const auto now = std::chrono::steady_clock::now();
  CHECK(later(now, std::chrono::milliseconds::max()) == never);
  CHECK(later(now, std::chrono::hours(24 * 365 * 300)) == never);
  CHECK(later(now, 1ms) == now + 1ms);
  CHECK(later(never, 1ms) == never);
  CHECK(connpool::detail::deadline_from(std::chrono::milliseconds::max()) == never);

  test::fd_guard fds;
  test::echo_server server(test::loopback());
  connpool::pool_options o;
  o.max_per_endpoint = 1;
  o.connect_timeout = o.acquire_timeout = o.idle_timeout = o.max_lifetime = o.endpoint_grace =
      std::chrono::milliseconds::max();
  tcp_pool pool(o);
  auto l = pool.acquire(server.endpoint());
  l.release();
  CHECK(pool.stats().max_lifetime == 0);  // an overflowed lifetime closed it on release
  CHECK(pool.stats().idle == 1);
  l = pool.acquire(server.endpoint());
  CHECK(l.reused());
  connpool::error_code waited;
  std::thread waiter([&] {
    auto w = pool.acquire(server.endpoint(), waited);  // an overflowed deadline failed this at once
    if (w) w.release();
  });
  CHECK(eventually([&] { return pool.stats().waiting == 1; }));
  l.release();
  waiter.join();
  CHECK_FALSE(waited);
  CHECK(pool.stats().acquire_timeouts == 0);
}

TEST_CASE("leases: a lease that set non-blocking mode does not pass it to the next") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  tcp_pool pool(quick());
  auto l = pool.acquire(server.endpoint());
  l.socket().non_blocking(true);
  l.release();
  auto next = pool.acquire(server.endpoint());
  REQUIRE(next.reused());
  CHECK_FALSE(next.socket().non_blocking());
  CHECK(test::roundtrip(next, "blocking read") == "blocking read");  // would_block before the fix
}

TEST_CASE("leases: a connection half-closed through lease::shutdown() is never reused") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  tcp_pool pool(quick());
  auto l = pool.acquire(server.endpoint());
  CHECK(test::roundtrip(l, "before") == "before");
  l.shutdown(net::socket_base::shutdown_send);
  l.release();  // closed, not kept: the next lease's first write would fail with EPIPE
  CHECK(pool.stats().idle == 0);
  CHECK(pool.stats().discarded == 1);
  auto next = pool.acquire(server.endpoint());
  CHECK_FALSE(next.reused());
  CHECK(test::roundtrip(next, "after") == "after");
  // A moved lease keeps the mark.
  next.shutdown(net::socket_base::shutdown_both);
  auto moved = std::move(next);
  moved.release();
  CHECK(pool.stats().idle == 0);
  CHECK(pool.stats().discarded == 2);
}

TEST_CASE("errors: OS errors reach the caller as Asio reports them") {
  test::fd_guard fds;
  net::ip::tcp::endpoint dead;
  {
    test::echo_server gone(test::loopback());
    dead = gone.endpoint();
  }
  tcp_pool pool(quick());
  connpool::error_code ec;
  auto l = pool.acquire(dead, ec);
  // The two forms that work, as for the errors of Asio's own reads and writes:
  CHECK(ec == net::error::connection_refused);
  CHECK((ec.category() == net::error::get_system_category() && ec.value() == ECONNREFUSED));
  try {
    pool.acquire(dead);
    FAIL("acquire of a refused endpoint did not throw");
  } catch (const connpool::system_error& e) {
    CHECK(e.code() == net::error::connection_refused);
  }
  // The very code a socket of the same Asio reports for the same connect.
  net::io_context io;
  net::ip::tcp::socket raw(io);
  connpool::error_code raw_ec;
  raw.connect(dead, raw_ec);
  CHECK(ec == raw_ec);
  CHECK(&ec.category() == &raw_ec.category());
}

TEST_CASE("errors: the error types are the Asio in use's own (std:: or boost::system::)") {
#if defined(CONNPOOL_USE_BOOST_ASIO)
  static_assert(std::is_same_v<connpool::error_code, boost::system::error_code>);
  static_assert(std::is_same_v<connpool::system_error, boost::system::system_error>);
  static_assert(std::is_base_of_v<boost::system::error_category,
                                  std::remove_reference_t<decltype(connpool::error_category())>>);
  static_assert(boost::system::is_error_code_enum<connpool::error>::value);
  // A Boost.Asio user who wants std::error_code converts, and the comparisons hold.
  const std::error_code refused = connpool::error_code(net::error::connection_refused);
  CHECK(refused == std::errc::connection_refused);
  const std::error_code timeout = connpool::error_code(connpool::error::acquire_timeout);
  CHECK(std::string(timeout.category().name()) == "connpool");
  CHECK(timeout.message() == "timed out waiting to acquire a connection");
#else
  static_assert(std::is_same_v<connpool::error_code, std::error_code>);
  static_assert(std::is_same_v<connpool::error_code, net::error_code>);
  static_assert(std::is_same_v<connpool::system_error, std::system_error>);
  static_assert(std::is_error_code_enum_v<connpool::error>);
#endif
  // The throwing overloads throw what Asio's own throw.
  tcp_pool pool(quick());
  pool.close();
  bool thrown = false;
  try {
    pool.acquire(test::loopback());
  } catch (const connpool::system_error& e) {
    thrown = e.code() == connpool::error::pool_closed;
  }
  CHECK(thrown);
}

TEST_CASE("exec: pooled sockets are close-on-exec, so a spawned child holds none of them") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  const std::string path = "/tmp/connpool-exec-" + std::to_string(::getpid()) + ".sock";
  ::unlink(path.c_str());
  test::basic_echo_server<net::local::stream_protocol> unix_server{net::local::stream_protocol::endpoint(path)};
  tcp_pool pool(quick());
  connpool::local_pool local(quick());
  net::io_context io;
  tcp_pool async_pool(io, quick());
  auto leased = pool.acquire(server.endpoint());
  pool.acquire(server.endpoint()).release();  // one idle as well
  auto unix_lease = local.acquire(unix_server.endpoint());
  std::optional<tcp_pool::lease> async_lease;
  async_pool.async_acquire(server.endpoint(), [&](connpool::error_code ec, tcp_pool::lease l) {
    REQUIRE_FALSE(ec);
    async_lease = std::move(l);
  });
  io.run_for(3s);
  REQUIRE(async_lease);
  REQUIRE(*async_lease);
  std::set<std::string> ours;
  for (int fd : {leased.socket().native_handle(), unix_lease.socket().native_handle(),
                 (*async_lease).socket().native_handle()})
    ours.insert(std::filesystem::read_symlink("/proc/self/fd/" + std::to_string(fd)).string());
  REQUIRE(ours.size() == 3);
  pid_t child = 0;
  char arg0[] = "sleep", arg1[] = "30";
  char* argv[] = {arg0, arg1, nullptr};
  REQUIRE(::posix_spawnp(&child, "sleep", nullptr, nullptr, argv, environ) == 0);
  std::set<std::string> inherited;
  // The child's descriptor table, once it has exec'd (its name changes to sleep).
  CHECK(eventually([&] {
    std::ifstream comm("/proc/" + std::to_string(child) + "/comm");
    std::string name;
    return std::getline(comm, name) && name == "sleep";
  }));
  for (const auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(child) + "/fd")) {
    std::error_code ec;
    auto target = std::filesystem::read_symlink(e.path(), ec);
    if (!ec) inherited.insert(target.string());
  }
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  for (const auto& s : ours) CHECK_MESSAGE(inherited.count(s) == 0, s << " was inherited by the child");
  ::unlink(path.c_str());
}

TEST_CASE("local_pool: a connect to a full backlog waits, like TCP, until the deadline or room") {
  test::fd_guard fds;
  const std::string path = "/tmp/connpool-backlog-" + std::to_string(::getpid()) + ".sock";
  ::unlink(path.c_str());
  net::io_context io;
  net::local::stream_protocol::acceptor acc(io);
  acc.open();
  acc.bind(net::local::stream_protocol::endpoint(path));
  acc.listen(0);
  std::vector<net::local::stream_protocol::socket> fillers;
  auto fill = [&] {  // fill the backlog: a non-blocking connect then fails with EAGAIN
    for (auto& f : fillers) f.close();
    fillers.clear();
    for (int i = 0; i < 16; ++i) {
      fillers.emplace_back(io);
      fillers.back().open();
      fillers.back().non_blocking(true);
      connpool::error_code ec;
      fillers.back().connect(acc.local_endpoint(), ec);
      if (ec) {
        fillers.pop_back();
        return true;
      }
    }
    return false;
  };
  REQUIRE(fill());
  auto o = quick();
  o.connect_timeout = 200ms;
  connpool::local_pool pool(o);
  const auto t0 = std::chrono::steady_clock::now();
  connpool::error_code ec;
  auto l = pool.acquire(acc.local_endpoint(), ec);
  const auto took = std::chrono::steady_clock::now() - t0;
  CHECK(ec == connpool::error::connect_timeout);  // EAGAIN in 0.06 ms before
  CHECK(took >= 190ms);
  CHECK(took < 2s);
  // Room appears while an acquire waits: it connects.
  o.connect_timeout = 5000ms;
  connpool::local_pool patient(o);
  connpool::error_code later_ec;
  std::thread t([&] {
    auto w = patient.acquire(acc.local_endpoint(), later_ec);
    if (w) w.release();
  });
  CHECK(eventually([&] { return patient.stats().connecting == 1; }));
  for (std::size_t i = 0; i < fillers.size(); ++i) acc.accept().close();  // the backlog drains
  t.join();
  CHECK_FALSE(later_ec);
  // The same for async_acquire: the backlog is full again.
  REQUIRE(fill());
  net::io_context aio;
  o.connect_timeout = 200ms;
  connpool::local_pool apool(aio, o);
  connpool::error_code aec;
  bool done = false;
  const auto a0 = std::chrono::steady_clock::now();
  apool.async_acquire(acc.local_endpoint(), [&](connpool::error_code e, connpool::local_pool::lease) {
    aec = e;
    done = true;
  });
  while (!done && std::chrono::steady_clock::now() - a0 < 3s) aio.run_one_for(10ms);
  CHECK(done);
  CHECK(aec == connpool::error::connect_timeout);  // ENOBUFS at once before
  CHECK(std::chrono::steady_clock::now() - a0 >= 190ms);
  ::unlink(path.c_str());
}

TEST_CASE("connect: refused reaches the caller and frees the slot") {
  test::fd_guard fds;
  net::ip::tcp::endpoint dead;
  {
    test::echo_server gone(test::loopback());
    dead = gone.endpoint();
  }
  auto o = quick();
  o.max_per_endpoint = 1;
  tcp_pool pool(o);
  for (int i = 0; i < 3; ++i) {  // a leaked slot would turn the 2nd attempt into acquire_timeout
    connpool::error_code ec;
    auto l = pool.acquire(dead, ec);
    CHECK(ec == net::error::connection_refused);
    CHECK_FALSE(l);
  }
  auto s = pool.stats();
  CHECK(s.connect_failed == 3);
  CHECK(s.open() == 0);
}


TEST_CASE("connect: connect_timeout and acquire_timeout bound a connect that never completes") {
  test::fd_guard fds;
  test::full_backlog fb;
  const auto ep = fb.acc.local_endpoint();
  SUBCASE("connect_timeout") {
    auto o = quick();
    o.connect_timeout = 150ms;
    tcp_pool pool(o);
    connpool::error_code ec;
    const auto t0 = std::chrono::steady_clock::now();
    auto l = pool.acquire(ep, ec);
    CHECK(ec == connpool::error::connect_timeout);
    CHECK(std::chrono::steady_clock::now() - t0 < 2s);
    CHECK(pool.stats().connect_failed == 1);
    CHECK(pool.stats().open() == 0);
  }
  SUBCASE("acquire_timeout shorter than connect_timeout") {
    auto o = quick();
    o.connect_timeout = 5000ms;
    o.acquire_timeout = 150ms;
    tcp_pool pool(o);
    connpool::error_code ec;
    const auto t0 = std::chrono::steady_clock::now();
    auto l = pool.acquire(ep, ec);
    CHECK(ec == connpool::error::acquire_timeout);
    CHECK(std::chrono::steady_clock::now() - t0 < 2s);
    CHECK(pool.stats().acquire_timeouts == 1);
    CHECK(pool.stats().connect_failed == 1);
  }
}

TEST_CASE("overload: max_connecting_per_endpoint bounds the connects in flight; the others wait, within their deadline") {
  test::fd_guard fds;
  test::full_backlog fb;  // connects stay in SYN_SENT
  const auto ep = fb.acc.local_endpoint();
  auto o = quick();
  o.max_connecting_per_endpoint = 2;
  o.connect_timeout = 5000ms;
  o.acquire_timeout = 1500ms;
  tcp_pool pool(o);
  std::vector<std::future<connpool::error_code>> acquires;
  for (int i = 0; i < 6; ++i)
    acquires.push_back(std::async(std::launch::async, [&] {
      connpool::error_code ec;
      auto l = pool.acquire(ep, ec);
      return ec;
    }));
  CHECK(eventually([&] {
    const auto s = pool.stats();
    return s.connecting == 2 && s.waiting == 4;
  }));
  CHECK(test::client_sockets(ep, tcp_state::syn_sent) <= 3);  // the pool's two, and full_backlog's own last one
  for (auto& a : acquires) CHECK(a.get() == connpool::error::acquire_timeout);
  const auto s = pool.stats();
  CHECK(s.open() == 0);
  CHECK(s.connect_failed >= 2);  // the two, and any a waiter started in a freed place before its own deadline
}

TEST_CASE("overload: an acquire whose idle connection fails its check waits at max_connecting_per_endpoint, then connects") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  const auto ep = server.endpoint();
  auto o = quick();
  o.max_connecting_per_endpoint = 1;
  o.validate_after_idle = 0ms;  // check at every hand-out from idle
  tcp_pool pool(o);
  auto first = pool.acquire(ep);  // made before the check and the slow setup exist
  // Connects now take 300 ms (their setup step), so one stays in flight while the test looks.
  pool.set_setup([](tcp_pool::socket_type& sock, const tcp_pool::endpoint_type&, tcp_pool::setup_done done) {
    auto t = std::make_shared<net::steady_timer>(sock.get_executor());
    t->expires_after(300ms);
    t->async_wait([t, done](connpool::error_code) { done({}); });
  });
  auto other = std::async(std::launch::async, [&] {
    connpool::error_code ec;
    auto l = pool.acquire(ep, ec);
    return ec;
  });
  REQUIRE(eventually([&] { return pool.stats().connecting == 1; }));
  pool.set_health_check([](tcp_pool::socket_type&, const tcp_pool::endpoint_type&, tcp_pool::setup_done done) {
    done(net::error::connection_reset);  // every check fails
  });
  const int first_fd = first.socket().native_handle();
  first.release();  // idle: the next acquire takes it, checks it, closes it
  std::promise<std::pair<connpool::error_code, bool>> got;
  auto waiting = [&] {
    const auto s = pool.stats();
    return s.validation_failed == 1 && s.waiting == 1 && s.connecting == 1;
  };
  SUBCASE("sync") {
    auto a = std::async(std::launch::async, [&] {
      connpool::error_code ec;
      auto l = pool.acquire(ep, ec);
      return std::make_pair(ec, l.reused());
    });
    CHECK(eventually(waiting));  // its replacement waits for the connect in flight
    auto [ec, reused] = a.get();
    CHECK_FALSE(ec);
    CHECK_FALSE(reused);
  }
  SUBCASE("sync, the probe fails (stray bytes; no check)") {
    pool.set_health_check(nullptr);
    REQUIRE(server.wait_accepted(1));
    server.send_all("x");  // the idle connection now holds a byte nobody asked for
    pollfd p{first_fd, POLLIN, 0};
    REQUIRE(::poll(&p, 1, 5000) == 1);  // arrived (loopback may deliver it a moment later)
    auto a = std::async(std::launch::async, [&] {
      connpool::error_code ec;
      auto l = pool.acquire(ep, ec);
      return std::make_pair(ec, l.reused());
    });
    CHECK(eventually([&] {
      const auto s = pool.stats();
      return s.unexpected_data == 1 && s.waiting == 1 && s.connecting == 1;
    }));
    auto [ec, reused] = a.get();
    CHECK_FALSE(ec);
    CHECK_FALSE(reused);
    CHECK_FALSE(other.get());
    CHECK(pool.stats().created == 3);
    return;
  }
  SUBCASE("async") {
    pool.async_acquire(ep, [&](connpool::error_code ec, tcp_pool::lease l) { got.set_value({ec, l.reused()}); });
    CHECK(eventually(waiting));
    auto f = got.get_future();
    REQUIRE(f.wait_for(5s) == std::future_status::ready);
    auto [ec, reused] = f.get();
    CHECK_FALSE(ec);
    CHECK_FALSE(reused);
  }
  CHECK_FALSE(other.get());
  const auto s = pool.stats();
  CHECK(s.validation_failed == 1);
  CHECK(s.created == 3);
  CHECK(s.connecting == 0);
}

TEST_CASE("overload: connect backoff: a refused endpoint fails acquires at once with endpoint_unavailable and its last error, until a trial connect succeeds") {
  test::fd_guard fds;
  net::ip::tcp::endpoint ep;
  {
    test::echo_server gone(test::loopback());
    ep = gone.endpoint();
  }
  auto o = quick();
  o.connect_backoff = 300ms;
  o.connect_backoff_max = 300ms;
  tcp_pool pool(o);
  std::vector<connpool::event_kind> kinds;
  std::mutex mu;
  pool.set_listener([&](const tcp_pool::event& ev) {
    std::lock_guard<std::mutex> lk(mu);
    if (ev.kind == connpool::event_kind::backoff_started || ev.kind == connpool::event_kind::backoff_ended)
      kinds.push_back(ev.kind);
  });
  connpool::error_code ec;
  auto l = pool.acquire(ep, ec);
  CHECK(ec == net::error::connection_refused);
  CHECK(pool.last_connect_error(ep) == net::error::connection_refused);
  // The backoff is random in [0, 300 ms]: an acquire right after it is refused at once, unless the
  // draw was shorter than the time between two acquires; then the trial is refused, and again.
  int attempts = 0;
  do {
    l = pool.acquire(ep, ec);
  } while (ec == net::error::connection_refused && ++attempts < 10);
  CHECK(ec == connpool::error::endpoint_unavailable);
  CHECK(pool.stats(ep).backoff_rejected >= 1);
  CHECK(pool.stats(ep).connect_failed == static_cast<std::size_t>(attempts) + 1);
  CHECK(pool.stats(ep).open() == 0);
  // The throwing overload names the last connect error.
  std::string what;
  for (int i = 0; i < 10 && what.empty(); ++i) {
    try {
      pool.acquire(ep);
    } catch (const connpool::system_error& e) {
      if (e.code() == connpool::error::endpoint_unavailable) what = e.what();
    }
  }
  CHECK(what.find(connpool::error_code(net::error::connection_refused).message()) != std::string::npos);
  // The server comes back at the same port: after the backoff, a trial connect gets through, and
  // ends the backoff.
  std::unique_ptr<test::echo_server> back;
  try {
    back = std::make_unique<test::echo_server>(ep);
  } catch (const connpool::system_error&) {
    MESSAGE("the port was taken meanwhile: the recovery part is skipped");
    return;
  }
  CHECK(eventually([&] {
    auto lease = pool.acquire(ep, ec);
    return !ec && test::roundtrip(lease, "back") == "back";
  }));
  CHECK_FALSE(pool.last_connect_error(ep));
  std::lock_guard<std::mutex> lk(mu);
  REQUIRE(kinds.size() >= 2);
  CHECK(kinds.front() == connpool::event_kind::backoff_started);
  CHECK(kinds.back() == connpool::event_kind::backoff_ended);
}

TEST_CASE("connect: socket options are applied") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto o = quick();
  o.keepalive_idle = 7s;
  o.keepalive_interval = 3s;
  o.keepalive_count = 4;
  o.user_timeout = 1500ms;
  tcp_pool pool(o);
  auto l = pool.acquire(server.endpoint());
  net::ip::tcp::no_delay nd;
  l.socket().get_option(nd);
  CHECK(nd.value());
  net::socket_base::keep_alive ka;
  l.socket().get_option(ka);
  CHECK(ka.value());
  int v = 0;
  socklen_t len = sizeof v;
  ::getsockopt(l.socket().native_handle(), IPPROTO_TCP, TCP_KEEPIDLE, &v, &len);
  CHECK(v == 7);
  ::getsockopt(l.socket().native_handle(), IPPROTO_TCP, TCP_KEEPCNT, &v, &len);
  CHECK(v == 4);
  ::getsockopt(l.socket().native_handle(), IPPROTO_TCP, TCP_USER_TIMEOUT, &v, &len);
  CHECK(v == 1500);
  l.release();
}

TEST_CASE("retiring: idle_timeout closes idle connections without any acquire") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto o = quick();
  o.idle_timeout = 100ms;
  tcp_pool pool(o);
  pool.acquire(server.endpoint()).release();
  CHECK(pool.stats().idle == 1);
  CHECK(eventually([&] { return pool.stats().idle_timeout == 1; }));
  CHECK(pool.stats().idle == 0);
  CHECK(eventually([&] { return server.counts().eof == 1; }));  // graceful: the server saw FIN
}

TEST_CASE("retiring: max_lifetime, closed with RST when retire_close is abortive") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto o = quick();
  o.max_lifetime = 150ms;
  o.retire_close = connpool::close_mode::abortive;
  // TIME_WAIT towards this port left by an earlier test whose server had the same port can only
  // expire meanwhile: count what this test adds.
  connpool::error_code ec;
  const auto time_wait_before = connpool::diag::kernel_sockets(tcp_state::time_wait, server.endpoint(), ec);
  tcp_pool pool(o);
  std::vector<tcp_pool::lease> ls;
  for (int i = 0; i < 4; ++i) ls.push_back(pool.acquire(server.endpoint()));
  for (auto& l : ls) l.release();
  CHECK(eventually([&] { return pool.stats().max_lifetime == 4; }));
  CHECK(eventually([&] { return server.counts().reset == 4; }));
  CHECK(connpool::diag::kernel_sockets(tcp_state::time_wait, server.endpoint(), ec) <= time_wait_before);
}

TEST_CASE("retiring: a connection past max_lifetime is closed when released") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto o = quick();
  o.max_lifetime = 50ms;
  net::io_context unrun;  // no timer: only release() can retire it
  tcp_pool pool(unrun, o);
  auto l = pool.acquire(server.endpoint());
  std::this_thread::sleep_for(60ms);  // the lifetime is what is under test
  l.release();
  CHECK(pool.stats().max_lifetime == 1);
  CHECK(pool.stats().idle == 0);
}

TEST_CASE("leases: discard and unreleased leases close the connection and count as discarded") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  tcp_pool pool(quick());
  auto ep = server.endpoint();
  {
    auto l = pool.acquire(ep);
    CHECK(test::roundtrip(l, "a") == "a");
  }
  auto l2 = pool.acquire(ep);
  l2.discard(connpool::close_mode::abortive);
  CHECK_FALSE(l2);
  l2.release();  // no effect on an empty lease
  auto s = pool.stats();
  CHECK(s.discarded == 2);
  CHECK(s.reused == 0);
  CHECK(s.open() == 0);
  CHECK(eventually([&] { return server.counts().eof == 1 && server.counts().reset == 1; }));
  CHECK_THROWS_AS(l2.socket(), std::logic_error);
}

TEST_CASE("try_acquire: an idle healthy connection now, or nothing; never connects, waits or passes a waiter") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto o = quick();
  o.max_per_endpoint = 2;
  tcp_pool pool(o);
  const auto ep = server.endpoint();
  CHECK_FALSE(pool.try_acquire(ep));  // nothing idle: no connect
  CHECK(pool.stats().created == 0);
  auto a = pool.acquire(ep);
  auto b = pool.acquire(ep);
  const auto port_b = local_port(b);
  a.release();
  b.release();
  SUBCASE("most recently released first") {
    auto l = pool.try_acquire(ep);
    REQUIRE(l);
    CHECK(l.reused());
    CHECK(local_port(l) == port_b);
    CHECK(test::roundtrip(l, "try") == "try");
    l.release();
  }
  SUBCASE("a dead idle connection is closed and the next one tried") {
    REQUIRE(server.wait_accepted(2));
    server.close_all();
    REQUIRE(eventually([&] { return test::client_sockets(ep, tcp_state::close_wait) == 2 || pool.stats().idle == 0; }));
    CHECK_FALSE(pool.try_acquire(ep));
    CHECK(pool.stats().peer_closed == 2);
    CHECK(pool.stats().open() == 0);
  }
  SUBCASE("waiters first: a released connection goes to the waiting acquire") {
    auto x = pool.acquire(ep);
    auto y = pool.acquire(ep);
    connpool::error_code waiter_ec;
    unsigned short waiter_port = 0;
    std::thread waiter([&] {
      auto l = pool.acquire(ep, waiter_ec);
      if (!waiter_ec) waiter_port = local_port(l);
    });
    REQUIRE(eventually([&] { return pool.stats().waiting == 1; }));
    CHECK_FALSE(pool.try_acquire(ep));  // at the limit, nothing idle
    const auto port_x = local_port(x);
    x.release();
    waiter.join();
    CHECK_FALSE(waiter_ec);
    CHECK(waiter_port == port_x);
    y.release();
  }
  SUBCASE("a waiter of another endpoint does not hold it up") {
    test::echo_server other(test::loopback());
    auto o2 = quick();
    o2.max_per_endpoint = 1;
    tcp_pool p2(o2);
    p2.acquire(ep).release();
    auto busy = p2.acquire(other.endpoint());
    connpool::error_code waiter_ec;
    std::thread waiter([&] { p2.acquire(other.endpoint(), waiter_ec); });
    REQUIRE(eventually([&] { return p2.stats().waiting == 1; }));
    auto l = p2.try_acquire(ep);
    CHECK(l);
    l.release();
    busy.release();
    waiter.join();
    CHECK_FALSE(waiter_ec);
  }
  SUBCASE("closed pool") {
    pool.close();
    CHECK_FALSE(pool.try_acquire(ep));
  }
}

TEST_CASE("leases: moves transfer ownership") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  tcp_pool pool(quick());
  auto a = pool.acquire(server.endpoint());
  tcp_pool::lease b = std::move(a);
  CHECK_FALSE(a);
  CHECK(b);
  tcp_pool::lease c;
  c = std::move(b);
  CHECK(test::roundtrip(c, "m") == "m");
  c.release();
  CHECK(pool.stats().idle == 1);
  static_assert(std::is_nothrow_move_constructible_v<tcp_pool::lease>);
  static_assert(std::is_nothrow_move_assignable_v<tcp_pool::lease>);
  static_assert(!std::is_copy_constructible_v<tcp_pool::lease>);
}

TEST_CASE("shutdown: close() closes idle, fails waiters and later acquires; leases outlive the pool") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto o = quick();
  o.max_per_endpoint = 2;
  o.acquire_timeout = 0ms;  // waits for ever: only close() can end it
  tcp_pool::lease survivor;
  {
    tcp_pool pool(o);
    auto ep = server.endpoint();
    pool.acquire(ep).release();
    survivor = pool.acquire(ep);
    auto second = pool.acquire(ep);
    std::promise<connpool::error_code> waited;
    std::thread t([&] {
      connpool::error_code ec;
      pool.acquire(ep, ec);
      waited.set_value(ec);
    });
    REQUIRE(eventually([&] { return pool.stats().waiting == 1; }));
    second.release();  // back to idle? no: the waiter takes it
    REQUIRE(eventually([&] { return pool.stats().waiting == 0; }));
    t.join();
    CHECK(waited.get_future().get() == connpool::error_code());
    pool.acquire(ep).release();
    std::thread t2;
    std::promise<connpool::error_code> failed;
    auto x = pool.acquire(ep);
    t2 = std::thread([&] {
      connpool::error_code ec;
      pool.acquire(ep, ec);
      failed.set_value(ec);
    });
    REQUIRE(eventually([&] { return pool.stats().waiting == 1; }));
    pool.close();
    auto f = failed.get_future();
    REQUIRE(f.wait_for(2s) == std::future_status::ready);
    CHECK(f.get() == connpool::error::pool_closed);
    t2.join();
    connpool::error_code ec;
    pool.acquire(ep, ec);
    CHECK(ec == connpool::error::pool_closed);
    x.release();
    CHECK(pool.stats().pool_closed >= 1);
    CHECK(pool.stats().idle == 0);
  }
  REQUIRE(survivor);
  CHECK(test::roundtrip(survivor, "still") == "still");
  survivor.release();  // pool gone: closed, not kept
  CHECK(eventually([&] { return server.counts().live == 0; }));
}

TEST_CASE("prewarm: opens connections until n are idle, straight into idle; then acquires reuse them") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto ep = server.endpoint();
  auto o = quick();
  o.max_connecting_per_endpoint = 1;  // one at a time: the next starts as one ends
  tcp_pool pool(o);
  std::atomic<int> in_flight{0}, most{0};
  pool.set_listener([&](const tcp_pool::event& e) {
    if (e.kind == connpool::event_kind::connect_started) {
      const int now = ++in_flight;
      int seen = most.load();
      while (now > seen && !most.compare_exchange_weak(seen, now)) {
      }
    } else if (e.kind == connpool::event_kind::connect_succeeded || e.kind == connpool::event_kind::connect_failed) {
      --in_flight;
    }
  });
  CHECK(pool.prewarm(ep, 3) == 3);
  auto st = pool.stats(ep);
  CHECK(st.idle == 3);
  CHECK(st.leased == 0);
  CHECK(st.created == 3);
  CHECK(st.released == 0);  // not counted as releases
  CHECK(most.load() == 1);  // never past max_connecting_per_endpoint
  CHECK(server.wait_accepted(3));
  CHECK(pool.prewarm(ep, 3) == 0);  // 3 idle already
  CHECK(pool.prewarm(ep, 4) == 1);
  auto l = pool.acquire(ep);
  CHECK(l.reused());
  CHECK(test::roundtrip(l, "warm") == "warm");
  l.release();
  CHECK(pool.stats(ep).created == 4);
  pool.close();
  connpool::error_code ec;
  CHECK(pool.prewarm(ep, 5, ec) == 0);
  CHECK(ec == connpool::error::pool_closed);
}

TEST_CASE("prewarm: an acquire that waits meanwhile gets the prewarmed connection, not a connect of its own; close() ends it") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto ep = server.endpoint();
  auto o = quick();
  o.max_connecting_per_endpoint = 1;  // the acquire waits behind the prewarm's connect
  tcp_pool pool(o);
  std::mutex m;
  std::vector<tcp_pool::setup_done> gate;  // each new connection's setup waits here
  std::condition_variable cv;
  pool.set_setup([&](tcp_pool::socket_type&, const tcp_pool::endpoint_type&, tcp_pool::setup_done done) {
    std::lock_guard<std::mutex> lk(m);
    gate.push_back(std::move(done));
    cv.notify_all();
  });
  auto wait_gate = [&](std::size_t n) {
    std::unique_lock<std::mutex> lk(m);
    return cv.wait_for(lk, 5s, [&] { return gate.size() >= n; });
  };
  auto open = [&](std::size_t i) {
    tcp_pool::setup_done d;
    {
      std::lock_guard<std::mutex> lk(m);
      d = gate.at(i);
    }
    d({});
  };
  auto warmed = pool.async_prewarm(ep, 1, net::use_future);
  REQUIRE(wait_gate(1));  // the prewarm's connection is in its setup
  auto got = std::async(std::launch::async, [&] {
    connpool::error_code ec;
    auto l = pool.acquire(ep, ec);
    return std::make_pair(ec, l.reused());
  });
  REQUIRE(eventually([&] { return pool.stats().waiting == 1; }));
  open(0);
  REQUIRE(got.wait_for(5s) == std::future_status::ready);
  const auto [ec, reused] = got.get();
  CHECK_FALSE(ec);
  CHECK(reused);  // handed over as an idle connection
  CHECK(pool.stats().created == 1);  // no second connect
  REQUIRE(warmed.wait_for(5s) == std::future_status::ready);
  CHECK(warmed.get() == 1);
  // A prewarm whose connect is in its setup when the pool closes ends with pool_closed.
  auto cut_short = pool.async_prewarm(ep, 2, net::use_future);
  REQUIRE(wait_gate(2));
  pool.close();
  REQUIRE(cut_short.wait_for(5s) == std::future_status::ready);
  CHECK_THROWS_AS(cut_short.get(), connpool::system_error);
  {
    std::lock_guard<std::mutex> lk(m);
    gate.clear();
  }
}

TEST_CASE("prewarm: bounded by the limits without taking anything from traffic; a refused endpoint's error") {
  test::fd_guard fds;
  test::echo_server a(test::loopback()), b(test::loopback());
  auto o = quick();
  o.max_per_endpoint = 2;
  o.max_total = 3;
  tcp_pool pool(o);
  CHECK(pool.prewarm(a.endpoint(), 5) == 2);  // max_per_endpoint, no error
  CHECK(pool.stats(a.endpoint()).idle == 2);
  CHECK(pool.prewarm(b.endpoint(), 2) == 1);  // max_total: the idle connections of `a` stay
  CHECK(pool.stats(a.endpoint()).idle == 2);
  CHECK(pool.stats().surplus == 0);
  {
    auto o2 = quick();
    o2.max_idle_per_endpoint = 2;
    tcp_pool small(o2);
    CHECK(small.prewarm(a.endpoint(), 4) == 2);  // more would be surplus
    CHECK(small.stats().surplus == 0);
  }
  net::ip::tcp::endpoint refused;
  {
    test::echo_server gone(test::loopback());
    refused = gone.endpoint();
  }
  connpool::error_code ec;
  CHECK(pool.prewarm(refused, 3, ec) == 0);  // max_total reached: nothing tried, no error
  CHECK_FALSE(ec);
  tcp_pool fresh(quick());
  CHECK(fresh.prewarm(refused, 3, ec) == 0);
  CHECK(ec == net::error::connection_refused);
  CHECK(fresh.stats(refused).connect_failed >= 1);
  CHECK_THROWS_AS(fresh.prewarm(refused, 1), connpool::system_error);
}

TEST_CASE("prewarm: asynchronous; by name; on the pool's own thread it would block") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto ep = server.endpoint();
  tcp_pool pool(quick());
  auto f = pool.async_prewarm(ep, 2, net::use_future);
  REQUIRE(f.wait_for(5s) == std::future_status::ready);
  CHECK(f.get() == 2);
  const connpool::host h("127.0.0.1", std::to_string(ep.port()));
  CHECK(pool.prewarm(h, 2) == 2);
  CHECK(pool.stats(h).idle == 2);
  auto on_own = std::make_shared<std::promise<connpool::error_code>>();
  net::post(pool.get_executor(), [&pool, ep, on_own] {
    connpool::error_code ec;
    pool.prewarm(ep, 5, ec);
    on_own->set_value(ec);
  });
  auto g = on_own->get_future();
  REQUIRE(g.wait_for(5s) == std::future_status::ready);
  CHECK(g.get() == net::error::would_block);
}

TEST_CASE("min_idle_per_endpoint: refilled in the background after a release and after the peer closes them; idle_timeout spares the minimum") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto ep = server.endpoint();
  {
    // No idle_timeout, nothing else due: the release itself has the refill run.
    auto o = quick();
    o.min_idle_per_endpoint = 2;
    o.idle_timeout = 0ms;
    tcp_pool first(o);
    first.acquire(ep).release();
    REQUIRE(eventually([&] { return first.stats(ep).idle == 2; }, 5000ms));
    CHECK(first.stats(ep).created == 2);
    REQUIRE(server.wait_accepted(2));
  }
  auto o = quick();
  o.min_idle_per_endpoint = 2;
  o.idle_timeout = 300ms;
  o.endpoint_grace = 0ms;  // always in use
  tcp_pool pool(o);
  const std::size_t accepted = server.counts().accepted;
  pool.acquire(ep).release();  // one idle: a refill opens the second, in the background
  REQUIRE(eventually([&] { return pool.stats(ep).idle == 2; }, 5000ms));
  CHECK(pool.stats(ep).created == 2);
  CHECK(pool.stats(ep).released == 1);
  REQUIRE(server.wait_accepted(accepted + 2));
  server.close_all();  // the peer closes both: the watch closes them, and the pool refills
  REQUIRE(eventually([&] { return pool.stats(ep).peer_closed == 2 && pool.stats(ep).idle == 2; }, 5000ms));
  CHECK(pool.stats(ep).created == 4);  // refills count every connect in flight: never more
  // Well past idle_timeout: the minimum is still there, never closed for idleness.
  const auto until = std::chrono::steady_clock::now() + 1500ms;
  eventually([&] { return std::chrono::steady_clock::now() > until; }, 3000ms);  // time itself is the event
  CHECK(pool.stats(ep).idle_timeout == 0);
  CHECK(pool.stats(ep).idle == 2);
  CHECK(pool.stats(ep).created == 4);
  auto l = pool.acquire(ep);
  CHECK(l.reused());
  CHECK(test::roundtrip(l, "kept") == "kept");
  l.release();
  // The control: without a minimum, idle_timeout closes idle connections in the same run.
  auto o0 = quick();
  o0.idle_timeout = 300ms;
  tcp_pool plain(o0);
  plain.acquire(ep).release();
  CHECK(eventually([&] { return plain.stats(ep).idle_timeout == 1; }, 5000ms));
  connpool::pool_options bad;
  bad.max_idle_per_endpoint = 1;
  bad.min_idle_per_endpoint = 2;
  CHECK(bad.invalid_field() == std::string("min_idle_per_endpoint"));
}

TEST_CASE("drain: closes idle and waits for the leases out; a second drain and later acquires see it closed") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto ep = server.endpoint();
  tcp_pool pool(quick());
  auto out = pool.acquire(ep);
  pool.acquire(ep).release();  // one idle, one leased
  REQUIRE(pool.stats().idle == 1);
  std::promise<bool> returned;
  std::atomic<bool> drained{false};
  std::thread t([&] {
    // The drain began once its close() has closed the idle connection; then the lease comes back.
    const bool began = eventually([&] { return pool.stats().idle == 0; }, 5000ms);
    CHECK(test::roundtrip(out, "last") == "last");  // a lease goes on working while the pool drains
    CHECK_FALSE(drained.load());                     // the drain waits for it
    out.release();
    returned.set_value(began);
  });
  const std::size_t cut = pool.drain(10s);
  drained = true;
  t.join();
  CHECK(returned.get_future().get());
  CHECK(cut == 0);
  const auto st = pool.stats();
  CHECK(st.idle == 0);
  CHECK(st.leased == 0);
  CHECK(st.pool_closed == 2);  // the idle one at the start, the leased one when it came back
  CHECK(server.counts().accepted == 2);
  CHECK(eventually([&] { return server.counts().eof == 2; }));  // both closed gracefully
  CHECK(pool.drain(10s) == 0);  // nothing leased: at once
  connpool::error_code ec;
  CHECK_FALSE(pool.acquire(ep, ec));
  CHECK(ec == connpool::error::pool_closed);
}

TEST_CASE("drain: at the deadline a lease still out is cut with a FIN; its blocked read returns; its lease closes it") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto ep = server.endpoint();
  tcp_pool pool(quick());
  auto held = pool.acquire(ep);
  CHECK(test::roundtrip(held, "x") == "x");
  std::promise<connpool::error_code> read_end;
  std::thread t([&] {
    char c = 0;
    connpool::error_code ec;
    held->read_some(net::buffer(&c, 1), ec);  // the server sends nothing: blocks until the cut
    read_end.set_value(ec);
  });
  CHECK(pool.drain(50ms) == 1);
  auto f = read_end.get_future();
  const bool returned = f.wait_for(5s) == std::future_status::ready;
  if (!returned) ::shutdown(held->native_handle(), SHUT_RDWR);  // unblock it, to fail and not hang
  t.join();
  REQUIRE(returned);
  CHECK(f.get() == net::error::eof);
  CHECK(eventually([&] { return server.counts().eof == 1; }));  // the server saw our FIN
  CHECK(pool.stats().leased == 1);  // the descriptor is still the lease's
  held.release();
  CHECK_FALSE(held);
  CHECK(pool.stats().leased == 0);
  CHECK(pool.stats().pool_closed == 1);
  CHECK(pool.drain(0ms) == 0);
}

TEST_CASE("drain: with abortive retire_close the cut is an RST: the peer sees a reset, no TIME_WAIT is left") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto ep = server.endpoint();
  auto o = quick();
  o.retire_close = connpool::close_mode::abortive;
  tcp_pool pool(o);
  auto held = pool.acquire(ep);
  CHECK(test::roundtrip(held, "x") == "x");
  const std::size_t time_wait_before = test::client_sockets(ep, connpool::diag::tcp_state::time_wait);
  CHECK(pool.drain(0ms) == 1);  // a deadline already passed: cut at once
  CHECK(eventually([&] { return server.counts().reset == 1; }));
  connpool::error_code ec;
  const char c = 'y';
  held->write_some(net::buffer(&c, 1), ec);
  CHECK(ec);  // the connection is gone: the write fails
  held.release();
  CHECK(pool.stats().pool_closed == 1);
  CHECK(test::client_sockets(ep, connpool::diag::tcp_state::time_wait) <= time_wait_before);
}

TEST_CASE("drain: a connection in its health check is not cut: close() stops the check, which closes it") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto ep = server.endpoint();
  net::io_context io;
  auto o = quick();
  o.validate_after_idle = 0ms;  // check at every hand-out from idle
  std::promise<connpool::error_code> acquired;
  {
    tcp_pool pool(io, o);
    pool.acquire(ep).release();  // one idle connection (a new one is not checked)
    std::vector<tcp_pool::setup_done> pending;  // the check never answers; kept until the pool is closed
    std::mutex m;
    std::promise<void> check_began;
    pool.set_health_check([&](tcp_pool::socket_type&, const tcp_pool::endpoint_type&, tcp_pool::setup_done done) {
      std::lock_guard<std::mutex> lk(m);
      pending.push_back(std::move(done));
      check_began.set_value();
    });
    test::io_thread runner(io);
    pool.async_acquire(ep, [&](connpool::error_code ec, tcp_pool::lease) { acquired.set_value(ec); });
    REQUIRE(check_began.get_future().wait_for(5s) == std::future_status::ready);
    CHECK(pool.stats().leased == 1);  // the connection in its check counts as leased
    CHECK(pool.drain(5s) == 0);       // not cut
    auto f = acquired.get_future();
    REQUIRE(f.wait_for(5s) == std::future_status::ready);
    CHECK(f.get() == connpool::error::pool_closed);
    CHECK(pool.stats().leased == 0);
    {
      std::lock_guard<std::mutex> lk(m);
      pending.clear();
    }
  }
  io.restart();
  io.poll();
}

TEST_CASE("async_drain: completes when the last lease comes back, fails waiters, cuts at its deadline") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto ep = server.endpoint();
  auto o = quick();
  o.max_per_endpoint = 1;
  net::io_context io;
  auto run_until = [&](const bool& flag) {
    const auto end = std::chrono::steady_clock::now() + 5s;
    while (!flag && std::chrono::steady_clock::now() < end) {
      if (io.stopped()) io.restart();  // it ran out of work earlier
      io.run_one_for(100ms);
    }
    return flag;
  };
  {
    tcp_pool pool(io, o);
    auto held = pool.acquire(ep);
    bool waiter_done = false;
    connpool::error_code waiter_ec;
    pool.async_acquire(ep, [&](connpool::error_code ec, tcp_pool::lease) {
      waiter_ec = ec;
      waiter_done = true;
    });
    io.poll();
    REQUIRE(pool.stats().waiting == 1);
    bool done = false;
    connpool::error_code drain_ec = connpool::error::acquire_timeout;
    std::size_t cut = 99;
    pool.async_drain(10s, [&](connpool::error_code ec, std::size_t n) {
      drain_ec = ec;
      cut = n;
      done = true;
    });
    CHECK_FALSE(done);  // never inside the call
    REQUIRE(run_until(waiter_done));
    CHECK(waiter_ec == connpool::error::pool_closed);
    io.poll();
    CHECK_FALSE(done);  // a lease is still out
    held.release();
    REQUIRE(run_until(done));
    CHECK_FALSE(drain_ec);
    CHECK(cut == 0);
    CHECK(pool.stats().leased == 0);
  }
  {
    tcp_pool pool(io, quick());
    auto held = pool.acquire(ep);
    bool done = false;
    std::size_t cut = 0;
    pool.async_drain(std::chrono::steady_clock::now() + 20ms, [&](connpool::error_code ec, std::size_t n) {
      CHECK_FALSE(ec);
      cut = n;
      done = true;
    });
    REQUIRE(run_until(done));
    CHECK(cut == 1);
    char c = 0;
    connpool::error_code ec;
    held->read_some(net::buffer(&c, 1), ec);
    CHECK(ec == net::error::eof);
  }
  {
    // The pool object goes away first: the drain ends with operation_aborted, and nothing is cut.
    tcp_pool::lease survivor;
    bool done = false;
    connpool::error_code drain_ec;
    {
      tcp_pool pool(io, quick());
      survivor = pool.acquire(ep);
      pool.async_drain(1h, [&](connpool::error_code ec, std::size_t) {
        drain_ec = ec;
        done = true;
      });
    }
    REQUIRE(run_until(done));
    CHECK(drain_ec == net::error::operation_aborted);
    CHECK(test::roundtrip(survivor, "alive") == "alive");
  }
  {
    // A default pool (its own thread runs the deadline), and a future as the completion token.
    tcp_pool pool(quick());
    auto held = pool.acquire(ep);
    auto f = pool.async_drain(30ms, net::use_future);
    REQUIRE(f.wait_for(5s) == std::future_status::ready);
    CHECK(f.get() == 1);
  }
  io.restart();
  io.poll();  // what the pools left on the context
}

TEST_CASE("leases outlive the pool: the pool's state lives until the last one comes back, then is freed") {
  test::fd_guard fds;  // the pool's own descriptors (its contexts, its epoll set) must be gone at the end
  test::echo_server server(test::loopback());
  auto ep = server.endpoint();
  tcp_pool::lease a, b, c;
  {
    tcp_pool pool(quick());
    a = pool.acquire(ep);
    b = pool.acquire(ep);
    c = pool.acquire(ep);
  }
  CHECK(test::roundtrip(a, "a") == "a");
  a.release();  // closed: the pool is gone
  CHECK(test::roundtrip(b, "b") == "b");
  b.discard(connpool::close_mode::abortive);
  tcp_pool::lease moved = std::move(c);
  CHECK_FALSE(c);
  CHECK(test::roundtrip(moved, "c") == "c");
  // `moved` is the last: destroyed unreleased, it closes its connection and frees the state.
  moved = tcp_pool::lease();
  CHECK(eventually([&] { return server.counts().live == 0; }));
}

// Leases hold no reference to the pool's state; one that comes back while the pool is being
// destroyed must neither touch freed memory (the sanitizer builds run this) nor keep the state alive.
TEST_CASE("leases come back on other threads while the pool is being destroyed") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto ep = server.endpoint();
  for (int round = 0; round < 40; ++round) {
    auto pool = std::make_unique<tcp_pool>(quick());
    std::vector<tcp_pool::lease> ls;
    for (int i = 0; i < 4; ++i) ls.push_back(pool->acquire(ep));
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> ts;
    for (int i = 0; i < 4; ++i)
      ts.emplace_back([&, i] {
        ++ready;
        while (!go) std::this_thread::yield();
        if (i % 2) ls[static_cast<std::size_t>(i)].release();
        else ls[static_cast<std::size_t>(i)].discard();
      });
    while (ready < 4) std::this_thread::yield();
    go = true;
    pool.reset();
    for (auto& t : ts) t.join();
  }
  CHECK(eventually([&] { return server.counts().live == 0; }));
}

TEST_CASE("local_pool: Unix stream sockets") {
  test::fd_guard fds;
  const std::string path = "/tmp/connpool-test-" + std::to_string(::getpid()) + ".sock";
  ::unlink(path.c_str());
  {
    test::basic_echo_server<net::local::stream_protocol> server{net::local::stream_protocol::endpoint(path)};
    connpool::local_pool pool(quick());
    auto l = pool.acquire(server.endpoint());
    CHECK(test::roundtrip(l, "unix") == "unix");
    l.release();
    auto again = pool.acquire(server.endpoint());
    CHECK(again.reused());
    again.release();
    REQUIRE(server.wait_accepted(1));
    server.close_all();
    CHECK(eventually([&] { return pool.stats().idle == 0 && pool.stats().peer_closed == 1; }));
  }
  ::unlink(path.c_str());
}

// ---------------------------------------------------------------- run(): one safe retry

namespace {
/// What a scripted server does with a request (a line): answer "ok\n", close without an answer
/// (FIN), reset, or answer half ("o") and close.
enum class act { answer, fin, rst, half };

/// A loopback server on its own thread whose behaviour per connection (in accept order, from 0)
/// and per request on it (from 0) the test scripts. Stopped and joined on destruction.
class scripted_server {
 public:
  explicit scripted_server(std::function<act(int conn, int request)> script)
      : script_(std::move(script)), acceptor_(io_, test::loopback()), thread_(io_) {
    net::post(io_, [this] { accept(); });
  }
  net::ip::tcp::endpoint endpoint() const { return acceptor_.local_endpoint(); }
  int accepted() const { return accepted_.load(); }

 private:
  struct session {
    explicit session(net::io_context& io) : socket(io) {}
    net::ip::tcp::socket socket;
    std::string in;
    int id = 0, requests = 0;
  };
  void accept() {
    auto s = std::make_shared<session>(io_);
    acceptor_.async_accept(s->socket, [this, s](connpool::error_code ec) {
      if (ec) return;
      s->id = accepted_++;
      read(s);
      accept();
    });
  }
  void read(const std::shared_ptr<session>& s) {
    net::async_read_until(s->socket, net::dynamic_buffer(s->in), '\n', [this, s](connpool::error_code ec, std::size_t n) {
      if (ec) return;
      s->in.erase(0, n);
      connpool::error_code ig;
      switch (script_(s->id, s->requests++)) {
        case act::answer:
          net::write(s->socket, net::buffer("ok\n", 3), ig);
          return read(s);
        case act::fin:
          s->socket.shutdown(net::socket_base::shutdown_both, ig);
          s->socket.close(ig);
          return;
        case act::rst:
          s->socket.set_option(net::socket_base::linger(true, 0), ig);
          s->socket.close(ig);
          return;
        case act::half:
          net::write(s->socket, net::buffer("o", 1), ig);
          s->socket.shutdown(net::socket_base::shutdown_both, ig);
          s->socket.close(ig);
          return;
      }
    });
  }

  std::function<act(int, int)> script_;
  net::io_context io_;
  net::ip::tcp::acceptor acceptor_;
  std::atomic<int> accepted_{0};
  test::io_thread thread_;
};

/// One exchange: "get\n", then a line back, which must be "ok\n".
connpool::error_code exchange(tcp_pool::lease& l) {
  connpool::error_code ec;
  net::write(l.socket(), net::buffer("get\n", 4), ec);
  if (ec) return ec;
  std::string in;
  net::read_until(l.socket(), net::dynamic_buffer(in), '\n', ec);
  if (!ec && in != "ok\n") ec = net::error::invalid_argument;
  return ec;
}

/// The first connection's second request meets `how`; every other request is answered.
std::function<act(int, int)> second_request(act how) {
  return [how](int conn, int request) { return conn == 0 && request == 1 ? how : act::answer; };
}
}  // namespace

TEST_CASE("run: an idempotent exchange on a reused connection the server closed as the request went out runs again on a new connection") {
  for (act how : {act::fin, act::rst}) {
    CAPTURE(static_cast<int>(how));
    test::fd_guard fds;
    scripted_server server(second_request(how));
    tcp_pool pool(quick());
    std::vector<connpool::event_kind> kinds;
    std::mutex m;
    connpool::error_code first_error;
    pool.set_listener([&](const tcp_pool::event& ev) {
      std::lock_guard<std::mutex> lk(m);
      if (ev.kind == connpool::event_kind::retried || ev.kind == connpool::event_kind::retry_refused) {
        kinds.push_back(ev.kind);
        first_error = ev.error;
      }
    });
    connpool::error_code ec;
    pool.run(server.endpoint(), connpool::retry::idempotent, exchange, ec);  // connection 0, request 0
    REQUIRE_FALSE(ec);
    bool reused = false;
    pool.run(server.endpoint(), connpool::retry::idempotent, [&](tcp_pool::lease& l) {
      reused = reused || l.reused();  // the first attempt's connection was reused
      return exchange(l);
    }, ec);
    CHECK_FALSE(ec);  // it would have failed: the server closed connection 0 at its request 1
    CHECK(reused);
    const auto s = pool.stats(server.endpoint());
    CHECK(s.retries == 1);
    CHECK(s.retries_refused == 0);
    CHECK(s.created == 2);
    CHECK(server.accepted() == 2);
    std::lock_guard<std::mutex> lk(m);
    REQUIRE(kinds.size() == 1);
    CHECK(kinds[0] == connpool::event_kind::retried);
    CHECK((first_error == net::error::eof || first_error == net::error::connection_reset));
  }
}

TEST_CASE("run: not retried when not idempotent, after a byte of the response, on a new connection, or past the budget") {
  test::fd_guard fds;
  connpool::error_code ec;
  SUBCASE("retry::never") {
    scripted_server server(second_request(act::fin));
    tcp_pool pool(quick());
    pool.run(server.endpoint(), connpool::retry::never, exchange, ec);
    REQUIRE_FALSE(ec);
    pool.run(server.endpoint(), connpool::retry::never, exchange, ec);
    CHECK(ec == net::error::eof);
    CHECK(pool.stats().retries == 0);
    CHECK(server.accepted() == 1);
    CHECK_THROWS_AS(pool.run(server.endpoint(), connpool::retry::never,
                             [](tcp_pool::lease&) { return connpool::error_code(net::error::eof); }),
                    connpool::system_error);
  }
  SUBCASE("a byte of the response had arrived") {
    scripted_server server(second_request(act::half));
    tcp_pool pool(quick());
    pool.run(server.endpoint(), connpool::retry::idempotent, exchange, ec);
    REQUIRE_FALSE(ec);
    pool.run(server.endpoint(), connpool::retry::idempotent, exchange, ec);
    CHECK(ec == net::error::eof);
    CHECK(pool.stats().retries == 0);
    CHECK(server.accepted() == 1);
  }
  SUBCASE("the client ended it itself (a shutdown for its own deadline)") {
    scripted_server server([](int, int) { return act::answer; });
    tcp_pool pool(quick());
    pool.run(server.endpoint(), connpool::retry::idempotent, exchange, ec);
    REQUIRE_FALSE(ec);
    pool.run(server.endpoint(), connpool::retry::idempotent, [](tcp_pool::lease& l) {
      connpool::error_code e;
      l.shutdown(net::socket_base::shutdown_both, e);
      std::string in;
      net::read_until(l.socket(), net::dynamic_buffer(in), '\n', e);  // end of stream: ours
      return e;
    }, ec);
    CHECK(ec == net::error::eof);
    CHECK(pool.stats().retries == 0);
  }
  SUBCASE("a new connection") {
    scripted_server server([](int, int) { return act::fin; });
    tcp_pool pool(quick());
    pool.run(server.endpoint(), connpool::retry::idempotent, exchange, ec);
    CHECK(ec == net::error::eof);
    CHECK(pool.stats().retries == 0);
  }
  SUBCASE("the retry budget is spent") {
    scripted_server server(second_request(act::fin));
    connpool::pool_options o = quick();
    o.retry_budget_ratio = 0;
    o.retry_budget_per_second = 0;
    tcp_pool pool(o);
    pool.run(server.endpoint(), connpool::retry::idempotent, exchange, ec);
    REQUIRE_FALSE(ec);
    pool.run(server.endpoint(), connpool::retry::idempotent, exchange, ec);
    CHECK(ec == net::error::eof);
    const auto s = pool.stats();
    CHECK(s.retries == 0);
    CHECK(s.retries_refused == 1);
  }
  SUBCASE("the pool closed meanwhile") {
    scripted_server server(second_request(act::fin));
    tcp_pool pool(quick());
    pool.run(server.endpoint(), connpool::retry::idempotent, exchange, ec);
    REQUIRE_FALSE(ec);
    pool.run(server.endpoint(), connpool::retry::idempotent, [&](tcp_pool::lease& l) {
      pool.close();
      return exchange(l);
    }, ec);
    CHECK(ec == net::error::eof);
    CHECK(pool.stats().retries == 0);
    CHECK(pool.stats().retries_refused == 0);
  }
  SUBCASE("an error of the exchange's own") {
    scripted_server server([](int, int) { return act::answer; });
    tcp_pool pool(quick());
    pool.run(server.endpoint(), connpool::retry::idempotent, exchange, ec);
    REQUIRE_FALSE(ec);
    pool.run(server.endpoint(), connpool::retry::idempotent,
             [](tcp_pool::lease&) { return connpool::error_code(net::error::invalid_argument); }, ec);
    CHECK(ec == net::error::invalid_argument);
    const auto s = pool.stats();
    CHECK(s.retries == 0);
    CHECK(s.discarded == 1);
    CHECK(s.released == 1);
  }
}

TEST_CASE("async_run: the retry on a new connection, a done called twice, and an exchange that throws") {
  test::fd_guard fds;
  scripted_server server(second_request(act::rst));
  net::io_context io;  // the exchange's async operations run on the pool's executor: a thread runs it
  tcp_pool pool(io, quick());
  test::io_thread running(io);
  // An asynchronous exchange: write "get\n", read a line.
  auto async_exchange = [](tcp_pool::lease& l, tcp_pool::run_done done) {
    auto in = std::make_shared<std::string>();
    net::async_write(l.socket(), net::buffer("get\n", 4), [&l, in, done](connpool::error_code ec, std::size_t) {
      if (ec) return done(ec);
      net::async_read_until(l.socket(), net::dynamic_buffer(*in), '\n', [in, done](connpool::error_code rec, std::size_t) {
        done(rec ? rec : *in == "ok\n" ? connpool::error_code() : connpool::error_code(net::error::invalid_argument));
      });
    });
  };
  auto run = [&](connpool::retry r, auto fn) {
    std::promise<connpool::error_code> p;
    pool.async_run(server.endpoint(), r, fn, [&p](connpool::error_code ec) { p.set_value(ec); });
    auto f = p.get_future();
    REQUIRE(f.wait_for(5s) == std::future_status::ready);
    return f.get();
  };
  CHECK_FALSE(run(connpool::retry::idempotent, async_exchange));
  CHECK_FALSE(run(connpool::retry::idempotent, async_exchange));  // reset on connection 0: retried
  CHECK(pool.stats().retries == 1);
  CHECK(server.accepted() == 2);
  // A done called twice: the second call is ignored, the operation completes once.
  CHECK_FALSE(run(connpool::retry::idempotent, [&](tcp_pool::lease& l, tcp_pool::run_done done) {
    async_exchange(l, [done](connpool::error_code ec) {
      done(ec);
      done(net::error::eof);
    });
  }));
  CHECK(pool.stats().released == 3);
  // The second connection keeps answering; a throwing exchange discards its lease.
  CHECK(run(connpool::retry::idempotent, [](tcp_pool::lease&, tcp_pool::run_done) { throw std::runtime_error("x"); }) ==
        connpool::error::exchange_threw);
  CHECK(pool.stats().discarded == 2);  // connection 0's, and this one
  CHECK(eventually([&] { return pool.stats().open() == 0; }));
}
