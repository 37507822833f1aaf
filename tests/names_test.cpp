// Backends by name: a test resolver (address sets that change under load, failures, a lookup that
// hangs), real getaddrinfo with `localhost`, and Happy Eyeballs across addresses that refuse or
// never answer. Servers on 127.0.0.0/8 and ::1 only.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "servers/echo_server.hpp"
#include "support.hpp"

#include "servers/net.hpp"

using namespace std::chrono_literals;
using connpool::tcp_pool;
using test::eventually;
using endpoint = net::ip::tcp::endpoint;

namespace {

/// A resolver whose answers the test sets: per host name, addresses or an error; or no answer at
/// all (hang). Counts lookups.
struct table_resolver {
  struct state {
    std::mutex m;
    std::map<std::string, std::vector<endpoint>> addrs;
    connpool::error_code fail;
    bool hang = false;
    std::atomic<int> lookups{0};
    std::vector<tcp_pool::resolve_done> held;  // hanging lookups' completions, kept until the end
  };
  std::shared_ptr<state> s = std::make_shared<state>();
  void set(const std::string& name, std::vector<endpoint> eps) {
    std::lock_guard<std::mutex> lk(s->m);
    s->addrs[name] = std::move(eps);
  }
  void operator()(const connpool::host& h, tcp_pool::resolve_done done) const {
    ++s->lookups;
    std::unique_lock<std::mutex> lk(s->m);
    if (s->hang) {
      s->held.push_back(std::move(done));
      return;
    }
    const connpool::error_code ec = s->fail;
    auto it = s->addrs.find(h.name);
    std::vector<endpoint> eps = it == s->addrs.end() ? std::vector<endpoint>{} : it->second;
    lk.unlock();
    // From another thread, as a real resolver would answer.
    std::thread([done = std::move(done), ec, eps = std::move(eps)] {
      done(ec ? ec : eps.empty() ? connpool::error_code(net::error::host_not_found) : connpool::error_code(), eps);
    }).detach();
  }
};

/// An echo server on 127.0.0.N (N in 1..254), any port.
endpoint on(const char* addr) { return {net::ip::make_address(addr), 0}; }

}  // namespace

TEST_CASE("names: one key for all addresses; new connections spread by fewest connections; stats(host); endpoint()") {
  test::fd_guard fds;
  test::echo_server a(on("127.0.0.1")), b(on("127.0.0.2"));
  tcp_pool pool;
  table_resolver dns;
  dns.set("svc.test", {a.endpoint(), b.endpoint()});
  pool.set_resolver(dns);
  const connpool::host h("svc.test", 7000);  // the port in the answers is what counts
  std::vector<tcp_pool::lease> held;
  for (int i = 0; i < 4; ++i) held.push_back(pool.acquire(h));
  std::map<endpoint, int> per;
  for (auto& l : held) {
    ++per[l.endpoint()];
    CHECK(test::roundtrip(l, "hi") == "hi");
  }
  CHECK(per[a.endpoint()] == 2);
  CHECK(per[b.endpoint()] == 2);
  CHECK(dns.s->lookups == 1);  // cached
  for (auto& l : held) l.release();
  auto s = pool.stats(h);
  CHECK(s.created == 4);
  CHECK(s.idle == 4);
  CHECK(pool.stats(a.endpoint()).created == 0);  // not an endpoint key
  CHECK(pool.stats(connpool::host("other.test", 1)).created == 0);
  // Reused as one key, through every acquire form.
  auto l = pool.try_acquire(h);
  REQUIRE(l);
  CHECK(l.reused());
  l.release();
  std::promise<tcp_pool::lease> p;
  pool.async_acquire(h, [&p](connpool::error_code ec, tcp_pool::lease nl) {
    if (ec) p.set_exception(std::make_exception_ptr(connpool::system_error(ec)));
    else p.set_value(std::move(nl));
  });
  auto f = p.get_future();
  REQUIRE(f.wait_for(3s) == std::future_status::ready);
  auto al = f.get();
  CHECK(al.reused());
  al.release();
  CHECK(pool.stats(h).created == 4);
  CHECK(pool.stats().created == 4);
}

TEST_CASE("names: the first lookup's failure is the acquire's error; a later failure keeps the last good addresses") {
  test::fd_guard fds;
  test::echo_server a(on("127.0.0.1"));
  auto o = connpool::pool_options();
  o.resolve_interval = 50ms;
  tcp_pool pool(o);
  table_resolver dns;
  pool.set_resolver(dns);
  const connpool::host h("late.test", 1);
  connpool::error_code ec;
  auto l = pool.acquire(h, ec);
  CHECK(ec == net::error::host_not_found);
  CHECK_FALSE(l);
  CHECK(pool.stats(h).connect_failed == 1);
  dns.set("late.test", {a.endpoint()});
  l = pool.acquire(h, ec);
  REQUIRE_FALSE(ec);
  l.release();
  // Lookups fail from now on: refreshes keep the set, and acquires keep working.
  {
    std::lock_guard<std::mutex> lk(dns.s->m);
    dns.s->fail = net::error::host_not_found;
  }
  const int before = dns.s->lookups;
  CHECK(eventually([&] { return dns.s->lookups >= before + 2; }));  // refreshed while in use
  l = pool.acquire(h, ec);
  CHECK_FALSE(ec);
  CHECK(l.reused());
  auto fresh = pool.acquire(h, ec);  // a new connection, to the last good address
  CHECK_FALSE(ec);
  CHECK(fresh.endpoint() == a.endpoint());
  l.release();
  fresh.release();
  CHECK(pool.stats(h).address_removed == 0);
}

TEST_CASE("names: a refresh that removes an address closes its idle connections at once and its leased ones on release; none goes there again") {
  test::fd_guard fds;
  test::echo_server a(on("127.0.0.1")), b(on("127.0.0.2"));
  auto o = connpool::pool_options();
  o.resolve_interval = 50ms;
  tcp_pool pool(o);
  table_resolver dns;
  dns.set("moving.test", {a.endpoint(), b.endpoint()});
  pool.set_resolver(dns);
  const connpool::host h("moving.test", 1);
  std::vector<tcp_pool::lease> held;
  for (int i = 0; i < 6; ++i) held.push_back(pool.acquire(h));
  // Three of each; release two of b's, keep one of b's leased.
  std::vector<tcp_pool::lease> on_b;
  for (auto& l : held)
    if (l.endpoint() == b.endpoint()) on_b.push_back(std::move(l));
  REQUIRE(on_b.size() == 3);
  on_b[0].release();
  on_b[1].release();
  for (auto& l : held)
    if (l) l.release();
  // Load while the set changes: four threads acquire and release.
  std::atomic<bool> stop{false}, refreshed{false};
  std::atomic<int> after_refresh_on_b{0}, errors{0};
  std::vector<std::thread> load;
  for (int t = 0; t < 4; ++t)
    load.emplace_back([&] {
      while (!stop) {
        const bool done_before = refreshed.load();
        connpool::error_code ec;
        auto l = pool.acquire(h, ec);
        if (ec) {
          ++errors;
          continue;
        }
        if (done_before && l.endpoint() == b.endpoint()) ++after_refresh_on_b;
        if (test::roundtrip(l, "x") != "x") ++errors;
        l.release();
      }
    });
  dns.set("moving.test", {a.endpoint()});
  CHECK(eventually([&] { return pool.stats(h).address_removed >= 2; }));
  refreshed = true;
  std::this_thread::sleep_for(100ms);  // load runs on; not a synchronization
  stop = true;
  for (auto& t : load) t.join();
  CHECK(errors == 0);
  CHECK(after_refresh_on_b == 0);
  // The leased one closes when it comes back.
  const auto removed = pool.stats(h).address_removed;
  CHECK(test::roundtrip(on_b[2], "still") == "still");
  on_b[2].release();
  CHECK(pool.stats(h).address_removed == removed + 1);
  CHECK(eventually([&] { return b.counts().live == 0; }));
  const auto s = pool.stats(h);
  CHECK(s.idle + s.leased == s.open());
}

TEST_CASE("names: a lookup that never answers: the acquire ends by its deadline; the next lookup starts") {
  test::fd_guard fds;
  test::echo_server a(on("127.0.0.1"));
  auto o = connpool::pool_options();
  o.connect_timeout = 200ms;
  o.acquire_timeout = 2000ms;
  tcp_pool pool(o);
  table_resolver dns;
  dns.set("slow.test", {a.endpoint()});
  dns.s->hang = true;
  pool.set_resolver(dns);
  const connpool::host h("slow.test", 1);
  connpool::error_code ec;
  const auto t0 = std::chrono::steady_clock::now();
  auto l = pool.acquire(h, ec);
  CHECK(ec == connpool::error::connect_timeout);
  CHECK(std::chrono::steady_clock::now() - t0 < 1500ms);
  // A shorter acquire_timeout wins.
  connpool::pool_options o2 = o;
  o2.connect_timeout = 3000ms;
  o2.acquire_timeout = 200ms;
  tcp_pool short_pool(o2);
  short_pool.set_resolver(dns);
  l = short_pool.acquire(h, ec);
  CHECK(ec == connpool::error::acquire_timeout);
  // Answers again: the lookup in flight was given up, a new one starts and succeeds.
  {
    std::lock_guard<std::mutex> lk(dns.s->m);
    dns.s->hang = false;
  }
  CHECK(eventually([&] {
    auto x = pool.acquire(h, ec);
    if (ec) return false;
    x.release();
    return true;
  }));
  // A late answer to the abandoned lookup changes nothing.
  std::vector<tcp_pool::resolve_done> held;
  {
    std::lock_guard<std::mutex> lk(dns.s->m);
    held.swap(dns.s->held);
  }
  REQUIRE_FALSE(held.empty());
  for (auto& d : held) d(connpool::error_code(), {endpoint(net::ip::make_address("127.0.0.9"), 9)});
  auto x = pool.acquire(h);
  CHECK(x.endpoint() == a.endpoint());
  x.release();
  CHECK(pool.stats(h).address_removed == 0);
}

TEST_CASE("names: real getaddrinfo: localhost") {
  test::fd_guard fds;
  test::echo_server a(on("127.0.0.1"));
  tcp_pool pool;
  auto l = pool.acquire(connpool::host("localhost", a.endpoint().port()));
  CHECK(l.endpoint() == a.endpoint());
  CHECK(test::roundtrip(l, "local") == "local");
  l.release();
  CHECK(pool.stats(connpool::host("localhost", a.endpoint().port())).created == 1);
  // (A name that fails is tested with the test's resolver: a real one would ask a DNS server.)
}

TEST_CASE("names: Happy Eyeballs: an address that refuses falls through at once; one that never answers, after the delay") {
  test::fd_guard fds;
  test::echo_server a(on("127.0.0.1"));
  auto o = connpool::pool_options();
  o.happy_eyeballs_delay = 300ms;
  o.connect_timeout = 3000ms;
  tcp_pool pool(o);
  table_resolver dns;
  pool.set_resolver(dns);
  // ::1 with nothing listening: refused, so 127.0.0.1 starts at once.
  unsigned short closed_port;
  {
    net::io_context io;
    net::ip::tcp::acceptor acc(io, endpoint(net::ip::make_address("::1"), 0));
    closed_port = acc.local_endpoint().port();
  }
  dns.set("two-families.test", {endpoint(net::ip::make_address("::1"), closed_port), a.endpoint()});
  const connpool::host h("two-families.test", 1);
  auto t0 = std::chrono::steady_clock::now();
  auto l = pool.acquire(h);
  auto took = std::chrono::steady_clock::now() - t0;
  CHECK(l.endpoint() == a.endpoint());
  CHECK(took < 300ms);
  l.discard();
  // The refused address goes last for a second: the next connect tries 127.0.0.1 first.
  // An address that never answers (a full accept queue drops the SYN): the next starts after 300 ms.
  test::full_backlog stuck;
  dns.set("stuck.test", {stuck.acc.local_endpoint(), a.endpoint()});
  const connpool::host h2("stuck.test", 1);
  t0 = std::chrono::steady_clock::now();
  l = pool.acquire(h2);
  took = std::chrono::steady_clock::now() - t0;
  CHECK(l.endpoint() == a.endpoint());
  CHECK(took >= 300ms);
  CHECK(took < 2000ms);
  CHECK(pool.stats(h2).created == 1);
  CHECK(pool.stats(h2).connect_failed == 0);
  l.release();
  // Every address fails: the acquire gets the last error.
  dns.set("none.test", {endpoint(net::ip::make_address("::1"), closed_port),
                        endpoint(net::ip::make_address("127.0.0.1"), closed_port)});
  connpool::error_code ec;
  auto none = pool.acquire(connpool::host("none.test", 1), ec);
  CHECK(ec == net::error::connection_refused);
}

TEST_CASE("names: a synchronous acquire on the default pool's own thread: idle is served, a connect is would_block") {
  test::fd_guard fds;
  test::echo_server a(on("127.0.0.1"));
  tcp_pool pool;
  table_resolver dns;
  dns.set("own.test", {a.endpoint()});
  pool.set_resolver(dns);
  const connpool::host h("own.test", 1);
  pool.acquire(h).release();
  std::promise<std::pair<connpool::error_code, connpool::error_code>> inner;
  net::post(pool.get_executor(), [&] {
    connpool::error_code e1, e2;
    auto idle = pool.acquire(h, e1);  // served from idle at once
    auto fresh = pool.acquire(h, e2);  // needs a connect: that thread would wait for itself
    inner.set_value({e1, e2});
  });
  auto f = inner.get_future();
  REQUIRE(f.wait_for(3s) == std::future_status::ready);
  auto [e1, e2] = f.get();
  CHECK_FALSE(e1);
  CHECK(e2 == net::error::would_block);
}

TEST_CASE("names: a default pool destroyed while a lookup hangs returns at once; the acquire gets pool_closed") {
  test::fd_guard fds;
  table_resolver dns;
  dns.s->hang = true;
  std::promise<connpool::error_code> got;
  auto f = got.get_future();
  const auto t0 = std::chrono::steady_clock::now();
  {
    auto o = connpool::pool_options();
    o.connect_timeout = 5000ms;
    o.acquire_timeout = 5000ms;
    tcp_pool pool(o);
    pool.set_resolver(dns);
    pool.async_acquire(connpool::host("hanging.test", 1),
                       [&](connpool::error_code ec, tcp_pool::lease) { got.set_value(ec); });
    REQUIRE(eventually([&] { return dns.s->lookups == 1; }));
  }
  CHECK(std::chrono::steady_clock::now() - t0 < 2000ms);  // not the 5 s bounds
  REQUIRE(f.wait_for(1s) == std::future_status::ready);
  CHECK(f.get() == connpool::error::pool_closed);
  // The late answer finds the pool gone, and does nothing.
  std::vector<tcp_pool::resolve_done> held;
  {
    std::lock_guard<std::mutex> lk(dns.s->m);
    held.swap(dns.s->held);
  }
  for (auto& d : held) d(connpool::error_code(), {endpoint(net::ip::make_address("127.0.0.1"), 9)});
}
