// Real faults, the way users meet them. Each scenario checks, with the socket census: no dead
// connection handed out, no descriptor leaked, no CLOSE_WAIT once settled, every acquire back by its
// deadline, and counters that say what happened. Scenarios that loopback cannot show run in a network
// namespace the test makes (root); without root they skip with the reason, and with
// CONNPOOL_REQUIRE_FAULTS=1 in the environment (CI) a skip is a failure.
#include <doctest/doctest.h>

#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <thread>
#include <vector>

#include "../support.hpp"
#include "netns.hpp"
#include "servers/echo_server.hpp"
#include "servers/server_process.hpp"

using namespace std::chrono_literals;
using connpool::tcp_pool;
using connpool::diag::tcp_state;
using test::eventually;
using clock_type = std::chrono::steady_clock;

namespace {

connpool::pool_options opts(std::size_t max_per_endpoint = 64) {
  connpool::pool_options o;
  o.max_per_endpoint = max_per_endpoint;
  o.max_idle_per_endpoint = max_per_endpoint;
  o.acquire_timeout = 2000ms;
  o.connect_timeout = 2000ms;
  return o;
}

/// Hold `n` connections to `ep` at once, then release them: `n` idle connections.
void fill_idle(tcp_pool& pool, const net::ip::tcp::endpoint& ep, std::size_t n) {
  std::vector<tcp_pool::lease> ls;
  ls.reserve(n);
  for (std::size_t i = 0; i < n; ++i) ls.push_back(pool.acquire(ep));
  for (auto& l : ls) l.release();
}

/// An echo server, and a pool holding `n` idle connections to it, all accepted by the server.
struct idle_pool {
  explicit idle_pool(std::size_t n) : pool(opts(n)) {
    fill_idle(pool, ep, n);
    REQUIRE(server.wait_accepted(n));
    REQUIRE(pool.stats().idle == n);
  }
  test::echo_server server{test::loopback()};
  const net::ip::tcp::endpoint ep = server.endpoint();
  tcp_pool pool;
};

std::size_t close_wait(const net::ip::tcp::endpoint& ep) { return test::client_sockets(ep, tcp_state::close_wait); }

/// This process's sockets towards `ep` with unread bytes in their receive queue (/proc/self/net/tcp).
std::size_t with_unread_bytes(const net::ip::tcp::endpoint& ep) {
  std::size_t n = 0;
  if (std::FILE* f = std::fopen("/proc/self/net/tcp", "r")) {
    char line[512];
    if (std::fgets(line, sizeof line, f)) {
      while (std::fgets(line, sizeof line, f)) {
        char local[64], rem[64];
        unsigned long rx = 0, inode = 0;
        if (std::sscanf(line, "%*s %63s %63s %*x %*x:%lx %*s %*s %*s %*s %lu", local, rem, &rx, &inode) != 4) continue;
        net::ip::tcp::endpoint peer;
        if (inode != 0 && rx > 0 && connpool::diag::detail::parse_proc_addr(rem, false, peer) && peer == ep) ++n;
      }
    }
    std::fclose(f);
  }
  return n;
}

/// The highest open descriptor number of this process.
int highest_fd() {
  int top = -1;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (dirent* e = ::readdir(d))
      if (e->d_name[0] != '.') top = std::max(top, std::atoi(e->d_name));
    ::closedir(d);
  }
  return top;
}

long long ms_since(clock_type::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - t0).count();
}

std::string netns_unavailable(const test::scoped_netns& ns, bool need_nft) {
  if (!ns.why_not().empty()) return ns.why_not();
  if (need_nft && !test::scoped_netns::have_nft()) return "nft (Debian package nftables) is not installed";
  return {};
}

}  // namespace

TEST_CASE("faults: a peer's FIN on idle connections is answered at once: 1, 50, 1000 at a time") {
  for (std::size_t n : {std::size_t{1}, std::size_t{50}, std::size_t{1000}}) {
    CAPTURE(n);
    test::fd_guard fds;
    idle_pool f(n);
    auto& server = f.server;
  const auto& ep = f.ep;
  auto& pool = f.pool;
    const auto t0 = clock_type::now();
    server.close_all();
    CHECK(eventually([&] { return pool.stats().idle == 0; }, 5000ms));
    MESSAGE(n << " idle connections closed by the pool within " << ms_since(t0) << " ms of the server's FINs");
    CHECK(eventually([&] { return close_wait(ep) == 0; }));
    const auto s = pool.stats();
    CHECK(s.peer_closed == n);
    CHECK(s.created == n);
    test::check_fresh_roundtrip(pool, ep);
  }
}

TEST_CASE("faults: a peer's RST on idle connections closes them at once") {
  test::fd_guard fds;
  idle_pool f(20);
  auto& server = f.server;
  const auto& ep = f.ep;
  auto& pool = f.pool;
  server.reset_all();
  CHECK(eventually([&] { return pool.stats().idle == 0; }));
  CHECK(pool.stats().peer_reset == 20);
  test::check_fresh_roundtrip(pool, ep);
}

TEST_CASE("faults: stray bytes on idle connections: never handed out") {
  test::fd_guard fds;
  idle_pool f(20);
  auto& server = f.server;
  const auto& ep = f.ep;
  auto& pool = f.pool;
  SUBCASE("bytes alone: caught by the probe at hand-out") {
    server.send_all("junk");
    REQUIRE(eventually([&] { return with_unread_bytes(ep) == 20; }));
    std::vector<tcp_pool::lease> ls;
    for (int i = 0; i < 20; ++i) {
      ls.push_back(pool.acquire(ep));
      CHECK_FALSE(ls.back().reused());
      CHECK(test::roundtrip(ls.back(), "clean") == "clean");
    }
    CHECK(pool.stats().unexpected_data == 20);
    for (auto& l : ls) l.release();
    CHECK(pool.stats().idle == 20);
  }
  SUBCASE("bytes then FIN: closed by the idle watch without an acquire") {
    server.send_all("junk");
    server.close_all();
    CHECK(eventually([&] { return pool.stats().idle == 0; }));
    CHECK(pool.stats().unexpected_data + pool.stats().peer_closed == 20);
    CHECK(pool.stats().unexpected_data >= 1);
  }
  CHECK(eventually([&] { return close_wait(ep) == 0; }));
}

TEST_CASE("faults: server process killed with SIGKILL, connections idle and in use") {
  test::fd_guard fds;
  test::echo_server_process server(1);
  const auto ep = server.endpoint(0);
  tcp_pool pool(opts());
  fill_idle(pool, ep, 6);
  auto busy1 = pool.acquire(ep);
  auto busy2 = pool.acquire(ep);
  REQUIRE(test::roundtrip(busy1, "a") == "a");
  REQUIRE(pool.stats().idle == 4);

  server.kill();
  CHECK(eventually([&] { return pool.stats().idle == 0; }));
  auto s = pool.stats();
  CHECK(s.peer_closed + s.peer_reset == 4);

  // In use: the next exchange fails with an error at once; the release check does not keep it.
  connpool::error_code ec;
  net::write(busy1.socket(), net::buffer("b", 1), ec);
  char c;
  if (!ec) net::read(busy1.socket(), net::buffer(&c, 1), ec);
  CHECK(ec);
  busy1.release();
  busy2.discard();
  s = pool.stats();
  CHECK(s.idle == 0);
  CHECK(s.leased == 0);
  CHECK(s.discarded == 1);
  CHECK(s.peer_closed + s.peer_reset == 5);

  // Nobody listens any more: refused, at once, and the slot is freed.
  auto l = pool.acquire(ep, ec);
  CHECK(ec == net::error::connection_refused);
  CHECK(pool.stats().open() == 0);
  CHECK(eventually([&] { return close_wait(ep) == 0; }));
}

TEST_CASE("faults: listener gone (connection refused), then back on the same port") {
  test::fd_guard fds;
  std::optional<test::echo_server_process> server(std::in_place, 1);
  const auto ep = server->endpoint(0);
  tcp_pool pool(opts());
  {
    auto l = pool.acquire(ep);
    CHECK(test::roundtrip(l, "one") == "one");
    l.release();
  }
  server->kill();
  CHECK(eventually([&] { return pool.stats().idle == 0; }));
  for (int i = 0; i < 3; ++i) {
    connpool::error_code ec;
    const auto t0 = clock_type::now();
    auto l = pool.acquire(ep, ec);
    CHECK(ec == net::error::connection_refused);
    CHECK(ms_since(t0) < 2000);
  }
  CHECK(pool.stats().connect_failed == 3);
  CHECK(pool.stats().open() == 0);

  server->restart();
  auto l = pool.acquire(ep);
  CHECK_FALSE(l.reused());
  CHECK(test::roundtrip(l, "two") == "two");
  l.release();
  server.reset();
  CHECK(eventually([&] { return pool.stats().idle == 0 && close_wait(ep) == 0; }));
}

TEST_CASE("faults: peer restarts on the same port under load") {
  test::fd_guard fds;
  std::optional<test::echo_server_process> server(std::in_place, 1);
  const auto ep = server->endpoint(0);
  auto o = opts(4);
  o.acquire_timeout = 1000ms;
  o.connect_timeout = 1000ms;
  constexpr int threads = 4;
  std::atomic<bool> stop{false};
  std::atomic<long long> settled_ns{std::numeric_limits<long long>::max()};  // the kill's FINs had arrived
  std::atomic<int> ok{0}, failed_exchange{0}, failed_acquire{0}, dead_handouts{0};
  std::atomic<long long> slowest_acquire_ms{0};
  {
    tcp_pool pool(o);
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t) {
      ts.emplace_back([&, t] {
        for (int i = 0; !stop; ++i) {
          const auto start = clock_type::now();
          connpool::error_code ec;
          auto l = pool.acquire(ep, ec);
          const long long took = ms_since(start);
          long long prev = slowest_acquire_ms.load();
          while (took > prev && !slowest_acquire_ms.compare_exchange_weak(prev, took)) {
          }
          if (ec) {
            ++failed_acquire;
            std::this_thread::yield();
            continue;
          }
          const std::string msg = std::to_string(t) + ":" + std::to_string(i);
          std::string back(msg.size(), '\0');
          net::write(l.socket(), net::buffer(msg), ec);
          if (!ec) net::read(l.socket(), net::buffer(back), ec);
          if (!ec && back == msg) {
            ++ok;
            l.release();
            continue;
          }
          ++failed_exchange;
          if (l.reused() && start.time_since_epoch().count() > settled_ns.load()) ++dead_handouts;
          l.discard();
        }
      });
    }
    auto stop_all = [&] {
      stop = true;
      for (auto& th : ts) th.join();
    };
    const bool warmed = eventually([&] { return ok >= 200; }, 5000ms);
    server->kill();
    // Settled: no connection towards the dead server is ESTABLISHED any more (each got its FIN).
    const bool settled = eventually([&] { return test::client_sockets(ep, tcp_state::established) == 0; });
    settled_ns = clock_type::now().time_since_epoch().count();
    server->restart();
    const int ok_at_restart = ok;
    const bool recovered = eventually([&] { return ok >= ok_at_restart + 200; }, 5000ms);
    stop_all();
    CHECK(warmed);
    CHECK(settled);
    CHECK(recovered);
    const auto s = pool.stats();
    MESSAGE("ok=" << ok.load() << " failed exchanges=" << failed_exchange.load() << " failed acquires="
                  << failed_acquire.load() << " slowest acquire=" << slowest_acquire_ms.load() << " ms created="
                  << s.created << " peer_closed=" << s.peer_closed << " peer_reset=" << s.peer_reset);
    CHECK(dead_handouts == 0);
    CHECK(slowest_acquire_ms < 1000 + 500);
    CHECK(s.leased == 0);
    CHECK(s.waiting == 0);
    CHECK(s.connecting == 0);
  }
  server.reset();
  CHECK(eventually([&] { return close_wait(ep) == 0; }));
}

TEST_CASE("faults: descriptor limit: acquire fails with EMFILE, the pool recovers") {
  test::fd_guard fds;
  test::echo_server_process server(1);
  const auto ep = server.endpoint(0);
  tcp_pool pool(opts());  // fresh: its first connection is made under the limit
  rlimit saved{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &saved) == 0);
  rlimit low = saved;
  low.rlim_cur = static_cast<rlim_t>(highest_fd() + 8);
  std::vector<tcp_pool::lease> ls;
  connpool::error_code ec;
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &low) == 0);
  // Take every descriptor left under the limit, then give back three.
  std::vector<int> hog;
  for (int fd; (fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0;) hog.push_back(fd);
  const int open_errno = errno;
  for (int i = 0; i < 3 && !hog.empty(); ++i) {
    ::close(hog.back());
    hog.pop_back();
  }
  for (int i = 0; i < 10 && !ec; ++i) {
    auto l = pool.acquire(ep, ec);
    if (!ec) ls.push_back(std::move(l));
  }
  for (int fd : hog) ::close(fd);
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &saved) == 0);
  CHECK(open_errno == EMFILE);
  CHECK(ec == net::error::no_descriptors);
  CHECK(ls.size() == 3);
  CHECK(pool.stats().connect_failed == 1);
  CHECK(pool.stats().open() == ls.size());
  for (auto& l : ls) l.release();
  auto l = pool.acquire(ep, ec);
  CHECK_FALSE(ec);
  CHECK(l.reused());
  CHECK(test::roundtrip(l, "again") == "again");
  l.release();
}

TEST_CASE("faults: a peer that stops reading: the write fails by TCP_USER_TIMEOUT, the lease is discarded") {
  test::fd_guard fds;
  net::io_context io;
  net::ip::tcp::acceptor quiet(io, test::loopback());  // completes handshakes, never accepts or reads
  auto o = opts();
  o.user_timeout = 1000ms;
  tcp_pool pool(o);
  auto l = pool.acquire(quiet.local_endpoint());
  const int fd = l.socket().native_handle();
  timeval safety{20, 0};  // a broken build fails instead of hanging
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &safety, sizeof safety);
  std::vector<char> chunk(1 << 16, 'x');
  const auto t0 = clock_type::now();
  int err = 0;
  std::size_t sent = 0;
  while (err == 0) {
    const ssize_t n = ::send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL);
    if (n < 0)
      err = errno;
    else
      sent += static_cast<std::size_t>(n);
  }
  MESSAGE("sent " << sent << " bytes, then " << std::string(std::strerror(err)) << " after " << ms_since(t0) << " ms");
  CHECK(err == ETIMEDOUT);
  l.discard();
  CHECK(pool.stats().discarded == 1);
  CHECK(pool.stats().open() == 0);
}

TEST_CASE("faults (netns): SYNs dropped: acquire fails with connect_timeout by its deadline") {
  test::fd_guard fds;
  test::scoped_netns ns;
  if (test::cannot_run(netns_unavailable(ns, true))) return;
  REQUIRE(ns.nft("add rule inet t in tcp dport 7000 tcp flags syn drop"));
  const net::ip::tcp::endpoint ep(net::ip::make_address("127.0.0.1"), 7000);
  auto o = opts();
  o.connect_timeout = 300ms;
  tcp_pool pool(o);
  connpool::error_code ec;
  const auto t0 = clock_type::now();
  auto l = pool.acquire(ep, ec);
  const auto took = ms_since(t0);
  CHECK(ec == connpool::error::connect_timeout);
  CHECK(took >= 290);
  CHECK(took < 1300);
  CHECK(pool.stats().connect_failed == 1);
  CHECK(pool.stats().open() == 0);
}

TEST_CASE("faults (netns): blackholed peer: keepalive closes idle connections, TCP_USER_TIMEOUT fails a lease") {
  test::fd_guard fds;
  test::scoped_netns ns;
  if (test::cannot_run(netns_unavailable(ns, true))) return;
  test::echo_server server(test::loopback());
  const auto ep = server.endpoint();
  auto o = opts();
  o.keepalive_idle = 1s;
  o.keepalive_interval = 1s;
  o.keepalive_count = 2;
  o.user_timeout = 1500ms;
  tcp_pool pool(o);
  fill_idle(pool, ep, 3);
  auto busy = pool.acquire(ep);
  REQUIRE(test::roundtrip(busy, "hi") == "hi");
  const std::string port = std::to_string(ep.port());
  REQUIRE(ns.nft("add rule inet t in tcp dport " + port + " drop"));
  REQUIRE(ns.nft("add rule inet t in tcp sport " + port + " drop"));
  const auto t0 = clock_type::now();

  // In use: a request goes out and nothing comes back; TCP_USER_TIMEOUT aborts the connection.
  const int fd = busy.socket().native_handle();
  timeval safety{20, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &safety, sizeof safety);
  REQUIRE(::send(fd, "ping", 4, MSG_NOSIGNAL) == 4);
  char buf[4];
  const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
  const int err = n < 0 ? errno : 0;
  MESSAGE("in use: recv " << n << " (" << std::string(std::strerror(err)) << ") after " << ms_since(t0) << " ms");
  CHECK(n < 0);
  CHECK(err == ETIMEDOUT);
  busy.discard();

  // Idle: keepalive probes go unanswered; the idle watch sees the error and closes them.
  CHECK(eventually([&] { return pool.stats().idle == 0; }, 10000ms));
  MESSAGE("idle: all closed after " << ms_since(t0) << " ms");
  CHECK(pool.stats().peer_reset == 2);
  CHECK(pool.stats().discarded == 1);
  CHECK(pool.stats().open() == 0);
}

TEST_CASE("faults (netns): ephemeral ports exhausted: a clear error, no leak") {
  test::fd_guard fds;
  test::scoped_netns ns;
  if (test::cannot_run(netns_unavailable(ns, false))) return;
  test::echo_server server(test::loopback());  // bound before the range shrinks
  const auto ep = server.endpoint();
  REQUIRE(ns.sysctl("net/ipv4/ip_local_port_range", "40000 40009"));
  tcp_pool pool(opts());
  std::vector<tcp_pool::lease> ls;
  connpool::error_code ec;
  for (int i = 0; i < 20 && !ec; ++i) {
    auto l = pool.acquire(ep, ec);
    if (!ec) ls.push_back(std::move(l));
  }
  CHECK(ec == connpool::error_code(EADDRNOTAVAIL, net::error::get_system_category()));
  CHECK(ls.size() == 10);
  CHECK(pool.stats().connect_failed == 1);
  CHECK(pool.stats().open() == ls.size());
  for (auto& l : ls) CHECK(test::roundtrip(l, "x") == "x");
  for (auto& l : ls) l.release();
  CHECK(pool.stats().idle == ls.size());
}
