#ifndef CONNPOOL_DETAIL_BOOKS_HPP
#define CONNPOOL_DETAIL_BOOKS_HPP

// The pool's decisions, without I/O: which idle connection to hand out, whether a slot is free,
// which waiter is served next, what to retire and when, which endpoints to forget. No Asio, no
// syscalls, no clock reads: every time comes in as an argument, so tests drive it exactly.
//
// The caller holds one lock around every call (pool_state's mutex). The books never close a socket:
// a connection they retire goes into the caller's graveyard, which the caller closes after
// unlocking. The books own the connection nodes, in an arena whose memory lives as long as they do
// (a node is recycled, never freed), so a hint that names a node from an earlier lease can be
// checked without risk (take_idle()). Each node points to the caller's connection (`payload`).
// Waiter nodes belong to the caller; the books link them.
//
// States. A connection node is `leased` (owned by a lease or an acquire that probes it) or `idle`
// (on its endpoint's idle list and on the idle list across endpoints, both in release order), until
// it is retired (`closed`, out of the books). A connect in progress is a slot: counted in its
// endpoint's `connecting`, without a node. set_state() is the only function that moves a node
// between states; it alone edits the idle lists and the gauges.
//
// Waiters queue per endpoint, FIFO. Invariants after every call:
// - an endpoint with waiters has no available idle connection (a connection that comes back goes
//   to the oldest waiter of its endpoint); only connections whose background health check runs
//   (check_mark::pinging) may be idle there;
// - the room queue holds exactly the endpoints that have waiters and are below max_per_endpoint,
//   ordered by the ticket of their oldest waiter; it is empty unless the pool is at max_total with
//   no idle connection anywhere to evict. So room freed under max_total goes to the oldest waiter
//   that needs room, in O(log endpoints), without looking at any other waiter.
//
// Costs: take_idle (plus the connections being pinged that it passes over), a release and serving
// a waiter of the same endpoint are O(1); serving the room
// queue O(log endpoints); a retire pass O(retired + log n); an endpoint lookup O(1) on average.

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#include "connpool/detail/clock.hpp"
#include "connpool/detail/intrusive.hpp"
#include "connpool/detail/stats.hpp"
#include "connpool/error.hpp"
#include "connpool/pool_options.hpp"

#if defined(NDEBUG)
#define CONNPOOL_ASSERT(cond) ((void)0)
#else
#define CONNPOOL_ASSERT(cond) assert(cond)
#endif

// The few functions on every acquire and release: measured (callgrind) not inlined by g++ -O3.
#if defined(__GNUC__) || defined(__clang__)
#define CONNPOOL_HOT inline __attribute__((always_inline))
// A slow path kept out of the hot function that calls it (its registers and frame with it).
#define CONNPOOL_COLD __attribute__((noinline))
#else
#define CONNPOOL_HOT inline
#define CONNPOOL_COLD
#endif

namespace connpool {
CONNPOOL_ABI_BEGIN
namespace detail {

struct ep_node;

enum class conn_state : unsigned char { leased, idle, closed };

/// Where a connection stands with the health check.
enum class check_mark : unsigned char {
  none,     ///< checked by time (validate_after_idle) when handed out
  due,      ///< must be checked before its next hand-out (put back unchecked)
  // Held back (held_back()): idle, but not handed out and not on the ping queue.
  pinging,  ///< its background check running
  canary,   ///< kept past its endpoint's learned idle timeout, to see whether the peer still closes it then
};

/// Whether an idle connection with this mark is held back: not handed out, not pinged.
inline bool held_back(check_mark m) noexcept { return m >= check_mark::pinging; }

/// Where a leased connection stands with lease_warn_after.
enum class lease_watch : unsigned char {
  none,      ///< not watched (the option is off, or not leased to a caller)
  watched,   ///< on the list of leases by start time
  reported,  ///< held lease_warn_after or longer: reported once, off the list, counted held_long
};

/// The books' part of a connection. Layout: a lock holder on one core touches what another core
/// touched last, so what take_idle() and release() write shares as few cache lines as possible.
struct alignas(64) conn_node {
  // The first cache line: everything take_idle() and released() read or write.
  ep_node* ep = nullptr;
  list_hook<conn_node> ep_link;   // the endpoint's idle list; the arena's free list
  list_hook<conn_node> all_link;  // the idle list across endpoints
  time_point idle_since{};        // coarse clock
  void* payload = nullptr;        // the caller's connection
  std::uint32_t stamp = 0;        // names its current idle period (wraps; a hint only); 0 while free
  conn_state state = conn_state::closed;
  probe_result seen = probe_result::healthy;  // what the watch saw while it was leased, or address_removed
  check_mark check = check_mark::none;
  lease_watch watch = lease_watch::none;  // with lease_warn_after
  // The second: read only with max_lifetime, a health check, at connect and close.
  time_point expires = never;     // jittered max_lifetime
  std::uint64_t id = 0;           // never reused within a pool; 0 while the node is free
  std::size_t heap_pos = not_in_heap;  // in the lifetime heap
  time_point checked_at{};        // its last passed health check
  std::uint32_t uses = 0;         // leases released (with max_uses)
  // The ping queue (with ping_interval) while idle; the list of watched leases (lease_warn_after)
  // while leased: a connection is on at most one of them.
  list_hook<conn_node> ping_link;
  time_point lease_began{};  // coarse clock: when its watched lease began
};
static_assert(offsetof(conn_node, expires) == 64, "the hot fields of a connection node fill its first cache line");
static_assert(sizeof(conn_node) == 128, "a connection node is two cache lines");

/// What an acquire was given: an idle connection to probe, a slot to connect in, or an error.
struct grant {
  conn_node* conn = nullptr;
  bool slot = false;
  bool waiting = false;  // none of these: the acquire was queued again (the I/O layer sets it)
  error_code ec;
  explicit operator bool() const noexcept { return conn || slot || ec; }
};

/// A queued acquire. granted() runs under the caller's lock and must not block.
struct waiter_node {
  explicit waiter_node(ep_node* e) noexcept : ep(e) {}
  waiter_node(const waiter_node&) = delete;
  waiter_node& operator=(const waiter_node&) = delete;
  virtual ~waiter_node() = default;
  virtual void granted(grant g) = 0;
  bool queued() const noexcept { return queued_; }
  ep_node* ep;
  list_hook<waiter_node> link;
  bool queued_ = false;  // on its endpoint's queue; set by the books
  std::uint64_t ticket = 0;  // arrival order across endpoints
};

/// The books' part of an endpoint.
struct alignas(64) ep_node {
  ilist<conn_node, &conn_node::ep_link> idle;  // front: least recently released
  std::size_t leased = 0;
  std::size_t connecting = 0;
  // The learned idle timeout (learn_idle_timeout) less its margin: idle connections retire at
  // this age. 0: none learned.
  clock::duration retire_after{0};
  std::size_t held_long = 0;  // leases reported held lease_warn_after or longer, not ended yet
  ilist<waiter_node, &waiter_node::link> waiters;  // front: oldest
  std::size_t idle_taken = 0;  // reused = idle_taken - probe_failed
  std::size_t released = 0;
  std::size_t probe_failed = 0;
  pool_stats counters;  // the other counters (its gauges, reused and released are not used)
  std::size_t room_pos = not_in_heap;   // in the room queue
  list_hook<ep_node> empty_link;        // on the list of endpoints to forget
  time_point empty_since{};
  // Connect backoff (with connect_backoff): consecutive connect failures; while `holding`, no
  // connect starts before `retry_at`; after it, one trial at a time until a connect succeeds.
  std::uint32_t fails = 0;
  bool holding = false;
  time_point retry_at{};
  std::size_t hold_pos = not_in_heap;  // in the heap of holds, by retry_at (while holding)
  error_code last_error;  // the last failed connect's
  // min_idle_per_endpoint: when a lease of it last ended (it is in use while that is within
  // endpoint_grace), and its place in the heap of refills due (by refill_at).
  time_point last_used{};
  time_point refill_at{};
  std::size_t refill_pos = not_in_heap;
  // learn_idle_timeout: the peer's idle timeout learned (0: none), the idle ages of the last peer
  // closes of idle connections (a ring), whether a canary is kept, and the place in the heap of
  // endpoints whose idle connections retire by age (by retire_at: never later than the first due).
  clock::duration learned{0};
  clock::duration taught{0};  // what the last cluster (or a recall) taught: learned may be lower
  clock::duration samples[3] = {};
  std::uint8_t sampled = 0;  // samples held (at most 3)
  std::uint8_t next_sample = 0;
  bool canary = false;
  time_point retire_at{};
  std::size_t retire_pos = not_in_heap;

  std::size_t open() const noexcept { return idle.size() + leased + connecting; }
  bool unused() const noexcept { return open() == 0 && waiters.empty(); }
  pool_stats snapshot() const noexcept {
    pool_stats s = counters;
    s.idle = idle.size();
    s.leased = leased;
    s.connecting = connecting;
    s.waiting = waiters.size();
    s.held_long = held_long;
    s.reused = idle_taken - probe_failed;
    s.released = released;
    s.peer_idle_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(learned);
    return s;
  }
};

/// A connection the books retired: the caller's connection, and how to close it.
struct buried {
  void* conn;
  close_mode mode;
  bool peer_gone;  // the peer closed or reset it: no FIN or RST of ours
  close_reason why = close_reason::discarded;
  bool made = false;  // a connection the books counted as created (a failed connect's socket: not)
};

/// Closed after the caller unlocks: the connections the books retired.
using graveyard = std::vector<buried>;

template <class Key, class Hash, class KeyEqual>
class books {
 public:
  struct entry : ep_node {
    explicit entry(const Key& k) : key(k) {}
    Key key;
  };

  books(const pool_options& o, std::uint64_t seed)
      : max_idle_per_endpoint_(o.max_idle_per_endpoint),
        max_uses_(o.max_uses),
        warn_after_(span(o.lease_warn_after)),
        min_idle_(o.min_idle_per_endpoint),
        learn_(o.learn_idle_timeout),
        learn_margin_(span(o.learned_idle_margin)),
        idle_timeout_(span(o.idle_timeout)),
        ping_interval_(span(o.ping_interval)),
        validate_after_idle_(span(o.validate_after_idle)),
        max_lifetime_(span(o.max_lifetime)),
        endpoint_grace_(span(o.endpoint_grace)),
        max_connecting_(o.max_connecting_per_endpoint),
        backoff_(span(o.connect_backoff)),
        backoff_max_(span(o.connect_backoff_max)),
        opts_(o),
        rng_(static_cast<std::minstd_rand::result_type>(seed)) {}
  books(const books&) = delete;
  books& operator=(const books&) = delete;

  const pool_options& options() const noexcept { return opts_; }
  bool closed() const noexcept { return closed_; }
  std::size_t open_total() const noexcept { return open_total_; }
  std::size_t leased_total() const noexcept { return leased_total_; }
  std::size_t idle_total() const noexcept { return all_idle_.size(); }
  std::size_t endpoint_count() const noexcept { return map_.size(); }

  // ------------------------------------------------------------------------------- endpoints

  /// The entry of `k` (a Key, or what KeyEqual compares with a Key and Key is made from), or
  /// null. Services mostly talk to one or a few endpoints, so the last one found is checked first.
  template <class K>
  CONNPOOL_HOT entry* find(const K& k) const noexcept {
    if (last_ && KeyEqual()(last_->key, k)) return last_;
    auto it = map_.find(Key(k));
    if (it == map_.end()) return nullptr;
    last_ = it->second.get();
    return last_;
  }

  /// The entry of `k`, made if new (unused, so it is forgotten after endpoint_grace if nothing
  /// uses it). Throws std::bad_alloc.
  template <class K>
  entry& get(const K& k, time_point now) {
    if (entry* e = find(k)) return *e;
    auto owned = std::make_unique<entry>(Key(k));
    entry* e = owned.get();
    map_.emplace(e->key, std::move(owned));
    last_ = e;
    e->last_used = now;
    if (!remembered_.empty()) recall(*e);
    settle(*e, now);
    return *e;
  }

  // ------------------------------------------------------------------------------- acquiring

  /// An idle connection of the endpoint, now leased; or null. `mine` and `stamp`, from an earlier
  /// released(): the connection the caller released then, if it is still idle in that same idle
  /// period (not retired, not leased since, same endpoint); else the most recently released one.
  /// `mine` must be a node of these books (or null). Does not look at waiters: callers that must
  /// not pass one check `e.waiters.empty()`.
  /// Never takes a connection whose background check is running (check_mark::pinging).
  CONNPOOL_HOT conn_node* take_idle(ep_node& e, const conn_node* mine = nullptr, std::uint32_t stamp = 0) noexcept {
    conn_node* c = e.idle.back();
    // A connection whose check starts gets a new stamp (start_pings()), so a hint never names one.
    if (mine && mine != c && mine->stamp == stamp && mine->ep == &e && mine->state == conn_state::idle)
      c = const_cast<conn_node*>(mine);
    if (pinged_ && c && held_back(c->check)) c = available_before(c);
    if (c) {
      set_state(*c, conn_state::leased);
      ++e.idle_taken;
    }
    return c;
  }

  /// For a new acquire of `e`: an idle connection, or a slot (evicting the least recently used
  /// idle connection of another endpoint if max_total requires), or nothing (then enqueue()).
  /// Never passes a waiter of `e`. `fresh` (run()'s retry): a slot only, making room at
  /// max_per_endpoint by closing the endpoint's least recently used idle connection (surplus);
  /// queued, it may still be served a connection another lease gives back.
  grant try_grant(ep_node& e, time_point now, graveyard& dead, bool fresh = false) {
    grant g;
    if (closed_) {
      g.ec = error::pool_closed;
      return g;
    }
    if (e.holding && held(e, now, dead) && (fresh || !available(e))) {
      ++e.counters.backoff_rejected;
      g.ec = error::endpoint_unavailable;
      return g;
    }
    if (!e.waiters.empty()) return g;
    if (!fresh) {
      if ((g.conn = take_idle(e))) return g;
    } else if (opts_.max_per_endpoint && e.open() - (e.canary ? 1 : 0) >= opts_.max_per_endpoint && !e.holding &&
               !at_connect_limit(e)) {
      // Room from the least recently used idle connection that is not held back (take_slot()
      // closes a canary itself).
      conn_node* c = e.idle.front();
      while (c && held_back(c->check)) c = decltype(ep_node::idle)::next(c);
      if (c) retire(*c, close_reason::surplus, opts_.retire_close, now, dead);
    }
    if (!(g.slot = take_slot(e, now, dead)) && fresh) g.conn = take_idle(e);  // no room: never queue past one
    return g;
  }

  /// run() ran an exchange of `e` again (`refused`: the retry budget did not let it).
  static void count_retry(ep_node& e, bool refused) noexcept { ++(refused ? e.counters.retries_refused : e.counters.retries); }

  /// Queue an acquire that try_grant() gave nothing. O(log endpoints).
  void enqueue(waiter_node& w) noexcept {
    ep_node& e = *w.ep;
    CONNPOOL_ASSERT(!w.queued() && !available(e));
    CONNPOOL_ASSERT(!e.holding || e.leased || e.connecting);
    w.ticket = ++tickets_;
    e.waiters.push_back(&w);
    w.queued_ = true;
    update_room(e);
    unlink_unused(e);
  }

  /// A waiter leaves the queue unserved: its deadline passed (`timed_out`), or it was cancelled.
  void leave(waiter_node& w, bool timed_out, time_point now) noexcept {
    ep_node& e = *w.ep;
    e.waiters.erase(&w);
    w.queued_ = false;
    if (timed_out) ++e.counters.acquire_timeouts;
    changed(e, now);
  }

  /// A connection handed out as idle failed its probe: close it, and grant the same acquire the
  /// endpoint's next idle connection or a slot (the place just freed guarantees one as far as
  /// max_per_endpoint and max_total go), or error::pool_closed, or error::endpoint_unavailable in
  /// the endpoint's connect backoff. At max_connecting_per_endpoint, nothing: the acquire waits as
  /// a new one would, `w` (its waiter, if given) queued here; else the caller queues it.
  /// `idle_only` (try_acquire): only an idle connection, and none while the endpoint has waiters.
  grant replace(conn_node& c, probe_result r, bool idle_only, time_point now, graveyard& dead,
                waiter_node* w = nullptr) {
    if (r == probe_result::peer_closed || r == probe_result::peer_reset) learn_from(c, now);
    return replace(c, reason_of(r), close_mode::graceful, idle_only, now, dead, w);
  }

  /// As above, for a connection closed for `why` (validation_failed: its health check failed).
  grant replace(conn_node& c, close_reason why, close_mode mode, bool idle_only, time_point now, graveyard& dead,
                waiter_node* w = nullptr) {
    ep_node& e = *c.ep;
    ++e.probe_failed;
    retire(c, closed_ ? close_reason::pool_closed : why, mode, now, dead);
    grant g;
    if (closed_) {
      g.ec = error::pool_closed;
    } else if (idle_only) {
      if (e.waiters.empty()) g.conn = take_idle(e);
    } else if (!(g.conn = take_idle(e))) {
      // The freed place is this acquire's, ahead of any waiter of the endpoint: it was granted
      // before them.
      if (in_backoff(e, now)) {
        ++e.counters.backoff_rejected;
        g.ec = error::endpoint_unavailable;
      } else {
        if (e.holding) unhold(e);  // its waiters are served below, after this acquire's slot
        g.slot = take_slot(e, now, dead);
        if (!g.slot && w && !may_wait(e)) g.ec = error::too_many_waiters;
      }
    }
    serve(now, dead);  // first: it may throw, and a waiter queued here must not be left queued then
    // At the connect limit: the acquire waits, as a new one would. serve() did not change that (`e`,
    // at its limit, is not in the room queue).
    if (w && !g) enqueue(*w);
    return g;
  }

  // ------------------------------------------------------------------------------- connecting

  /// A slot's connect succeeded: the connection `payload` is now leased; returns its node. Ends
  /// the endpoint's connect backoff; a connect slot freed for its waiters is granted. May throw
  /// std::bad_alloc, the books unchanged; the caller then reports connect_failed().
  /// `serve_waiters` false: the caller hands the connection itself on (prewarmed()), which serves
  /// the endpoint's waiters first with it, then with the freed connect place.
  conn_node* connected(ep_node& e, void* payload, time_point now, graveyard& dead, bool serve_waiters = true) {
    CONNPOOL_ASSERT(e.connecting > 0);
    conn_node& c = make_node();
    c.ep = &e;
    c.payload = payload;
    c.id = next_id_ + 1;
    try {
      registry_.emplace(c.id, &c);
      if (max_lifetime_.count() > 0) {
        c.expires = later(now, jittered_lifetime());
        lifetimes_.push(&c);
      }
    } catch (...) {
      registry_.erase(c.id);
      recycle(c);
      throw;
    }
    ++next_id_;
    --e.connecting;
    c.state = conn_state::leased;
    ++e.leased;
    ++leased_total_;
    ++e.counters.created;
    e.fails = 0;
    if (e.holding) unhold(e);
    if (serve_waiters && !e.waiters.empty()) {  // below max_connecting_per_endpoint again, or out of the backoff
      update_room(e);
      try {
        serve(now, dead);
      } catch (...) {
        // Out of memory serving the room queue: the connection is the caller's all the same; the
        // waiters are served by the next release, connect or retire pass, or time out.
      }
    }
    return &c;
  }

  /// A slot's connect succeeded after close(): counted made, then closed (pool_closed).
  void connected_after_close(ep_node& e, time_point now) noexcept {
    ++e.counters.created;
    ++e.counters.pool_closed;
    free_slot(e, now);
  }

  /// A slot's connect failed, or was stopped: by close() (`ec` pool_closed) or by its acquire's
  /// cancellation (`cancelled`); those are not counted failed. With connect_backoff, a counted
  /// failure while no backoff holds starts the next one, twice as long as the last at most:
  /// returns its length (else zero). Connects that were in flight with it and fail while it holds
  /// do not lengthen it (one step per round, not per connect). While it holds, an endpoint with
  /// no connection leased or connecting fails its waiters (error::endpoint_unavailable): nothing
  /// could serve them.
  clock::duration connect_failed(ep_node& e, error_code ec, time_point now, graveyard& dead,
                                 bool cancelled = false) noexcept {
    clock::duration wait{0};
    if (ec != error::pool_closed && !cancelled) {
      ++e.counters.connect_failed;
      // The acquire's own deadline says nothing of the endpoint.
      if (backoff_.count() > 0 && !closed_ && ec != error::acquire_timeout) {
        e.last_error = ec;
        if (!in_backoff(e, now)) {
          wait = backoff_after(++e.fails);
          hold(e, later(now, wait));
        }
      }
    }
    if (ec == error::acquire_timeout) ++e.counters.acquire_timeouts;
    free_slot(e, now);
    serve(now, dead);
    // A connect counted towards the minimum is gone: ask again (later, after a failure).
    if (min_idle_) want_refill(e, now, wait.count() || cancelled || ec == error::pool_closed ? clock::duration::zero() : span(refill_retry));
    return wait;
  }

  /// Whether `e` is in its connect backoff at `now` (see connect_failed()).
  static bool in_backoff(const ep_node& e, time_point now) noexcept { return e.holding && now < e.retry_at; }

  // ------------------------------------------------------------------------------- returning

  /// A lease came back, its exchange complete. `r`: a probe's verdict where the caller made one,
  /// else healthy. Kept (to the endpoint's oldest waiter, else idle) unless the pool closed, the
  /// probe or the watch found the peer gone, or its lifetime passed. Returns the stamp of its idle
  /// period if it went idle (for take_idle()), else 0.
  std::uint32_t released(conn_node& c, probe_result r, time_point now, graveyard& dead) {
    ep_node& e = *c.ep;
    ++e.released;
    if (min_idle_) e.last_used = now;
    const std::uint32_t stamp = released_kept(c, r, now, dead);
    if (min_idle_) want_refill(e, now, clock::duration::zero());
    return stamp;
  }

 private:
  CONNPOOL_HOT std::uint32_t released_kept(conn_node& c, probe_result r, time_point now, graveyard& dead) {
    c.check = check_mark::none;
    if (max_uses_ && ++c.uses >= max_uses_ && !closed_ && r == probe_result::healthy && c.seen == r) {
      retire(c, close_reason::max_uses, opts_.retire_close, now, dead);
      serve(now, dead);
      return 0;
    }
    return keep(c, r, now, dead, now);
  }

 public:
  /// Whether an acquire of `e` that try_grant() gave nothing may queue; if not (max_waiting_per_
  /// endpoint), it fails with error::too_many_waiters, counted here.
  bool may_wait(ep_node& e) noexcept {
    if (!opts_.max_waiting_per_endpoint || e.waiters.size() < opts_.max_waiting_per_endpoint) return true;
    ++e.counters.waiters_rejected;
    return false;
  }

  /// The connections of `e` for which `pred(payload)` holds (the I/O layer's test: their address
  /// left the backend's set): idle ones are retired now, leased ones when they come back (their
  /// `seen` records it, unless the watch recorded a FIN or RST there first: then counted so),
  /// counted address_removed. O(connections of the pool): for the rare change of a backend's
  /// addresses, so that no release pays for it. May throw std::bad_alloc, the books unchanged.
  template <class Pred>
  void address_removed(ep_node& e, Pred pred, time_point now, graveyard& dead) {
    std::vector<conn_node*> idle;
    idle.reserve(e.idle.size());
    dead.reserve(dead.size() + e.idle.size());
    for (const auto& kv : registry_) {
      conn_node* c = kv.second;
      if (c->ep != &e || !pred(c->payload)) continue;
      if (c->state == conn_state::idle) idle.push_back(c);
      else if (c->seen == probe_result::healthy) c->seen = probe_result::address_removed;
    }
    for (conn_node* c : idle) retire(*c, close_reason::address_removed, opts_.retire_close, now, dead);
    if (!idle.empty()) serve(now, dead);
  }

  /// An acquire took the idle connection `c` and gives it back unused: its deadline passed first
  /// (`timed_out`, counted), or it needs a check the acquire cannot run. Kept as released() keeps
  /// it, not counted reused or released, with its idle time (at most raised to that of the
  /// connection released last, which keeps the idle lists in order). `unchecked`: it was taken
  /// for its health check, and gets it before its next hand-out whatever its idle time.
  void put_back(conn_node& c, bool unchecked, bool timed_out, time_point now, graveyard& dead) {
    ep_node& e = *c.ep;
    --e.idle_taken;
    if (timed_out) ++e.counters.acquire_timeouts;
    if (unchecked) c.check = check_mark::due;
    keep(c, probe_result::healthy, now, dead, c.idle_since);
  }

  // ------------------------------------------------------------------------------- health checks

  /// Background checks on (with ping_interval) while the caller has a check to run.
  /// O(idle) when it changes: the ping queue is kept only while pings are on, so that without a
  /// check no release or hand-out touches it.
  void pinging(bool on) noexcept {
    on = on && ping_interval_.count() > 0;
    if (on == pinging_) return;
    pinging_ = on;
    if (on) {
      for (conn_node* c = all_idle_.front(); c; c = all_idle_.next(c))
        if (!held_back(c->check)) pingq_.push_back(c);
    } else {
      while (conn_node* c = pingq_.front()) pingq_.erase(c);
    }
  }

  /// What take_idle(e) would take (without a hint), still idle; or null.
  conn_node* peek_idle(const ep_node& e) const noexcept {
    conn_node* c = e.idle.back();
    return c && held_back(c->check) ? available_before(c) : c;
  }

  /// Whether the connection `c`, taken from idle, must pass the health check before hand-out:
  /// idle at least validate_after_idle since its last lease or passed check, or put back unchecked.
  bool needs_check(const conn_node& c, time_point now) const noexcept {
    if (c.check == check_mark::due) return true;
    const time_point last = c.checked_at > c.idle_since ? c.checked_at : c.idle_since;
    return later(last, validate_after_idle_) <= now;
  }

  /// The health check of the leased `c` passed (at an acquire).
  void check_passed(conn_node& c, time_point now) noexcept {
    c.check = check_mark::none;
    c.checked_at = now;
  }

  /// Start the background checks that are due (with ping_interval): idle connections whose last
  /// lease or passed check is ping_interval ago go into `out`, marked pinging; they stay idle
  /// (counted, retired by idle_timeout and close() as any idle connection) but are not handed
  /// out until ping_done(). O(started).
  void start_pings(time_point now, std::vector<conn_node*>& out) {
    if (closed_ || !pinging_) return;
    while (conn_node* c = pingq_.front()) {
      if (later(ping_key(*c), ping_interval_) > now) break;
      out.reserve(out.size() + 1);  // the one step that may throw: before the books change
      pingq_.erase(c);
      c->check = check_mark::pinging;
      if (++stamps_ == 0) ++stamps_;
      c->stamp = stamps_;  // a new idle period: no hint names it while its check runs
      ++pinged_;
      out.push_back(c);
    }
  }

  /// A background check of `c` ended (`ok`: it passed; `r`: what a probe after it found). Passed:
  /// back to the endpoint's oldest waiter, else available idle, in its place (its idle time for
  /// idle_timeout unchanged). Failed: retired (validation_failed). `c` must still be in the books
  /// (lookup() by its id: one retired meanwhile is not).
  void ping_done(conn_node& c, bool ok, probe_result r, time_point now, graveyard& dead) {
    CONNPOOL_ASSERT(c.state == conn_state::idle && c.check == check_mark::pinging);
    ep_node& e = *c.ep;
    c.check = check_mark::none;
    --pinged_;
    if (!ok || r != probe_result::healthy) {
      retire(c, ok ? reason_of(r) : close_reason::validation_failed, ok ? close_mode::graceful : close_mode::abortive,
             now, dead);
      serve(now, dead);
      return;
    }
    c.checked_at = now;
    if (waiter_node* w = e.waiters.front()) {
      set_state(c, conn_state::leased);
      ++e.idle_taken;
      c.idle_since = now;
      hand(*w, grant{&c, false, false, {}});
      return;
    }
    if (pinging_) pingq_.push_back(&c);
    if (e.retire_after.count()) watch_ages(e);  // skipped while its check ran
  }

 private:
  /// Keep a connection that came back healthy (to the endpoint's oldest waiter, else idle), or
  /// retire it; see released().
  /// Its idle time (for idle_timeout and the health check) starts at `idle_since`.
  CONNPOOL_HOT std::uint32_t keep(conn_node& c, probe_result r, time_point now, graveyard& dead,
                                  time_point idle_since) {
    ep_node& e = *c.ep;
    CONNPOOL_ASSERT(c.watch == lease_watch::none);  // its lease's watch ended first (lease_done())
    if (r == probe_result::healthy) r = c.seen;
    if (closed_) {
      retire(c, close_reason::pool_closed, opts_.retire_close, now, dead);
    } else if (r != probe_result::healthy) {
      retire(c, reason_of(r), r == probe_result::address_removed ? opts_.retire_close : close_mode::graceful, now,
             dead);
    } else if (max_lifetime_.count() > 0 && c.expires <= now) {
      retire(c, close_reason::max_lifetime, opts_.retire_close, now, dead);
    } else if (waiter_node* w = e.waiters.front()) {
      ++e.idle_taken;  // handed over as an idle connection, probed by the waiter
      c.idle_since = idle_since;  // after a release, now: not checked for its idle time
      hand(*w, grant{&c, false, false, {}});
      return 0;
    } else {
      c.idle_since = idle_since;
      set_state(c, conn_state::idle);
      if (e.retire_after.count()) watch_due(e, later(c.idle_since, e.retire_after));
      const std::uint32_t stamp = c.stamp;
      if (max_idle_per_endpoint_ && e.idle.size() > max_idle_per_endpoint_)
        retire(*e.idle.front(), close_reason::surplus, opts_.retire_close, now, dead);
      if (!room_.empty()) serve(now, dead);
      return c.state == conn_state::idle && c.stamp == stamp ? stamp : 0;
    }
    serve(now, dead);
    return 0;
  }

 public:
  /// A lease is closed by the user (discard(), or destroyed unreleased).
  void discarded(conn_node& c, close_mode mode, time_point now, graveyard& dead) {
    if (min_idle_) c.ep->last_used = now;
    retire(c, close_reason::discarded, mode, now, dead);
    serve(now, dead);
  }

  /// An async grant died before its handler took it: give the connection or the slot back.
  void abandoned(ep_node& e, grant g, time_point now, graveyard& dead) {
    if (g.conn) {
      --e.idle_taken;  // it was never served: not reused
      retire(*g.conn, closed_ ? close_reason::pool_closed : close_reason::discarded, opts_.retire_close, now, dead);
    }
    else if (g.slot)
      free_slot(e, now);
    serve(now, dead);
    if (min_idle_) want_refill(e, now, clock::duration::zero());
  }

  // ------------------------------------------------------------------------------- the idle watch

  /// The connection with this id, if it is still in the books.
  conn_node* lookup(std::uint64_t id) const noexcept {
    auto it = registry_.find(id);
    return it == registry_.end() ? nullptr : it->second;
  }

  /// The watch saw the peer of `c` close or reset it. Idle: the caller probed it and found `r`;
  /// anything but healthy retires it. Leased: remembered, so that release() does not keep it.
  void peer_event(conn_node& c, probe_result r, time_point now, graveyard& dead) {
    if (c.state == conn_state::leased) {
      c.seen = r;
      return;
    }
    if (r == probe_result::healthy) return;
    if (r == probe_result::peer_closed || r == probe_result::peer_reset) learn_from(c, now);
    retire(c, reason_of(r), close_mode::graceful, now, dead);
    serve(now, dead);
  }

  // ------------------------------------------------------------------------------- time

  /// When the idle connection `c` reaches idle_timeout or its background check (never if neither
  /// applies). A connection that released() kept idle can make next_due() earlier by this alone,
  /// unless rearm_on_release().
  CONNPOOL_HOT time_point idle_due(const conn_node& c) const noexcept {
    time_point t = idle_timeout_.count() > 0 ? later(c.idle_since, idle_timeout_) : never;
    if (pinging_) {
      const time_point p = later(c.idle_since, ping_interval_);
      if (p < t) t = p;
    }
    return t;
  }

  /// When expire() next has work: the earliest idle timeout, lifetime or endpoint to forget.
  CONNPOOL_HOT time_point next_due() const noexcept {
    time_point t = never;
    if (idle_timeout_.count() > 0 && !all_idle_.empty()) t = later(all_idle_.front()->idle_since, idle_timeout_);
    if (!lifetimes_.empty() && lifetimes_.top()->expires < t) t = lifetimes_.top()->expires;
    if (endpoint_grace_.count() > 0 && !unused_.empty()) {
      const time_point f = later(unused_.front()->empty_since, endpoint_grace_);
      if (f < t) t = f;
    }
    if (pinging_ && !pingq_.empty()) {
      const time_point p = later(ping_key(*pingq_.front()), ping_interval_);
      if (p < t) t = p;
    }
    if (!holds_.empty() && holds_.top()->retry_at < t) t = holds_.top()->retry_at;
    if (!leases_.empty()) {
      const time_point w = later(leases_.front()->lease_began, warn_after_);
      if (w < t) t = w;
    }
    if (!refills_.empty() && refills_.top()->refill_at < t) t = refills_.top()->refill_at;
    if (!retires_.empty() && retires_.top()->retire_at < t) t = retires_.top()->retire_at;
    return t;
  }

  /// Retire idle connections past idle_timeout or their lifetime, and forget endpoints unused for
  /// endpoint_grace. O(retired + log n): the idle list is in idle order, lifetimes are a heap,
  /// unused endpoints a list in order. With ping_interval, the background checks due go into
  /// `pings` (see start_pings(); required then). Returns next_due().
  time_point expire(time_point now, graveyard& dead, std::vector<conn_node*>* pings = nullptr,
                    std::vector<ep_node*>* refills = nullptr) {
    if (!closed_) {
      if (idle_timeout_.count() > 0) {
        while (conn_node* c = all_idle_.front()) {
          if (later(c->idle_since, idle_timeout_) > now) break;
          if (min_idle_ && !held_back(c->check) && keeps_minimum(*c->ep, now)) {
            renew(*c, now);  // below the minimum of an endpoint in use: idle_timeout does not apply
            continue;
          }
          retire_and_serve(*c, close_reason::idle_timeout, now, dead);
        }
      }
      while (!lifetimes_.empty() && lifetimes_.top()->expires <= now) {
        conn_node* c = lifetimes_.top();
        if (c->state == conn_state::idle) {
          retire_and_serve(*c, close_reason::max_lifetime, now, dead);
        } else {
          lifetimes_.erase(c);  // leased: release() retires it
        }
      }
      // (An endpoint stays in the heap during its pass: if retire() runs out of memory, the next
      // pass tries again.)
      while (!retires_.empty() && retires_.top()->retire_at <= now) retire_aged(*retires_.top(), now, dead);
      if (endpoint_grace_.count() > 0) {
        while (ep_node* e = unused_.front()) {
          if (later(e->empty_since, endpoint_grace_) > now) break;
          forget(static_cast<entry&>(*e));
        }
      }
      if (!holds_.empty() && holds_.top()->retry_at <= now) {
        while (!holds_.empty() && holds_.top()->retry_at <= now) {
          ep_node& e = *holds_.top();
          unhold(e);  // its waiters may have the trial connect now
          update_room(e);
          if (min_idle_) want_refill(e, now, clock::duration::zero());  // the backoff held a refill back
        }
        serve(now, dead);
      }
      if (pings) start_pings(now, *pings);
      while (refills && !refills_.empty() && refills_.top()->refill_at <= now) {
        ep_node& e = *refills_.top();
        refills_.erase(&e);
        if (e.holding || !below_minimum(e, now)) continue;  // a backoff's end asks again
        try {
          refills->push_back(&e);
        } catch (...) {  // out of memory: the next close or release asks again
        }
      }
    }
    return next_due();
  }

  // ------------------------------------------------------------------------------- min_idle_per_endpoint

  /// Whether min_idle_per_endpoint is set: a constant.
  bool keeps_minimums() const noexcept { return min_idle_ != 0; }

  /// Whether a release must rearm the retire timer by next_due() rather than by idle_due() of the
  /// connection: min_idle_per_endpoint is set (a refill may be due), or an endpoint has learned an
  /// idle timeout (its retire time is in the heap of retire times, not in idle_due()).
  bool rearm_on_release() const noexcept { return min_idle_ != 0 || learned_any_; }

  /// Whether `e` is in use at `now`: a lease of it is out or ended within endpoint_grace, or an
  /// acquire of it waits, or it was made then (always, with endpoint_grace 0).
  bool in_use(const ep_node& e, time_point now) const noexcept {
    return endpoint_grace_.count() == 0 || e.leased || !e.waiters.empty() || later(e.last_used, endpoint_grace_) > now;
  }

  /// Whether `e` (in use) has fewer than min_idle_per_endpoint idle connections, counting its
  /// connects in flight.
  bool below_minimum(const ep_node& e, time_point now) const noexcept {
    return min_idle_ && in_use(e, now) && usable_idle(e) + e.connecting < min_idle_;
  }

  /// The idle connections of `e` that can serve traffic: all but its canary.
  static std::size_t usable_idle(const ep_node& e) noexcept { return e.idle.size() - (e.canary ? 1 : 0); }

  /// Whether the idle connections of `e` are all its minimum, which idle_timeout leaves alone.
  bool keeps_minimum(const ep_node& e, time_point now) const noexcept {
    return in_use(e, now) && usable_idle(e) <= min_idle_;
  }

  /// `e` may be below its minimum: refill it (prewarm it up to the minimum, in the background)
  /// after `delay` and a random jitter of up to refill_jitter, unless a refill is due already or
  /// the connect backoff holds it (its end asks again). O(log endpoints due).
  void want_refill(ep_node& e, time_point now, clock::duration delay) noexcept {
    if (closed_ || e.refill_pos != not_in_heap || e.holding || !below_minimum(e, now)) return;
    e.refill_at = later(later(now, delay), clock::duration(std::uniform_int_distribution<clock::rep>(
                                                                0, span(refill_jitter).count())(rng_)));
    try {
      refills_.push(&e);
    } catch (...) {  // out of memory: the next close or release asks again
    }
  }

  /// The most a refill waits after the close or release that asked for it: reconnects after a
  /// server restart spread over this much.
  static constexpr std::chrono::milliseconds refill_jitter{200};
  /// How long a refill that failed (without a connect backoff to wait for) waits to try again.
  static constexpr std::chrono::milliseconds refill_retry{1000};

  /// A refill of the endpoint of `k` (if the books still have it) failed: try again later.
  template <class K>
  void refill_failed(const K& k, time_point now) noexcept {
    if (entry* e = find(k)) want_refill(*e, now, span(refill_retry));
  }

 private:
  /// Keep `c` (idle, past idle_timeout, its endpoint at its minimum) as if released now: the most
  /// recently used of its endpoint, with its health check due before its next hand-out.
  void renew(conn_node& c, time_point now) noexcept {
    set_state(c, conn_state::leased);
    c.check = check_mark::due;
    c.idle_since = now;
    set_state(c, conn_state::idle);
  }

 public:

  // ------------------------------------------------------------------------------- learn_idle_timeout
  //
  // Every peer close (FIN or RST) of an idle connection is a sample: its idle age, since its last
  // lease or passed check. Three samples in a row within a factor of two of each other, and no idle
  // connection of the endpoint alive and older than the youngest of them, teach the endpoint's idle
  // timeout T: the youngest. Its idle connections then retire (learned_idle_timeout) at T less a
  // margin, before the peer closes them, except one, the canary: held back (never handed out), it
  // stays to see when the peer closes it, and its close is a sample too. So T follows the peer up
  // (three canaries closed later teach the later T) and down (three closes of connections younger
  // than T teach the earlier one); a canary still open at twice T forgets T (the peer's timeout
  // grew past it, or it has none now): the canary is handed out again.

  /// Peer closes of connections idle less than this teach nothing: a server that closes a
  /// connection just after its last exchange (nginx's keepalive_requests, a restart) says nothing
  /// of its idle timeout.
  static constexpr std::chrono::milliseconds learn_min_age{500};
  /// Samples that teach: this many in a row, the oldest at most twice the youngest.
  static constexpr std::uint8_t learn_samples = 3;

  /// Whether learn_idle_timeout is set: a constant.
  bool learning() const noexcept { return learn_; }

  /// The most the retire timer may fire late while learning: far below the smallest margin (half
  /// of learn_min_age), so that no connection is closed late by a learned timeout.
  static constexpr std::chrono::milliseconds learn_slack{20};

  /// The margin before a learned idle timeout `t`: learned_idle_margin or a tenth of `t`,
  /// whichever is larger, and at most half of `t`.
  clock::duration learn_margin(clock::duration t) const noexcept {
    clock::duration m = learn_margin_ > t / 10 ? learn_margin_ : t / 10;
    return m > t / 2 ? t / 2 : m;
  }

  /// Learned idle timeouts that changed since the last call: `f(entry or null if forgotten,
  /// the new value or 0 if forgotten)`. The caller drains them after the calls that can change
  /// them (peer_event(), replace() of a probe's finding, expire()).
  template <class F>
  void take_learned(F f) {
    for (const auto& l : learned_changes_) f(static_cast<entry*>(l.first), l.second);
    learned_changes_.clear();
  }

  /// Teach `e` the idle timeout `t` (0: forget it; a canary then goes back to work), as if
  /// learned from its peer's closes: for tests.
  void set_learned(ep_node& e, clock::duration t) {
    tests_taught_ = true;
    if (t.count() > 0) {
      e.taught = t;
      learn(e, t);
      watch_ages(e);  // (a canary's deadline is twice `taught`)
    } else if (e.learned.count()) {
      unlearn(e);
    }
  }

 private:
  /// The peer closed or reset `c`, idle (or just taken from idle to be handed out, and probed):
  /// its idle age is a sample.
  void learn_from(const conn_node& c, time_point now) noexcept {
    // A connection put back unchecked, renewed by min_idle_per_endpoint, or in its check: its
    // idle age is not the peer's.
    if (!learn_ || closed_ || c.check == check_mark::due || c.check == check_mark::pinging) return;
    ep_node& e = *c.ep;
    const clock::duration age = now - ping_key(c);
    if (age < span(learn_min_age)) return;
    // Lean on the low end: with T learned, one close younger than T lowers it, down to half of it
    // at most (a restart's young closes cannot pull it far; lower is safe, and canaries lift it).
    if (e.learned.count() && age < e.learned && 2 * age >= e.taught) {
      learn(e, age);
      return;
    }
    e.samples[e.next_sample] = age;
    e.next_sample = static_cast<std::uint8_t>((e.next_sample + 1) % learn_samples);
    if (e.sampled < learn_samples) ++e.sampled;
    if (e.sampled < learn_samples) return;
    clock::duration lo = e.samples[0], hi = e.samples[0];
    for (clock::duration a : e.samples) {
      if (a < lo) lo = a;
      if (a > hi) hi = a;
    }
    if (hi > 2 * lo) return;  // not a cluster: a restart, or noise
    // None older: an idle connection alive past `lo` says the peer does not close at `lo`. (Rare:
    // O(idle of the endpoint) once a cluster forms.)
    for (const conn_node* o = e.idle.front(); o; o = e.idle.next(o))
      if (o != &c && now - ping_key(*o) > lo) return;
    // Down at once; up only past the margin (so that the spread of the peer's closes, as Redis's
    // timeout counted in whole seconds, does not lift it), or when a canary outlives twice it.
    e.sampled = e.next_sample = 0;  // a cluster counts once: three new samples to move it again
    if (!e.learned.count() || lo < e.learned || lo > e.learned + learn_margin(e.learned)) {
      e.taught = lo;
      learn(e, lo);
    } else if (lo < e.taught) {
      e.taught = lo;  // (at or above learned: the bound of later single lowerings)
    } else {
      return;
    }
    watch_ages(e);  // a canary's deadline is twice `taught`: it may be earlier now
  }

  void learn(ep_node& e, clock::duration t) noexcept {
    e.sampled = e.next_sample = 0;  // three new samples to move it again
    if (t == e.learned) return;
    e.learned = t;
    learned_any_ = true;
    e.retire_after = t - learn_margin(t);
    note_learned(e);
    if (e.retire_pos != not_in_heap) retires_.erase(&e);  // its first due may be earlier now
    watch_ages(e);
  }

  /// Forget what `e` learned: a canary goes back to work (to the oldest waiter, or available idle).
  void unlearn(ep_node& e) {
    e.learned = e.retire_after = e.taught = clock::duration::zero();
    e.sampled = e.next_sample = 0;
    if (e.retire_pos != not_in_heap) retires_.erase(&e);
    note_learned(e);
    if (!e.canary) return;
    conn_node* c = canary_of(e);
    c->check = check_mark::none;
    --pinged_;
    e.canary = false;
    if (waiter_node* w = e.waiters.front()) {
      set_state(*c, conn_state::leased);
      ++e.idle_taken;
      hand(*w, grant{c, false, false, {}});
      return;
    }
    if (pinging_) {  // in its place by ping_key (O(connections before it): unlearning is rare)
      conn_node* at = pingq_.front();
      while (at && ping_key(*at) <= ping_key(*c)) at = pingq_.next(at);
      pingq_.insert_before(at, c);
    }
  }

  void note_learned(ep_node& e) noexcept {
    try {
      learned_changes_.emplace_back(&e, e.learned);
    } catch (...) {  // out of memory: not reported
    }
  }

  /// When the first idle connection of `e` (with a learned timeout) retires by age, or its canary
  /// is due (twice the timeout taught); never if none. O(1 + connections in their check).
  time_point first_retire(const ep_node& e) const noexcept {
    time_point t = never;
    for (const conn_node* c = e.idle.front(); c; c = e.idle.next(c)) {
      if (c->check == check_mark::canary) {
        t = canary_due(*c);
      } else if (c->check != check_mark::pinging) {
        const time_point a = later(c->idle_since, e.retire_after);
        return a < t ? a : t;
      }
    }
    return t;
  }

  /// Keep `e` in the heap of endpoints whose idle connections retire by age, by its first due
  /// (never later: a key can be early, when its connection left first, never late).
  void watch_ages(ep_node& e) noexcept { watch_due(e, first_retire(e)); }

  /// As watch_ages(), for a due time of one of its connections.
  void watch_due(ep_node& e, time_point due) noexcept {
    if (due == never) return;
    if (e.retire_pos == not_in_heap) {
      e.retire_at = due;
      try {
        retires_.push(&e);
      } catch (...) {  // out of memory: the next release to it tries again
      }
    } else if (due < e.retire_at) {
      e.retire_at = due;
      retires_.fix(&e);
    }
  }

  /// The retire pass for `e`, due: its idle connections at the learned timeout less the margin
  /// retire, but the first, which becomes the canary if `e` has none. O(retired + in their check).
  void retire_aged(ep_node& e, time_point now, graveyard& dead) {
    bool retired = false;
    for (conn_node* c = e.idle.front(); c;) {
      conn_node* next = e.idle.next(c);
      if (c->check == check_mark::canary) {
        if (canary_due(*c) <= now) {
          unlearn(e);  // the peer kept it open at twice the timeout taught
          break;
        }
      } else if (later(c->idle_since, e.retire_after) > now) {
        break;
      } else if (c->check != check_mark::pinging) {  // one in its check: after it
        if (!e.canary && c->check == check_mark::none) {
          make_canary(*c, now);
        } else {
          retire(*c, close_reason::learned_idle_timeout, opts_.retire_close, now, dead);
          retired = true;
        }
      }
      c = next;
    }
    if (e.retire_after.count()) {  // (forgotten: unlearn() took it out of the heap)
      const time_point due = first_retire(e);
      if (due == never) {
        retires_.erase(&e);
      } else {
        e.retire_at = due;
        retires_.fix(&e);
      }
    }
    if (retired) serve(now, dead);
  }

  /// When the canary `c` has outlived twice the timeout taught, counted as its samples are: from its
  /// last exchange (a lease or a passed check), the peer's idle age. (Not earlier than a retire of
  /// a connection before it: retire_after <= learned <= taught, and ping_key >= idle_since.)
  static time_point canary_due(const conn_node& c) noexcept { return later(ping_key(c), 2 * c.ep->taught); }

  /// The canary of `e` (e.canary). O(1 + connections in their check).
  static conn_node* canary_of(const ep_node& e) noexcept {
    conn_node* c = e.idle.front();
    while (c->check != check_mark::canary) c = decltype(ep_node::idle)::next(c);
    return c;
  }

  /// The learned idle timeouts of forgotten endpoints, the last learn_memory of them: an endpoint
  /// forgotten between a quiet client's bursts (endpoint_grace) keeps what it learned.
  static constexpr std::size_t learn_memory = 1024;

  /// Least recently forgotten first out: a key forgotten again (a quiet client's endpoint, each
  /// burst) moves to the back with its new value.
  void remember(const Key& k, clock::duration t) noexcept {
    try {
      auto it = remembered_.find(k);
      if (it != remembered_.end()) {
        it->second.first = t;
        remembered_order_.splice(remembered_order_.end(), remembered_order_, it->second.second);
        return;
      }
      remembered_order_.push_back(k);
      try {
        remembered_.emplace(k, std::make_pair(t, std::prev(remembered_order_.end())));
      } catch (...) {
        remembered_order_.pop_back();
        throw;
      }
      if (remembered_order_.size() > learn_memory) unremember(remembered_order_.front());
    } catch (...) {  // out of memory: forgotten, to be learned again
    }
  }

  void unremember(const Key& k) noexcept {
    auto it = remembered_.find(k);
    if (it == remembered_.end()) return;
    remembered_order_.erase(it->second.second);
    remembered_.erase(it);
  }

  /// A new entry for a key forgotten with a learned idle timeout starts from it (reported as
  /// learned, at the pool's next drain of the changes).
  void recall(entry& e) noexcept {
    auto it = remembered_.find(e.key);
    if (it == remembered_.end()) return;
    e.learned = e.taught = it->second.first;
    e.retire_after = e.learned - learn_margin(e.learned);
    learned_any_ = true;
    note_learned(e);
  }

  void make_canary(conn_node& c, time_point now) noexcept {
    if (pinging_ && pingq_.linked(&c)) pingq_.erase(&c);
    c.check = check_mark::canary;
    if (++stamps_ == 0) ++stamps_;
    c.stamp = stamps_;  // no hint names it
    ++pinged_;
    c.ep->canary = true;
    if (min_idle_) want_refill(*c.ep, now, clock::duration::zero());  // it serves no traffic now
  }

 public:

  // ------------------------------------------------------------------------------- prewarming

  /// A connect slot for a prewarm connection of `e` (one that goes idle, not to a caller), only if
  /// it can be had now without taking anything from traffic: no acquire of `e` waits (connects for
  /// them are theirs), `e` is under max_per_endpoint and, with its connects in flight, under
  /// max_idle_per_endpoint (so the connection is not surplus), the pool under max_total without
  /// evicting anything, and the connect limit and backoff allow one. Never queues.
  bool prewarm_slot(ep_node& e, time_point now, graveyard& dead) {
    if (closed_ || !e.waiters.empty()) return false;
    if (max_idle_per_endpoint_ && e.idle.size() + e.connecting >= max_idle_per_endpoint_) return false;
    if (opts_.max_per_endpoint && e.open() >= opts_.max_per_endpoint) return false;  // its canary stays
    if (opts_.max_total && open_total_ >= opts_.max_total) return false;
    return take_slot(e, now, dead);
  }

  /// A prewarm connection, just connected (connected() without serving: leased to nobody), goes to
  /// the endpoint's oldest waiter, or idle; then the freed connect place serves the next waiters.
  /// Not counted as a release.
  void prewarmed(conn_node& c, time_point now, graveyard& dead) { keep(c, probe_result::healthy, now, dead, now); }

  // ------------------------------------------------------------------------------- lease_warn_after

  /// Whether leases are watched (lease_warn_after is set).
  bool watching_leases() const noexcept { return warn_after_.count() > 0; }

  /// The lease of `c` (leased, not watched), now its caller's, began at `now`: watch it until it
  /// ends. O(1).
  void watch_lease(conn_node& c, time_point now) noexcept {
    CONNPOOL_ASSERT(c.state == conn_state::leased && c.watch == lease_watch::none);
    // Read from a coarse clock on several threads: keep the list in order.
    if (conn_node* last = leases_.back(); last && last->lease_began > now) now = last->lease_began;
    c.lease_began = now;
    c.watch = lease_watch::watched;
    leases_.push_back(&c);
  }

  /// The lease of `c` ends (or `c` is retired): stop watching it. Returns whether it had been
  /// reported held long (overdue()), for the event of its end. O(1).
  bool lease_done(conn_node& c) noexcept {
    const lease_watch w = c.watch;
    if (w == lease_watch::watched) leases_.erase(&c);
    else if (w == lease_watch::reported) --c.ep->held_long;
    c.watch = lease_watch::none;
    return w == lease_watch::reported;
  }

  /// The leases held lease_warn_after or longer at `now`, each once: `f(node, how long)`. They
  /// count in held_long (and leases_held_long) until they end. O(reported): the list is in start
  /// order.
  template <class F>
  void overdue(time_point now, F f) {
    while (conn_node* c = leases_.front()) {
      if (later(c->lease_began, warn_after_) > now) break;
      leases_.erase(c);
      c->watch = lease_watch::reported;
      ++c->ep->held_long;
      ++c->ep->counters.leases_held_long;
      f(*c, now - c->lease_began);
    }
  }

  // ------------------------------------------------------------------------------- closing

  /// Calls `f(payload)` for every leased connection; returns how many. O(connections of the pool):
  /// for drain()'s deadline, once.
  template <class F>
  std::size_t each_leased(F f) const {
    std::size_t n = 0;
    for (const auto& kv : registry_) {
      if (kv.second->state != conn_state::leased) continue;
      f(kv.second->payload);
      ++n;
    }
    return n;
  }

  /// Close the pool: every idle connection is retired (retire_close), every waiter fails with
  /// pool_closed; connections still leased close when they come back.
  void close(time_point now, graveyard& dead) {
    if (closed_) return;
    closed_ = true;
    while (!refills_.empty()) refills_.erase(refills_.top());
    while (!retires_.empty()) retires_.erase(retires_.top());
    while (conn_node* c = all_idle_.front()) retire(*c, close_reason::pool_closed, opts_.retire_close, now, dead);
    while (!room_.empty()) room_.erase(room_.top());
    for (auto& kv : map_) {
      ep_node& e = *kv.second;
      while (waiter_node* w = e.waiters.front()) {
        e.waiters.erase(w);
        w->queued_ = false;
        grant g;
        g.ec = error::pool_closed;
        w->granted(g);
      }
    }
    while (ep_node* e = unused_.front()) unused_.erase(e);
  }

  // ------------------------------------------------------------------------------- stats

  pool_stats stats() const noexcept {
    pool_stats s = forgotten_;
    for (auto& kv : map_) s += kv.second->snapshot();
    return s;
  }

  /// `f(key, stats)` for every endpoint the books have, then the counters of the forgotten ones.
  template <class F>
  const pool_stats& each_stats(F f) const {
    for (auto& kv : map_) f(kv.first, kv.second->snapshot());
    return forgotten_;
  }

  template <class K>
  pool_stats stats(const K& k) const noexcept {
    const entry* e = find(k);
    return e ? e->snapshot() : pool_stats{};
  }

  /// Every connection is in exactly one place, gauges equal list sizes, open == idle + leased +
  /// connecting per endpoint and in total, the queues keep their order. Throws std::logic_error
  /// naming what broke. O(everything): for tests.
  void check_invariants() const {
    auto fail = [](const std::string& what) { throw std::logic_error("connpool books: " + what); };
    std::size_t open = 0, leased = 0, idle = 0, unused = 0, rooms = 0, holds = 0, retiring = 0;
    for (auto& kv : map_) {
      const entry& e = *kv.second;
      if (!KeyEqual()(e.key, kv.first)) fail("entry filed under another key");
      std::size_t n = 0, canaries = 0;
      time_point prev = time_point::min();
      for (conn_node* c = e.idle.front(); c; c = e.idle.next(c), ++n) {
        if (c->state != conn_state::idle) fail("a connection on an idle list is not idle");
        if (c->ep != &e) fail("a connection on another endpoint's idle list");
        if (!all_idle_.linked(c)) fail("an idle connection missing from the idle list across endpoints");
        if (c->idle_since < prev) fail("an endpoint's idle list out of idle order");
        if (lookup(c->id) != c) fail("an idle connection missing from the registry");
        if (pinging_ && pingq_.linked(c) == held_back(c->check))
          fail("an idle connection on the ping queue while held back, or missing from it");
        if (c->check == check_mark::canary) ++canaries;
        prev = c->idle_since;
      }
      if (canaries > 1 || e.canary != (canaries == 1)) fail("an endpoint's canary flag differs from its canaries");
      if (e.canary && !e.learned.count()) fail("a canary without a learned idle timeout");
      if ((e.learned.count() == 0) != (e.retire_after.count() == 0) || e.retire_after > e.learned)
        fail("a learned idle timeout without its retire age, or the reverse");
      if ((e.learned.count() == 0) != (e.taught.count() == 0) || e.taught < e.learned)
        fail("a learned idle timeout above what its cluster taught, or without one");
      if (!learn_ && e.learned.count() && !tests_taught_) fail("an idle timeout learned while learning is off");
      if (e.retire_after.count() && first_retire(e) != never) {
        if (e.retire_pos == not_in_heap) fail("an endpoint with a learned idle timeout and idle connections is not in the heap");
        if (e.retire_at > first_retire(e)) fail("an endpoint's retire time is later than its first due");
      } else if (!e.retire_after.count() && e.retire_pos != not_in_heap) {
        fail("an endpoint with no learned idle timeout in the heap of retire times");
      }
      if (e.retire_pos != not_in_heap) ++retiring;
      if (n != e.idle.size()) fail("idle gauge differs from the idle list");
      if (!e.waiters.empty() && available(e)) fail("an endpoint has both waiters and available idle connections");
      std::uint64_t ticket = 0;
      for (waiter_node* w = e.waiters.front(); w; w = e.waiters.next(w)) {
        if (w->ep != &e) fail("a waiter on another endpoint's queue");
        if (w->ticket <= ticket) fail("waiters out of arrival order");
        ticket = w->ticket;
      }
      const bool wants = wants_room(e);
      if (wants != (e.room_pos != not_in_heap)) fail("room queue membership wrong");
      // (Waiters with nothing leased or connecting to serve them may wait on an endpoint whose hold
      // is over until the retire pass ends it; the fuzzer checks they never do while it lasts.)
      if (e.holding != (e.hold_pos != not_in_heap)) fail("heap of holds membership wrong");
      if (e.holding) ++holds;
      if (wants) ++rooms;
      if (e.unused() != unused_.linked(&e) && !closed_)
        fail("list of unused endpoints wrong");
      if (e.unused()) ++unused;
      if (opts_.max_per_endpoint && e.open() > opts_.max_per_endpoint) fail("endpoint over max_per_endpoint");
      open += e.open();
      leased += e.leased;
      idle += e.idle.size();
    }
    if (open != open_total_) fail("open total differs from the endpoints' sum");
    if (opts_.max_total && open_total_ > opts_.max_total) fail("over max_total");
    if (leased != leased_total_) fail("leased total differs from the endpoints' sum");
    if (idle != all_idle_.size()) fail("idle list across endpoints differs from the endpoints' lists");
    if (!closed_ && unused != unused_.size()) fail("unused endpoint count");
    if (rooms != room_.size()) fail("room queue size");
    if (holds != holds_.size()) fail("heap of holds size");
    if (retiring != retires_.size()) fail("heap of retire times size");
    std::size_t refilling = 0;
    for (const auto& kv : map_) refilling += kv.second->refill_pos != not_in_heap;
    if (refilling != refills_.size()) fail("heap of refills size");
    if ((!min_idle_ || closed_) && !refills_.empty()) fail("refills while min_idle_per_endpoint is off or the pool closed");
    if (!room_.empty() && (open_total_ < opts_.max_total || !all_idle_.empty()))
      fail("a waiter waits for room that is free");
    if (registry_.size() != idle + leased) fail("registry size differs from idle + leased");
    time_point prev = time_point::min();
    for (conn_node* c = all_idle_.front(); c; c = all_idle_.next(c)) {
      if (c->idle_since < prev) fail("idle list across endpoints out of idle order");
      prev = c->idle_since;
    }
    prev = time_point::min();
    for (ep_node* e = unused_.front(); e; e = unused_.next(e)) {
      if (e->empty_since < prev) fail("unused endpoints out of order");
      prev = e->empty_since;
    }
    std::size_t free_nodes = 0;
    for (conn_node* c = free_; c; c = c->ep_link.next, ++free_nodes)
      if (c->state != conn_state::closed || c->stamp != 0) fail("a free node still looks in use");
    if (free_nodes + registry_.size() != arena_size_) fail("the arena lost a node");
    if (!pinging_ && !pingq_.empty()) fail("a ping queue while pings are off");
    std::size_t pinged = 0;
    for (conn_node* c = all_idle_.front(); c; c = all_idle_.next(c)) pinged += held_back(c->check);
    if (pinged != pinged_) fail("count of connections held back");
    for (conn_node* c = pingq_.front(); c; c = pingq_.next(c))
      if (c->state != conn_state::idle) fail("a connection on the ping queue is not idle");
    if (!watching_leases() && !leases_.empty()) fail("leases watched while lease_warn_after is off");
    prev = time_point::min();
    for (conn_node* c = leases_.front(); c; c = leases_.next(c)) {
      if (c->state != conn_state::leased || c->watch != lease_watch::watched) fail("a watched lease is not leased");
      if (c->lease_began < prev) fail("watched leases out of order");
      prev = c->lease_began;
    }
    std::size_t reported = 0, held_long = 0, watched = 0;
    for (const auto& kv : registry_) {
      reported += kv.second->watch == lease_watch::reported;
      watched += kv.second->watch == lease_watch::watched;
      if (kv.second->state != conn_state::leased && kv.second->watch != lease_watch::none)
        fail("a connection not leased is watched");
    }
    if (watched != leases_.size()) fail("watched leases differ from the list");
    for (const auto& kv : map_) held_long += kv.second->held_long;
    if (reported != held_long) fail("held_long differs from the leases reported");
    lifetimes_.for_each([&](conn_node* c) {
      if (lookup(c->id) != c) fail("a connection in the lifetime heap is not in the books");
    });
  }

 private:
  struct by_expiry {
    bool operator()(const conn_node* a, const conn_node* b) const noexcept { return a->expires < b->expires; }
  };
  struct by_retry_at {
    bool operator()(const ep_node* a, const ep_node* b) const noexcept { return a->retry_at < b->retry_at; }
  };
  struct by_retire_at {
    bool operator()(const ep_node* a, const ep_node* b) const noexcept { return a->retire_at < b->retire_at; }
  };
  struct by_refill_at {
    bool operator()(const ep_node* a, const ep_node* b) const noexcept { return a->refill_at < b->refill_at; }
  };
  struct by_oldest_waiter {
    bool operator()(const ep_node* a, const ep_node* b) const noexcept {
      return a->waiters.front()->ticket < b->waiters.front()->ticket;
    }
  };

  /// Whether `e` has an idle connection that can be handed out now.
  bool available(const ep_node& e) const noexcept {
    const conn_node* c = e.idle.back();
    return c && (!held_back(c->check) || available_before(c));
  }

  /// The most recently released idle connection before `c` on its endpoint's list that is not
  /// being checked, or null. O(connections being checked): few, as the checks are staggered.
  static conn_node* available_before(const conn_node* c) noexcept {
    do c = decltype(ep_node::idle)::prev(c);
    while (c && held_back(c->check));
    return const_cast<conn_node*>(c);
  }

  /// When `c` last proved alive: its last release or passed check.
  static time_point ping_key(const conn_node& c) noexcept {
    return c.checked_at > c.idle_since ? c.checked_at : c.idle_since;
  }

  /// The only function that moves a connection between leased and idle; it alone edits the idle
  /// lists and the gauges.
  CONNPOOL_HOT void set_state(conn_node& c, conn_state to) noexcept {
    ep_node& e = *c.ep;
    CONNPOOL_ASSERT(c.state != to && c.state != conn_state::closed);
    if (c.state == conn_state::idle) {
      e.idle.erase(&c);
      all_idle_.erase(&c);
      if (pinging_ && pingq_.linked(&c)) pingq_.erase(&c);
    } else {
      --e.leased;
      --leased_total_;
    }
    c.state = to;
    if (to == conn_state::idle) {
      // Released in order, read from a coarse clock on several threads: keep the lists in idle order.
      if (conn_node* last = all_idle_.back(); last && last->idle_since > c.idle_since) c.idle_since = last->idle_since;
      if (++stamps_ == 0) ++stamps_;  // 0 names no idle period
      c.stamp = stamps_;
      e.idle.push_back(&c);
      all_idle_.push_back(&c);
      if (pinging_) pingq_.push_back(&c);
    } else if (to == conn_state::leased) {
      ++e.leased;
      ++leased_total_;
    }
  }

  /// Take `c` (idle or leased) out of the books; the caller's graveyard closes its socket.
  void retire(conn_node& c, close_reason why, close_mode mode, time_point now, graveyard& dead) {
    ep_node& e = *c.ep;
    dead.reserve(dead.size() + 1);  // the one step that may throw: before the books change
    if (held_back(c.check)) --pinged_;
    if (c.check == check_mark::canary) e.canary = false;
    if (c.watch != lease_watch::none) lease_done(c);
    set_state(c, conn_state::closed);
    ++counter(e.counters, why);
    registry_.erase(c.id);
    if (lifetimes_.contains(&c)) lifetimes_.erase(&c);
    --open_total_;
    dead.push_back({c.payload, mode, why == close_reason::peer_closed || why == close_reason::peer_reset, why, true});
    recycle(c);
    changed(e, now);
    if (min_idle_ && !closed_) want_refill(e, now, clock::duration::zero());
  }

  /// A node from the arena: the free list, else a new chunk (may throw std::bad_alloc).
  conn_node& make_node() {
    if (!free_) {
      const std::size_t n = chunks_.empty() ? 16 : std::min<std::size_t>(1024, 2 * chunk_size_);
      chunks_.reserve(chunks_.size() + 1);
      chunks_.push_back(std::make_unique<conn_node[]>(n));
      chunk_size_ = n;
      arena_size_ += n;
      for (std::size_t i = n; i-- > 0;) {
        chunks_.back()[i].ep_link.next = free_;
        free_ = &chunks_.back()[i];
      }
    }
    conn_node& c = *free_;
    free_ = c.ep_link.next;
    c = conn_node{};
    return c;
  }

  /// Back to the free list. Its memory stays the books' until they are destroyed, so a stale hint
  /// that names it finds a free node (state closed, stamp 0), never freed memory.
  void recycle(conn_node& c) noexcept {
    c = conn_node{};
    c.ep_link.next = free_;
    free_ = &c;
  }

  void retire_and_serve(conn_node& c, close_reason why, time_point now, graveyard& dead) {
    retire(c, why, opts_.retire_close, now, dead);
    serve(now, dead);
  }

  /// A slot for `e` if its limits allow, evicting the least recently used idle connection of the
  /// pool (of another endpoint: callers have taken `e`'s own) when max_total is reached.
  bool take_slot(ep_node& e, time_point now, graveyard& dead) {
    if (opts_.max_per_endpoint && e.open() >= opts_.max_per_endpoint) {
      if (!e.canary || e.holding || at_connect_limit(e)) return false;
      retire(*canary_of(e), close_reason::learned_idle_timeout, opts_.retire_close, now, dead);  // traffic first
    }
    if (e.holding || at_connect_limit(e)) return false;
    if (opts_.max_total && open_total_ >= opts_.max_total) {
      conn_node* victim = all_idle_.front();
      if (!victim) return false;
      // (Of another endpoint, or held back: callers have taken `e`'s own; but for a fresh grant.)
      retire(*victim, close_reason::surplus, opts_.retire_close, now, dead);
    }
    ++e.connecting;
    ++open_total_;
    changed(e, now);
    return true;
  }

  void free_slot(ep_node& e, time_point now) noexcept {
    CONNPOOL_ASSERT(e.connecting > 0);
    --e.connecting;
    --open_total_;
    changed(e, now);
  }

  /// Serve the oldest waiter of `w.ep`'s queue. The endpoint holds what it was granted, so it is
  /// in use.
  void hand(waiter_node& w, grant g) {
    ep_node& e = *w.ep;
    CONNPOOL_ASSERT(e.waiters.front() == &w);
    e.waiters.erase(&w);
    w.queued_ = false;
    update_room(e);
    w.granted(g);
  }

  /// After room was freed (a connection or slot gone, or a connection idle that may be evicted):
  /// serve the oldest waiters that need room. A connection that comes back to an endpoint with
  /// waiters goes to them directly (released()), so the room queue is all there is to serve.
  void serve(time_point now, graveyard& dead) {
    if (closed_) return;
    while (!room_.empty()) {
      ep_node& r = *room_.top();
      if (opts_.max_total && open_total_ >= opts_.max_total && all_idle_.empty()) break;
      if (!take_slot(r, now, dead)) break;  // cannot happen: r is below its limit
      grant g;
      g.slot = true;
      hand(*r.waiters.front(), g);
    }
  }

  /// Whether `e` may start no more connects now: max_connecting_per_endpoint in flight, or one
  /// trial after its backoff.
  bool at_connect_limit(const ep_node& e) const noexcept {
    const std::size_t limit = e.fails ? 1 : max_connecting_;
    return limit && e.connecting >= limit;
  }

  /// Whether `e`'s oldest waiter needs a slot that its own limits allow: it is in the room queue.
  bool wants_room(const ep_node& e) const noexcept {
    return !e.waiters.empty() && !(opts_.max_per_endpoint && e.open() - e.canary >= opts_.max_per_endpoint) &&
           !e.holding && !at_connect_limit(e);
  }

  /// `e` holds in its backoff (e.holding): true while it lasts; after it, the hold ends (one trial
  /// connect at a time until one succeeds) and a waiter of `e` may get the trial.
  bool held(ep_node& e, time_point now, graveyard& dead) {
    if (now < e.retry_at) return true;
    unhold(e);
    if (!e.waiters.empty()) {
      update_room(e);
      serve(now, dead);
    }
    return false;
  }

  /// `e` holds until `until`; expire() ends it then (next_due() tells when).
  void hold(ep_node& e, time_point until) noexcept {
    e.holding = true;
    e.retry_at = until;
    if (e.hold_pos != not_in_heap) {
      holds_.fix(&e);
    } else {
      try {
        holds_.push(&e);
      } catch (...) {
        // Out of memory: the hold ends at the next acquire, connect or change of the endpoint.
      }
    }
  }

  void unhold(ep_node& e) noexcept {
    e.holding = false;
    if (e.hold_pos != not_in_heap) holds_.erase(&e);
  }

  /// With `e` in its backoff and nothing leased or connecting that could serve its waiters: fail
  /// them (error::endpoint_unavailable, counted backoff_rejected).
  void starve(ep_node& e) noexcept {
    if (e.leased || e.connecting) return;
    while (waiter_node* w = e.waiters.front()) {
      e.waiters.erase(w);
      w->queued_ = false;
      ++e.counters.backoff_rejected;
      grant g;
      g.ec = error::endpoint_unavailable;
      w->granted(g);
    }
  }

  /// `e`'s waiters or open count changed: put it in the room queue, move it, or take it out.
  void update_room(ep_node& e) noexcept {
    const bool wants = wants_room(e);
    const bool in = e.room_pos != not_in_heap;
    if (wants && in) {
      room_.fix(&e);
    } else if (wants) {
      try {
        room_.push(&e);
      } catch (...) {
        // Out of memory growing the room queue: the waiter stays queued on its endpoint and is
        // served by the endpoint's own releases; only room freed elsewhere passes it by.
      }
    } else if (in) {
      room_.erase(&e);
    }
  }

  /// `e`'s open count or waiters changed.
  void changed(ep_node& e, time_point now) noexcept {
    if (e.holding && now < e.retry_at) starve(e);  // one that is over ends in expire(), which serves
    update_room(e);
    settle(e, now);
  }

  /// Put `e` on the list of endpoints to forget if nothing uses it, or take it off.
  void settle(ep_node& e, time_point now) noexcept {
    const bool linked = unused_.linked(&e);
    if (e.unused() && !closed_) {
      if (!linked) {
        e.empty_since = now;
        if (ep_node* last = unused_.back(); last && last->empty_since > now) e.empty_since = last->empty_since;
        unused_.push_back(&e);
      }
    } else if (linked) {
      unused_.erase(&e);
    }
  }

  void unlink_unused(ep_node& e) noexcept {
    if (unused_.linked(&e)) unused_.erase(&e);
  }

  void forget(entry& e) noexcept {
    CONNPOOL_ASSERT(e.unused());
    unused_.erase(&e);
    if (e.holding) unhold(e);
    if (e.refill_pos != not_in_heap) refills_.erase(&e);
    if (e.retire_pos != not_in_heap) retires_.erase(&e);
    for (auto& l : learned_changes_)
      if (l.first == &e) l.first = nullptr;
    if (e.learned.count()) remember(e.key, e.learned);
    else if (!remembered_.empty()) unremember(e.key);  // (what it recalled was disproved since)
    pool_stats s = e.snapshot();
    forgotten_ += s;
    if (last_ == &e) last_ = nullptr;
    map_.erase(map_.find(e.key));  // destroys e
  }

  /// The backoff after `fails` consecutive failures: full jitter, uniform in [0, min(connect_
  /// backoff_max, connect_backoff * 2^(fails-1))].
  clock::duration backoff_after(std::uint32_t fails) noexcept {
    const clock::duration most = backoff_max_.count() > 0 ? backoff_max_ : clock::duration::max();
    clock::duration cap = backoff_;
    for (std::uint32_t i = 1; i < fails && cap < most; ++i)
      cap = cap > clock::duration::max() / 2 ? clock::duration::max() : cap * 2;
    if (cap > most) cap = most;
    return clock::duration(std::uniform_int_distribution<clock::rep>(0, cap.count())(rng_));
  }

  /// max_lifetime less a random 0-10%, so that connections made together do not expire together.
  clock::duration jittered_lifetime() {
    std::uniform_int_distribution<clock::rep> d(0, max_lifetime_.count() / 10);
    return max_lifetime_ - clock::duration(d(rng_));
  }

  /// `d` in the clock's units, saturated at the clock's range.
  static clock::duration span(std::chrono::milliseconds d) noexcept {
    using std::chrono::duration_cast;
    if (d >= duration_cast<std::chrono::milliseconds>(clock::duration::max())) return clock::duration::max();
    return duration_cast<clock::duration>(d);
  }

  // What every acquire and release reads or writes first, in few cache lines.
  mutable entry* last_ = nullptr;  // the entry find() found last
  bool closed_ = false;
  std::size_t open_total_ = 0;
  std::size_t leased_total_ = 0;
  std::uint32_t stamps_ = 0;
  const std::size_t max_idle_per_endpoint_;
  const std::size_t max_uses_;
  const clock::duration warn_after_;  // lease_warn_after; 0: off
  const std::size_t min_idle_;        // min_idle_per_endpoint; 0: off
  const bool learn_;                  // learn_idle_timeout
  bool learned_any_ = false;          // an endpoint has learned one (since the books were made)
  bool tests_taught_ = false;         // set_learned() was called
  const clock::duration learn_margin_;  // learned_idle_margin
  bool pinging_ = false;
  std::size_t pinged_ = 0;  // connections whose background check runs
  const clock::duration idle_timeout_, ping_interval_, validate_after_idle_, max_lifetime_, endpoint_grace_;
  ilist<conn_node, &conn_node::all_link> all_idle_;  // front: least recently released
  iheap<ep_node, &ep_node::room_pos, by_oldest_waiter> room_;
  iheap<conn_node, &conn_node::heap_pos, by_expiry> lifetimes_;
  ilist<ep_node, &ep_node::empty_link> unused_;  // endpoints to forget, in the order they became unused
  ilist<conn_node, &conn_node::ping_link> pingq_;  // idle, not being checked, by ping_key (with ping_interval)
  ilist<conn_node, &conn_node::ping_link> leases_;  // watched leases, by lease_began (with lease_warn_after)

  // Read only on the slow paths (a connect, a refusal).
  const std::size_t max_connecting_;
  const clock::duration backoff_, backoff_max_;
  iheap<ep_node, &ep_node::hold_pos, by_retry_at> holds_;  // endpoints in a connect backoff
  iheap<ep_node, &ep_node::refill_pos, by_refill_at> refills_;  // endpoints below min_idle, by refill_at
  iheap<ep_node, &ep_node::retire_pos, by_retire_at> retires_;  // endpoints with a learned idle timeout, by retire_at
  std::vector<std::pair<ep_node*, clock::duration>> learned_changes_;  // for take_learned()
  std::list<Key> remembered_order_;  // the keys of remembered_, least recently forgotten first
  std::unordered_map<Key, std::pair<clock::duration, typename std::list<Key>::iterator>, Hash, KeyEqual>
      remembered_;  // forgotten endpoints' T, and their place in the order

  const pool_options opts_;
  std::minstd_rand rng_;
  std::uint64_t next_id_ = 0;
  std::uint64_t tickets_ = 0;
  std::vector<std::unique_ptr<conn_node[]>> chunks_;  // the arena of connection nodes
  std::size_t chunk_size_ = 0;
  std::size_t arena_size_ = 0;
  conn_node* free_ = nullptr;
  std::unordered_map<Key, std::unique_ptr<entry>, Hash, KeyEqual> map_;
  std::unordered_map<std::uint64_t, conn_node*> registry_;
  pool_stats forgotten_;  // the counters of forgotten endpoints
};

}  // namespace detail
CONNPOOL_ABI_END
}  // namespace connpool

#endif
