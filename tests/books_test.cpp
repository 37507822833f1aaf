// The books without I/O (detail/books.hpp): decisions driven step by step with a clock the test
// sets, no sockets and no sleeps; then a seeded fuzzer against a small reference model.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <deque>
#include <functional>
#include <map>
#include <ostream>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "connpool/detail/books.hpp"
#include "connpool/detail/retry_budget.hpp"

// The books decide without I/O: they must not pull in Asio (either one).
#if defined(ASIO_VERSION) || defined(BOOST_ASIO_VERSION)
#error "connpool/detail/books.hpp includes Asio"
#endif

using namespace std::chrono_literals;
namespace d = connpool::detail;
using books = d::books<int, std::hash<int>, std::equal_to<int>>;
using d::time_point;

namespace {
/// A failed connect's error, as the I/O layer would pass it on (the books only carry it).
connpool::error_code connect_error() { return connpool::error::connect_timeout; }


const time_point t0 = time_point(std::chrono::hours(1));

struct test_waiter final : d::waiter_node {
  using waiter_node::waiter_node;
  void granted(d::grant g) override {
    result = g;
    done = true;
  }
  d::grant result;
  bool done = false;
};

/// A pool's books with nodes the test owns.
struct fixture {
  explicit fixture(connpool::pool_options o, std::uint64_t seed = 1) : b(o, seed) {}

  /// A new acquire of `key` that must get a slot and connect.
  d::conn_node* connect(int key, time_point now) {
    auto& e = b.get(key, now);
    d::grant g = b.try_grant(e, now, dead);
    REQUIRE(g.slot);
    return connected(e, now);
  }
  d::conn_node* connected(d::ep_node& e, time_point now) {
    d::conn_node* c = b.connected(e, nullptr, now, dead);
    c->payload = c;  // what the graveyard reports
    return c;
  }
  d::grant acquire(int key, time_point now) { return b.try_grant(b.get(key, now), now, dead); }
  std::size_t buried(connpool::close_mode mode) const {
    return static_cast<std::size_t>(
        std::count_if(dead.begin(), dead.end(), [&](const d::buried& x) { return x.mode == mode; }));
  }

  books b;
  d::graveyard dead;
};

connpool::pool_options opts() {
  connpool::pool_options o;
  o.max_per_endpoint = 2;
  o.max_idle_per_endpoint = 8;
  o.idle_timeout = 0ms;
  o.endpoint_grace = 0ms;
  return o;
}

}  // namespace

TEST_CASE("books: the most recently released idle connection first; gauges follow the states") {
  fixture f(opts());
  auto* a = f.connect(1, t0);
  auto* c = f.connect(1, t0);
  f.b.released(*a, d::probe_result::healthy, t0, f.dead);
  f.b.released(*c, d::probe_result::healthy, t0 + 1ms, f.dead);
  CHECK(f.b.stats(1).idle == 2);
  CHECK(f.b.take_idle(*f.b.find(1)) == c);
  CHECK(f.b.take_idle(*f.b.find(1)) == a);
  CHECK(f.b.take_idle(*f.b.find(1)) == nullptr);
  CHECK(f.b.stats(1).leased == 2);
  CHECK(f.b.stats(1).created == 2);
  f.b.check_invariants();
}

TEST_CASE("books: waiters are served first come, first served, per endpoint, by the connection that comes back") {
  fixture f(opts());
  auto* a = f.connect(1, t0);
  auto* c = f.connect(1, t0);
  auto& e = *f.b.find(1);
  test_waiter w1(&e), w2(&e);
  CHECK(!f.acquire(1, t0));
  f.b.enqueue(w1);
  f.b.enqueue(w2);
  CHECK(f.b.stats(1).waiting == 2);
  // Another endpoint is not held up by them.
  auto* other = f.connect(2, t0);
  f.b.released(*other, d::probe_result::healthy, t0, f.dead);
  CHECK(f.acquire(2, t0).conn == other);
  f.b.check_invariants();

  f.b.released(*c, d::probe_result::healthy, t0, f.dead);
  CHECK(w1.done);
  CHECK(w1.result.conn == c);
  CHECK(!w2.done);
  // A connection discarded frees a slot: the next waiter gets it.
  f.b.discarded(*a, connpool::close_mode::abortive, t0, f.dead);
  CHECK(w2.done);
  CHECK(w2.result.slot);
  CHECK(f.buried(connpool::close_mode::abortive) == 1);
  CHECK(f.b.stats(1).discarded == 1);
  f.b.check_invariants();
}

TEST_CASE("books: a waiter leaves on its deadline, counted; a new acquire never passes a waiter of its endpoint") {
  fixture f(opts());
  f.connect(1, t0);
  auto* c = f.connect(1, t0);
  auto& e = *f.b.find(1);
  test_waiter w(&e);
  f.b.enqueue(w);
  CHECK(!f.acquire(1, t0));  // a slot is not free; nor would an idle connection be taken
  f.b.leave(w, true, t0 + 5s);
  CHECK(!w.queued());
  CHECK(f.b.stats(1).acquire_timeouts == 1);
  CHECK(f.b.stats(1).waiting == 0);
  f.b.released(*c, d::probe_result::healthy, t0, f.dead);
  CHECK(f.b.stats(1).idle == 1);
  f.b.check_invariants();
}

TEST_CASE("books: under max_total, room goes to the oldest waiter that needs it, evicting the LRU idle connection") {
  connpool::pool_options o = opts();
  o.max_total = 2;
  fixture f(o);
  auto* a = f.connect(1, t0);
  auto* c = f.connect(2, t0);
  test_waiter w3(&f.b.get(3, t0)), w4(&f.b.get(4, t0));
  CHECK(!f.acquire(3, t0));
  f.b.enqueue(w3);
  CHECK(!f.acquire(4, t0));
  f.b.enqueue(w4);
  f.b.check_invariants();
  // A connection that comes back idle is evicted at once for the oldest waiter.
  f.b.released(*c, d::probe_result::healthy, t0 + 1ms, f.dead);
  CHECK(w3.done);
  CHECK(w3.result.slot);
  CHECK(!w4.done);
  CHECK(f.b.stats(2).surplus == 1);
  f.b.check_invariants();
  // The slot fails: its room goes to the next waiter.
  f.b.connect_failed(*f.b.find(3), connect_error(), t0, f.dead);
  CHECK(w4.done);
  CHECK(f.b.stats(3).connect_failed == 1);
  f.b.check_invariants();
  // Without waiters, a new acquire evicts the least recently used idle connection of another endpoint.
  f.connected(*f.b.find(4), t0);
  f.b.released(*a, d::probe_result::healthy, t0 + 2ms, f.dead);
  CHECK(f.acquire(5, t0 + 3ms).slot);
  CHECK(f.b.stats(1).surplus == 1);
  CHECK(f.b.stats().open() == 2);
  f.b.check_invariants();
}

TEST_CASE("books: idle_timeout retires exactly at its time, in one pass, and says when the next is due") {
  connpool::pool_options o = opts();
  o.idle_timeout = 1000ms;
  fixture f(o);
  auto* a = f.connect(1, t0);
  auto* c = f.connect(2, t0);
  CHECK(f.b.next_due() == d::never);
  f.b.released(*a, d::probe_result::healthy, t0, f.dead);
  f.b.released(*c, d::probe_result::healthy, t0 + 300ms, f.dead);
  CHECK(f.b.next_due() == t0 + 1000ms);
  CHECK(f.b.expire(t0 + 999ms, f.dead) == t0 + 1000ms);
  CHECK(f.dead.empty());
  CHECK(f.b.expire(t0 + 1000ms, f.dead) == t0 + 1300ms);
  CHECK(f.dead.size() == 1);
  CHECK(f.dead[0].conn == a);
  CHECK(f.b.stats(1).idle_timeout == 1);
  CHECK(f.b.expire(t0 + 1300ms, f.dead) == d::never);
  CHECK(f.b.stats().idle == 0);
  f.b.check_invariants();
}

TEST_CASE("books: the health check is due by idle time since the last lease or passed check, or when put back") {
  connpool::pool_options o = opts();
  o.validate_after_idle = 1000ms;
  fixture f(o);
  auto* c = f.connect(1, t0);
  f.b.released(*c, d::probe_result::healthy, t0, f.dead);
  CHECK(f.b.take_idle(*f.b.find(1)) == c);
  CHECK(!f.b.needs_check(*c, t0 + 999ms));
  CHECK(f.b.needs_check(*c, t0 + 1000ms));
  // Passed at +1000: fresh for another second.
  f.b.check_passed(*c, t0 + 1000ms);
  CHECK(!f.b.needs_check(*c, t0 + 1999ms));
  CHECK(f.b.needs_check(*c, t0 + 2000ms));
  // Put back unchecked (its acquire's deadline passed): due whatever its idle time; not reused.
  const auto reused = f.b.stats(1).reused;
  f.b.put_back(*c, /*unchecked=*/true, /*timed_out=*/true, t0 + 2000ms, f.dead);
  CHECK(f.b.stats(1).reused == reused - 1);
  CHECK(f.b.stats(1).acquire_timeouts == 1);
  CHECK(c->idle_since == t0);  // its idle time kept: released at t0
  CHECK(f.b.stats(1).idle == 1);
  CHECK(f.b.take_idle(*f.b.find(1)) == c);
  CHECK(f.b.needs_check(*c, t0 + 2001ms));
  // A lease clears it.
  f.b.released(*c, d::probe_result::healthy, t0 + 2002ms, f.dead);
  CHECK(f.b.take_idle(*f.b.find(1)) == c);
  CHECK(!f.b.needs_check(*c, t0 + 2003ms));
  // A connection handed from a release to a waiter is fresh.
  connpool::pool_options o1 = opts();
  o1.max_per_endpoint = 1;
  o1.validate_after_idle = 1000ms;
  fixture g(o1);
  auto* x = g.connect(1, t0);
  test_waiter w(g.b.find(1));
  g.b.enqueue(w);
  g.b.released(*x, d::probe_result::healthy, t0 + 5s, g.dead);
  REQUIRE(w.result.conn == x);
  CHECK(!g.b.needs_check(*x, t0 + 5s));
  g.b.check_invariants();
  f.b.check_invariants();
}

TEST_CASE("books: background checks start when due, the connection stays idle but is never handed out") {
  connpool::pool_options o = opts();
  o.max_per_endpoint = 3;
  o.ping_interval = 1000ms;
  o.idle_timeout = 10s;
  fixture f(o);
  auto* a = f.connect(1, t0);
  auto* b = f.connect(1, t0);
  f.b.released(*a, d::probe_result::healthy, t0, f.dead);
  f.b.released(*b, d::probe_result::healthy, t0 + 300ms, f.dead);
  // Not pinging until the caller has a check.
  CHECK(f.b.next_due() == t0 + 10s);
  f.b.pinging(true);
  CHECK(f.b.next_due() == t0 + 1000ms);
  CHECK(f.b.idle_due(*b) == t0 + 1300ms);  // what a release arms the timer by
  std::vector<d::conn_node*> due;
  CHECK(f.b.expire(t0 + 999ms, f.dead, &due) == t0 + 1000ms);
  CHECK(due.empty());
  CHECK(f.b.expire(t0 + 1000ms, f.dead, &due) == t0 + 1300ms);
  REQUIRE(due.size() == 1);
  CHECK(due[0] == a);
  CHECK(a->check == d::check_mark::pinging);
  CHECK(f.b.stats(1).idle == 2);  // still idle
  f.b.check_invariants();
  // The acquire takes b; the next one passes a by and gets a slot.
  CHECK(f.acquire(1, t0 + 1001ms).conn == b);
  d::grant g = f.acquire(1, t0 + 1001ms);
  CHECK(!g.conn);
  CHECK(g.slot);
  f.connected(*f.b.find(1), t0 + 1001ms);
  // At max_per_endpoint, an acquire waits although a is idle.
  test_waiter w(f.b.find(1));
  CHECK(!f.acquire(1, t0 + 1002ms));
  f.b.enqueue(w);
  f.b.check_invariants();
  // a passes: it goes to the waiter.
  f.b.ping_done(*a, true, d::probe_result::healthy, t0 + 1010ms, f.dead);
  CHECK(w.done);
  CHECK(w.result.conn == a);
  CHECK(a->check == d::check_mark::none);
  f.b.check_invariants();
  // Back idle: its next check is due ping_interval after it passed, or after its release.
  f.b.released(*a, d::probe_result::healthy, t0 + 2000ms, f.dead);
  due.clear();
  f.b.expire(t0 + 2999ms, f.dead, &due);
  CHECK(due.empty());
  f.b.expire(t0 + 3000ms, f.dead, &due);
  REQUIRE(due.size() == 1);
  CHECK(due[0] == a);
  // It fails: closed with RST, counted validation_failed.
  f.dead.clear();
  f.b.ping_done(*a, false, d::probe_result::healthy, t0 + 3001ms, f.dead);
  CHECK(f.b.stats(1).validation_failed == 1);
  REQUIRE(f.dead.size() == 1);
  CHECK(f.dead[0].conn == a);
  CHECK(f.dead[0].mode == connpool::close_mode::abortive);
  f.b.check_invariants();
}

TEST_CASE("books: a passed background check keeps the connection's idle time; idle_timeout and close() retire it meanwhile") {
  connpool::pool_options o = opts();
  o.ping_interval = 1000ms;
  o.idle_timeout = 2500ms;
  fixture f(o);
  f.b.pinging(true);
  auto* a = f.connect(1, t0);
  f.b.released(*a, d::probe_result::healthy, t0, f.dead);
  std::vector<d::conn_node*> due;
  f.b.expire(t0 + 1000ms, f.dead, &due);
  REQUIRE(due.size() == 1);
  f.b.ping_done(*a, true, d::probe_result::healthy, t0 + 1000ms, f.dead);
  CHECK(f.b.next_due() == t0 + 2000ms);
  due.clear();
  f.b.expire(t0 + 2000ms, f.dead, &due);
  REQUIRE(due.size() == 1);
  CHECK(f.b.next_due() == t0 + 2500ms);  // idle_timeout counts from the release, pings or not
  const std::uint64_t id = a->id;
  f.b.expire(t0 + 2500ms, f.dead, &due);
  CHECK(f.b.stats(1).idle_timeout == 1);
  CHECK(f.b.lookup(id) == nullptr);  // the I/O layer's ping_done finds it gone
  f.b.check_invariants();
  // A check that passes but whose probe then finds a FIN: peer_closed.
  auto* b = f.connect(2, t0 + 3s);
  f.b.released(*b, d::probe_result::healthy, t0 + 3s, f.dead);
  due.clear();
  f.b.expire(t0 + 4s, f.dead, &due);
  REQUIRE(due.size() == 1);
  f.b.ping_done(*b, true, d::probe_result::peer_closed, t0 + 4s, f.dead);
  CHECK(f.b.stats(2).peer_closed == 1);
  // close() retires a connection whose check runs.
  auto* c = f.connect(3, t0 + 5s);
  f.b.released(*c, d::probe_result::healthy, t0 + 5s, f.dead);
  due.clear();
  f.b.expire(t0 + 6s, f.dead, &due);
  REQUIRE(due.size() == 1);
  const std::uint64_t cid = c->id;
  f.b.close(t0 + 6s, f.dead);
  CHECK(f.b.lookup(cid) == nullptr);
  CHECK(f.b.stats(3).pool_closed == 1);
  f.b.check_invariants();
}

TEST_CASE("books: the ping queue exists only while pings are on; turning them on queues every idle connection") {
  connpool::pool_options o = opts();
  o.ping_interval = 1000ms;
  fixture f(o);
  auto* a = f.connect(1, t0);
  auto* b = f.connect(2, t0);
  f.b.released(*a, d::probe_result::healthy, t0, f.dead);
  f.b.released(*b, d::probe_result::healthy, t0 + 10ms, f.dead);
  CHECK(f.b.next_due() == d::never);
  CHECK(f.b.idle_due(*a) == d::never);
  f.b.check_invariants();
  f.b.pinging(true);
  CHECK(f.b.next_due() == t0 + 1000ms);
  f.b.check_invariants();
  std::vector<d::conn_node*> due;
  f.b.expire(t0 + 1010ms, f.dead, &due);
  CHECK(due.size() == 2);
  // Off while both checks run: they end, and nothing is queued again.
  f.b.pinging(false);
  f.b.ping_done(*a, true, d::probe_result::healthy, t0 + 1020ms, f.dead);
  f.b.ping_done(*b, true, d::probe_result::healthy, t0 + 1020ms, f.dead);
  CHECK(f.b.next_due() == d::never);
  CHECK(f.b.stats().idle == 2);
  f.b.check_invariants();
}

TEST_CASE("books: under max_total, a connection whose check runs may be evicted, its own endpoint's included") {
  connpool::pool_options o = opts();
  o.max_total = 1;
  o.ping_interval = 1000ms;
  fixture f(o);
  f.b.pinging(true);
  auto* a = f.connect(1, t0);
  f.b.released(*a, d::probe_result::healthy, t0, f.dead);
  std::vector<d::conn_node*> due;
  f.b.expire(t0 + 1s, f.dead, &due);
  REQUIRE(due.size() == 1);
  CHECK(f.acquire(1, t0 + 1s).slot);
  CHECK(f.b.stats(1).surplus == 1);
  CHECK(f.b.stats().open() == 1);
  f.b.check_invariants();
}

TEST_CASE("books: max_uses retires a connection at its last lease; max_waiting_per_endpoint refuses the next waiter") {
  connpool::pool_options o = opts();
  o.max_uses = 3;
  o.max_per_endpoint = 1;
  o.max_waiting_per_endpoint = 2;
  fixture f(o);
  auto* c = f.connect(1, t0);
  f.b.released(*c, d::probe_result::healthy, t0, f.dead);
  CHECK(f.b.take_idle(*f.b.find(1)) == c);
  f.b.released(*c, d::probe_result::healthy, t0, f.dead);
  CHECK(f.b.take_idle(*f.b.find(1)) == c);
  // Two waiters may queue; a third is refused.
  test_waiter w1(f.b.find(1)), w2(f.b.find(1));
  CHECK(f.b.may_wait(*f.b.find(1)));
  f.b.enqueue(w1);
  CHECK(f.b.may_wait(*f.b.find(1)));
  f.b.enqueue(w2);
  CHECK_FALSE(f.b.may_wait(*f.b.find(1)));
  CHECK(f.b.stats(1).waiters_rejected == 1);
  // The third release is its last: closed, and its place goes to the oldest waiter as a slot.
  f.b.released(*c, d::probe_result::healthy, t0, f.dead);
  CHECK(f.b.stats(1).max_uses == 1);
  CHECK(w1.done);
  CHECK(w1.result.slot);
  CHECK_FALSE(w2.done);
  f.b.check_invariants();
}

TEST_CASE("books: lease_warn_after reports each lease held that long once, in start order, and tells its end apart") {
  connpool::pool_options o = opts();
  o.max_per_endpoint = 4;
  o.lease_warn_after = 100ms;
  fixture f(o);
  CHECK(f.b.watching_leases());
  auto* a = f.connect(1, t0);
  auto* b = f.connect(1, t0);
  auto* c = f.connect(2, t0);
  f.b.watch_lease(*a, t0);
  f.b.watch_lease(*b, t0 + 30ms);
  f.b.watch_lease(*c, t0 + 20ms);  // read from a coarse clock on another thread: kept in order
  f.b.check_invariants();
  CHECK(f.b.next_due() == t0 + 100ms);
  std::vector<d::conn_node*> seen;
  auto note = [&](d::conn_node& n, d::clock::duration) { seen.push_back(&n); };
  f.b.overdue(t0 + 99ms, note);
  CHECK(seen.empty());
  f.b.overdue(t0 + 100ms, note);
  CHECK(seen == std::vector<d::conn_node*>{a});
  CHECK(f.b.stats(1).held_long == 1);
  CHECK(f.b.stats(1).leases_held_long == 1);
  CHECK(f.b.next_due() == t0 + 130ms);
  // `b` ends before its time: never reported, and its end is not a long lease's.
  CHECK_FALSE(f.b.lease_done(*b));
  f.b.released(*b, d::probe_result::healthy, t0 + 50ms, f.dead);
  CHECK(f.b.next_due() == t0 + 130ms);  // `c`, clamped to `b`'s start
  f.b.overdue(t0 + 10s, note);
  CHECK(seen == std::vector<d::conn_node*>{a, c});
  f.b.overdue(t0 + 20s, note);  // once each
  CHECK(seen.size() == 2);
  CHECK(f.b.next_due() == d::never);
  CHECK(f.b.stats().held_long == 2);
  f.b.check_invariants();
  // `a` ends: it was reported, so its end is reported too; the gauge falls, the counter stays.
  CHECK(f.b.lease_done(*a));
  f.b.released(*a, d::probe_result::healthy, t0 + 20s, f.dead);
  CHECK(f.b.stats(1).held_long == 0);
  CHECK(f.b.stats(1).leases_held_long == 1);
  // `c` is retired without lease_done() (a discard): the books drop its watch themselves.
  f.b.discarded(*c, connpool::close_mode::graceful, t0 + 20s, f.dead);
  CHECK(f.b.stats().held_long == 0);
  CHECK(f.b.stats().leases_held_long == 2);
  // A watched lease retired before it was reported leaves the list with it.
  auto* d2 = f.connect(2, t0 + 20s);
  f.b.watch_lease(*d2, t0 + 20s);
  f.b.discarded(*d2, connpool::close_mode::graceful, t0 + 20s, f.dead);
  CHECK(f.b.next_due() == d::never);
  f.b.check_invariants();
  // A lease taken again from idle is watched from its new start.
  auto* again = f.b.take_idle(*f.b.find(1));
  REQUIRE(again);
  f.b.watch_lease(*again, t0 + 30s);
  CHECK(f.b.next_due() == t0 + 30s + 100ms);
  f.b.check_invariants();
}

TEST_CASE("books: min_idle_per_endpoint keeps the last idle connections past idle_timeout while the endpoint is in use, and refills it") {
  connpool::pool_options o = opts();
  o.max_per_endpoint = 4;
  o.min_idle_per_endpoint = 2;
  o.idle_timeout = 1s;
  o.endpoint_grace = 10s;
  fixture f(o);
  auto* a = f.connect(1, t0);
  auto* b = f.connect(1, t0);
  auto* c = f.connect(1, t0);
  for (auto* n : {a, b, c}) f.b.released(*n, d::probe_result::healthy, t0, f.dead);
  std::vector<d::ep_node*> refills;
  // The first release left one idle: a refill was asked; by its time three are idle, and it is dropped.
  CHECK(f.b.next_due() <= t0 + 200ms);
  f.b.expire(t0 + 200ms, f.dead, nullptr, &refills);
  CHECK(refills.empty());
  CHECK(f.b.next_due() == t0 + 1s);
  f.b.expire(t0 + 1s, f.dead, nullptr, &refills);
  CHECK(f.b.stats(1).idle_timeout == 1);  // the one above the minimum
  CHECK(f.b.stats(1).idle == 2);           // the minimum stays, renewed
  CHECK(refills.empty());
  CHECK(f.b.next_due() == t0 + 2s);
  f.b.check_invariants();
  // A renewed connection is checked before its next hand-out (it has been idle all along).
  d::conn_node* kept = f.b.peek_idle(*f.b.find(1));
  REQUIRE(kept);
  CHECK(f.b.needs_check(*kept, t0 + 1s));
  // One of them closes (a discarded lease): below the minimum, a refill is due within the jitter.
  d::conn_node* x = f.b.take_idle(*f.b.find(1));
  REQUIRE(x);
  f.b.discarded(*x, connpool::close_mode::graceful, t0 + 1s, f.dead);
  CHECK(f.b.next_due() <= t0 + 1s + 200ms);
  f.b.check_invariants();
  f.b.expire(t0 + 1s + 200ms, f.dead, nullptr, &refills);
  REQUIRE(refills.size() == 1);
  CHECK(refills[0] == f.b.find(1));
  // The refill is a prewarm: a slot, a connection that goes idle.
  REQUIRE(f.b.prewarm_slot(*refills[0], t0 + 1s + 200ms, f.dead));
  d::conn_node* y = f.b.connected(*refills[0], nullptr, t0 + 1s + 300ms, f.dead, false);
  f.b.prewarmed(*y, t0 + 1s + 300ms, f.dead);
  CHECK(f.b.stats(1).idle == 2);
  f.b.check_invariants();
  // No longer in use (no lease ended within endpoint_grace): idle_timeout closes them all, and
  // nothing asks for a refill.
  refills.clear();
  f.b.expire(t0 + 30s, f.dead, nullptr, &refills);
  CHECK(f.b.stats(1).idle == 0);
  CHECK(refills.empty());
  CHECK(f.b.next_due() == t0 + 40s);  // only the forgetting of the endpoint is left
  f.b.check_invariants();
}

TEST_CASE("books: max_connecting_per_endpoint: acquires beyond it wait, and a connect's end, success or failure, gives its place to the oldest") {
  connpool::pool_options o = opts();
  o.max_per_endpoint = 8;
  o.max_connecting_per_endpoint = 2;
  fixture f(o);
  auto& e = f.b.get(1, t0);
  CHECK(f.acquire(1, t0).slot);
  CHECK(f.acquire(1, t0).slot);
  CHECK_FALSE(f.acquire(1, t0));  // two connects in flight: the third waits
  test_waiter w1(&e), w2(&e);
  f.b.enqueue(w1);
  f.b.enqueue(w2);
  f.b.check_invariants();
  // Another endpoint has its own limit.
  CHECK(f.acquire(2, t0).slot);
  // A connect succeeds: its place goes to the oldest waiter, as a slot.
  f.connected(e, t0);
  CHECK(w1.done);
  CHECK(w1.result.slot);
  CHECK_FALSE(w2.done);
  // One fails: the same (no backoff configured).
  CHECK(f.b.connect_failed(e, connect_error(), t0, f.dead) == d::clock::duration::zero());
  CHECK(w2.done);
  CHECK(w2.result.slot);
  CHECK(e.connecting == 2);
  CHECK(e.fails == 0);
  f.b.check_invariants();
}

TEST_CASE("books: connect backoff: refused at once while it holds, waiters failed when nothing can serve them, one trial after it, a success ends it") {
  connpool::pool_options o = opts();
  o.max_per_endpoint = 2;
  o.connect_backoff = 100ms;
  o.connect_backoff_max = 400ms;
  fixture f(o);
  auto& e = f.b.get(1, t0);
  CHECK(f.acquire(1, t0).slot);
  CHECK(f.acquire(1, t0).slot);
  test_waiter w(&e);
  CHECK_FALSE(f.acquire(1, t0));
  f.b.enqueue(w);
  // The first failure: a backoff of at most 100 ms; the waiter stays while a connect is in flight.
  const connpool::error_code refused = connpool::error::connect_timeout;  // the error the I/O layer reports
  const auto first = f.b.connect_failed(e, refused, t0, f.dead);
  CHECK(first <= d::clock::duration(100ms));
  CHECK(e.holding);
  CHECK(e.last_error == refused);
  CHECK_FALSE(w.done);
  // A new acquire is refused at once, counted.
  d::grant g = f.acquire(1, t0);
  CHECK(g.ec == connpool::error::endpoint_unavailable);
  CHECK(f.b.stats(1).backoff_rejected == 1);
  // The second failure, of a connect that was in flight with the first: it does not lengthen the
  // backoff; but nothing is left to serve the waiter, so it fails too.
  const auto retry_at = e.retry_at;
  CHECK(f.b.connect_failed(e, refused, t0, f.dead) == d::clock::duration::zero());
  CHECK(e.fails == 1);
  CHECK(e.retry_at == retry_at);
  CHECK(w.done);
  CHECK(w.result.ec == connpool::error::endpoint_unavailable);
  CHECK(f.b.stats(1).backoff_rejected == 2);
  CHECK(f.b.stats(1).connect_failed == 2);
  f.b.check_invariants();
  // After it: one trial connect at a time.
  const time_point after = t0 + 150ms;
  CHECK(f.acquire(1, after).slot);
  CHECK_FALSE(e.holding);
  CHECK_FALSE(f.acquire(1, after));  // waits for the trial
  test_waiter w2(&e);
  f.b.enqueue(w2);
  f.b.check_invariants();
  // The trial connects: the backoff is over, and the waiter gets a slot.
  f.connected(e, after);
  CHECK(e.fails == 0);
  CHECK(w2.done);
  CHECK(w2.result.slot);
  f.b.check_invariants();
}

TEST_CASE("books: connect backoff grows with full jitter up to its maximum; a waiter stays while a lease can come back") {
  connpool::pool_options o = opts();
  o.max_per_endpoint = 2;
  o.connect_backoff = 100ms;
  o.connect_backoff_max = 400ms;
  fixture f(o);
  auto& e = f.b.get(1, t0);
  d::clock::duration longest{0}, total{0};
  time_point now = t0;
  for (int i = 1; i <= 40; ++i) {
    REQUIRE(f.acquire(1, now).slot);
    const auto wait = f.b.connect_failed(e, connect_error(), now, f.dead);
    const auto cap = std::min<d::clock::duration>(100ms * (1 << std::min(i - 1, 8)), 400ms);
    CHECK(wait <= cap);
    CHECK(e.retry_at == now + wait);
    longest = std::max(longest, wait);
    total += wait;
    now = e.retry_at;  // the trial is let through at once
  }
  CHECK(e.fails == 40);
  CHECK(longest > d::clock::duration(200ms));  // it grew past the first steps (40 draws, capped at 400 ms)
  CHECK(total < d::clock::duration(40 * 400ms));
  // A connection leased, a connect failing: the waiter stays, and the returning lease serves it.
  REQUIRE(f.acquire(1, now).slot);
  auto* c = f.connected(e, now);
  CHECK(f.acquire(1, now).slot);
  test_waiter w(&e);
  CHECK_FALSE(f.acquire(1, now));
  f.b.enqueue(w);
  f.b.connect_failed(e, connect_error(), now, f.dead);
  CHECK(e.holding);
  CHECK_FALSE(w.done);
  f.b.released(*c, d::probe_result::healthy, now, f.dead);
  CHECK(w.done);
  CHECK(w.result.conn == c);
  // Again, but the lease is discarded: nothing can serve the next waiter now.
  test_waiter w2(&e);
  f.b.enqueue(w2);
  f.b.check_invariants();
  f.b.discarded(*c, connpool::close_mode::abortive, now, f.dead);
  CHECK(w2.done);
  CHECK(w2.result.ec == connpool::error::endpoint_unavailable);
  f.b.check_invariants();
}

TEST_CASE("books: a backoff ends on time without any acquire: the retire pass gives a waiter the trial connect") {
  connpool::pool_options o = opts();
  o.max_per_endpoint = 2;
  o.connect_backoff = 100ms;
  o.connect_backoff_max = 100ms;
  fixture f(o, 3);
  auto* c = f.connect(1, t0);  // leased for a long exchange
  auto& e = *f.b.find(1);
  REQUIRE(f.acquire(1, t0).slot);
  test_waiter w(&e);
  CHECK_FALSE(f.acquire(1, t0));
  f.b.enqueue(w);
  f.b.connect_failed(e, connect_error(), t0, f.dead);
  REQUIRE(e.holding);
  CHECK_FALSE(w.done);  // the lease may come back to it
  CHECK(f.b.next_due() == e.retry_at);
  f.b.expire(e.retry_at, f.dead);
  CHECK_FALSE(e.holding);
  CHECK(w.done);
  CHECK(w.result.slot);  // the trial
  f.b.check_invariants();
  // The acquire's own deadline passing during a connect does not start a backoff.
  f.b.connect_failed(e, connpool::error::acquire_timeout, e.retry_at, f.dead);
  CHECK_FALSE(e.holding);
  CHECK(e.fails == 1);
  f.b.discarded(*c, connpool::close_mode::abortive, e.retry_at, f.dead);
  f.b.check_invariants();
}

TEST_CASE("books: during a connect backoff an idle connection is handed out; one that fails its probe is not replaced by a connect") {
  connpool::pool_options o = opts();
  o.max_per_endpoint = 3;
  o.connect_backoff = 1000ms;
  o.connect_backoff_max = 1000ms;
  fixture f(o, 7);
  auto* a = f.connect(1, t0);
  auto* b = f.connect(1, t0);
  f.b.released(*a, d::probe_result::healthy, t0, f.dead);
  f.b.released(*b, d::probe_result::healthy, t0, f.dead);
  auto& e = *f.b.find(1);
  f.b.take_idle(e);
  f.b.take_idle(e);
  REQUIRE(f.acquire(1, t0).slot);
  f.b.connect_failed(e, connect_error(), t0, f.dead);
  REQUIRE(d::books<int, std::hash<int>, std::equal_to<int>>::in_backoff(e, t0));
  f.b.released(*a, d::probe_result::healthy, t0, f.dead);
  f.b.released(*b, d::probe_result::healthy, t0, f.dead);
  d::grant g = f.acquire(1, t0);
  REQUIRE(g.conn);
  g = f.b.replace(*g.conn, d::probe_result::peer_closed, false, t0, f.dead);
  CHECK(g.conn);  // the other idle one
  g = f.b.replace(*g.conn, d::probe_result::peer_closed, false, t0, f.dead);
  CHECK(g.ec == connpool::error::endpoint_unavailable);
  CHECK_FALSE(g.slot);
  CHECK(f.b.stats(1).backoff_rejected == 1);
  f.b.check_invariants();
}

TEST_CASE("books: a connection put back past its lifetime is retired; one whose address was removed closes on release by retire_close") {
  connpool::pool_options o = opts();
  o.max_lifetime = 1000ms;
  o.retire_close = connpool::close_mode::abortive;
  fixture f(o);
  auto* c = f.connect(1, t0);
  f.b.released(*c, d::probe_result::healthy, t0, f.dead);
  CHECK(f.b.take_idle(*f.b.find(1)) == c);  // taken for its check
  f.b.expire(t0 + 1000ms, f.dead);           // its lifetime passes while it is out
  f.b.put_back(*c, true, true, t0 + 1001ms, f.dead);
  CHECK(f.b.stats(1).max_lifetime == 1);
  CHECK(f.b.stats(1).idle == 0);
  f.b.check_invariants();
  // Address removed: an idle one closes now, a leased one when it comes back; both by retire_close.
  auto* a = f.connect(2, t0 + 2s);
  auto* b = f.connect(2, t0 + 2s);
  f.b.released(*a, d::probe_result::healthy, t0 + 2s, f.dead);
  f.dead.clear();
  f.b.address_removed(*f.b.find(2), [](void*) { return true; }, t0 + 2s, f.dead);
  CHECK(f.b.stats(2).address_removed == 1);
  CHECK(b->seen == d::probe_result::address_removed);
  f.b.released(*b, d::probe_result::healthy, t0 + 2s, f.dead);
  CHECK(f.b.stats(2).address_removed == 2);
  REQUIRE(f.dead.size() == 2);
  CHECK(f.dead[0].mode == connpool::close_mode::abortive);
  CHECK(f.dead[1].mode == connpool::close_mode::abortive);
  f.b.check_invariants();
}

TEST_CASE("books: max_lifetime is jittered within 90-100%; idle ones retire on time, leased ones when released") {
  connpool::pool_options o = opts();
  o.max_per_endpoint = 0;
  o.max_idle_per_endpoint = 0;
  o.max_lifetime = 10000ms;
  fixture f(o, 42);
  std::vector<d::conn_node*> cs;
  for (int i = 0; i < 100; ++i) cs.push_back(f.connect(1, t0));
  std::set<time_point> distinct;
  for (auto* c : cs) {
    CHECK(c->expires >= t0 + 9000ms);
    CHECK(c->expires <= t0 + 10000ms);
    distinct.insert(c->expires);
  }
  CHECK(distinct.size() > 50);  // spread, not all at once
  for (int i = 0; i < 50; ++i) f.b.released(*cs[i], d::probe_result::healthy, t0 + 1ms, f.dead);
  const time_point first = std::min_element(cs.begin(), cs.end(), [](auto* x, auto* y) { return x->expires < y->expires; })[0]->expires;
  CHECK(f.b.next_due() == first);
  f.b.expire(t0 + 10000ms, f.dead);
  CHECK(f.b.stats(1).max_lifetime == 50);  // every idle one
  CHECK(f.b.stats(1).leased == 50);
  f.b.released(*cs[50], d::probe_result::healthy, t0 + 10000ms, f.dead);
  CHECK(f.b.stats(1).max_lifetime == 51);
  CHECK(f.b.next_due() == d::never);
  f.b.check_invariants();
}

TEST_CASE("books: an endpoint nobody uses is forgotten after endpoint_grace; its counters stay in the totals") {
  connpool::pool_options o = opts();
  o.endpoint_grace = 2000ms;
  fixture f(o);
  auto* a = f.connect(1, t0);
  CHECK(f.b.endpoint_count() == 1);
  f.b.discarded(*a, connpool::close_mode::graceful, t0 + 1s, f.dead);
  CHECK(f.b.next_due() == t0 + 3s);
  // Used again within the grace: not forgotten.
  CHECK(f.acquire(1, t0 + 2s).slot);
  f.b.connect_failed(*f.b.find(1), connect_error(), t0 + 2s, f.dead);
  CHECK(f.b.endpoint_count() == 1);
  f.b.check_invariants();
  // Lookups that find nothing make no entry; get() makes one that is forgotten in turn.
  CHECK(f.b.find(7) == nullptr);
  f.b.get(7, t0 + 2s);
  CHECK(f.b.endpoint_count() == 2);
  CHECK(f.b.expire(t0 + 3999ms, f.dead) == t0 + 4s);
  CHECK(f.b.endpoint_count() == 2);
  f.b.expire(t0 + 4s, f.dead);
  CHECK(f.b.endpoint_count() == 0);
  CHECK(f.b.stats(1).created == 0);
  CHECK(f.b.stats().created == 1);
  CHECK(f.b.stats().discarded == 1);
  f.b.check_invariants();
}

TEST_CASE("books: close() retires idle connections, fails waiters; leased ones close when they come back") {
  connpool::pool_options o = opts();
  o.max_per_endpoint = 1;
  fixture f(o);
  auto* a = f.connect(1, t0);
  auto* c = f.connect(2, t0);
  f.b.released(*c, d::probe_result::healthy, t0, f.dead);
  test_waiter w(f.b.find(1));
  f.b.enqueue(w);
  f.b.close(t0, f.dead);
  CHECK(w.done);
  CHECK(w.result.ec == connpool::error::pool_closed);
  CHECK(f.b.stats(2).pool_closed == 1);
  CHECK(f.acquire(1, t0).ec == connpool::error::pool_closed);
  f.b.released(*a, d::probe_result::healthy, t0, f.dead);
  CHECK(f.b.stats(1).pool_closed == 1);
  CHECK(f.b.stats().open() == 0);
  f.b.check_invariants();
}

// ---------------------------------------------------------------------------------------- fuzzer

namespace {

/// Random steps against the books and a small model of what the test holds: the leases, slots and
/// waiters it was given, the connections alive. After every step: the books' invariants, the
/// gauges against the model, FIFO per endpoint, no waiter left waiting for what is free, no
/// connection idle past its time, created == closed + open.
class fuzz_run {
 public:
  fuzz_run(std::uint64_t seed) : rng_(seed), b_(random_options(), seed) {}
  ~fuzz_run() {
  }

  void run(int steps) {
    for (int i = 0; i < steps; ++i) {
      step_ = i;
      step();
      check();
    }
    b_.close(now_, dead_);
    settle();
    for (auto* c : std::vector<rec*>(leased_.begin(), leased_.end())) {
      leased_.erase(c);
      b_.released(*c->node, d::probe_result::healthy, now_, dead_);
      settle();
    }
    check();
    CHECK(b_.stats().open() == slots_.size());
  }

  int step_ = 0;

  /// A connection the test made: the payload of its node.
  struct rec {
    d::conn_node* node;
    std::uint64_t serial;  // the order of the model's sets: by creation, not by address, so a seed replays
  };
  struct by_serial {
    bool operator()(const rec* a, const rec* b) const { return a->serial < b->serial; }
  };
  static rec* of(d::conn_node* n) { return static_cast<rec*>(n->payload); }

  /// What the run exercised, so that the test can tell it covered each path.
  struct coverage {
    std::size_t conn_to_waiter = 0, slot_to_waiter = 0, timeouts = 0, forgotten = 0, replaced = 0, surplus = 0,
                idle_timeout = 0, max_lifetime = 0, peer = 0, unavailable = 0, waiters_failed = 0, requeued = 0,
                learned = 0, learned_closes = 0, canaries = 0, fresh = 0;
  } seen;

  void tally(coverage& total) const {
    const auto t = b_.stats();
    total.conn_to_waiter += seen.conn_to_waiter;
    total.slot_to_waiter += seen.slot_to_waiter;
    total.timeouts += t.acquire_timeouts;
    total.forgotten += seen.forgotten;
    total.replaced += seen.replaced;
    total.surplus += t.surplus;
    total.idle_timeout += t.idle_timeout;
    total.max_lifetime += t.max_lifetime;
    total.peer += t.peer_closed + t.peer_reset + t.unexpected_data;
    total.unavailable += seen.unavailable;
    total.waiters_failed += seen.waiters_failed;
    total.requeued += seen.requeued;
    total.learned += seen.learned;
    total.learned_closes += t.learned_idle_timeout;
    total.canaries += seen.canaries;
    total.fresh += seen.fresh;
  }

 private:
  struct waiter final : d::waiter_node {
    waiter(d::ep_node* e, fuzz_run& r, time_point dl) : waiter_node(e), run(r), deadline(dl) {}
    void granted(d::grant g) override { run.granted_.push_back({this, g}); }
    fuzz_run& run;
    time_point deadline;
  };

  connpool::pool_options random_options() {
    connpool::pool_options o;
    o.max_per_endpoint = pick<std::size_t>({0, 1, 2, 4});
    o.max_total = pick<std::size_t>({0, 2, 3, 6});
    o.max_idle_per_endpoint = pick<std::size_t>({0, 1, 3});
    o.idle_timeout = pick<std::chrono::milliseconds>({0ms, 1000ms, 5000ms});
    o.max_lifetime = pick<std::chrono::milliseconds>({0ms, 3000ms});
    o.endpoint_grace = pick<std::chrono::milliseconds>({0ms, 2000ms});
    o.retire_close = pick<connpool::close_mode>({connpool::close_mode::graceful, connpool::close_mode::abortive});
    o.max_connecting_per_endpoint = pick<std::size_t>({0, 1, 2, 4});
    o.connect_backoff = pick<std::chrono::milliseconds>({0ms, 0ms, 100ms, 1000ms});
    o.connect_backoff_max = pick<std::chrono::milliseconds>({200ms, 10000ms});
    std::size_t m = pick<std::size_t>({0, 0, 1, 2});
    for (std::size_t cap : {o.max_idle_per_endpoint, o.max_per_endpoint, o.max_total})
      if (cap && m > cap) m = cap;
    o.min_idle_per_endpoint = m;
    o.learn_idle_timeout = roll(4) != 0;
    o.learned_idle_margin = pick<std::chrono::milliseconds>({0ms, 1000ms});
    return o;
  }

  template <class T>
  T pick(std::initializer_list<T> xs) {
    auto it = xs.begin();
    std::advance(it, std::uniform_int_distribution<std::size_t>(0, xs.size() - 1)(rng_));
    return *it;
  }
  int roll(int n) { return std::uniform_int_distribution<int>(0, n - 1)(rng_); }
  template <class C>
  auto any(C& c) {
    auto it = c.begin();
    std::advance(it, roll(static_cast<int>(c.size())));
    return it;
  }
  d::probe_result verdict() {
    const int r = roll(20);
    return r == 0 ? d::probe_result::peer_closed : r == 1 ? d::probe_result::peer_reset
                : r == 2 ? d::probe_result::unexpected_data : d::probe_result::healthy;
  }

  void step() {
    switch (roll(12)) {
      case 0: case 1: case 2: {  // acquire
        const int key = roll(5);
        auto& e = b_.get(key, now_);
        const bool fresh = roll(8) == 0;  // run()'s retry: a new connection if it can be had
        d::grant g = b_.try_grant(e, now_, dead_, fresh);
        if (g.ec == connpool::error::endpoint_unavailable) ++seen.unavailable;
        if (fresh && g.slot) ++seen.fresh;
        if (!g) {
          auto w = std::make_unique<waiter>(&e, *this, now_ + std::chrono::milliseconds(100 * roll(40)));
          b_.enqueue(*w);
          queue_[key].push_back(w.get());
          waiters_.push_back(std::move(w));
        } else {
          take(&e, g, false);
        }
        break;
      }
      case 3: {  // try_acquire
        const int key = roll(5);
        if (auto* e = b_.find(key); e && e->waiters.empty()) {
          // Now and then with a hint: the last connection released, right or stale.
          d::conn_node* c = last_.first && roll(2) ? b_.take_idle(*e, last_.first, last_.second) : b_.take_idle(*e);
          if (c) probe_and_keep(c, true);
        }
        break;
      }
      case 4: case 5:  // a connect ends
        if (!slots_.empty()) {
          auto it = any(slots_);
          d::ep_node* e = *it;
          slots_.erase(it);
          if (roll(4) == 0) {
            b_.connect_failed(*e, connect_error(), now_, dead_);
          } else if (b_.closed()) {
            b_.connected_after_close(*e, now_);
          } else {
            recs_.push_back(std::make_unique<rec>(rec{nullptr, ++serials_}));
            rec* c = recs_.back().get();
            c->node = b_.connected(*e, c, now_, dead_);
            live_.insert(c);
            leased_.insert(c);
          }
        }
        break;
      case 6: case 7:  // release
        if (!leased_.empty()) {
          auto it = any(leased_);
          rec* c = *it;
          leased_.erase(it);
          if (const auto stamp = b_.released(*c->node, roll(10) == 0 ? verdict() : d::probe_result::healthy, now_, dead_))
            last_ = {c->node, stamp};
        }
        break;
      case 8:  // discard
        if (!leased_.empty()) {
          auto it = any(leased_);
          rec* c = *it;
          leased_.erase(it);
          b_.discarded(*c->node, connpool::close_mode::abortive, now_, dead_);
        }
        break;
      case 9:  // the watch reports a connection
        if (!live_.empty()) {
          d::conn_node* c = (*any(live_))->node;
          b_.peer_event(*c, c->state == d::conn_state::leased ? d::probe_result::peer_closed : verdict(), now_, dead_);
        }
        break;
      case 10: {  // time passes: deadlines, then the retire pass
        now_ += std::chrono::milliseconds(roll(3) == 0 ? roll(4000) : roll(50));
        for (auto& [key, q] : queue_)
          for (auto* w : std::vector<waiter*>(q.begin(), q.end()))
            if (w->deadline <= now_) {
              b_.leave(*w, true, now_);
              q.erase(std::find(q.begin(), q.end(), w));
            }
        const std::size_t before = b_.endpoint_count();
        std::vector<d::ep_node*> refills;  // the I/O layer would prewarm them; here they are dropped
        b_.expire(now_, dead_, nullptr, &refills);
        for (auto* e : refills) {
          const bool due = !e->holding && b_.in_use(*e, now_) &&
                           e->idle.size() - e->canary + e->connecting < b_.options().min_idle_per_endpoint;
          CHECK_MESSAGE(due, "a refill not needed, step " << step_);
        }
        seen.forgotten += before - b_.endpoint_count();
        for (rec* c : live_) {  // past the pass, no idle connection is past its learned time
          const d::conn_node& n = *c->node;
          if (n.state != d::conn_state::idle || !n.ep->retire_after.count() || b_.closed()) continue;
          if (n.check == d::check_mark::canary) {
            ++seen.canaries;
            const d::time_point last = n.checked_at > n.idle_since ? n.checked_at : n.idle_since;  // its last exchange
            CHECK_MESSAGE(last + 2 * n.ep->taught > now_, "a canary past twice its timeout, step " << step_);
          } else {
            CHECK_MESSAGE(n.idle_since + n.ep->retire_after > now_, "idle past its learned time, step " << step_);
          }
        }
        for (int k = 0; k < 5; ++k)  // no backoff outlives its time past a retire pass
          if (const auto* en = b_.find(k); en && !b_.closed())
            CHECK_MESSAGE(!(en->holding && en->retry_at <= now_), "step " << step_);
        break;
      }
      case 11:
        if (roll(500) == 0) {
          b_.close(now_, dead_);
        } else if (roll(20) == 0) {  // teach an endpoint (the peer closes of case 9 may teach too)
          if (auto* e = b_.find(roll(5))) b_.set_learned(*e, pick<std::chrono::milliseconds>({0ms, 600ms, 2000ms, 5000ms}));
        }
        break;
    }
    settle();
  }

  /// Hand out what was granted: probe idle connections (some fail and are replaced), keep slots.
  void take(d::ep_node* e, d::grant g, bool idle_only) {
    while (g.conn) {
      const d::probe_result r = roll(8) == 0 ? verdict() : d::probe_result::healthy;
      if (r == d::probe_result::healthy) {
        leased_.insert(of(g.conn));
        return;
      }
      ++seen.replaced;
      // At the connect limit, the acquire waits again: queued by replace() itself.
      auto w = std::make_unique<waiter>(e, *this, now_ + std::chrono::milliseconds(100 * roll(40)));
      g = b_.replace(*g.conn, r, idle_only, now_, dead_, idle_only ? nullptr : w.get());
      if (w->queued()) {
        CHECK(!g);
        ++seen.requeued;
        queue_[static_cast<books::entry*>(e)->key].push_back(w.get());
        waiters_.push_back(std::move(w));
        return;
      }
    }
    if (g.slot) {
      // A slot within the connect limit (one trial after a backoff).
      const std::size_t limit = e->fails ? 1 : b_.options().max_connecting_per_endpoint;
      if (limit) CHECK_MESSAGE(e->connecting <= limit, "over the connect limit, step " << step_);
      slots_.push_back(e);
    }
  }
  void probe_and_keep(d::conn_node* c, bool idle_only) { take(c->ep, d::grant{c, false, false, {}}, idle_only); }

  /// Deliver grants (FIFO checked), then close what was retired.
  void settle() {
    while (!granted_.empty()) {
      auto [w, g] = granted_.front();
      granted_.pop_front();
      const int key = static_cast<books::entry*>(w->ep)->key;
      auto& q = queue_[key];
      REQUIRE_MESSAGE(!q.empty(), "seed step " << step_);
      CHECK_MESSAGE(q.front() == w, "a waiter served out of order, step " << step_);
      q.erase(std::find(q.begin(), q.end(), w));
      if (g.ec == connpool::error::endpoint_unavailable) ++seen.waiters_failed;
      else if (!g.ec) ++(g.conn ? seen.conn_to_waiter : seen.slot_to_waiter);
      if (!g.ec) take(w->ep, g, false);
    }
    b_.take_learned([&](books::entry*, d::clock::duration) { ++seen.learned; });
    for (const d::buried& x : dead_) {
      rec* c = static_cast<rec*>(x.conn);
      REQUIRE_MESSAGE(live_.count(c) == 1, "retired twice or never made, step " << step_);
      CHECK(leased_.count(c) == 0);
      live_.erase(c);  // (its record stays, in recs_, until the run ends: a second retire is caught)
    }
    dead_.clear();
  }

  void check() {
    b_.check_invariants();
    const auto& o = b_.options();
    std::map<int, pool_counts> model;
    for (rec* c : live_) {
      CHECK(of(c->node) == c);
      auto& m = model[static_cast<books::entry*>(c->node->ep)->key];
      ++(leased_.count(c) ? m.leased : c->node->check == d::check_mark::canary ? m.held : m.idle);
      if (!leased_.count(c) && o.idle_timeout.count() > 0)
        CHECK_MESSAGE(c->node->idle_since + o.idle_timeout > now_, "idle past its time, step " << step_);
    }
    for (auto* e : slots_) ++model[static_cast<books::entry*>(e)->key].connecting;
    for (auto& [key, q] : queue_) model[key].waiting += q.size();
    std::size_t open = 0, idle = 0;
    for (auto& kv : model) {
      const int key = kv.first;
      const pool_counts& m = kv.second;
      const auto s = b_.stats(key);
      INFO("seed step " << step_ << " endpoint " << key);
      CHECK(s.idle == m.idle + m.held);
      CHECK(s.leased == m.leased);
      CHECK(s.connecting == m.connecting);
      CHECK(s.waiting == m.waiting);
      open += m.idle + m.held + m.leased + m.connecting;
      idle += m.idle + m.held;
      // Nobody waits for what is free: a slot its limits allow, unless max_total holds it back.
      if (m.waiting && !b_.closed()) {
        CHECK(m.idle == 0);
        if (may_connect(key, m)) CHECK((o.max_total && b_.open_total() >= o.max_total));
        // In a backoff, only a connection leased or connecting can serve a waiter.
        if (b_.find(key)->holding) CHECK(m.leased + m.connecting > 0);
      }
    }
    if (!b_.closed() && o.max_total && b_.open_total() >= o.max_total && idle > 0)
      for (auto& kv : model)
        if (const pool_counts& m = kv.second; m.waiting && may_connect(kv.first, m))
          FAIL("a waiter needs room while an idle connection could be evicted, step " << step_);
    const auto t = b_.stats();
    CHECK(t.open() == open);
    CHECK(t.created == t.closed() + live_.size());
  }

  struct pool_counts {
    std::size_t idle = 0, leased = 0, connecting = 0, waiting = 0;
    std::size_t held = 0;  // canaries: idle, never handed out, giving way to a connect
  };

  /// Whether the model's endpoint `key` may start a connect, by its own limits (not max_total):
  /// below max_per_endpoint and max_connecting_per_endpoint (one trial after a backoff), and not
  /// holding in a backoff.
  bool may_connect(int key, const pool_counts& m) const {
    const auto& o = b_.options();
    const auto* en = b_.find(key);
    if (!en || en->holding) return false;
    const std::size_t limit = en->fails ? 1 : o.max_connecting_per_endpoint;
    if (limit && m.connecting >= limit) return false;
    return !o.max_per_endpoint || m.idle + m.leased + m.connecting < o.max_per_endpoint;
  }

  std::mt19937_64 rng_;
  books b_;
  time_point now_ = t0;
  d::graveyard dead_;
  std::uint64_t serials_ = 0;
  std::vector<std::unique_ptr<rec>> recs_;  // every connection made, retired or not
  std::set<rec*, by_serial> live_, leased_;
  std::pair<const d::conn_node*, std::uint32_t> last_{nullptr, 0};  // the last released: a hint, maybe stale
  std::vector<d::ep_node*> slots_;
  std::map<int, std::deque<waiter*>> queue_;
  std::vector<std::unique_ptr<waiter>> waiters_;
  std::deque<std::pair<waiter*, d::grant>> granted_;
};

std::uint64_t env_or(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  return v ? std::strtoull(v, nullptr, 10) : fallback;
}

}  // namespace

TEST_CASE("books: seeded fuzzer against a reference model (CONNPOOL_FUZZ_SEED replays one seed)") {
  const std::uint64_t only = env_or("CONNPOOL_FUZZ_SEED", 0);
  const std::uint64_t seeds = only ? 1 : env_or("CONNPOOL_FUZZ_SEEDS", 1000);
  const int steps = static_cast<int>(env_or("CONNPOOL_FUZZ_STEPS", 2000));
  fuzz_run::coverage total;
  for (std::uint64_t i = 0; i < seeds; ++i) {
    const std::uint64_t seed = only ? only : 1000 + i;
    CAPTURE(seed);
    fuzz_run run(seed);
    run.run(steps);
    run.tally(total);
  }
  MESSAGE("fuzzer: " << seeds << " seeds x " << steps << " steps; waiters served a connection " << total.conn_to_waiter
                     << ", a slot " << total.slot_to_waiter << "; timeouts " << total.timeouts << "; endpoints forgotten "
                     << total.forgotten << "; probes failed " << total.replaced << "; surplus " << total.surplus
                     << "; idle_timeout " << total.idle_timeout << "; max_lifetime " << total.max_lifetime
                     << "; peer events " << total.peer << "; refused in backoff " << total.unavailable
                     << ", waiters failed by a backoff " << total.waiters_failed << "; replacements queued at the connect limit "
                     << total.requeued << "; learned " << total.learned << ", closed by it " << total.learned_closes
                     << ", canaries seen " << total.canaries);
  if (!only) {  // every path was taken
    CHECK(total.conn_to_waiter > 0);
    CHECK(total.slot_to_waiter > 0);
    CHECK(total.timeouts > 0);
    CHECK(total.forgotten > 0);
    CHECK(total.replaced > 0);
    CHECK(total.surplus > 0);
    CHECK(total.idle_timeout > 0);
    CHECK(total.max_lifetime > 0);
    CHECK(total.peer > 0);
    CHECK(total.unavailable > 0);
    CHECK(total.waiters_failed > 0);
    CHECK(total.requeued > 0);
    CHECK(total.learned > 0);
    CHECK(total.learned_closes > 0);
    CHECK(total.canaries > 0);
    CHECK(total.fresh > 0);
  }
}

TEST_CASE("books: a hint gets back the connection released last only while it is idle in that same idle period") {
  connpool::pool_options o = opts();
  o.max_per_endpoint = 4;
  fixture f(o);
  auto* a = f.connect(1, t0);
  auto* c = f.connect(1, t0);
  auto* other = f.connect(2, t0);
  auto& e = *f.b.find(1);
  const auto sa = f.b.released(*a, d::probe_result::healthy, t0, f.dead);
  f.b.released(*c, d::probe_result::healthy, t0, f.dead);
  CHECK(sa != 0);
  CHECK(f.b.take_idle(e, a, sa) == a);  // not the most recently released: the hinted one
  // Released again: a new idle period, so the old stamp no longer names it.
  const auto sa2 = f.b.released(*a, d::probe_result::healthy, t0, f.dead);
  CHECK(sa2 != sa);
  CHECK(f.b.take_idle(e, a, sa) == a);  // MRU anyway: a was released last
  f.b.released(*a, d::probe_result::healthy, t0, f.dead);
  CHECK(f.b.take_idle(e, c, 12345) == a);  // wrong stamp: MRU
  CHECK(f.b.take_idle(e, other, 1) == c);  // other endpoint: MRU of this one
  // Retired: its node is recycled, and the stale hint finds a free node, never freed memory.
  const auto sc = f.b.released(*c, d::probe_result::healthy, t0, f.dead);
  f.b.peer_event(*c, d::probe_result::peer_closed, t0, f.dead);
  f.b.released(*a, d::probe_result::healthy, t0, f.dead);
  CHECK(f.b.take_idle(e, c, sc) == a);
  // With no idle connection a hint gives nothing either.
  CHECK(f.b.take_idle(e, c, sc) == nullptr);
  f.b.check_invariants();
}

TEST_CASE("books: a connection granted to an acquire that died unrun is not counted reused") {
  fixture f(opts());
  auto* a = f.connect(1, t0);
  auto* c = f.connect(1, t0);
  test_waiter w(f.b.find(1));
  f.b.enqueue(w);
  f.b.released(*c, d::probe_result::healthy, t0, f.dead);
  REQUIRE(w.result.conn == c);
  f.b.abandoned(*f.b.find(1), w.result, t0, f.dead);
  CHECK(f.b.stats(1).reused == 0);
  CHECK(f.b.stats(1).discarded == 1);
  f.b.released(*a, d::probe_result::healthy, t0, f.dead);
  CHECK(f.b.take_idle(*f.b.find(1)) == a);
  CHECK(f.b.stats(1).reused == 1);
  const auto s = f.b.stats();
  CHECK(s.created == s.closed() + s.idle + s.leased);
  f.b.check_invariants();
}

// ---------------------------------------------------------------- learn_idle_timeout

namespace {
/// `n` connections of `key`, made and released at `now`: idle, in that order.
std::vector<d::conn_node*> idle_conns(fixture& f, int key, int n, time_point now) {
  std::vector<d::conn_node*> v;
  for (int i = 0; i < n; ++i) v.push_back(f.connect(key, now));
  for (d::conn_node* c : v) f.b.released(*c, d::probe_result::healthy, now, f.dead);
  return v;
}
connpool::pool_options learn_opts() {
  connpool::pool_options o = opts();
  o.max_per_endpoint = 8;
  return o;
}
}  // namespace

TEST_CASE("books: learn_idle_timeout: three peer closes at similar idle ages teach the youngest; idle connections then retire before it, one held back as the canary") {
  fixture f(learn_opts());
  std::vector<std::pair<books::entry*, d::clock::duration>> changes;
  auto drain = [&] { f.b.take_learned([&](books::entry* e, d::clock::duration t) { changes.emplace_back(e, t); }); };
  auto v = idle_conns(f, 1, 4, t0);
  f.b.peer_event(*v[0], d::probe_result::peer_closed, t0 + 10s, f.dead);
  f.b.peer_event(*v[1], d::probe_result::peer_reset, t0 + 10500ms, f.dead);
  f.b.check_invariants();
  CHECK(f.b.stats(1).peer_idle_timeout == 0ms);  // two closes teach nothing
  // The fourth connection is alive and older than 10 s: the third close would teach 10 s, which it
  // refutes ("none older").
  f.b.peer_event(*v[2], d::probe_result::peer_closed, t0 + 11s, f.dead);
  CHECK(f.b.stats(1).peer_idle_timeout == 0ms);
  f.b.peer_event(*v[3], d::probe_result::peer_closed, t0 + 11s, f.dead);  // now none is older
  drain();
  CHECK(f.b.stats(1).peer_idle_timeout == 10500ms);  // the youngest of the last three: 10.5, 11, 11
  REQUIRE(changes.size() == 1);
  CHECK(changes[0].first == f.b.find(1));
  CHECK(changes[0].second == 10500ms);
  f.b.check_invariants();

  // Learned 10.5 s: the margin is the larger of 1 s and 1.05 s. Idle connections retire at 9.45 s.
  const time_point t1 = t0 + 20s;
  auto w = idle_conns(f, 1, 3, t1);
  CHECK(f.b.expire(t1, f.dead) == t1 + 9450ms);
  f.b.expire(t1 + 9449ms, f.dead);
  CHECK(f.b.stats(1).idle == 3);
  CHECK(f.b.expire(t1 + 9450ms, f.dead) == t1 + 21s);  // the canary's end: twice the timeout learned
  CHECK(f.b.stats(1).learned_idle_timeout == 2);
  CHECK(f.b.stats(1).idle == 1);
  CHECK(w[0]->check == d::check_mark::canary);  // the oldest is kept, held back
  f.b.check_invariants();
  d::grant g = f.acquire(1, t1 + 9500ms);  // not handed out: a new connect
  CHECK(g.slot);
  CHECK(!g.conn);
  // The peer closes the canary at 10.6 s: a sample, no change (above, within the margin).
  f.b.peer_event(*w[0], d::probe_result::peer_closed, t1 + 10600ms, f.dead);
  CHECK(f.b.stats(1).peer_closed == 4);
  CHECK(f.b.stats(1).peer_idle_timeout == 10500ms);
  f.b.check_invariants();
}

TEST_CASE("books: learn_idle_timeout: a single close, closes at scattered ages, young idle ones, leased ones and a check's connection teach nothing") {
  fixture f(learn_opts());
  // Young: a close just after the last exchange (under 500 ms) says nothing of an idle timeout.
  auto v = idle_conns(f, 1, 3, t0);
  for (auto* c : v) f.b.peer_event(*c, d::probe_result::peer_closed, t0 + 300ms, f.dead);
  CHECK(f.b.stats(1).peer_idle_timeout == 0ms);
  // Scattered, as a restart closes connections of every age: 1 s, 4 s, 9 s.
  const time_point t1 = t0 + 1min;
  v.clear();
  for (int i = 0; i < 3; ++i) v.push_back(f.connect(1, t1));
  f.b.released(*v[0], d::probe_result::healthy, t1, f.dead);
  f.b.released(*v[1], d::probe_result::healthy, t1 + 5s, f.dead);
  f.b.released(*v[2], d::probe_result::healthy, t1 + 8s, f.dead);
  for (auto* c : v) f.b.peer_event(*c, d::probe_result::peer_closed, t1 + 9s, f.dead);
  CHECK(f.b.stats(1).peer_idle_timeout == 0ms);
  // Leased: the close of a busy connection.
  const time_point t2 = t0 + 2min;
  for (int i = 0; i < 3; ++i) {
    d::conn_node* c = f.connect(1, t2);
    f.b.peer_event(*c, d::probe_result::peer_closed, t2 + 5s, f.dead);
    f.b.released(*c, d::probe_result::healthy, t2 + 5s, f.dead);
  }
  CHECK(f.b.stats(1).peer_idle_timeout == 0ms);
  // Put back unchecked: its idle age is not the peer's.
  const time_point t3 = t0 + 3min;
  v = idle_conns(f, 1, 3, t3);
  for (int i = 0; i < 3; ++i) {
    d::conn_node* c = f.b.take_idle(*f.b.find(1));
    REQUIRE(c);
    f.b.put_back(*c, /*unchecked=*/true, false, t3, f.dead);
  }
  for (auto* c : v) f.b.peer_event(*c, d::probe_result::peer_closed, t3 + 10s, f.dead);
  CHECK(f.b.stats(1).peer_closed == 12);
  CHECK(f.b.stats(1).peer_idle_timeout == 0ms);
  f.b.check_invariants();

  // Off: never.
  connpool::pool_options o = learn_opts();
  o.learn_idle_timeout = false;
  fixture off(o);
  auto y = idle_conns(off, 1, 3, t0);
  for (auto* c : y) off.b.peer_event(*c, d::probe_result::peer_closed, t0 + 10s, off.dead);
  CHECK(off.b.stats(1).peer_idle_timeout == 0ms);
  off.b.check_invariants();
}

TEST_CASE("books: learn_idle_timeout: down at once, up only past the margin; a canary gives way to traffic, and one open at twice the timeout forgets it") {
  connpool::pool_options o = learn_opts();
  o.max_per_endpoint = 1;
  fixture f(o);
  auto& e = f.b.get(1, t0);
  f.b.set_learned(e, 4s);  // retire at 3 s (margin 1 s)
  f.b.check_invariants();
  auto v = idle_conns(f, 1, 1, t0);
  f.b.expire(t0 + 3s, f.dead);
  REQUIRE(v[0]->check == d::check_mark::canary);
  CHECK(f.b.stats(1).idle == 1);
  // At max_per_endpoint, an acquire takes the canary's place: traffic first.
  d::grant g = f.acquire(1, t0 + 3500ms);
  CHECK(g.slot);
  CHECK(f.b.stats(1).learned_idle_timeout == 1);
  d::conn_node* c = f.connected(e, t0 + 3500ms);
  f.b.released(*c, d::probe_result::healthy, t0 + 4s, f.dead);
  f.b.expire(t0 + 7s, f.dead);
  REQUIRE(c->check == d::check_mark::canary);
  CHECK(f.b.take_idle(e) == nullptr);
  f.b.check_invariants();
  // Twice the timeout after its release: the peer keeps it open, so its timeout is longer now.
  // Forgotten; the canary is an ordinary idle connection again.
  f.b.expire(t0 + 11999ms, f.dead);
  CHECK(f.b.stats(1).peer_idle_timeout == 4s);
  f.b.expire(t0 + 12s, f.dead);
  CHECK(f.b.stats(1).peer_idle_timeout == 0ms);
  CHECK(c->check == d::check_mark::none);
  CHECK(f.b.take_idle(e) == c);
  f.b.check_invariants();

  // Down at once: a close at 2 s (half of 4 s) lowers a learned 4 s; up needs more than the margin.
  fixture h(learn_opts());
  auto& e2 = h.b.get(2, t0);
  h.b.set_learned(e2, 4s);
  auto a = idle_conns(h, 2, 3, t0);
  h.b.peer_event(*a[0], d::probe_result::peer_closed, t0 + 2s, h.dead);
  h.b.peer_event(*a[1], d::probe_result::peer_closed, t0 + 2100ms, h.dead);
  h.b.peer_event(*a[2], d::probe_result::peer_closed, t0 + 2200ms, h.dead);
  CHECK(h.b.stats(2).peer_idle_timeout == 2s);
  // Three canaries closed at 2.9 s: within 2 s + its 1 s margin, no change.
  auto canary_closed_at = [&](time_point start, d::clock::duration age) {
    auto b = idle_conns(h, 2, 1, start);
    h.b.expire(start + age / 2, h.dead);  // retire at 1 s (margin: half of 2 s): it becomes the canary
    REQUIRE(b[0]->check == d::check_mark::canary);
    h.b.peer_event(*b[0], d::probe_result::peer_closed, start + age, h.dead);
    h.b.check_invariants();
  };
  for (int i = 0; i < 3; ++i) canary_closed_at(t0 + std::chrono::minutes(1 + i), 2900ms);
  CHECK(h.b.stats(2).peer_idle_timeout == 2s);
  // The samples so far: (2.1, 2.2, 2.9) and (2.9, 2.9, then 3.1) are clusters within the margin:
  // no change, the ring starts again after each. Three more at 3.1 lift it.
  for (int i = 0; i < 3; ++i) canary_closed_at(t0 + std::chrono::minutes(10 + i), 3100ms);
  CHECK(h.b.stats(2).peer_idle_timeout == 2s);
  canary_closed_at(t0 + std::chrono::minutes(20), 3100ms);
  CHECK(h.b.stats(2).peer_idle_timeout == 3100ms);
}

TEST_CASE("books: learn_idle_timeout with min_idle_per_endpoint: a canary is not counted, a refill is asked, a prewarm leaves it; a single close lowers T, to half at most") {
  connpool::pool_options o = learn_opts();
  o.min_idle_per_endpoint = 1;
  o.max_per_endpoint = 2;
  fixture f(o);
  auto& e = f.b.get(1, t0);
  f.b.set_learned(e, 4s);
  auto v = idle_conns(f, 1, 1, t0);
  std::vector<d::ep_node*> refills;
  f.b.expire(t0 + 3s, f.dead, nullptr, &refills);
  REQUIRE(v[0]->check == d::check_mark::canary);
  CHECK(f.b.below_minimum(e, t0 + 3s));  // the canary serves nobody
  f.b.expire(t0 + 3s + books::refill_jitter, f.dead, nullptr, &refills);
  REQUIRE(refills.size() == 1);
  CHECK(refills[0] == &e);
  // The refill's connect: one place left under max_per_endpoint 2.
  CHECK(f.b.prewarm_slot(e, t0 + 3500ms, f.dead));
  d::conn_node* c = f.connected(e, t0 + 3500ms);
  f.b.prewarmed(*c, t0 + 3500ms, f.dead);
  // At max_per_endpoint now: a prewarm does not take the canary's place (an acquire would).
  CHECK_FALSE(f.b.prewarm_slot(e, t0 + 3600ms, f.dead));
  CHECK(v[0]->check == d::check_mark::canary);
  CHECK(f.b.stats(1).learned_idle_timeout == 0);
  f.b.check_invariants();
  // After three samples taught T, one close younger than T lowers it, but not below half of it.
  fixture h(learn_opts());
  auto a = idle_conns(h, 2, 4, t0);
  for (int i = 0; i < 3; ++i) h.b.peer_event(*a[i], d::probe_result::peer_closed, t0 + 10s, h.dead);
  CHECK(h.b.stats(2).peer_idle_timeout == 10s);
  h.b.peer_event(*a[3], d::probe_result::peer_closed, t0 + 10s, h.dead);  // (older: the ring starts again)
  auto b = idle_conns(h, 2, 2, t0 + 1min);
  h.b.peer_event(*b[0], d::probe_result::peer_closed, t0 + 1min + 4s, h.dead);  // under half: a restart's
  CHECK(h.b.stats(2).peer_idle_timeout == 10s);
  h.b.peer_event(*b[1], d::probe_result::peer_closed, t0 + 1min + 6s, h.dead);
  CHECK(h.b.stats(2).peer_idle_timeout == 6s);
  // A connection put back unchecked past its retire age is retired, not made the canary.
  auto u = idle_conns(h, 2, 1, t0 + 2min);
  d::conn_node* taken = h.b.take_idle(*h.b.find(2));
  REQUIRE(taken == u[0]);
  h.b.put_back(*taken, /*unchecked=*/true, false, t0 + 2min, h.dead);
  h.b.expire(t0 + 2min + 9s, h.dead);
  CHECK(h.b.stats(2).learned_idle_timeout == 1);
  CHECK(h.b.stats(2).idle == 0);
  h.b.check_invariants();
}

TEST_CASE("books: learn_idle_timeout: an endpoint forgotten after endpoint_grace keeps what it learned") {
  connpool::pool_options o = learn_opts();
  o.endpoint_grace = 2000ms;
  fixture f(o);
  auto v = idle_conns(f, 1, 3, t0);
  for (auto* c : v) f.b.peer_event(*c, d::probe_result::peer_closed, t0 + 5s, f.dead);
  REQUIRE(f.b.stats(1).peer_idle_timeout == 5s);
  f.b.expire(t0 + 8s, f.dead);
  REQUIRE(f.b.find(1) == nullptr);  // forgotten
  auto& e = f.b.get(1, t0 + 9s);
  CHECK(f.b.stats(1).peer_idle_timeout == 5s);
  CHECK(e.retire_after == 4s);
  auto w = idle_conns(f, 1, 2, t0 + 9s);
  f.b.expire(t0 + 13s, f.dead);  // retired at 4 s, the oldest kept as the canary
  CHECK(f.b.stats(1).learned_idle_timeout == 1);
  CHECK(w[0]->check == d::check_mark::canary);
  f.b.check_invariants();
}

// ---------------------------------------------------------------- run()'s retry budget

TEST_CASE("retry budget: a fraction of the runs plus a floor per second, over a sliding 10 s window") {
  d::retry_budget none(0, 0);
  none.deposit(t0);
  CHECK_FALSE(none.withdraw(t0));
  // 20% of 100 runs, and no floor: 20 retries in the window, then no more.
  d::retry_budget b(0.2, 0);
  for (int i = 0; i < 100; ++i) b.deposit(t0 + std::chrono::milliseconds(i));
  int allowed = 0;
  for (int i = 0; i < 50; ++i) allowed += b.withdraw(t0 + 200ms);
  CHECK(allowed == 20);
  // 15 s on: the first window counts half (100 runs, 20 retries: 50 and 10), and 50 new runs.
  for (int i = 0; i < 50; ++i) b.deposit(t0 + 15s);
  allowed = 0;
  for (int i = 0; i < 50; ++i) allowed += b.withdraw(t0 + 15s);
  // Runs 100 * 0.5 + 50 = 100, retries 20 * 0.5 = 10: 0.2 * 100 - 10 = 10 more.
  CHECK(allowed == 10);
  // Two windows on, the past is gone: the floor alone (1 per second, 10 per window) with no runs.
  d::retry_budget f(0.2, 1);
  allowed = 0;
  for (int i = 0; i < 20; ++i) allowed += f.withdraw(t0 + 1min);
  CHECK(allowed == 10);
  allowed = 0;
  for (int i = 0; i < 20; ++i) allowed += f.withdraw(t0 + 2min);
  CHECK(allowed == 10);
}

TEST_CASE("books: a fresh grant (run()'s retry) connects, making room from the endpoint's oldest idle connection; at the connect limit it takes an idle one rather than wait") {
  connpool::pool_options o = opts();
  o.max_per_endpoint = 2;
  o.max_connecting_per_endpoint = 1;
  fixture f(o);
  auto v = idle_conns(f, 1, 2, t0);  // at max_per_endpoint, both idle
  auto& e = *f.b.find(1);
  d::grant g = f.b.try_grant(e, t0 + 1s, f.dead, /*fresh=*/true);
  CHECK(g.slot);
  CHECK_FALSE(g.conn);
  CHECK(f.b.stats(1).surplus == 1);  // the least recently used one made room
  CHECK(f.b.stats(1).idle == 1);
  f.b.check_invariants();
  // One connect in flight: at the connect limit, the idle one is taken instead of queueing.
  g = f.b.try_grant(e, t0 + 1s, f.dead, true);
  CHECK_FALSE(g.slot);
  REQUIRE(g.conn);
  CHECK(g.conn == v[1]);
  f.b.check_invariants();
}

TEST_CASE("books: learn_idle_timeout: a restart's closes cannot ratchet T down past half of what three taught; a T disproved is not recalled") {
  fixture f(learn_opts());
  auto& e = f.b.get(1, t0);
  f.b.set_learned(e, 60s);
  std::vector<d::conn_node*> v;
  for (int i = 0; i < 3; ++i) v.push_back(f.connect(1, t0));
  f.b.released(*v[0], d::probe_result::healthy, t0, f.dead);
  f.b.released(*v[1], d::probe_result::healthy, t0, f.dead);
  f.b.released(*v[2], d::probe_result::healthy, t0 + 22s, f.dead);
  // A restart closes them all at once, oldest first: 50 s lowers T (above 30 s), 28 s does not.
  f.b.peer_event(*v[0], d::probe_result::peer_closed, t0 + 50s, f.dead);
  CHECK(f.b.stats(1).peer_idle_timeout == 50s);
  f.b.peer_event(*v[1], d::probe_result::peer_closed, t0 + 50s, f.dead);  // (50 s again: no change)
  f.b.peer_event(*v[2], d::probe_result::peer_closed, t0 + 50s, f.dead);  // 28 s: under half of 60 s
  CHECK(f.b.stats(1).peer_idle_timeout == 50s);
  f.b.check_invariants();

  // Forgotten with a T, back, the T disproved by a canary, forgotten again: not recalled.
  connpool::pool_options o = learn_opts();
  o.endpoint_grace = 1000ms;
  fixture g(o);
  g.b.set_learned(g.b.get(2, t0), 4s);
  g.b.expire(t0 + 2s, g.dead);
  REQUIRE(g.b.find(2) == nullptr);
  auto& back = g.b.get(2, t0 + 3s);
  REQUIRE(g.b.stats(2).peer_idle_timeout == 4s);
  auto c = idle_conns(g, 2, 1, t0 + 3s);
  g.b.expire(t0 + 6s, g.dead);  // retire at 3 s: the canary
  REQUIRE(c[0]->check == d::check_mark::canary);
  g.b.expire(t0 + 11s, g.dead);  // open at 8 s: forgotten, back to work
  CHECK(g.b.stats(2).peer_idle_timeout == 0ms);
  d::conn_node* taken = g.b.take_idle(back);
  REQUIRE(taken == c[0]);
  g.b.discarded(*taken, connpool::close_mode::graceful, t0 + 11s, g.dead);
  g.b.expire(t0 + 13s, g.dead);
  REQUIRE(g.b.find(2) == nullptr);
  g.b.get(2, t0 + 14s);
  CHECK(g.b.stats(2).peer_idle_timeout == 0ms);
  g.b.check_invariants();
}

TEST_CASE("books: learn_idle_timeout: a lower T brings its canary's deadline forward (twice what was taught)") {
  // The canary's deadline is twice `taught`: when a cluster (or a test) teaches less, the heap of
  // retire times must move it forward, or the canary outlives its deadline (found by the fuzzer).
  connpool::pool_options o = learn_opts();
  o.ping_interval = 8s;
  fixture f(o);
  f.b.pinging(true);
  auto& e = f.b.get(1, t0);
  f.b.set_learned(e, 10s);  // retire at 9 s
  d::conn_node* c = f.connect(1, t0);
  std::vector<d::conn_node*> x;
  for (int i = 0; i < 3; ++i) x.push_back(f.connect(1, t0));
  f.b.released(*c, d::probe_result::healthy, t0, f.dead);
  for (d::conn_node* n : x) f.b.released(*n, d::probe_result::healthy, t0 + 6s, f.dead);
  std::vector<d::conn_node*> due;
  f.b.expire(t0 + 8s, f.dead, &due);
  REQUIRE(due.size() == 1);
  f.b.ping_done(*c, true, d::probe_result::healthy, t0 + 8s, f.dead);  // its check passed: young by that
  f.b.expire(t0 + 9s, f.dead);  // c is the canary (x's retire at 15 s)
  REQUIRE(c->check == d::check_mark::canary);
  // Three closes at 3.5, 3.6 and 4 s: a cluster under half of what was taught; the canary, checked
  // 2 s ago, is not older. T = 3.5 s, and the canary's deadline is 7 s after its check: 15 s.
  f.b.peer_event(*x[0], d::probe_result::peer_closed, t0 + 9500ms, f.dead);
  f.b.peer_event(*x[1], d::probe_result::peer_closed, t0 + 9600ms, f.dead);
  f.b.peer_event(*x[2], d::probe_result::peer_closed, t0 + 10s, f.dead);
  CHECK(f.b.stats(1).peer_idle_timeout == 3500ms);
  f.b.check_invariants();  // (the heap's key of e is not later than the canary's deadline)
  CHECK(f.b.expire(t0 + 10s, f.dead) <= t0 + 15s);
  CHECK(c->check == d::check_mark::canary);  // idle 2 s as the peer sees it, not 10 s
  f.b.expire(t0 + 15s, f.dead);
  CHECK(f.b.stats(1).peer_idle_timeout == 0ms);  // open at twice 3.5 s after its check: forgotten
  CHECK(c->check == d::check_mark::none);
  f.b.check_invariants();

  // set_learned() lowers it the same way.
  fixture g(learn_opts());
  auto& e2 = g.b.get(2, t0);
  g.b.set_learned(e2, 10s);
  d::conn_node* k = idle_conns(g, 2, 1, t0)[0];
  CHECK(g.b.expire(t0 + 9s, g.dead) == t0 + 20s);
  REQUIRE(k->check == d::check_mark::canary);
  g.b.set_learned(e2, 4s);
  g.b.check_invariants();
  CHECK(g.b.expire(t0 + 9s, g.dead) == d::never);  // 8 s: past
  CHECK(k->check == d::check_mark::none);
}
