#ifndef CONNPOOL_DETAIL_POOL_STATE_HPP
#define CONNPOOL_DETAIL_POOL_STATE_HPP

// The pool's I/O layer: it carries out what the books (books.hpp) decide. It probes, connects,
// closes, runs the idle watch and the retire timer, and reports back to the books.
//
// One mutex guards the books. No I/O runs while it is held, except the rare probe that classifies
// a connection the idle watch reported, the descriptor moves (epoll_ctl) and probe of a
// background health check (ping_interval), once per check, and drain()'s cut of the connections
// still leased at its deadline, once per drain. Every section that may retire connections is a `section`:
// the lock, and a graveyard whose sockets are closed after the lock is released. That is the one
// close path, so every socket is closed exactly once and no close runs under the lock.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <thread>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string_view>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <tuple>
#include <utility>
#include <vector>

#include <netdb.h>

#include "connpool/detail/asio.hpp"

#include "connpool/detail/books.hpp"
#include "connpool/detail/retry_budget.hpp"
#include "connpool/detail/clock.hpp"
#include "connpool/detail/socket_ops.hpp"
#include "connpool/detail/spin_mutex.hpp"
#include "connpool/error.hpp"
#include "connpool/events.hpp"
#include "connpool/host.hpp"
#include "connpool/pool_options.hpp"

namespace connpool {
CONNPOOL_ABI_BEGIN
namespace detail {

/// Endpoints as keys: equal bytes are the same endpoint (the common, inlined case); otherwise the
/// endpoint's own operator== decides, and the hash covers only what that compares.
template <class Endpoint>
struct endpoint_key {
  static bool same_bytes(const Endpoint& a, const Endpoint& b) noexcept {
    const std::size_t n = a.size();
    if (n != b.size()) return false;
    // IPv4 is the common size: a fixed-size compare the compiler inlines.
    if (n == sizeof(sockaddr_in)) return std::memcmp(a.data(), b.data(), sizeof(sockaddr_in)) == 0;
    return std::memcmp(a.data(), b.data(), n) == 0;
  }
  bool operator()(const Endpoint& a, const Endpoint& b) const noexcept { return same_bytes(a, b) || a == b; }
  std::size_t operator()(const Endpoint& e) const noexcept {
    if constexpr (std::is_same_v<typename Endpoint::protocol_type, net::ip::tcp>) {
      const auto a = e.address();
      std::size_t h = e.port();
      if (a.is_v4()) return h * 0x9E3779B97F4A7C15ull ^ a.to_v4().to_uint();
      const auto b = a.to_v6().to_bytes();
      return std::hash<std::string_view>()(std::string_view(reinterpret_cast<const char*>(b.data()), b.size())) ^ h;
    } else {
      return std::hash<std::string>()(e.path());
    }
  }
};

/// A pool key: an endpoint, or a named backend (a host the pool resolves), which is one key for
/// all of its addresses.
template <class Endpoint>
struct pool_key {
  pool_key() = default;
  pool_key(const Endpoint& e) : ep(e) {}  // NOLINT(google-explicit-constructor): lookups by endpoint
  explicit pool_key(const void* backend) : name(backend) {}
  Endpoint ep{};               // an endpoint key's endpoint
  const void* name = nullptr;  // a named backend's (pool_state::backend), or null
};

template <class Endpoint>
struct pool_key_ops {
  bool operator()(const pool_key<Endpoint>& a, const pool_key<Endpoint>& b) const noexcept {
    return a.name == b.name && (a.name || endpoint_key<Endpoint>()(a.ep, b.ep));
  }
  bool operator()(const pool_key<Endpoint>& a, const Endpoint& b) const noexcept {
    return !a.name && endpoint_key<Endpoint>()(a.ep, b);
  }
  std::size_t operator()(const pool_key<Endpoint>& k) const noexcept {
    return k.name ? std::hash<const void*>()(k.name) : endpoint_key<Endpoint>()(k.ep);
  }
};

/// What a layer over the pooled socket (TLS, connpool/tls.hpp) keeps per connection across leases,
/// and how the pool asks it about the connection. Only pools with such a layer have one: a plain
/// pool's connections have none and never call it.
struct connection_ext {
  virtual ~connection_ext() = default;
  /// The raw probe of `fd` found `raw`: bytes waiting, or the layer's own buffers, may be the
  /// layer's records rather than data (a TLS session ticket). Consume them without blocking and
  /// say what the connection really is. Called by one thread at a time, while nobody else uses the
  /// connection (under the pool's lock for the idle watch).
  virtual probe_result refine(int fd, probe_result raw) noexcept = 0;
  /// A graceful close, before the FIN: the layer's own goodbye (a TLS close_notify), sent without
  /// blocking.
  virtual void goodbye(int fd) noexcept = 0;
  /// False once a setup step or health check on it ended in an error or was stopped: it may have
  /// left a record half-sent, so no goodbye.
  bool clean = true;
};

template <class Protocol, class Executor>
class pool_state : public std::enable_shared_from_this<pool_state<Protocol, Executor>> {
 public:
  using endpoint_type = typename Protocol::endpoint;
  using socket_type = net::basic_stream_socket<Protocol, Executor>;
  using timer_type = net::basic_waitable_timer<clock, net::wait_traits<clock>, Executor>;
  using key_type = pool_key<endpoint_type>;
  using books_type = books<key_type, pool_key_ops<endpoint_type>, pool_key_ops<endpoint_type>>;
  using entry = typename books_type::entry;

  /// A connection: its socket, and its node in the books (set once connected).
 private:
  struct dial_race;

 public:
  struct address;

  struct connection {
    connection(const Executor& ex, std::shared_ptr<net::io_context> ctx) : context(std::move(ctx)), socket(ex) {}
    ~connection();
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;
    const endpoint_type& endpoint() const noexcept { return remote; }
    conn_node* node = nullptr;
    bool watched = false;  // in the idle watch's epoll set
    std::weak_ptr<dial_race> ping;  // its background check in progress, under the lock
    endpoint_type remote;           // where it is connected
    std::shared_ptr<address> addr;  // a named backend's connection: its address (counts it)
    // The context its socket lives on, when the pool owns it (default-constructed pool): a
    // connection being closed by a release() that raced the pool's destruction must not outlive it.
    std::shared_ptr<net::io_context> context;
    socket_type socket;
    // A layer's state (TLS): made with the connection, never changed; ends before `context`.
    std::shared_ptr<connection_ext> ext;
    // For the listener (set_listener()), written only while one is set: when its connect began,
    // when it connected, when its lease began, the leases it served; its named backend, if any.
    const host* backend = nullptr;
    time_point connect_began{}, connected_at{}, leased_at{};
    std::uint64_t uses = 0;
    acquire_site site;  // with lease_warn_after: where its lease was acquired (under the lock)
    bool fd_out = false;  // under the lock: its descriptor is on a check's socket (drain's cut skips it)
  };

  /// The probe, and the layer's view of what it found (only when it found something).
  static probe_result probe_conn(connection& c) noexcept {
    const probe_result r = probe(c.socket.native_handle());
    if (r == probe_result::healthy || !c.ext) return r;
    return c.ext->refine(c.socket.native_handle(), r);
  }

  /// Makes a new connection's layer state (connpool/tls.hpp): its socket, the context that socket
  /// lives on (null for a pool on your executor), and the backend's host name (empty for an
  /// endpoint).
  using ext_factory = std::function<std::shared_ptr<connection_ext>(socket_type&, const std::shared_ptr<net::io_context>&,
                                                                    const std::string&)>;
  /// Set once, before the first acquire.
  void set_ext_factory(ext_factory f) { make_ext_ = std::move(f); }

  static connection* as_connection(conn_node* c) noexcept {
    return c ? static_cast<connection*>(c->payload) : nullptr;
  }
  /// An endpoint key's endpoint.
  static const endpoint_type& endpoint_of(const ep_node* e) noexcept { return static_cast<const entry*>(e)->key.ep; }

  static std::uint64_t next_uid() noexcept {
    static std::atomic<std::uint64_t> n{0};
    return ++n;
  }

  /// What a thread released last (release()), so that its next acquire can have it back.
  struct last_released {
    std::uint64_t pool = 0;  // the pool's uid_: never reused, unlike its address
    const conn_node* node = nullptr;
    std::uint32_t stamp = 0;
  };
  static last_released& my_last() noexcept {
    static thread_local last_released mine;
    return mine;
  }

  /// Type-erased async completion: (error, leased connection or null, reused).
  struct completion {
    virtual ~completion() = default;
    virtual void complete(pool_state* s, error_code ec, connection* c, bool reused) = 0;
    // For the listener, set only while one is set: when the acquire began, and what it acquired.
    time_point started{};
    endpoint_type key_ep{};
    const host* key_host = nullptr;
    acquire_site site;    // where it was made (lease_warn_after)
    bool quiet = false;   // reported and watched by its caller (a synchronous acquire by name), not here
    bool waited = false;  // it queued behind the limits
    bool fresh = false;   // a new connection, not an idle one (run()'s retry: books::try_grant())
#if defined(CONNPOOL_HAS_CANCELLATION_SLOTS)
    /// The handler's cancellation slot (not connected if it has none).
    virtual net::cancellation_slot cancellation_slot() const noexcept { return {}; }
#endif
  };

  /// `own`: the context a default-constructed pool runs on its thread (else null). `own_io`: the
  /// context its sockets live on, which nobody runs (else null; sockets then use `ex`).
  pool_state(std::unique_ptr<net::io_context> own, std::shared_ptr<net::io_context> own_io, const Executor& ex,
             const pool_options& o)
      : own_ctx_(std::move(own)),
        own_io_(std::move(own_io)),
        ex_(ex),
        socket_ex_(own_io_ ? Executor(own_io_->get_executor()) : ex),
        books_(o, std::random_device{}()),
        timer_(ex),
        watch_desc_(ex) {
    // Asio makes a context's reactor (three descriptors) with its first socket. Make it now, so
    // that the first acquire under a descriptor shortage fails with EMFILE like any other.
    { socket_type warm(socket_ex_); }
    observed_.store(watching_leases(), std::memory_order_relaxed);
    if (watch_supported && watch_.native_handle() >= 0) {
      error_code ec;
      watch_desc_.assign(watch_.native_handle(), ec);
      watching_ = !ec;
    }
  }

  ~pool_state() {
    // Leases keep the state alive, so only idle connections can be left (a pool never closed).
    graveyard dead;
    books_.close(coarse_now(), dead);
    bury(dead, listener_.get());
    // The epoll descriptor belongs to watch_; the asio wrapper must not close it a second time.
    if (watch_desc_.is_open()) watch_desc_.release();
  }

  /// Start the idle watch. Called once the state is owned by a shared_ptr.
  void start() {
    std::lock_guard<spin_mutex> lk(mu_);
    if (watching_) arm_watch();
  }

  const Executor& executor() const noexcept { return ex_; }
  net::io_context* owned_context() const noexcept { return own_ctx_.get(); }
  const pool_options& options() const noexcept { return books_.options(); }

  /// A connection's setup step and its completion (basic_pool::set_setup()).
  using setup_done = std::function<void(error_code)>;
  /// The connection's layer state (connection_ext) is the third argument: null without a layer.
  using setup_step = std::function<void(socket_type&, const endpoint_type&, connection_ext*, setup_done)>;

  void set_setup(setup_step step) {
    std::shared_ptr<const setup_step> p;
    if (step) p = std::make_shared<const setup_step>(std::move(step));
    std::lock_guard<spin_mutex> lk(mu_);
    setup_.swap(p);  // the old one is destroyed after the lock
  }

  /// The health check (basic_pool::set_health_check()), run like a setup step.
  void set_health_check(setup_step check) {
    std::shared_ptr<const setup_step> p;
    if (check) p = std::make_shared<const setup_step>(std::move(check));
    std::lock_guard<spin_mutex> lk(mu_);
    check_.swap(p);  // the old one is destroyed after the lock
    check_on_.store(check_ != nullptr, std::memory_order_relaxed);
    books_.pinging(check_ != nullptr);
    rearm();
  }

  // ---------------------------------------------------------------- events

  using event = basic_pool_event<endpoint_type>;
  using listener_fn = std::function<void(const event&)>;

  void set_listener(listener_fn f) {
    std::shared_ptr<const listener_fn> p;
    if (f) p = std::make_shared<const listener_fn>(std::move(f));
    std::lock_guard<spin_mutex> lk(mu_);
    listener_.swap(p);  // the old one is destroyed after the lock
    events_on_.store(listener_ != nullptr, std::memory_order_relaxed);
    observed_.store(listener_ != nullptr || watching_leases(), std::memory_order_relaxed);
  }

  /// One relaxed load: the only cost of events while no listener is set.
  bool events_on() const noexcept { return events_on_.load(std::memory_order_relaxed); }
  /// events_on() or watching_leases(): the one test of both on the acquire and release paths.
  bool observed() const noexcept { return observed_.load(std::memory_order_relaxed); }

  /// Outside the lock. A listener that throws is ignored.
  void emit(const event& ev) noexcept {
    std::shared_ptr<const listener_fn> l;
    {
      std::lock_guard<spin_mutex> lk(mu_);
      l = listener_;
    }
    if (!l) return;
    try {
      (*l)(ev);
    } catch (...) {
    }
  }

  /// What an ep_node is for: its endpoint, or its named backend.
  void describe(const ep_node* e, event& ev) const noexcept {
    if (const backend* b = backend_of(e)) {
      ev.backend = &b->name;
    } else {
      ev.endpoint = &endpoint_of(e);
    }
  }
  /// What a key is: an endpoint, or a named backend.
  static void describe_key(const endpoint_type& ep, completion& c) { c.key_ep = ep; }
  static void describe_key(const key_type& k, completion& c) {
    if (k.name) c.key_host = &static_cast<const backend*>(k.name)->name;
    else c.key_ep = k.ep;
  }

  /// An acquire's end, for the listener: `c` (or `ec`), since `started`.
  void acquire_event(connection* c, bool reused, const error_code& ec, time_point started, bool waited,
                     const endpoint_type* ep, const host* h) noexcept {
    const time_point now = clock::now();
    event ev;
    ev.waited = waited;
    if (started != time_point{}) ev.duration = std::chrono::duration_cast<std::chrono::nanoseconds>(now - started);
    if (c) {
      ev.kind = event_kind::acquired;
      ev.source = reused ? acquire_source::idle : acquire_source::connect;
      ev.endpoint = &c->remote;
      ev.backend = c->backend;
      c->leased_at = now;
      ++c->uses;
    } else {
      ev.kind = event_kind::acquire_failed;
      ev.error = ec;
      ev.endpoint = h ? nullptr : ep;
      ev.backend = h;
    }
    emit(ev);
  }

  /// Set by acquire_wait() when the calling thread's acquire queued (the listener's `waited`).
  static bool& sync_waited() noexcept {
    static thread_local bool waited = false;
    return waited;
  }

  // ---------------------------------------------------------------- synchronous acquire

  /// On success returns a leased connection and sets `reused`.
  template <class K>
  connection* acquire(const K& ep, bool& reused, error_code& ec) {
    // The common case first: an idle connection, taken under the lock and probed outside it. No
    // clock read, no allocation.
    connection* c = nullptr;
    {
      std::lock_guard<spin_mutex> lk(mu_);
      if (books_.closed()) {
        ec = error::pool_closed;
        return nullptr;
      }
      entry* e = books_.find(ep);
      if (e && e->waiters.empty()) c = take_mine_or_mru(*e);
    }
    if (c) {
      ep_node* e = c->node->ep;
      const grant g = probed(grant{c->node, false, false, {}}, false);
      if (g.conn && !check_on_.load(std::memory_order_relaxed)) {
        reused = true;
        return as_connection(g.conn);
      }
      // Nothing granted: its replacement is at max_connecting_per_endpoint. It waits as a new
      // acquire would, looked up by its key again (the entry may have gone since).
      if (!g) return acquire_wait(ep, reused, ec);
      return finish(*e, g, unset, reused, ec);
    }
    return acquire_wait(ep, reused, ec);
  }

  /// A healthy idle connection now, or null: never connects, never waits, never passes a waiter of
  /// its endpoint.
  template <class K>
  connection* try_acquire(const K& ep) {
    connection* c = nullptr;
    {
      std::lock_guard<spin_mutex> lk(mu_);
      if (books_.closed()) return nullptr;
      entry* e = books_.find(ep);
      if (e && e->waiters.empty()) {
        if (!check_) {
          c = take_mine_or_mru(*e);
        } else if (conn_node* n = books_.peek_idle(*e); n && !books_.needs_check(*n, coarse_now())) {
          c = as_connection(books_.take_idle(*e, n, n->stamp));  // one that needs its check stays idle
        }
      }
    }
    if (!c) return nullptr;
    c = as_connection(probed(grant{c->node, false, false, {}}, /*idle_only=*/true).conn);
    // A replacement for one that failed its probe may need its check: left for an acquire.
    if (c && check_on_.load(std::memory_order_relaxed) && check_for(*c)) {
      put_back(*c, /*unchecked=*/false, /*timed_out=*/false);
      return nullptr;
    }
    return c;
  }

  // ---------------------------------------------------------------- asynchronous acquire

  template <class K>
  void async_acquire(const K& ep, std::unique_ptr<completion> handler) {
    if (events_on()) {
      handler->started = clock::now();
      describe_key(ep, *handler);
    }
    grant g;
    ep_node* e = nullptr;
    {
      std::lock_guard<spin_mutex> lk(mu_);
      if (books_.closed()) {
        g.ec = error::pool_closed;
      } else if (entry* found = books_.find(ep); found && found->waiters.empty() && !handler->fresh) {
        e = found;
        if (connection* c = take_mine_or_mru(*e)) g.conn = c->node;
      }
    }
    // Served at once (an idle connection, or an error): no operation object and no timer.
    g = probed(g, false);
    std::shared_ptr<const setup_step> check;
    if (g.conn && check_on_.load(std::memory_order_relaxed)) check = check_for(*as_connection(g.conn));
    if (g.conn && !check) return complete(std::move(handler), {}, as_connection(g.conn), true, false);
    if (g.ec) return complete(std::move(handler), g.ec, nullptr, false, false);

    std::shared_ptr<async_op> op;
    try {
      op = std::make_shared<async_op>(this->shared_from_this(), std::move(handler));
    } catch (...) {
      if (g.conn) put_back(*as_connection(g.conn), false, false);
      if (g.slot) abandon(*e, g);
      throw;
    }
    op->deadline = deadline_from(options().acquire_timeout);
#if defined(CONNPOOL_HAS_CANCELLATION_SLOTS)
    // Per-operation cancellation: only an acquire that waits or connects can be cancelled.
    if (net::cancellation_slot slot = op->handler->cancellation_slot(); slot.is_connected())
      slot.template emplace<cancel_hook>(std::weak_ptr<async_op>(op));
#endif
    if (g.slot) {
      op->ep = e;
      return async_connect(op);
    }
    if (g.conn) {
      op->ep = g.conn->ep;
      return async_check(op, as_connection(g.conn), std::move(check));
    }
    {
      section s(*this);
      if (books_.closed()) {
        g.ec = error::pool_closed;
      } else {
        const time_point now = coarse_now();
        entry& en = books_.get(ep, now);
        op->ep = &en;
        g = books_.try_grant(en, now, s.dead, op->handler->fresh);
        if (!g && !books_.may_wait(en)) {
          g.ec = error::too_many_waiters;
        } else if (!g) {
          op->waited = true;
          if (op->deadline != never) {  // first: it is the step that may throw
            op->timer.expires_at(op->deadline);
            op->timer.async_wait([w = std::weak_ptr<async_op>(op)](error_code tec) {
              if (auto o = w.lock(); o && !tec) o->state->on_wait_timeout(*o);
            });
          }
          books_.enqueue(*op);
          op->keep_alive = op;
        }
      }
      rearm();
    }
    if (g) op->proceed(g);
  }

  /// An asynchronous acquire's end: the listener's event, then the handler.
  void complete(std::unique_ptr<completion> h, error_code ec, connection* c, bool reused, bool waited) {
    h->waited = waited;
    if (observed() && !h->quiet) {
      if (c && watching_leases()) lease_began(c, h->site);
      // Only for an acquire that began with the listener set (its key was recorded then).
      if (h->started != time_point{} && events_on())
        acquire_event(c, reused, ec, h->started, waited, h->key_host ? nullptr : &h->key_ep, h->key_host);
    }
    h->complete(this, ec, c, reused);
  }

  // ---------------------------------------------------------------- lease_warn_after

  /// Whether leases are watched (pool_options::lease_warn_after): a constant.
  bool watching_leases() const noexcept { return books_.watching_leases(); }

  /// With lease_warn_after: `c`, just acquired at `site`, is now its caller's lease; watch it.
  CONNPOOL_COLD void lease_began(connection* c, const acquire_site& site) noexcept {
    const time_point now = coarse_now();
    std::lock_guard<spin_mutex> lk(mu_);
    c->site = site;
    books_.watch_lease(*c->node, now);
    try {
      rearm();
    } catch (...) {  // out of memory arming the timer: the next change arms it; reports come late
    }
  }

  /// With lease_warn_after: the lease of `c` ends (its holder releases or discards it); if it was
  /// reported held long, the listener hears of its end.
  CONNPOOL_COLD void lease_ends(connection* c) noexcept {
    time_point began;
    bool late;
    {
      std::lock_guard<spin_mutex> lk(mu_);
      began = c->node->lease_began;
      late = books_.lease_done(*c->node);
    }
    if (!late || !events_on()) return;
    event ev;
    ev.kind = event_kind::long_lease_ended;
    ev.endpoint = &c->remote;
    ev.backend = c->backend;
    ev.site = &c->site;  // written under the lock before the lease was handed out; ours to read now
    ev.duration = std::chrono::duration_cast<std::chrono::nanoseconds>(coarse_now() - began);
    emit(ev);
  }

  /// A lease ends (`kind`: released or discarded): the lease watch, then the listener.
  CONNPOOL_COLD void lease_ending(connection& c, event_kind kind) noexcept {
    if (watching_leases()) lease_ends(&c);
    if (events_on()) lease_event(c, kind);
  }

  /// A lease's end, for the listener.
  void lease_event(connection& c, event_kind kind) noexcept {
    event ev;
    ev.kind = kind;
    ev.endpoint = &c.remote;
    ev.backend = c.backend;
    if (c.leased_at != time_point{}) ev.duration = std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now() - c.leased_at);
    c.leased_at = {};  // a lease begun while no listener was set reports zero
    emit(ev);
  }

  // ---------------------------------------------------------------- returning connections

  /// Exchange complete: keep for reuse, or close. For a connection in the idle watch's set, the
  /// watch has recorded any FIN or RST that came while it was leased, or it will find the
  /// connection idle when it gets to the event; either way no syscall is needed here. Unread
  /// bytes are left for the probe before the next hand-out. A connection the watch does not see is
  /// probed.
  void release(connection* c) noexcept {
    if (observed()) lease_ending(*c, event_kind::released);
    // The next lease starts from a fresh connection's socket state. Asio keeps the mode the user
    // set in the socket object, so a lease that changed nothing costs no syscall here.
    if (c->socket.non_blocking()) {
      error_code ignored;
      c->socket.non_blocking(false, ignored);
    }
    probe_result r = c->watched ? probe_result::healthy : probe(c->socket.native_handle());
    if (c->ext) r = c->ext->refine(c->socket.native_handle(), r);  // what the layer left unread
    const time_point now = coarse_now();
    conn_node* n = c->node;
    const std::uint64_t uid = uid_;  // once the section ends, the last lease may have freed the state
    std::uint32_t stamp;
    {
      section s(*this);
      stamp = books_.released(*n, r, now, s.dead);
      s.lease_ended();
      // Kept idle, nothing else changed that could bring the next due time forward (but a refill
      // the release asked for, with min_idle_per_endpoint, or a learned retire time).
      if (stamp && !books_.rearm_on_release())
        arm_by(books_.idle_due(*n));
      else
        rearm();
    }
    if (stamp) my_last() = {uid, n, stamp};
  }

  /// Close a leased connection: discard() or a lease destroyed without release().
  void discard(connection* c, close_mode mode) noexcept {
    if (observed()) lease_ending(*c, event_kind::discarded);
    section s(*this);
    books_.discarded(*c->node, mode, coarse_now(), s.dead);
    s.lease_ended();
    rearm();
  }

  /// The pool object is going away (after close()). Leases hold no reference to the state, so while
  /// any connection is leased, the state holds one to itself; the last lease to end drops it (see
  /// section::lease_ended()).
  void orphan() {
    std::lock_guard<spin_mutex> lk(mu_);
    if (books_.leased_total()) {
      anchor_ = this->shared_from_this();
      watch_zero_ = true;
    }
  }

  // ---------------------------------------------------------------- shutdown and stats

  void close() noexcept {
    section s(*this);
    if (books_.closed()) return;
    books_.close(coarse_now(), s.dead);
    cancel_dials();
    for (auto& kv : backends_) {
      kv.second->refresh.cancel();
      kv.second->lookup_timer.cancel();
      kv.second->resolving = false;
    }
    error_code ignored;
    timer_.cancel();
    if (watch_desc_.is_open()) watch_desc_.cancel(ignored);
  }

  // ---------------------------------------------------------------- prewarming

  /// The completion of an asynchronous drain (error, connections cut) or prewarm (error,
  /// connections opened).
  struct count_completion {
    virtual ~count_completion() = default;
    virtual void complete(error_code ec, std::size_t n) = 0;
  };

  /// Open connections to `k` until `n` are idle (with the prewarm's connects in flight), as far
  /// as books::prewarm_slot() allows, at most max_connecting_per_endpoint at a time (the next
  /// starts as one ends); each goes idle (or to an acquire that began to wait) once set up. Ends
  /// when no more may or need start and none is in flight, at the first connect failure (no more
  /// start), on close(), or by acquire_timeout from now; `done` gets the first failure's error
  /// and the number opened, on the thread where the last connect ended (or this one).
  void prewarm(const key_type& k, std::size_t n, std::unique_ptr<count_completion> done, bool refill = false) {
    auto p = std::make_shared<prewarm_op>();
    p->refill = refill;
    p->key = k;
    p->target = n;
    p->deadline = deadline_from(options().acquire_timeout);
    p->done = std::move(done);
    pump(p);
  }

  /// prewarm(), waited for on the calling thread, by acquire_timeout and 200 ms more for the
  /// executor to report (then acquire_timeout; the prewarm goes on). On a default pool's own
  /// thread it could never complete: would_block at once.
  std::size_t prewarm_sync(const key_type& k, std::size_t n, error_code& ec) {
    struct result {
      std::mutex m;
      std::condition_variable cv;
      bool done = false;
      error_code ec;
      std::size_t n = 0;
    };
    struct waiter final : count_completion {
      explicit waiter(std::shared_ptr<result> r) : res(std::move(r)) {}
      void complete(error_code e, std::size_t n) override {
        std::lock_guard<std::mutex> lk(res->m);
        res->done = true;
        res->ec = e;
        res->n = n;
        res->cv.notify_one();
      }
      std::shared_ptr<result> res;
    };
    ec.clear();
    if (own_ctx_ && own_ctx_->get_executor().running_in_this_thread()) {
      ec = books_closed() ? error_code(error::pool_closed) : error_code(net::error::would_block);
      return 0;
    }
    auto res = std::make_shared<result>();
    const time_point deadline = deadline_from(options().acquire_timeout);
    prewarm(k, n, std::make_unique<waiter>(res));
    std::unique_lock<std::mutex> lk(res->m);
    const time_point give_up_at = deadline == never ? never : later(deadline, std::chrono::milliseconds(200));
    if (give_up_at == never) {
      res->cv.wait(lk, [&] { return res->done; });
    } else if (!res->cv.wait_until(lk, give_up_at, [&] { return res->done; })) {
      ec = error::acquire_timeout;  // nothing ran the executor in time
      return 0;
    }
    ec = res->ec;
    return res->n;
  }

  // ---------------------------------------------------------------- draining

  /// What waits for the last lease to come back (drain()). Listed in drains_ under the lock; taken
  /// off it under the lock by exactly one of: the last lease's end, the deadline, the pool's
  /// destruction, which then ends it outside the lock.
  struct drain_watch {
    virtual ~drain_watch() = default;
    /// Taken off the list (under the lock): stop what would end it otherwise.
    virtual void stop() noexcept {}
    /// Every lease came back and its connection is closed (no error), or the pool object went
    /// away (operation_aborted). Outside the lock.
    virtual void end(error_code ec) noexcept = 0;
  };

  /// close(), then wait until no connection is leased or `deadline` passes; at the deadline, cut
  /// the connections still leased (cut_leased()). Returns how many were cut. Needs no executor.
  std::size_t drain(time_point deadline) {
    struct waiter final : drain_watch {
      void end(error_code) noexcept override {
        std::lock_guard<std::mutex> lk(m);
        done = true;
        cv.notify_all();
      }
      std::mutex m;
      std::condition_variable cv;
      bool done = false;
    };
    close();
    auto w = std::make_shared<waiter>();
    if (!watch_drain(w)) return 0;
    {
      std::unique_lock<std::mutex> lk(w->m);
      if (deadline == never) w->cv.wait(lk, [&] { return w->done; });
      else w->cv.wait_until(lk, deadline, [&] { return w->done; });
      if (w->done) return 0;
    }
    std::size_t n = 0;
    if (cut_leased(*w, n)) return n;
    // Taken off the list meanwhile: its end is under way (after the last lease's close).
    std::unique_lock<std::mutex> lk(w->m);
    w->cv.wait(lk, [&] { return w->done; });
    return 0;
  }

  /// As drain(), asynchronously: `h` completes on its executor, never inside this call. The
  /// deadline runs on the pool's executor.
  void async_drain(time_point deadline, std::unique_ptr<count_completion> h) {
    struct op final : drain_watch, std::enable_shared_from_this<op> {
      op(std::shared_ptr<pool_state> s, std::unique_ptr<count_completion> c)
          : state(std::move(s)), handler(std::move(c)), timer(state->ex_) {}
      void stop() noexcept override {
        try {
          timer.cancel();
        } catch (...) {
        }
      }
      void end(error_code ec) noexcept override { finish(ec, 0); }
      void finish(error_code ec, std::size_t n) noexcept {
        if (auto c = std::move(handler)) {
          try {
            c->complete(ec, n);
          } catch (...) {
          }
        }
      }
      std::shared_ptr<pool_state> state;  // a cycle while listed: ended by end() or the deadline
      std::unique_ptr<count_completion> handler;
      timer_type timer;
    };
    close();
    bool gone;
    {
      std::lock_guard<spin_mutex> lk(mu_);
      gone = gone_;
    }
    if (gone) return h->complete(net::error::operation_aborted, 0);  // a deferred drain launched too late
    auto o = std::make_shared<op>(this->shared_from_this(), std::move(h));
    if (deadline != never) {
      o->timer.expires_at(deadline);
      o->timer.async_wait([w = std::weak_ptr<op>(o)](error_code ec) {
        auto me = w.lock();
        if (!me || ec) return;
        std::size_t n = 0;
        if (me->state->cut_leased(*me, n)) me->finish({}, n);
      });
    }
    if (!watch_drain(o)) o->finish({}, 0);
  }

  /// The pool object is going away: pending drains end with operation_aborted (leases may outlive
  /// the pool; nothing is cut).
  void abort_drains() noexcept {
    std::vector<std::shared_ptr<drain_watch>> all;
    {
      std::lock_guard<spin_mutex> lk(mu_);
      gone_ = true;
      all.swap(drains_);
      for (auto& w : all) w->stop();
      watch_zero_ = anchor_ != nullptr;
    }
    for (auto& w : all) w->end(net::error::operation_aborted);
  }

  pool_stats stats() const {
    std::lock_guard<spin_mutex> lk(mu_);
    return books_.stats();
  }

  template <class K>
  pool_stats stats(const K& ep) const {
    std::lock_guard<spin_mutex> lk(mu_);
    return books_.stats(ep);
  }

  /// Every endpoint's stats (`out(endpoint, backend or null, stats)`), taken under one lock, and
  /// the counters of forgotten endpoints (returned).
  template <class F>
  pool_stats each_stats(F out) const {
    std::vector<std::tuple<endpoint_type, const host*, pool_stats>> all;
    pool_stats forgotten;
    {
      std::lock_guard<spin_mutex> lk(mu_);
      all.reserve(books_.endpoint_count());
      forgotten = books_.each_stats([&](const key_type& k, const pool_stats& st) {
        const host* h = k.name ? &static_cast<const backend*>(k.name)->name : nullptr;
        all.emplace_back(h ? endpoint_type{} : k.ep, h, st);
      });
    }
    for (auto& [ep, h, st] : all) out(ep, h, st);
    return forgotten;
  }

  /// The last failed connect's error while the endpoint (or backend) is in its connect backoff
  /// (since its last connect failure and until a connect succeeds); else none.
  template <class K>
  error_code last_connect_error(const K& ep) const {
    std::lock_guard<spin_mutex> lk(mu_);
    const entry* e = books_.find(ep);
    return e && e->fails ? e->last_error : error_code();
  }

  // ---------------------------------------------------------------- named backends (TCP)

  /// A lookup's completion: the addresses, or an error.
  using resolve_done = std::function<void(error_code, std::vector<endpoint_type>)>;
  /// A resolver: look up `h`, then call `done` once, from any thread.
  using resolver = std::function<void(const host&, resolve_done)>;

  void set_resolver(resolver r) {
    std::shared_ptr<const resolver> p;
    if (r) p = std::make_shared<const resolver>(std::move(r));
    std::lock_guard<spin_mutex> lk(mu_);
    resolver_ = std::move(p);
  }

  /// One address of a named backend. Shared with the connections to it and the attempts in
  /// flight, which count themselves in `open` (least connections first).
  struct address {
    explicit address(const endpoint_type& e) : ep(e) {}
    const endpoint_type ep;
    std::atomic<int> open{0};
    std::atomic<clock::rep> refused_until{0};  // a failed connect puts it last until then
    std::atomic<bool> removed{false};          // it left the backend's set: its connections close
  };

  /// A named backend: one pool key for all its addresses. Made on first use, freed with the pool.
  struct backend {
    backend(host h, const Executor& ex) : name(std::move(h)), refresh(ex), lookup_timer(ex) {}
    const host name;
    // Under mu_ (the timers' operations too).
    std::vector<std::shared_ptr<address>> addrs;
    bool resolved = false;   // addrs are a lookup's result (once true, stays true)
    bool resolving = false;  // an answer is awaited, within lookup_timer's bound
    bool in_thread = false;  // the default resolver's getaddrinfo runs (it cannot be stopped)
    std::uint64_t generation = 0;  // resolver calls started
    std::uint64_t accepted = 0;    // the call whose answer was applied last: older answers are ignored
    std::uint64_t arms = 0;        // of lookup_timer
    std::uint64_t thread_gen = 0;  // the call getaddrinfo's thread answers
    time_point resolved_at{};
    error_code last_error;
    std::vector<std::weak_ptr<dial_race>> waiting;  // connects waiting for the first lookup
    timer_type refresh;       // the next lookup, while the backend is in use
    timer_type lookup_timer;  // bounds the lookup in flight
  };

  /// The key of `h`: its backend, made if new (`make`), else null if it has none yet.
  const backend* backend_for(const host& h, bool make) {
    std::string id = h.name;
    id += '\0';
    id += h.service;
    std::lock_guard<spin_mutex> lk(mu_);
    auto it = backends_.find(id);
    if (it != backends_.end()) return it->second.get();
    if (!make) return nullptr;
    auto b = std::make_unique<backend>(h, ex_);
    const backend* p = b.get();
    backends_.emplace(std::move(id), std::move(b));
    return p;
  }

  bool books_closed() const {
    std::lock_guard<spin_mutex> lk(mu_);
    return books_.closed();
  }

  /// A synchronous acquire of a named backend: the asynchronous acquire, waited for (by its
  /// deadline, and 200 ms more for the executor to report). On the default pool's own thread, an
  /// acquire that is not served at once fails with would_block (it would wait for that thread).
  connection* acquire_by_name(const key_type& k, bool& reused, error_code& ec, bool fresh = false) {
    struct result {
      std::mutex m;
      std::condition_variable cv;
      bool done = false, abandoned = false, reused = false, waited = false;
      error_code ec;
      connection* c = nullptr;
    };
    struct waiter final : completion {
      explicit waiter(std::shared_ptr<result> r) : res(std::move(r)) {}
      void complete(pool_state* s, error_code e, connection* c, bool re) override {
        std::unique_lock<std::mutex> lk(res->m);
        if (res->abandoned) {
          lk.unlock();
          if (c) s->release(c);  // healthy and unused: back for the next acquire
          return;
        }
        res->done = true;
        res->ec = e;
        res->c = c;
        res->reused = re;
        res->waited = this->waited;
        res->cv.notify_one();
      }
      std::shared_ptr<result> res;
    };
    if (own_ctx_ && own_ctx_->get_executor().running_in_this_thread()) {
      // On the pool's own thread nothing could complete a wait: an idle connection or nothing.
      if (connection* c = fresh ? nullptr : try_acquire(k)) {
        reused = true;
        return c;
      }
      ec = books_closed() ? error_code(error::pool_closed) : error_code(net::error::would_block);
      return nullptr;
    }
    auto res = std::make_shared<result>();
    const time_point deadline = deadline_from(options().acquire_timeout);
    const time_point started = events_on() ? clock::now() : time_point{};
    const host* named = k.name ? &static_cast<const backend*>(k.name)->name : nullptr;
    auto w = std::make_unique<waiter>(res);
    w->quiet = true;  // reported here, once the wait is over
    w->fresh = fresh;
    async_acquire(k, std::move(w));
    std::unique_lock<std::mutex> lk(res->m);
    const time_point give_up_at = deadline == never ? never : later(deadline, std::chrono::milliseconds(200));
    while (!res->done) {
      if (give_up_at == never) {
        res->cv.wait(lk);
      } else if (res->cv.wait_until(lk, give_up_at) == std::cv_status::timeout && !res->done) {
        res->abandoned = true;  // nothing ran the executor in time
        ec = error::acquire_timeout;
        lk.unlock();
        if (started != time_point{}) acquire_event(nullptr, false, ec, started, false, nullptr, named);
        return nullptr;
      }
    }
    ec = res->ec;
    reused = res->reused;
    connection* c = res->c;
    const bool waited = res->waited;
    lk.unlock();
    if (started != time_point{}) acquire_event(c, reused, ec, started, waited, nullptr, named);
    return c;
  }

 private:
  /// The lock, and the connections retired under it: closed once the lock is released.
  class section {
   public:
    CONNPOOL_HOT explicit section(pool_state& s) : s_(s), lk_(s.mu_) {}
    ~section() {
      // After the unlock another thread may free the state (the last lease of an orphaned pool):
      // what bury() needs of it, the listener, is copied now.
      std::shared_ptr<const listener_fn> l;
      if (!dead.empty() && lk_.owns_lock() && s_.events_on()) l = s_.listener_;
      if (lk_.owns_lock()) lk_.unlock();
      bury(dead, l.get());
      if (last_owner_) s_.fire_drains();  // the last lease ended: its connection is closed now
    }
    section(const section&) = delete;
    section& operator=(const section&) = delete;

    /// After a lease ended (released, discarded, or an async grant given back): once the pool is
    /// orphaned and no lease is left, take the state's reference to itself, to drop it after the
    /// lock and the graveyard (connections in the graveyard keep the context their sockets live on).
    void lease_ended() noexcept {
      if (s_.watch_zero_ && s_.books_.leased_total() == 0) last_lease_ended();
    }
    // (Once the pool is orphaned or draining, the last lease's end has work: see last_lease_ended().)

   private:
    /// Hold the state until the section ends: the orphaned pool's own reference, else a new one
    /// for the drains to end then (fire_drains()).
    CONNPOOL_COLD void last_lease_ended() noexcept {
      if (s_.anchor_) last_owner_ = std::move(s_.anchor_);
      else last_owner_ = s_.weak_from_this().lock();
      s_.watch_zero_ = false;
    }

    std::shared_ptr<pool_state> last_owner_;  // first: destroyed last
    pool_state& s_;
    std::unique_lock<spin_mutex> lk_;

   public:
    graveyard dead;
  };

  // ---------------------------------------------------------------- prewarming (private)

  /// A prewarm in progress. Its counters are under the lock.
  struct prewarm_op {
    key_type key;
    std::size_t target = 0;
    time_point deadline = never;
    std::size_t in_flight = 0, opened = 0, started = 0;
    std::size_t budget = 0;  // connects it may start: n less the idle ones at its first look
    bool looked = false;
    bool refill = false;  // min_idle_per_endpoint's: the connects of others count too
    error_code ec;  // the first failure: no more connects start
    std::unique_ptr<count_completion> done;
  };

  /// One connect of a prewarm: its end goes back to the prewarm, not to a caller.
  struct prewarm_connect final : completion {
    explicit prewarm_connect(std::shared_ptr<prewarm_op> p) : op(std::move(p)) { this->quiet = true; }
    void complete(pool_state* s, error_code ec, connection* c, bool) override {
      s->prewarm_connected(op, ec, c != nullptr);
    }
    std::shared_ptr<prewarm_op> op;
  };

  /// Start the connects a prewarm may start now; end it when none is left in flight.
  void pump(const std::shared_ptr<prewarm_op>& p) noexcept {
    std::vector<std::shared_ptr<async_op>> start;
    std::unique_ptr<count_completion> finished;
    error_code ec;
    std::size_t opened = 0;
    {
      section s(*this);
      try {
        const time_point now = coarse_now();
        if (books_.closed()) {
          if (!p->ec) p->ec = error::pool_closed;
        } else if (!p->ec) {
          entry& e = books_.get(p->key, now);
          if (!p->looked) {
            p->looked = true;
            // A refill counts every connect in flight (another refill's too); a prewarm only its own.
            const std::size_t have = books_type::usable_idle(e) + (p->refill ? e.connecting : 0);
            p->budget = p->target > have ? p->target - have : 0;
          }
          // Connections that leave idle meanwhile (to traffic, closed) are not made up for past
          // the budget: a peer that closes each new connection at once cannot make it churn.
          // A refill counts every connect in flight (another refill's too); a prewarm only its own.
          const auto needed = [&] {
            return books_type::usable_idle(e) + (p->refill ? e.connecting : p->in_flight) < p->target &&
                   p->started < p->budget;
          };
          const bool in_time = clock::now() < p->deadline;
          while (in_time && needed()) {
            // Made before the slot, so that running out of memory takes nothing from the books.
            auto op = std::make_shared<async_op>(this->shared_from_this(), std::make_unique<prewarm_connect>(p));
            start.reserve(start.size() + 1);
            if (!books_.prewarm_slot(e, now, s.dead)) break;
            op->ep = &e;
            op->prewarm = true;  // each connect is bounded by connect_timeout; the deadline stops new ones
            start.push_back(std::move(op));
            ++p->in_flight;
            ++p->started;
          }
          if (!in_time && needed()) {
            p->ec = error::acquire_timeout;  // its deadline stopped a connect it still needed
          } else if (start.empty() && p->in_flight == 0 && needed() && books_.in_backoff(e, now)) {
            p->ec = error::endpoint_unavailable;  // refused by the connect backoff
          }
        }
      } catch (...) {
        if (!p->ec) p->ec = net::error::no_memory;
      }
      if (p->in_flight == 0 && start.empty()) {
        finished = std::move(p->done);
        ec = p->ec;
        opened = p->opened;
      }
      try {
        rearm();
      } catch (...) {  // out of memory arming the timer: the next change arms it
      }
    }
    for (auto& op : start) async_connect(op);  // its failures end it through prewarm_connected()
    if (finished) {
      try {
        finished->complete(ec, opened);
      } catch (...) {
      }
    }
  }

  /// min_idle_per_endpoint: bring the endpoint of `k` back to its minimum, in the background; a
  /// refill that fails is tried again later (books::refill_failed()).
  void start_refill(const key_type& k) noexcept {
    struct done final : count_completion {
      done(std::weak_ptr<pool_state> s, const key_type& k) : state(std::move(s)), key(k) {}
      void complete(error_code ec, std::size_t) override {
        if (!ec || ec == error::pool_closed) return;
        if (auto s = state.lock()) {
          std::lock_guard<spin_mutex> lk(s->mu_);
          s->books_.refill_failed(key, coarse_now());
          try {
            s->rearm();
          } catch (...) {
          }
        }
      }
      std::weak_ptr<pool_state> state;
      key_type key;
    };
    try {
      prewarm(k, options().min_idle_per_endpoint, std::make_unique<done>(this->weak_from_this(), k), /*refill=*/true);
    } catch (...) {  // out of memory: the next close or release asks again
    }
  }

  /// A prewarm's connect ended (`connected`: its connection went to a waiter or idle, in the
  /// same section as its connect's end; it is not ours to touch); then the next connects start.
  void prewarm_connected(const std::shared_ptr<prewarm_op>& p, error_code ec, bool connected) noexcept {
    {
      std::lock_guard<spin_mutex> lk(mu_);
      --p->in_flight;
      if (connected) ++p->opened;
      else if (!p->ec) p->ec = ec ? ec : error_code(net::error::no_memory);
    }
    pump(p);
  }

  // ---------------------------------------------------------------- draining (private)

  /// List `w` to be ended when the last lease comes back; false (not listed) if none is leased.
  bool watch_drain(const std::shared_ptr<drain_watch>& w) {
    section s(*this);
    if (books_.leased_total() == 0) return false;
    drains_.push_back(w);
    watch_zero_ = true;
    return true;
  }

  /// The deadline of `w`: if it is still listed, take it off and cut every leased connection as
  /// retire_close says (socket_ops cut(): their descriptors stay with their leases, which close
  /// them when they end); `n` is how many. False if `w` was ended meanwhile. The cuts run under the
  /// lock, so that no lease's end can close a descriptor while it is cut.
  bool cut_leased(const drain_watch& w, std::size_t& n) {
    section s(*this);
    auto it = std::find_if(drains_.begin(), drains_.end(), [&](const auto& p) { return p.get() == &w; });
    if (it == drains_.end()) return false;
    drains_.erase(it);
    watch_zero_ = anchor_ != nullptr || !drains_.empty();
    const close_mode mode = options().retire_close;
    constexpr bool tcp = std::is_same_v<Protocol, net::ip::tcp>;
    n = 0;
    books_.each_leased([&](void* p) {
      connection& c = *static_cast<connection*>(p);
      if (c.fd_out) return;  // in a check, which close() has stopped: it closes the connection
      const int fd = c.socket.native_handle();
      if (fd < 0) return;
      cut(fd, mode, tcp);
      ++n;
    });
    return true;
  }

  /// After the last lease's end (section::lease_ended(), once its connection is closed): end the
  /// drains waiting for it.
  CONNPOOL_COLD void fire_drains() noexcept {
    std::vector<std::shared_ptr<drain_watch>> all;
    {
      std::lock_guard<spin_mutex> lk(mu_);
      if (books_.leased_total() != 0) {  // leased again (not after close(), but never lose a drain)
        watch_zero_ = true;
        return;
      }
      all.swap(drains_);
      for (auto& w : all) w->stop();
      watch_zero_ = anchor_ != nullptr;
    }
    for (auto& w : all) w->end({});
  }

  // ---------------------------------------------------------------- waiters

  struct sync_waiter final : waiter_node {
    using waiter_node::waiter_node;
    void granted(grant g) override {
      result = g;
      done = true;
      cv.notify_one();
    }
    std::condition_variable cv;  // waited on through mu_ (spin_mutex::wait_until)
    grant result;
    bool done = false;
  };

  struct async_op final : waiter_node, std::enable_shared_from_this<async_op> {
    async_op(std::shared_ptr<pool_state> s, std::unique_ptr<completion> h)
        : waiter_node(nullptr), state(std::move(s)), handler(std::move(h)), timer(state->ex_) {}

    // A grant posted to proceed() may never run: the context of the pool's executor can be
    // destroyed with the handler pending. The op holds the grant until proceed() takes it, and
    // gives it back if it dies first.
    ~async_op() override {
      if (pending.conn || pending.slot) state->abandon(*this->ep, pending);
    }

    // Under the lock: hand the grant to the pool's executor to probe or connect there.
    void granted(grant g) override {
      timer.cancel();
      pending = g;  // before the post: the handler may run at once on another thread
      try {
        net::post(state->ex_, [self = keep_alive] { self->proceed(std::exchange(self->pending, grant{})); });
      } catch (...) {
        pending = grant{};
        throw;
      }
      keep_alive.reset();
    }

    // Not under the lock.
    void proceed(grant g) {
      g = state->probed(g, false, this);
      if (g.waiting) return;  // queued again: its next grant comes to granted()
      if (g.conn && state->check_on_.load(std::memory_order_relaxed)) {
        if (auto check = state->check_for(*as_connection(g.conn)))
          return state->async_check(this->shared_from_this(), as_connection(g.conn), std::move(check));
      }
      if (g.slot) return state->async_connect(this->shared_from_this());
      finish(g.ec, as_connection(g.conn), g.conn != nullptr);
    }

    void finish(error_code ec, connection* c, bool reused) {
      auto h = std::move(handler);
      if (h) state->complete(std::move(h), ec, c, reused, waited);
    }
    bool waited = false;  // it queued behind the limits (for the listener)

    std::shared_ptr<pool_state> state;
    std::unique_ptr<completion> handler;
    timer_type timer;
    time_point deadline = never;
    std::shared_ptr<async_op> keep_alive;  // while queued: the queue holds raw pointers
    grant pending;                         // posted to proceed(), not taken yet
    std::weak_ptr<dial_race> dial;  // its connect in flight, under the lock
    bool cancel_requested = false;  // under the lock
    bool prewarm = false;           // a prewarm's connect: its connection goes idle, not to the handler
  };

#if defined(CONNPOOL_HAS_CANCELLATION_SLOTS)
  /// Installed in the handler's cancellation slot. Any cancellation type stops the acquire: a
  /// waiting acquire has taken nothing, and a connect in flight is abandoned, so the pool is left
  /// as if the acquire had never been made (terminal, partial and total alike).
  struct cancel_hook {
    explicit cancel_hook(std::weak_ptr<async_op> o) : op(std::move(o)) {}
    void operator()(net::cancellation_type_t type) {
      if (type == net::cancellation_type::none) return;
      if (auto o = op.lock()) o->state->cancel(*o);
    }
    std::weak_ptr<async_op> op;
  };

#endif

  /// The acquire's handler asked for cancellation (on the thread that emitted it). Waiting: it
  /// leaves the queue and completes with operation_aborted. Connecting: the connect is stopped
  /// and completes so. Granted meanwhile: the grant wins, as against the deadline.
  void cancel(async_op& op) {
    std::shared_ptr<async_op> waiting;
    std::shared_ptr<dial_race> dialing;
    {
      std::lock_guard<spin_mutex> lk(mu_);
      if (op.queued()) {
        books_.leave(op, /*timed_out=*/false, coarse_now());
        rearm();
        op.timer.cancel();
        waiting = std::move(op.keep_alive);
      } else {
        // Its connect or check in flight is stopped; one not started yet (between a failed check
        // and the next check or connect) sees the flag and does not start.
        op.cancel_requested = true;
        dialing = op.dial.lock();
      }
    }
    if (waiting) return waiting->finish(net::error::operation_aborted, nullptr, false);
    if (dialing)
      net::post(dialing->strand, [dialing] {
        if (dialing->done) return;
        dialing->aborted = true;
        dialing->stop();
        dialing->timer.cancel();
        end_setup(*dialing, net::error::operation_aborted);
      });
  }

  /// An async acquire died with a grant it never took (see ~async_op): give the connection or the
  /// slot back.
  void abandon(ep_node& e, grant g) noexcept {
    section s(*this);
    books_.abandoned(e, g, coarse_now(), s.dead);
    s.lease_ended();
    rearm();
  }

  void on_wait_timeout(async_op& op) {
    {
      std::lock_guard<spin_mutex> lk(mu_);
      if (!op.queued()) return;  // granted meanwhile: the grant wins
      books_.leave(op, /*timed_out=*/true, coarse_now());
      rearm();
    }
    auto self = std::move(op.keep_alive);
    op.finish(error::acquire_timeout, nullptr, false);
  }

  /// The one probe-and-replace loop, for every acquire path: probe the granted idle connection,
  /// outside the lock; while it is dead, close it and take what the books grant in its place.
  /// Returns a healthy connection, a slot, an error, or (idle_only) nothing.
  /// `w`: the acquire's waiter, queued again when the books can only make it wait (at the connect
  /// limit): then the grant says `waiting`. Without one, the grant is empty then, and the caller
  /// queues the acquire.
  template <class W = waiter_node>
  CONNPOOL_HOT grant probed(grant g, bool idle_only, W* w = nullptr) {
    while (g.conn) {
      const probe_result r = probe_conn(*as_connection(g.conn));
      if (r == probe_result::healthy) break;
      g = replace(*as_connection(g.conn), r, idle_only, w);
    }
    return g;
  }

  /// A handed-out idle connection failed its probe: close it, and take the grant the books give in
  /// its place (see books::replace()).
  template <class W = waiter_node>
  grant replace(connection& c, probe_result r, bool idle_only, W* w = nullptr) {
    learned_changes learned;
    grant g;
    {
      section s(*this);
      try {
        g = books_.replace(*c.node, r, idle_only, coarse_now(), s.dead, w);
        if (w && w->queued()) g = queued_again(*w);
        rearm();
      } catch (...) {
        if (w) unqueue(*w);  // out of memory: the waiter (a local, or an op about to die) must not stay queued
        throw;
      }
      take_learned(learned);
      s.lease_ended();
    }
    emit_learned(learned);
    return g;
  }

 public:
  // ---------------------------------------------------------------- run()'s retries

  /// run()'s retry, synchronously: a new connection if one can be had (books::try_grant()'s
  /// `fresh`), off acquire()'s path.
  template <class K>
  connection* acquire_fresh(const K& ep, bool& reused, error_code& ec) {
    return acquire_wait(ep, reused, ec, /*fresh=*/true);
  }

  /// A run() begins: the retry budget's deposit. Its own small lock, not the pool's.
  void run_began() noexcept {
    std::lock_guard<spin_mutex> lk(budget_mu_);
    budget_.deposit(coarse_now());
  }

  /// run() would run an exchange of `k` again, after `ec`: whether the retry budget allows it.
  /// Counted (retries, retries_refused) and reported (retried, retry_refused) either way. Never
  /// once the pool is closed (not counted then), nor for an acquire by name on a default pool's
  /// own thread, which could only take an idle connection (`by_name`).
  template <class K>
  bool retry_allowed(const K& k, error_code ec, bool by_name = false) {
    if (books_closed() || (by_name && own_ctx_ && own_ctx_->get_executor().running_in_this_thread())) return false;
    bool ok;
    {
      std::lock_guard<spin_mutex> lk(budget_mu_);
      ok = budget_.withdraw(coarse_now());
    }
    {
      std::lock_guard<spin_mutex> lk(mu_);
      if (entry* e = books_.find(k)) books_type::count_retry(*e, !ok);
    }
    if (events_on()) {
      event ev;
      ev.kind = ok ? event_kind::retried : event_kind::retry_refused;
      ev.error = ec;
      describe_run_key(k, ev);
      emit(ev);
    }
    return ok;
  }
  static void describe_run_key(const endpoint_type& ep, event& ev) noexcept { ev.endpoint = &ep; }
  static void describe_run_key(const key_type& k, event& ev) noexcept {
    if (k.name) ev.backend = &static_cast<const backend*>(k.name)->name;
    else ev.endpoint = &k.ep;
  }

 private:
  // ---------------------------------------------------------------- learned idle timeouts

  struct learned_change {
    endpoint_type ep;
    const host* backend;
    clock::duration value;
  };
  using learned_changes = std::vector<learned_change>;

  /// Under the lock, after the books' calls that can change a learned idle timeout: the changes,
  /// for emit_learned() after the lock (none without a listener).
  void take_learned(learned_changes& out) noexcept {
    books_.take_learned([&](entry* e, clock::duration t) {
      if (!e || !events_on()) return;
      const backend* b = backend_of(e);
      try {
        out.push_back({endpoint_of(e), b ? &b->name : nullptr, t});
      } catch (...) {  // out of memory: not reported
      }
    });
  }

  /// Outside the lock: the listener's idle_timeout_learned events.
  void emit_learned(const learned_changes& changes) noexcept {
    for (const learned_change& l : changes) {
      event ev;
      ev.kind = event_kind::idle_timeout_learned;
      if (l.backend) ev.backend = l.backend;
      else ev.endpoint = &l.ep;
      ev.duration = std::chrono::duration_cast<std::chrono::nanoseconds>(l.value);
      emit(ev);
    }
  }

  void unqueue(sync_waiter& w) noexcept {
    if (w.queued()) books_.leave(w, /*timed_out=*/false, coarse_now());
  }
  void unqueue(async_op& op) noexcept {
    if (op.queued()) books_.leave(op, /*timed_out=*/false, coarse_now());
    op.keep_alive.reset();
  }
  static void unqueue(waiter_node&) noexcept {}

  /// Under the lock: a sync acquire that replace() queued waits again (finish()).
  grant queued_again(sync_waiter& w) noexcept {
    w.done = false;
    sync_waited() = true;
    grant g;
    g.waiting = true;
    return g;
  }
  /// Under the lock: an async acquire that replace() queued waits again, with its deadline; or,
  /// cancelled meanwhile (between its grant and now), ends with operation_aborted.
  grant queued_again(async_op& op) {
    grant g;
    if (op.cancel_requested) {
      books_.leave(op, /*timed_out=*/false, coarse_now());
      g.ec = net::error::operation_aborted;
      return g;
    }
    op.waited = true;
    try {
      if (op.deadline != never) {
        op.timer.expires_at(op.deadline);
        op.timer.async_wait([w = std::weak_ptr<async_op>(op.shared_from_this())](error_code tec) {
          if (auto o = w.lock(); o && !tec) o->state->on_wait_timeout(*o);
        });
      }
      op.keep_alive = op.shared_from_this();
    } catch (...) {
      books_.leave(op, /*timed_out=*/false, coarse_now());
      g.ec = net::error::no_memory;
      return g;
    }
    g.waiting = true;
    return g;
  }
  static grant queued_again(waiter_node&) noexcept { return {}; }  // never queued: no waiter given

  // ---------------------------------------------------------------- health checks

  /// The health check to run on `c`, just taken from idle, before it is handed out; or null.
  std::shared_ptr<const setup_step> check_for(const connection& c) const {
    std::lock_guard<spin_mutex> lk(mu_);
    if (!check_ || !books_.needs_check(*c.node, coarse_now())) return nullptr;
    return check_;
  }

  /// `c` was taken from idle and goes back unused (see books::put_back()).
  void put_back(connection& c, bool unchecked, bool timed_out) noexcept {
    section s(*this);
    books_.put_back(*c.node, unchecked, timed_out, coarse_now(), s.dead);
    s.lease_ended();
    rearm();
  }

  void check_passed(connection& c) noexcept {
    std::lock_guard<spin_mutex> lk(mu_);
    books_.check_passed(*c.node, coarse_now());
  }

  /// The check of `c` failed (`ec`), or passed and a probe after it found `r`: close it, and take
  /// the books' grant in its place (`w`: as for replace()). Stopped by close(): counted pool_closed.
  template <class W>
  grant check_failed(connection& c, error_code ec, probe_result r, W* w) {
    section s(*this);
    const close_reason why = !ec ? reason_of(r) : close_reason::validation_failed;
    grant g;
    try {
      g = books_.replace(*c.node, why, ec ? close_mode::abortive : close_mode::graceful, false, coarse_now(), s.dead,
                         w);
      if (w->queued()) g = queued_again(*w);
    } catch (...) {
      unqueue(*w);
      throw;
    }
    s.lease_ended();
    rearm();
    return g;
  }

  /// A leased connection's descriptor leaves its socket for a check (`out`), or is back (or closed);
  /// then its race `dial` (if any) is forgotten too.
  void descriptor_out(connection& c, bool out, std::uint64_t dial = 0) noexcept {
    std::lock_guard<spin_mutex> lk(mu_);
    c.fd_out = out;
    if (dial) dials_.erase(dial);
  }

  void forget_dial(std::uint64_t id) noexcept {
    if (!id) return;
    std::lock_guard<spin_mutex> lk(mu_);
    dials_.erase(id);
  }

  /// Register a race so that close() ends it; pool_closed once the pool is closed.
  error_code enlist(const std::shared_ptr<dial_race>& rc) {
    std::lock_guard<spin_mutex> lk(mu_);
    if (books_.closed()) return error::pool_closed;
    try {
      dials_.emplace(next_dial_id_ + 1, rc);
      rc->id = ++next_dial_id_;
    } catch (const std::bad_alloc&) {
      return net::error::no_memory;
    }
    return {};
  }

  /// The health check of `c`, taken from idle for `opp`, on the pool's executor. Bounded by
  /// validate_timeout and the acquire's deadline; the acquire's cancellation and close() end it.
  /// Passed: `c` is the acquire's. Failed: `c` is closed and the acquire goes on with the books'
  /// grant in its place (the next idle connection, or a connect).
  void async_check(std::shared_ptr<async_op> opp, connection* c, std::shared_ptr<const setup_step> check) {
    async_op& op = *opp;
    const time_point now = clock::now();
    if (now >= op.deadline) {
      put_back(*c, /*unchecked=*/true, /*timed_out=*/true);
      return op.finish(error::acquire_timeout, nullptr, false);
    }
    const time_point check_by = std::min(later(now, options().validate_timeout), op.deadline);
    std::shared_ptr<dial_race> rc;
    try {
      rc = std::make_shared<dial_race>(ex_, nullptr);
      rc->ext = c->ext;
    } catch (const std::bad_alloc&) {
      put_back(*c, true, false);
      return op.finish(net::error::no_memory, nullptr, false);
    }
    const Protocol protocol = c->endpoint().protocol();
    descriptor_out(*c, true);
    error_code ec = move_descriptor(c->socket, rc->dial, protocol);
    if (ec) return checked(opp, c, rc, ec);  // the descriptor is lost: closed, counted failed
    ec = enlist(rc);
    if (!ec) {
      std::lock_guard<spin_mutex> lk(mu_);
      if (op.cancel_requested) rc->aborted = true;
      op.dial = rc;
    }
    // From here only the strand touches rc->dial, until checked() moves it back.
    auto then = [self = this->shared_from_this(), w = std::weak_ptr<dial_race>(rc), opp, c, protocol](error_code sec) {
      const std::shared_ptr<dial_race> rc = w.lock();  // see start_ping()
      if (!rc) return;
      sec = end_race(*rc, sec, net::error::timed_out);
      const error_code mec = move_descriptor(rc->dial, c->socket, protocol);
      if (!sec) sec = mec;
      if (rc->dial.is_open()) close_socket(rc->dial, close_mode::abortive, false);
      self->checked(opp, c, rc, sec);
    };
    auto run = [self = this->shared_from_this(), rc, check = std::move(check), ep = c->endpoint(), check_by,
                then, ec]() mutable {
      if (ec || rc->cancelled || rc->aborted) return then(ec ? ec : net::error::operation_aborted);
      try {
        arm_deadline(rc, check_by);
        self->start_setup(rc, std::move(check), ep, then);
      } catch (const std::bad_alloc&) {
        rc->stop();
        if (rc->in_setup) end_setup(*rc, net::error::no_memory); else then(net::error::no_memory);
      }
    };
    try {
      net::dispatch(rc->strand, std::move(run));
    } catch (const std::bad_alloc&) {
      error_code mec = move_descriptor(rc->dial, c->socket, protocol);
      checked(opp, c, rc, mec ? mec : net::error::no_memory);
    }
  }

  /// An acquire's check of `c` ended with `ec`.
  void checked(const std::shared_ptr<async_op>& opp, connection* c, const std::shared_ptr<dial_race>& rc,
               error_code ec) {
    descriptor_out(*c, false, rc->id);
    async_op& op = *opp;
    probe_result r = probe_result::healthy;
    if (!ec && books_closed()) {  // closed (drained) while it was checked: not handed out
      abandon(*op.ep, grant{c->node, false, false, {}});
      return op.finish(error::pool_closed, nullptr, false);
    }
    if (!ec && (r = probe_conn(*c)) == probe_result::healthy) {
      check_passed(*c);
      return op.finish({}, c, true);
    }
    if (ec == net::error::operation_aborted && rc->aborted) {  // the acquire's own cancellation
      abandon(*op.ep, grant{c->node, false, false, {}});
      return op.finish(ec, nullptr, false);
    }
    const grant g = check_failed(*c, ec, r, &op);
    if (g.waiting) return;
    if (!g.ec && clock::now() >= op.deadline) {  // no time left for the next one
      timed_out(*op.ep, g);
      return op.finish(error::acquire_timeout, nullptr, false);
    }
    op.proceed(g);
  }

  /// An acquire's deadline passed with the grant `g` for `e` not used yet: give it back (a
  /// connection unchecked, see put_back()), and count the timeout.
  void timed_out(ep_node& e, grant g) noexcept {
    section s(*this);
    const time_point now = coarse_now();
    if (g.conn) {
      books_.put_back(*g.conn, /*unchecked=*/false, /*timed_out=*/true, now, s.dead);
    } else {
      if (g.slot) books_.abandoned(e, g, now, s.dead);
      ++e.counters.acquire_timeouts;
    }
    s.lease_ended();
    rearm();
  }

  /// A background check (ping_interval), for an idle connection marked pinging: its id, and its
  /// descriptor, taken out of the connection's socket under the lock.
  struct ping_job {
    std::uint64_t id;
    int fd;
    endpoint_type ep;
    std::shared_ptr<connection_ext> ext;
  };

  /// Under the lock: take the descriptors of the connections start_pings() gave. One that cannot
  /// be taken fails its check at once.
  void take_pings(std::vector<conn_node*>& due, std::vector<ping_job>& jobs, graveyard& dead) {
    const time_point now = coarse_now();
    for (conn_node* n : due) {
      connection& c = *as_connection(n);
      error_code ec;
      int fd = -1;
      try {
        jobs.reserve(jobs.size() + 1);
        fd = c.socket.release(ec);
      } catch (const std::bad_alloc&) {
        ec = net::error::no_memory;
      }
      if (ec) {
        books_.ping_done(*n, false, probe_result::healthy, now, dead);
        continue;
      }
      jobs.push_back({n->id, fd, c.endpoint(), c.ext});
    }
  }

  /// Run a background check, outside the lock.
  void start_ping(ping_job& job, std::shared_ptr<const setup_step> check) {
    std::shared_ptr<dial_race> rc;
    try {
      rc = std::make_shared<dial_race>(ex_, nullptr);
    } catch (const std::bad_alloc&) {
      ::close(job.fd);
      return ping_ended(nullptr, job.id, net::error::no_memory);
    }
    rc->ext = std::move(job.ext);
    error_code ec;
    rc->dial.assign(job.ep.protocol(), job.fd, ec);
    if (ec) {
      ::close(job.fd);
      return ping_ended(rc, job.id, ec);
    }
    ec = enlist_ping(rc, job.id);
    // The race holds `then` (on_setup_end), so `then` holds the race weakly: if the executor's
    // context is destroyed with the check pending, nothing keeps the race alive.
    auto then = [self = this->shared_from_this(), w = std::weak_ptr<dial_race>(rc), id = job.id](error_code sec) {
      const std::shared_ptr<dial_race> r = w.lock();  // alive: whoever ends the race holds it
      if (!r) return;
      self->ping_ended(r, id, end_race(*r, sec, net::error::timed_out));
    };
    const time_point check_by = deadline_from(options().validate_timeout);
    auto run = [self = this->shared_from_this(), rc, check = std::move(check), ep = job.ep, check_by, then,
                ec]() mutable {
      if (ec || rc->cancelled) return then(ec ? ec : net::error::operation_aborted);
      try {
        arm_deadline(rc, check_by);
        self->start_setup(rc, std::move(check), ep, then);
      } catch (const std::bad_alloc&) {
        rc->stop();
        if (rc->in_setup) end_setup(*rc, net::error::no_memory); else then(net::error::no_memory);
      }
    };
    try {
      net::dispatch(rc->strand, std::move(run));
    } catch (const std::bad_alloc&) {
      ping_ended(rc, job.id, net::error::no_memory);
    }
  }

  /// Register a background check so that close() ends it, and so that its connection, if the
  /// books retire it meanwhile, ends it too (see stop_ping()). An error if the pool closed or the
  /// connection is gone.
  error_code enlist_ping(const std::shared_ptr<dial_race>& rc, std::uint64_t id) {
    std::lock_guard<spin_mutex> lk(mu_);
    if (books_.closed()) return error::pool_closed;
    conn_node* n = books_.lookup(id);
    if (!n || n->check != check_mark::pinging) return net::error::operation_aborted;
    try {
      dials_.emplace(next_dial_id_ + 1, rc);
      rc->id = ++next_dial_id_;
    } catch (const std::bad_alloc&) {
      return net::error::no_memory;
    }
    as_connection(n)->ping = rc;
    return {};
  }

  /// A connection is closed: if its background check runs, end it (its socket then closes).
  static void stop_ping(connection& c) noexcept {
    std::shared_ptr<dial_race> rc = c.ping.lock();
    if (!rc) return;
    try {
      net::post(rc->strand, [rc] {
        if (rc->done) return;
        rc->cancelled = true;
        rc->stop();
        rc->timer.cancel();
        end_setup(*rc, net::error::operation_aborted);
      });
    } catch (...) {
      // Out of memory: the check ends by its deadline instead.
    }
  }

  /// A background check ended: its descriptor goes back to its connection, if the books still
  /// have it, and the books keep or retire it (a probe, under the lock, catches a FIN that came
  /// while the idle watch passed the connection by). A connection retired meanwhile has no
  /// descriptor left but this one: it is closed here, after the lock (retire_close, or RST if the
  /// check failed).
  void ping_ended(const std::shared_ptr<dial_race>& rc, std::uint64_t id, error_code ec) noexcept {
    bool close_here = false;
    {
      section s(*this);
      if (rc) dials_.erase(rc->id);
      conn_node* n = books_.lookup(id);
      if (n && n->check == check_mark::pinging) {
        connection& c = *as_connection(n);
        c.ping.reset();
        if (rc && rc->dial.is_open()) {
          const error_code mec = move_descriptor(rc->dial, c.socket, c.remote.protocol());
          if (!ec) ec = mec;
        } else if (!ec) {
          ec = net::error::bad_descriptor;
        }
        const probe_result r = ec ? probe_result::healthy : probe_conn(c);
        books_.ping_done(*n, !ec, r, coarse_now(), s.dead);
        rearm();
      }
      close_here = rc && rc->dial.is_open();
    }
    if (close_here) {
      const bool stopped = ec == error::pool_closed || ec == net::error::operation_aborted;
      const close_mode mode = ec && !stopped ? close_mode::abortive : options().retire_close;
      if (rc->ext && mode == close_mode::graceful) rc->ext->goodbye(rc->dial.native_handle());
      close_socket(rc->dial, mode, false);
    }
  }

  // ---------------------------------------------------------------- named backends: connecting

  static backend* backend_of(const ep_node* e) noexcept {
    return static_cast<backend*>(const_cast<void*>(static_cast<const entry*>(e)->key.name));
  }

  /// On the strand: dial the backend's addresses, or wait for its first lookup (a phase that the
  /// deadline, close() and the cancellation end, as they end a setup step). A stale set is used
  /// as it is, and refreshed in the background.
  void resolve_then_dial(const std::shared_ptr<dial_race>& rc, const std::shared_ptr<async_op>& opp,
                         bool acquire_bound) {
    backend& b = *backend_of(opp->ep);
    std::vector<std::shared_ptr<address>> addrs;
    bool ready = false, lookup = false;
    std::uint64_t gen = 0;
    error_code ec;
    try {
      std::lock_guard<spin_mutex> lk(mu_);
      if (books_.closed()) {
        ec = error::pool_closed;
      } else {
        ready = b.resolved;
        if (ready) {
          addrs = b.addrs;
          const auto interval = options().resolve_interval;
          lookup = interval.count() > 0 && later(b.resolved_at, interval) <= coarse_now();
        } else {
          b.waiting.push_back(rc);
          lookup = true;
        }
        if (lookup) gen = begin_lookup(b);
      }
    } catch (const std::bad_alloc&) {
      ec = net::error::no_memory;
    }
    if (ec) return dialled(rc, opp, acquire_bound, ec);
    if (gen) start_lookup(b, gen);
    if (ready) return dial_plan(rc, opp, acquire_bound, std::move(addrs));
    rc->in_setup = true;
    rc->on_setup_end = [self = this->shared_from_this(), w = std::weak_ptr<dial_race>(rc), opp,
                        acquire_bound](error_code lec) {
      const std::shared_ptr<dial_race> r = w.lock();  // see start_ping()
      if (!r) return;
      if (lec) return self->dialled(r, opp, acquire_bound, lec);
      self->resolve_then_dial(r, opp, acquire_bound);
    };
  }

  /// Under the lock: an answer for `b` is wanted. Returns the generation of a resolver call the
  /// caller starts after unlocking (start_lookup()), or 0 if an answer is awaited already (a call
  /// in flight, or the default resolver's getaddrinfo still running after its bound passed).
  /// Throws std::bad_alloc, the backend unchanged.
  std::uint64_t begin_lookup(backend& b) {
    if (b.resolving || books_.closed()) return 0;
    std::chrono::milliseconds bound = options().connect_timeout;
    const auto interval = options().resolve_interval;
    if (interval.count() > 0 && (bound.count() <= 0 || interval < bound)) bound = interval;
    if (bound.count() > 0) {
      b.lookup_timer.expires_at(deadline_from(bound));
      b.lookup_timer.async_wait([w = this->weak_from_this(), bp = &b, arm = b.arms + 1](error_code tec) {
        if (tec) return;
        if (auto self = w.lock()) self->lookup_timed_out(*bp, arm);
      });
    }
    ++b.arms;
    b.resolving = true;
    if (!resolver_ && b.in_thread) return 0;
    ++b.generation;
    if (!resolver_) {
      b.in_thread = true;
      b.thread_gen = b.generation;
    }
    return b.generation;
  }

  /// The bound of the awaited answer passed: connects waiting for a first lookup stay, bounded by
  /// their own deadlines, and a new call starts for them (for the default resolver, when its
  /// getaddrinfo returns: its answer will do).
  void lookup_timed_out(backend& b, std::uint64_t arm) {
    std::uint64_t gen = 0;
    {
      std::lock_guard<spin_mutex> lk(mu_);
      if (arm != b.arms || !b.resolving) return;
      b.resolving = false;
      b.last_error = net::error::timed_out;
      if (!b.waiting.empty()) {
        try {
          gen = begin_lookup(b);
        } catch (const std::bad_alloc&) {
          // The waiting connects end by their deadlines.
        }
      }
    }
    if (gen) start_lookup(b, gen);
  }

  /// getaddrinfo's error as Asio reports it.
  static error_code addrinfo_error(int rc) {
    switch (rc) {
#if defined(EAI_NODATA) && EAI_NODATA != EAI_NONAME
      case EAI_NODATA:
#endif
      case EAI_NONAME: return net::error::host_not_found;
      case EAI_AGAIN: return net::error::host_not_found_try_again;
      case EAI_SERVICE: return net::error::service_not_found;
      case EAI_MEMORY: return net::error::no_memory;
      case EAI_SYSTEM: return error_code(errno, net::error::get_system_category());
      default: return net::error::no_recovery;
    }
  }

  /// Outside the lock: ask the resolver for `b`'s addresses: the user's, or getaddrinfo on a
  /// thread of its own (Asio's resolver would run it on the pool's context, where a lookup that
  /// hangs holds the context and every other lookup queued behind it).
  void start_lookup(backend& b, std::uint64_t gen) {
    std::shared_ptr<const resolver> user;
    {
      std::lock_guard<spin_mutex> lk(mu_);
      user = resolver_;
    }
    resolve_done done = [w = this->weak_from_this(), bp = &b, gen](error_code ec, std::vector<endpoint_type> eps) {
      auto self = w.lock();
      if (!self) return;
      try {
        // Holds the state weakly: a handler left in a context nobody runs any more must not keep it.
        net::post(self->ex_, [w, bp, gen, ec, eps = std::move(eps)]() mutable {
          if (auto s = w.lock()) s->resolved(*bp, gen, ec, std::move(eps));
        });
      } catch (...) {
        // Out of memory: the lookup's bound ends it.
      }
    };
    try {
      if (user) {
        (*user)(b.name, std::move(done));
      } else if constexpr (std::is_same_v<Protocol, net::ip::tcp>) {
        std::thread([name = b.name, done = std::move(done)] {
          addrinfo hints{};
          hints.ai_family = AF_UNSPEC;
          hints.ai_socktype = SOCK_STREAM;
          hints.ai_flags = AI_ADDRCONFIG;
          addrinfo* list = nullptr;
          const int rc = ::getaddrinfo(name.name.c_str(), name.service.c_str(), &hints, &list);
          std::vector<endpoint_type> eps;
          error_code ec = rc == 0 ? error_code() : addrinfo_error(rc);
          try {
            for (addrinfo* a = list; a; a = a->ai_next) {
              if (a->ai_family != AF_INET && a->ai_family != AF_INET6) continue;
              endpoint_type e;
              std::memcpy(e.data(), a->ai_addr, a->ai_addrlen);
              eps.push_back(e);
            }
          } catch (const std::bad_alloc&) {
            ec = net::error::no_memory;
          }
          if (list) ::freeaddrinfo(list);
          done(ec, std::move(eps));
        }).detach();
      }
    } catch (...) {  // the resolver threw, or no thread could be made
      net::post(ex_, [w = this->weak_from_this(), bp = &b, gen] {
        if (auto self = w.lock()) self->resolved(*bp, gen, error::setup_failed, {});
      });
    }
  }

  /// A lookup of `b` ended. The first success makes the address set; a later one replaces it:
  /// addresses kept keep their counts, addresses gone are marked, their idle connections close
  /// at once (address_removed) and their leased ones when they come back. A failure keeps the
  /// last good set; before any, the connects waiting for it fail with its error. An answer to a
  /// call older than the last one applied is ignored.
  void resolved(backend& b, std::uint64_t gen, error_code ec, std::vector<endpoint_type> eps) {
    std::vector<std::weak_ptr<dial_race>> wake;
    error_code wake_ec;
    {
      section s(*this);
      if (b.in_thread && gen == b.thread_gen) b.in_thread = false;
      if (gen <= b.accepted || books_.closed()) return;
      b.accepted = gen;
      b.resolving = false;
      b.lookup_timer.cancel();
      const time_point now = coarse_now();
      if (!ec && eps.empty()) ec = net::error::host_not_found;
      try {
        if (ec) {
          b.last_error = ec;
          if (!b.resolved) {
            wake.swap(b.waiting);
            wake_ec = ec;
          }
        } else {
          std::vector<std::shared_ptr<address>> next;
          next.reserve(eps.size());
          for (const endpoint_type& e : eps) {
            if (std::any_of(next.begin(), next.end(), [&](const auto& a) { return a->ep == e; })) continue;
            auto kept = std::find_if(b.addrs.begin(), b.addrs.end(), [&](const auto& a) { return a->ep == e; });
            next.push_back(kept != b.addrs.end() ? *kept : std::make_shared<address>(e));
          }
          bool gone = false;
          for (const auto& a : b.addrs) {
            if (std::find(next.begin(), next.end(), a) == next.end()) {
              a->removed = true;
              gone = true;
            }
          }
          b.addrs.swap(next);
          b.resolved = true;
          b.resolved_at = now;
          b.last_error.clear();
          wake.swap(b.waiting);
          if (gone) {
            if (entry* e = books_.find(key_type(static_cast<const void*>(&b))))
              books_.address_removed(
                  *e, [](void* p) { const auto& a = static_cast<connection*>(p)->addr; return a && a->removed.load(); },
                  now, s.dead);
          }
        }
        // The next lookup, while the backend is in use.
        const auto interval = options().resolve_interval;
        if (interval.count() > 0) {
          b.refresh.expires_at(deadline_from(interval));
          b.refresh.async_wait([w = this->weak_from_this(), bp = &b](error_code tec) {
            if (tec) return;
            if (auto self = w.lock()) self->on_refresh(*bp);
          });
        }
      } catch (const std::bad_alloc&) {
        wake.swap(b.waiting);
        wake_ec = net::error::no_memory;
      }
      rearm();
    }
    for (auto& w : wake) {
      if (auto rc = w.lock()) {
        try {
          net::post(rc->strand, [rc, wake_ec] { end_setup(*rc, wake_ec); });
        } catch (...) {
          // Out of memory: that connect ends by its deadline.
        }
      }
    }
  }

  /// The refresh timer: look `b` up again if it is in use (connections, or waiting acquires);
  /// if not, the next connect to it finds its set stale and refreshes it.
  void on_refresh(backend& b) {
    std::uint64_t gen = 0;
    {
      std::lock_guard<spin_mutex> lk(mu_);
      if (books_.closed() || b.resolving) return;
      const entry* e = books_.find(key_type(static_cast<const void*>(&b)));
      if (!e || (e->open() == 0 && e->waiters.empty())) return;
      try {
        gen = begin_lookup(b);
      } catch (const std::bad_alloc&) {
        return;  // the next connect finds the set stale and tries again
      }
    }
    if (gen) start_lookup(b, gen);
  }

  /// The order to try `addrs` in: addresses that refused recently last, then fewest connections
  /// first, then families alternating from the first one's (RFC 8305, section 4).
  static std::vector<std::shared_ptr<address>> plan_of(std::vector<std::shared_ptr<address>> addrs) {
    const clock::rep now = clock::now().time_since_epoch().count();
    std::stable_sort(addrs.begin(), addrs.end(), [now](const auto& a, const auto& b) {
      const bool ra = a->refused_until.load() > now, rb = b->refused_until.load() > now;
      if (ra != rb) return rb;
      return a->open.load() < b->open.load();
    });
    std::vector<std::shared_ptr<address>> out;
    out.reserve(addrs.size());
    std::vector<bool> taken(addrs.size(), false);
    bool v6 = !addrs.empty() && addrs.front()->ep.protocol().family() == AF_INET6;
    for (std::size_t n = 0; n < addrs.size(); ++n) {
      std::size_t pick = addrs.size();
      for (std::size_t i = 0; i < addrs.size(); ++i)
        if (!taken[i] && (addrs[i]->ep.protocol().family() == AF_INET6) == v6) {
          pick = i;
          break;
        }
      if (pick == addrs.size())  // none of that family left
        for (std::size_t i = 0; i < addrs.size(); ++i)
          if (!taken[i]) {
            pick = i;
            break;
          }
      taken[pick] = true;
      out.push_back(addrs[pick]);
      v6 = addrs[pick]->ep.protocol().family() != AF_INET6;
    }
    return out;
  }

  /// On the strand: Happy Eyeballs across `addrs`.
  void dial_plan(const std::shared_ptr<dial_race>& rc, const std::shared_ptr<async_op>& opp, bool acquire_bound,
                 std::vector<std::shared_ptr<address>> addrs) {
    try {
      rc->plan = plan_of(std::move(addrs));
      rc->tries.reserve(rc->plan.size());
    } catch (const std::bad_alloc&) {
      return dialled(rc, opp, acquire_bound, net::error::no_memory);
    }
    if (rc->plan.empty()) return dialled(rc, opp, acquire_bound, net::error::host_not_found);
    start_try(rc, opp, acquire_bound);
  }

  /// On the strand: start the next address's connect; arm the timer for the one after.
  void start_try(const std::shared_ptr<dial_race>& rc, const std::shared_ptr<async_op>& opp, bool acquire_bound) {
    while (rc->next < rc->plan.size()) {
      std::shared_ptr<address> a = rc->plan[rc->next++];
      if (a->removed.load(std::memory_order_relaxed)) continue;  // left the set since the plan was made
      error_code ec;
      typename dial_race::attempt* t = nullptr;
      try {
        rc->tries.push_back(std::make_unique<typename dial_race::attempt>(dial_race::dial_executor(rc->strand, ex_)));
        t = rc->tries.back().get();
      } catch (const std::bad_alloc&) {
        ec = net::error::no_memory;
      }
      if (!ec) ec = open_socket(t->s, a->ep.protocol());
      if (!ec) ec = apply_socket_options(t->s, options());
      if (ec) {  // this address cannot even be tried: the next one, now
        rc->last_ec = ec;
        if (t && t->s.is_open()) close_socket(t->s, close_mode::abortive, false);
        continue;
      }
      ++a->open;
      t->addr = std::move(a);
      try {
        t->s.async_connect(t->addr->ep, net::bind_executor(rc->strand, [self = this->shared_from_this(), rc, opp,
                                                                          acquire_bound, t](error_code cec) {
          self->tried(rc, opp, acquire_bound, *t, cec);
        }));
      } catch (const std::bad_alloc&) {
        --t->addr->open;
        t->addr.reset();
        close_socket(t->s, close_mode::abortive, false);
        rc->last_ec = net::error::no_memory;
        continue;
      }
      ++rc->pending;
      if (rc->next < rc->plan.size()) {
        rc->retry.expires_after(options().happy_eyeballs_delay);
        try {
          rc->retry.async_wait(net::bind_executor(rc->strand, [self = this->shared_from_this(), rc, opp,
                                                               acquire_bound](error_code tec) {
            if (tec || rc->won || rc->done || rc->timed_out || rc->cancelled || rc->aborted) return;
            self->start_try(rc, opp, acquire_bound);
          }));
        } catch (const std::bad_alloc&) {
          // No delay timer: the next address starts when this one fails.
        }
      }
      return;
    }
    if (rc->pending == 0) dialled(rc, opp, acquire_bound, rc->last_ec ? rc->last_ec : net::error::host_not_found);
  }

  /// On the strand: one address's connect ended. The first success wins: the others are
  /// cancelled (and closed when their handlers see the race won). A failure starts the next
  /// address at once; the last one ends the race with its error.
  void tried(const std::shared_ptr<dial_race>& rc, const std::shared_ptr<async_op>& opp, bool acquire_bound,
             typename dial_race::attempt& t, error_code ec) {
    --rc->pending;
    const bool stopped = rc->timed_out || rc->cancelled || rc->aborted;
    if (!ec && !rc->won && !rc->done && !stopped) {
      rc->won = true;
      rc->retry.cancel();
      error_code ignored;
      for (auto& other : rc->tries)
        if (other.get() != &t && other->s.is_open()) other->s.cancel(ignored);
      rc->dial = std::move(t.s);
      rc->conn->remote = t.addr->ep;
      rc->conn->addr = std::move(t.addr);  // its count moves to the connection
      return dialled(rc, opp, acquire_bound, {});
    }
    if (ec && ec != net::error::operation_aborted && !rc->won) {
      rc->last_ec = ec;
      t.addr->refused_until = later(clock::now(), std::chrono::seconds(1)).time_since_epoch().count();
    } else if (rc->won && ec == net::error::operation_aborted) {
      // Started before the winner and still not connected: slower by a Happy Eyeballs delay at
      // least. It goes last for a while, so that new connections do not wait for it each time.
      t.addr->refused_until = later(clock::now(), std::chrono::seconds(10)).time_since_epoch().count();
    }
    if (t.s.is_open()) close_socket(t.s, close_mode::abortive, false);
    --t.addr->open;
    t.addr.reset();
    if (rc->won || rc->done) return;  // a loser
    if (stopped) {
      if (rc->pending == 0) dialled(rc, opp, acquire_bound, net::error::operation_aborted);
      return;
    }
    if (rc->next < rc->plan.size()) return start_try(rc, opp, acquire_bound);
    if (rc->pending == 0) dialled(rc, opp, acquire_bound, rc->last_ec);
  }

  /// acquire() when no idle connection was free: connect in a free slot, or queue until one is
  /// granted or the deadline passes.
  template <class K>
  connection* acquire_wait(const K& ep, bool& reused, error_code& ec, bool fresh = false) {
    time_point deadline = unset;  // read the clock only if the acquire has to wait or connect
    ep_node* e;
    grant g;
    {
      section s(*this);
      if (books_.closed()) {
        ec = error::pool_closed;
        return nullptr;
      }
      const time_point now = coarse_now();
      entry& en = books_.get(ep, now);
      e = &en;
      g = books_.try_grant(en, now, s.dead, fresh);
      if (!g && !books_.may_wait(en)) {
        ec = error::too_many_waiters;
        return nullptr;
      }
      if (!g) {
        // Idle connections that cannot be had now are being checked in the background, on the
        // pool's thread: on that thread, waiting would stall the checks it waits for.
        // So would waiting for a connect in flight (at max_connecting_per_endpoint).
        if ((!en.idle.empty() || en.connecting) && own_ctx_ && own_ctx_->get_executor().running_in_this_thread()) {
          ec = net::error::would_block;
          return nullptr;
        }
        deadline = deadline_from(options().acquire_timeout);
        sync_waiter w(e);
        books_.enqueue(w);
        sync_waited() = true;
        struct leave_queue {  // if anything below throws, `w` must not stay queued
          books_type& b;
          sync_waiter& w;
          ~leave_queue() {
            if (w.queued()) b.leave(w, false, coarse_now());
          }
        } guard{books_, w};
        while (!w.done) {
          if (mu_.wait_until(w.cv, deadline) == std::cv_status::timeout && !w.done) {
            books_.leave(w, /*timed_out=*/true, coarse_now());
            rearm();
            ec = error::acquire_timeout;
            return nullptr;
          }
        }
        g = w.result;
      }
      rearm();
    }
    return finish(*e, g, deadline, reused, ec);
  }

  /// `e`: the endpoint the grant is for (a slot pins it). `deadline`: the acquire's, or `unset` if
  /// it has not been needed yet.
  CONNPOOL_COLD connection* finish(ep_node& e, grant g, time_point deadline, bool& reused, error_code& ec) {
    sync_waiter w(&e);  // if a replacement has to wait (at the connect limit)
    for (;;) {
      g = probed(g, false, &w);
      if (g.waiting) {
        if (!wait_again(w, deadline, ec)) return nullptr;
        g = w.result;
        continue;
      }
      if (!g.conn) break;
      connection& c = *as_connection(g.conn);
      std::shared_ptr<const setup_step> check;
      if (check_on_.load(std::memory_order_relaxed)) check = check_for(c);
      if (!check) {
        reused = true;
        return &c;
      }
      if (deadline == unset) deadline = deadline_from(options().acquire_timeout);
      const time_point now = clock::now();
      if (now >= deadline) {
        put_back(c, /*unchecked=*/true, /*timed_out=*/true);
        ec = error::acquire_timeout;
        return nullptr;
      }
      bool passed = false;
      std::uint64_t id = 0;
      descriptor_out(c, true);
      error_code cec = step_sync(c, c.endpoint(), std::move(check),
                                 std::min(later(now, options().validate_timeout), deadline), passed, id);
      descriptor_out(c, false, id);  // back in c.socket, or closed
      if (cec == net::error::would_block) {  // on the pool's own thread: the check cannot run
        put_back(c, /*unchecked=*/true, /*timed_out=*/false);
        ec = cec;
        return nullptr;
      }
      probe_result r = probe_result::healthy;
      if (!cec && books_closed()) {  // closed (drained) while it was checked: not handed out
        abandon(e, grant{c.node, false, false, {}});
        ec = error::pool_closed;
        return nullptr;
      }
      if (!cec && (r = probe_conn(c)) == probe_result::healthy) {
        check_passed(c);
        reused = true;
        return &c;
      }
      g = check_failed(c, cec, r, &w);
      if (g.waiting) continue;
      if (!g.ec && clock::now() >= deadline) {  // no time left for the next one
        timed_out(e, g);
        ec = error::acquire_timeout;
        return nullptr;
      }
    }
    if (g.ec) {
      ec = g.ec;
      return nullptr;
    }
    // A slot: connect synchronously on this thread, by the nearer of the two deadlines.
    CONNPOOL_ASSERT(g.slot);
    reused = false;
    std::unique_ptr<connection> c = new_connection(e, ec);
    if (!c) return connected(e, nullptr, ec);
    c->remote = endpoint_of(&e);
    if (deadline == unset) deadline = deadline_from(options().acquire_timeout);
    const time_point connect_by = deadline_from(options().connect_timeout);
    bool deadline_passed = false;
    ec = connect_sync(*c, endpoint_of(&e), std::min(connect_by, deadline), deadline_passed);
    std::uint64_t dial_id = 0;
    if (!ec && !deadline_passed) {
      if (std::shared_ptr<const setup_step> step = current_setup())
        ec = step_sync(*c, endpoint_of(&e), std::move(step), std::min(connect_by, deadline), deadline_passed, dial_id);
    }
    if (deadline_passed) ec = deadline < connect_by ? error::acquire_timeout : error::connect_timeout;
    return connected(e, std::move(c), ec, dial_id);
  }

  /// A sync acquire queued again by replace() waits for its grant (in w.result), until `deadline`
  /// (set now if unset). False with `ec` set if it cannot: acquire_timeout, or would_block on the
  /// pool's own thread, which runs the connects it would wait for.
  bool wait_again(sync_waiter& w, time_point& deadline, error_code& ec) {
    if (deadline == unset) deadline = deadline_from(options().acquire_timeout);
    section s(*this);
    if (w.queued() && own_ctx_ && own_ctx_->get_executor().running_in_this_thread()) {
      books_.leave(w, /*timed_out=*/false, coarse_now());
      rearm();
      ec = net::error::would_block;
      return false;
    }
    while (!w.done) {
      if (mu_.wait_until(w.cv, deadline) == std::cv_status::timeout && !w.done) {
        books_.leave(w, /*timed_out=*/true, coarse_now());
        rearm();
        ec = error::acquire_timeout;
        return false;
      }
    }
    rearm();
    return true;
  }

  /// A connection object for a granted slot, or null with `ec` set (the caller then gives the slot
  /// back through connected()).
  std::unique_ptr<connection> new_connection(const ep_node& e, error_code& ec) noexcept {
    try {
      auto c = std::make_unique<connection>(socket_ex_, own_io_);
      const backend* b = backend_of(&e);
      if (b) c->backend = &b->name;
      if (make_ext_) c->ext = make_ext_(c->socket, c->context, b ? b->name.name : std::string());
      if (events_on()) {
        c->connect_began = clock::now();
        event ev;
        ev.kind = event_kind::connect_started;
        describe(&e, ev);
        emit(ev);
      }
      return c;
    } catch (const std::bad_alloc&) {
      ec = net::error::no_memory;
    } catch (const system_error& x) {
      ec = x.code();
    }
    return nullptr;
  }

  error_code connect_sync(connection& c, const endpoint_type& ep, time_point deadline, bool& deadline_passed) {
    error_code ec = open_socket(c.socket, ep.protocol());
    if (!ec) ec = apply_socket_options(c.socket, options());
    if (!ec) c.socket.non_blocking(true, ec);
    if (!ec)
      ec = connect_with_deadline(c.socket.native_handle(), ep.data(), static_cast<socklen_t>(ep.size()), deadline,
                                 deadline_passed);
    if (!ec) c.socket.non_blocking(false, ec);
    return ec;
  }

  /// Book a finished connection attempt and give its slot back or turn it into a lease. Takes
  /// ownership of `c` (null if it could not even be made); returns it leased, or null.
  /// `cancelled`: the attempt was stopped by the acquire's own cancellation (not counted failed).
  /// `to_idle`: a prewarm's connection, which goes to a waiter or idle at once (books::prewarmed()):
  /// the pointer returned then only says it connected; it is not the caller's.
  connection* connected(ep_node& e, std::unique_ptr<connection> c, error_code& ec, std::uint64_t dial_id = 0,
                        bool cancelled = false, bool to_idle = false) {
    // A connect that began with the listener set (connect_started) ends with an event, whatever
    // ended it; one whose connection object could not be made never began.
    connect_outcome oc;
    if (!c || c->connect_began == time_point{} || !events_on())
      return connected_locked(e, std::move(c), ec, dial_id, cancelled, oc, to_idle);
    const time_point began = c->connect_began;
    const endpoint_type remote = c->remote;
    const backend* named = backend_of(&e);
    const endpoint_type key = named ? endpoint_type{} : endpoint_of(&e);  // the entry may go with the slot
    connection* out = connected_locked(e, std::move(c), ec, dial_id, cancelled, oc, to_idle);
    const time_point now = clock::now();
    event ev;
    ev.kind = out ? event_kind::connect_succeeded : event_kind::connect_failed;
    if (named) ev.backend = &named->name;
    if (out) ev.endpoint = &out->remote;
    else if (remote != endpoint_type{}) ev.endpoint = &remote;
    else if (!named) ev.endpoint = &key;
    ev.error = out ? error_code() : (ec ? ec : error_code(net::error::operation_aborted));
    if (began != time_point{}) ev.duration = std::chrono::duration_cast<std::chrono::nanoseconds>(now - began);
    if (out && !to_idle) out->connected_at = now;  // a prewarmed one got it under the lock
    emit(ev);
    if (oc.backoff || oc.recovered) {
      event b;
      b.kind = oc.backoff ? event_kind::backoff_started : event_kind::backoff_ended;
      b.backend = ev.backend;
      b.endpoint = named ? nullptr : &key;
      b.error = oc.backoff ? ev.error : error_code();
      b.duration = std::chrono::duration_cast<std::chrono::nanoseconds>(oc.wait);
      b.uses = oc.fails;
      emit(b);
    }
    return out;
  }

  /// What the books decided about the connect backoff at a connect's end (for the listener).
  struct connect_outcome {
    bool backoff = false;    // a backoff started (or grew)
    bool recovered = false;  // a success ended one
    clock::duration wait{};  // the backoff
    std::uint32_t fails = 0;  // consecutive failures
  };

  connection* connected_locked(ep_node& e, std::unique_ptr<connection> c, error_code& ec, std::uint64_t dial_id,
                               bool cancelled, connect_outcome& oc, bool to_idle) {
    section s(*this);
    if (dial_id) dials_.erase(dial_id);
    const time_point now = coarse_now();
    if (!ec && books_.closed()) {  // connected, but the pool closed meanwhile: made, then retired
      books_.connected_after_close(e, now);
      ec = error::pool_closed;
      bury_later(s, std::move(c), options().retire_close);
      return nullptr;
    }
    if (!ec) {
      const std::uint32_t fails = e.fails;
      try {
        c->node = books_.connected(e, c.get(), now, s.dead, /*serve_waiters=*/!to_idle);
      } catch (const std::bad_alloc&) {
        ec = net::error::no_memory;  // the books unchanged: the slot is given back below
      }
      if (c->node) {  // committed: nothing below may undo it
        oc.recovered = fails != 0;
        oc.fails = fails;
        // Its address left the set while it connected: it closes when its lease ends. (resolved()
        // marks addresses under this lock, so none is missed between.)
        if (c->addr && c->addr->removed.load(std::memory_order_relaxed)) c->node->seen = probe_result::address_removed;
        c->watched = watching_ && watch_.add(c->socket.native_handle(), c->node->id);
        connection* out = c.release();
        if (to_idle) {
          if (events_on()) out->connected_at = clock::now();
          books_.prewarmed(*out->node, now, s.dead);  // to the oldest waiter, or idle
        }
        rearm();
        return out;
      }
    }
    const std::uint32_t before = e.fails;
    oc.wait = books_.connect_failed(e, ec, now, s.dead, cancelled);
    oc.backoff = e.fails != before;
    oc.fails = e.fails;
    if (c) bury_later(s, std::move(c), close_mode::abortive);
    rearm();
    return nullptr;
  }

  /// Into the section's graveyard: closed (and freed) after the lock.
  static void bury_later(section& s, std::unique_ptr<connection> c, close_mode mode) noexcept {
    try {
      s.dead.push_back({c.get(), mode, false});
      static_cast<void>(c.release());  // the graveyard owns it now
    } catch (...) {
      close_socket(c->socket, mode, false);  // out of memory: close it here, under the lock
    }
  }

  /// An asynchronous connect racing its deadline timer. Everything that touches `dial` or `timer`
  /// runs on `strand`; close() cancels it there too.
  struct dial_race {
    dial_race(const Executor& ex, std::unique_ptr<connection> c)
        : strand(ex), timer(ex), retry(ex), dial(dial_executor(strand, ex)), conn(std::move(c)) {}
    /// The dialling socket's executor: the strand where Executor can hold one (any_io_executor
    /// can), so that a setup step's handlers are serialized with the race by default.
    static Executor dial_executor(const net::strand<Executor>& st, const Executor& ex) {
      if constexpr (std::is_constructible_v<Executor, net::strand<Executor>>)
        return Executor(st);
      else
        return ex;
    }
    /// On the strand: stop the attempt in progress (its handler then sees the flag that was set).
    void stop() {
      error_code ignored;
      dial.cancel(ignored);
      retry.cancel();
      for (auto& t : tries)
        if (t->s.is_open()) t->s.cancel(ignored);
    }
    net::strand<Executor> strand;
    timer_type timer;  // the deadline
    timer_type retry;  // the backoff before trying a full Unix backlog again
    clock::duration backoff = std::chrono::milliseconds(1);
    socket_type dial;  // only for the connect: the connected descriptor moves to conn->socket
    std::unique_ptr<connection> conn;
    std::uint64_t id = 0;
    bool timed_out = false, cancelled = false, aborted = false, done = false;
    // The setup step, between connect and hand-out: while in_setup, the first of the step's
    // done(), the deadline, close() and a cancellation calls on_setup_end, once.
    bool in_setup = false, setup_ran = false;
    std::function<void(error_code)> on_setup_end;
    std::shared_ptr<const setup_step> step;  // held, with the endpoint, until the race ends
    endpoint_type ep;
    std::shared_ptr<connection_ext> ext;  // the connection's layer state, for the step
    // A named backend's connect (Happy Eyeballs): the addresses in the order to try, an attempt
    // per address started, how many are in flight, the first to connect wins.
    struct attempt {
      explicit attempt(const Executor& ex) : s(ex) {}
      socket_type s;
      std::shared_ptr<address> addr;
    };
    std::vector<std::shared_ptr<address>> plan;
    std::vector<std::unique_ptr<attempt>> tries;
    std::size_t next = 0, pending = 0;
    bool won = false;
    error_code last_ec;
  };

  std::shared_ptr<const setup_step> current_setup() const {
    std::lock_guard<spin_mutex> lk(mu_);
    return setup_;
  }

  /// On the strand: race `deadline` (if any). When it passes first, the attempt is stopped (its
  /// handler sees timed_out) and a setup step in progress ends.
  static void arm_deadline(const std::shared_ptr<dial_race>& rc, time_point deadline) {
    if (deadline == never) return;
    rc->timer.expires_at(deadline);
    rc->timer.async_wait(net::bind_executor(rc->strand, [rc](error_code tec) {
      if (tec || rc->done) return;
      rc->timed_out = true;
      rc->stop();
      end_setup(*rc, net::error::operation_aborted);
    }));
  }

  /// On the strand: a step's race (setup step or health check) is over: its deadline timer is
  /// stopped, and what stopped it wins over the step's own result: close() (pool_closed), the
  /// acquire's cancellation (operation_aborted), the deadline (`timed_out_as`).
  static error_code end_race(dial_race& rc, error_code ec, error_code timed_out_as) {
    rc.done = true;
    rc.timer.cancel();
    if (rc.cancelled) ec = error::pool_closed;
    else if (rc.aborted) ec = net::error::operation_aborted;
    else if (rc.timed_out) ec = timed_out_as;
    if (ec && rc.ext && rc.setup_ran) rc.ext->clean = false;  // a step that ran may have left a record half-sent
    return ec;
  }

  /// On the strand: end the setup step with `ec`, if it is still running.
  static void end_setup(dial_race& rc, error_code ec) {
    if (!rc.in_setup) return;
    rc.in_setup = false;
    auto then = std::move(rc.on_setup_end);
    then(ec);
  }

  /// On the strand: run `step` on rc.dial, connected to `ep`; `then` gets its result, once. The
  /// deadline timer, close() and a cancellation end it too (see end_setup()); a done() after that
  /// is ignored. An exception from the step ends it with error::setup_failed.
  void start_setup(const std::shared_ptr<dial_race>& rc, std::shared_ptr<const setup_step> step,
                   const endpoint_type& ep, std::function<void(error_code)>&& then) {
    rc->in_setup = true;
    rc->setup_ran = true;
    rc->on_setup_end = std::move(then);
    rc->step = std::move(step);
    rc->ep = ep;
    // `done` holds the race, so the socket the step's handlers use outlives them; the pool state
    // is held weakly, so a done called after the pool is gone does nothing.
    setup_done done = [r = rc, w = this->weak_from_this()](error_code ec) {
      if (auto self = w.lock()) net::dispatch(r->strand, [r, self, ec] { end_setup(*r, ec); });
    };
    try {
      (*rc->step)(rc->dial, rc->ep, rc->ext.get(), std::move(done));
    } catch (...) {
      end_setup(*rc, error::setup_failed);
    }
  }

  /// A step (setup or health check) for a synchronous acquire: the connection's descriptor moves
  /// to a socket on the pool's executor, where the step runs (the default pool's sockets live on a
  /// context nobody runs), and back once it succeeded; on failure it is closed. Waits by the deadline, and a little longer for the
  /// executor to report, in case nothing runs it.
  error_code step_sync(connection& c, const endpoint_type& ep, std::shared_ptr<const setup_step> step,
                        time_point deadline, bool& deadline_passed, std::uint64_t& dial_id) {
    // On the default pool's own thread (a completion handler that acquires synchronously), the
    // step could never run: fail at once rather than stall every connection of the pool.
    if (own_ctx_ && own_ctx_->get_executor().running_in_this_thread()) return net::error::would_block;
    struct outcome {
      std::mutex m;
      std::condition_variable cv;
      bool finished = false, abandoned = false;
      error_code ec;
    };
    std::shared_ptr<dial_race> rc;
    std::shared_ptr<outcome> out;
    try {
      rc = std::make_shared<dial_race>(ex_, nullptr);
      rc->ext = c.ext;
      out = std::make_shared<outcome>();
    } catch (const std::bad_alloc&) {
      return net::error::no_memory;
    }
    error_code ec = move_descriptor(c.socket, rc->dial, ep.protocol());
    if (ec) return ec;
    {
      std::lock_guard<spin_mutex> lk(mu_);
      if (books_.closed()) {
        ec = error::pool_closed;
      } else {
        try {
          dials_.emplace(next_dial_id_ + 1, rc);
          rc->id = dial_id = ++next_dial_id_;
        } catch (const std::bad_alloc&) {
          ec = net::error::no_memory;
        }
      }
    }
    if (ec) {
      close_socket(rc->dial, close_mode::abortive, false);
      return ec;
    }
    // From here the caller never touches rc: the strand ends the race, closes the socket or moves
    // it back into `c` (while the caller, waiting, still owns c: decided under out->m).
    auto then = [w = std::weak_ptr<dial_race>(rc), out, &c, protocol = ep.protocol()](error_code sec) {
      const std::shared_ptr<dial_race> rc = w.lock();  // see start_ping()
      if (!rc) return;
      sec = end_race(*rc, sec, error::connect_timeout);
      std::lock_guard<std::mutex> lk(out->m);
      if (out->abandoned || sec) {
        close_socket(rc->dial, close_mode::abortive, false);
      } else {
        sec = move_descriptor(rc->dial, c.socket, protocol);
      }
      if (out->abandoned) return;
      out->finished = true;
      out->ec = sec;
      out->cv.notify_one();
    };
    auto run = [self = this->shared_from_this(), rc, step = std::move(step), ep, deadline, then]() mutable {
      if (rc->cancelled) return then(error::pool_closed);
      try {
        arm_deadline(rc, deadline);
        self->start_setup(rc, std::move(step), ep, then);
      } catch (const std::bad_alloc&) {
        rc->stop();
        if (rc->in_setup) end_setup(*rc, net::error::no_memory); else then(net::error::no_memory);
      }
    };
    try {
      net::dispatch(rc->strand, std::move(run));
    } catch (const std::bad_alloc&) {
      close_socket(rc->dial, close_mode::abortive, false);
      return net::error::no_memory;
    }
    std::unique_lock<std::mutex> lk(out->m);
    const time_point give_up_at = deadline == never ? deadline : later(deadline, std::chrono::milliseconds(200));
    while (!out->finished) {
      if (give_up_at == never) {
        out->cv.wait(lk);
      } else if (out->cv.wait_until(lk, give_up_at) == std::cv_status::timeout && !out->finished) {
        out->abandoned = true;  // nothing ran the executor in time: the race's end will close it
        deadline_passed = true;
        return error::connect_timeout;
      }
    }
    if (out->ec == error::connect_timeout) deadline_passed = true;
    return out->ec;
  }

  /// Connect on the pool's executor (the only one known to run), racing a timer, on a socket used
  /// only for dialling; once connected, the descriptor moves to the connection's own socket (two
  /// epoll_ctl calls per new connection). Two reasons: the default-constructed pool keeps its
  /// sockets on a context nobody runs, and Asio's reactor, once a socket has waited for a connect
  /// (a write operation to it), keeps EPOLLOUT registered for the socket's life, so every ACK that
  /// frees send space would wake the reactor of a pool on your executor: measured 0.3 us of client
  /// CPU per request with 1000 coroutines on one thread (docs/benchmarks.md). The moved descriptor
  /// is registered afresh, without EPOLLOUT.
  ///
  /// A named backend's connect takes its addresses (the cached ones, or the first lookup's, waited
  /// for within the deadline), then Happy Eyeballs across them (resolve_then_dial()), then the
  /// setup step as for any connect, in the same race.
  void async_connect(std::shared_ptr<async_op> opp) {
    async_op& op = *opp;
    const bool named = backend_of(op.ep) != nullptr;
    const time_point connect_by = deadline_from(options().connect_timeout);
    const time_point connect_deadline = std::min(connect_by, op.deadline);
    const bool acquire_bound = op.deadline < connect_by;
    error_code ec;
    std::shared_ptr<dial_race> rc;
    if (std::unique_ptr<connection> c = new_connection(*op.ep, ec)) {
      try {
        rc = std::make_shared<dial_race>(ex_, std::move(c));
        rc->ext = rc->conn->ext;
      } catch (const std::bad_alloc&) {
        ec = net::error::no_memory;
      }
    }
    if (!rc) {
      connection* out = connected(*op.ep, nullptr, ec, 0, false, op.prewarm);
      return op.finish(ec, out, false);
    }
    if (!named) {
      const endpoint_type& ep = endpoint_of(op.ep);
      rc->conn->remote = ep;
      ec = open_socket(rc->dial, ep.protocol());
      if (!ec) ec = apply_socket_options(rc->dial, options());
    }
    if (!ec) {
      std::lock_guard<spin_mutex> lk(mu_);
      if (books_.closed()) {
        ec = error::pool_closed;
      } else if (op.cancel_requested) {
        ec = net::error::operation_aborted;
      } else {
        try {
          dials_.emplace(next_dial_id_ + 1, rc);
          rc->id = ++next_dial_id_;
          op.dial = rc;
        } catch (const std::bad_alloc&) {
          ec = net::error::no_memory;
        }
      }
    }
    if (ec) {
      close_socket(rc->dial, close_mode::abortive, false);
      connection* out = connected(*op.ep, std::move(rc->conn), ec, rc->id, ec == net::error::operation_aborted, op.prewarm);
      return op.finish(ec, out, false);
    }
    // Every step from here runs on the strand: the timer cannot cancel a connect not started yet,
    // and a close() that came first (its cancel is queued on the strand) stops the connect here.
    auto start = [self = this->shared_from_this(), rc, opp, acquire_bound, connect_deadline, named] {
      if (rc->cancelled || rc->aborted) return self->dialled(rc, opp, acquire_bound, net::error::operation_aborted);
      if (named) {
        arm_deadline(rc, connect_deadline);
        return self->resolve_then_dial(rc, opp, acquire_bound);
      }
      dial_once(self, rc, opp, acquire_bound);
      arm_deadline(rc, connect_deadline);
    };
    try {
      net::dispatch(rc->strand, std::move(start));
    } catch (const std::bad_alloc&) {
      ec = net::error::no_memory;
      close_socket(rc->dial, close_mode::abortive, false);
      connection* out = connected(*op.ep, std::move(rc->conn), ec, rc->id, false, op.prewarm);
      op.finish(ec, out, false);
    }
  }

  /// On the strand: one connect attempt. A Unix stream listener whose backlog is full makes the
  /// connect fail at once (EAGAIN, which Asio reports as no_buffer_space) where TCP would wait: try
  /// again after a backoff of 1 to 50 ms, until the deadline timer or a cancel stops it.
  static void dial_once(std::shared_ptr<pool_state> self, std::shared_ptr<dial_race> rc,
                        std::shared_ptr<async_op> opp, bool acquire_bound) {
    rc->dial.async_connect(endpoint_of(opp->ep), net::bind_executor(rc->strand, [self, rc, opp, acquire_bound](error_code cec) {
      const bool backlog_full = (cec == net::error::no_buffer_space || cec == net::error::try_again) &&
                                endpoint_of(opp->ep).protocol().family() == AF_UNIX;
      if (!backlog_full || rc->timed_out || rc->cancelled || rc->aborted)
        return self->dialled(rc, opp, acquire_bound, cec);
      rc->retry.expires_after(rc->backoff);
      rc->backoff = std::min<clock::duration>(2 * rc->backoff, std::chrono::milliseconds(50));
      rc->retry.async_wait(net::bind_executor(rc->strand, [self, rc, opp, acquire_bound](error_code tec) {
        if (tec || rc->timed_out || rc->cancelled || rc->aborted)
          return self->dialled(rc, opp, acquire_bound, net::error::operation_aborted);
        dial_once(self, rc, opp, acquire_bound);
      }));
    }));
  }

  /// On the strand: the connect ended. Stopped by close(): pool_closed; by the acquire's
  /// cancellation: operation_aborted; by the deadline: acquire_timeout or connect_timeout. One that
  /// connected anyway goes on, and connected() counts it made (then closes it if the pool closed).
  void dialled(const std::shared_ptr<dial_race>& rc, const std::shared_ptr<async_op>& opp, bool acquire_bound,
               error_code cec) {
    if (!cec && !rc->timed_out && !rc->cancelled && !rc->aborted && !rc->in_setup && !rc->setup_ran) {
      if (std::shared_ptr<const setup_step> step = current_setup()) {
        rc->setup_ran = true;
        try {
          return start_setup(rc, std::move(step), rc->conn->remote,
                             [self = this->shared_from_this(), w = std::weak_ptr<dial_race>(rc), opp,
                              acquire_bound](error_code sec) {
                               if (const std::shared_ptr<dial_race> r = w.lock())  // see start_ping()
                                 self->dialled(r, opp, acquire_bound, sec);
                             });
        } catch (const std::bad_alloc&) {
          if (rc->in_setup) return end_setup(*rc, net::error::no_memory);
          cec = net::error::no_memory;
        }
      }
    }
    rc->done = true;
    rc->timer.cancel();
    if (rc->cancelled && cec)
      cec = error::pool_closed;
    else if (rc->aborted && cec)
      cec = net::error::operation_aborted;
    else if (rc->timed_out)
      cec = acquire_bound ? error::acquire_timeout : error::connect_timeout;
    if (!cec) cec = move_descriptor(rc->dial, rc->conn->socket, rc->conn->remote.protocol());
    if (rc->dial.is_open()) close_socket(rc->dial, close_mode::abortive, false);
    connection* out = connected(*opp->ep, std::move(rc->conn), cec, rc->id, rc->aborted && cec == net::error::operation_aborted,
                                opp->prewarm);
    opp->finish(cec, out, false);
  }

  /// Under the lock (close()): cancel every connect in flight; each completes with pool_closed.
  void cancel_dials() {
    for (auto& [id, weak] : dials_) {
      if (auto rc = weak.lock()) {
        net::post(rc->strand, [rc] {
          if (rc->done) return;
          rc->cancelled = true;
          rc->stop();
          rc->timer.cancel();
          end_setup(*rc, net::error::operation_aborted);
        });
      }
    }
  }

  /// Move a connected descriptor from `from` (the dialling socket) to `to` (the connection's), as a
  /// blocking socket: a fresh reactor registration.
  static error_code move_descriptor(socket_type& from, socket_type& to, const Protocol& protocol) {
    error_code ec;
    const auto fd = from.release(ec);
    if (ec) return ec;
    to.assign(protocol, fd, ec);
    if (ec) {
      ::close(fd);  // never adopted by `to`: ours to close, once
      return ec;
    }
    to.non_blocking(false, ec);
    return ec;
  }

  /// Under the lock: the connection this thread released last, if it is idle on `e` since, else
  /// the most recently released one of `e` (see books::take_idle()). A node named by this pool's
  /// uid is in this pool's arena, so reading it is safe even if it was retired since.
  CONNPOOL_HOT connection* take_mine_or_mru(ep_node& e) noexcept {
    const last_released& m = my_last();
    return as_connection(m.pool == uid_ ? books_.take_idle(e, m.node, m.stamp) : books_.take_idle(e));
  }

  // ---------------------------------------------------------------- closing and retiring

  /// Closes the graveyard's connections, telling `l` (a copy the caller holds) of each.
  static void bury(graveyard& dead, const listener_fn* l) noexcept {
    if (dead.empty()) return;
    for (const buried& b : dead) {
      connection* c = static_cast<connection*>(b.conn);
      if (l && b.made) {
        event ev;
        ev.kind = event_kind::closed;
        ev.endpoint = &c->remote;
        ev.backend = c->backend;
        ev.reason = b.why;
        ev.uses = c->uses;
        if (c->connected_at != time_point{}) ev.duration = std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now() - c->connected_at);
        try {
          (*l)(ev);
        } catch (...) {
        }
      }
      stop_ping(*c);
      if (c->ext && b.mode == close_mode::graceful && !b.peer_gone && c->socket.is_open())
        c->ext->goodbye(c->socket.native_handle());
      close_socket(c->socket, b.mode, b.peer_gone);
      delete c;
    }
    dead.clear();
  }

  /// Under the lock, after the books changed: make sure the retire timer fires by their next due
  /// time. O(1), and inlined: on every release the timer is already armed early enough.
  CONNPOOL_HOT void rearm() { arm_by(books_.next_due()); }

  /// Under the lock: make sure the retire timer fires by `due`.
  CONNPOOL_HOT void arm_by(time_point due) {
    if (due == never || (timer_armed_ && timer_at_ <= due)) return;
    arm_timer(due);
  }

  /// Under the lock. Timers fire a little late, never early, so that connections retiring close
  /// together are handled in one pass: by 1/32 of the shortest period set, at most 1 s, and at most
  /// 20 ms with learn_idle_timeout (a learned retirement must not come late).
  void arm_timer(time_point when) {
    if (when == never || books_.closed() || (timer_armed_ && timer_at_ <= when)) return;
    const pool_options& o = options();
    std::chrono::milliseconds shortest = o.idle_timeout;
    const std::chrono::milliseconds refill_jitter =
        o.min_idle_per_endpoint ? books_type::refill_jitter : std::chrono::milliseconds(0);
    for (auto d : {o.max_lifetime, o.endpoint_grace, o.ping_interval, o.connect_backoff, o.lease_warn_after, refill_jitter})
      if (d.count() > 0 && (shortest.count() <= 0 || d < shortest)) shortest = d;
    auto slack = std::min<std::chrono::milliseconds>(shortest / 32, std::chrono::seconds(1));
    if (books_.learning()) slack = std::min(slack, books_type::learn_slack);  // any due may be a learned one
    timer_.expires_at(later(when, slack));
    timer_.async_wait([w = this->weak_from_this()](error_code ec) {
      if (ec == net::error::operation_aborted) return;
      if (auto s = w.lock()) s->on_timer();
    });
    timer_at_ = when;  // once armed: if arming threw, the next change tries again
    timer_armed_ = true;
  }

  void on_timer() {
    std::vector<ping_job> jobs;
    std::shared_ptr<const setup_step> check;
    struct held_long {
      endpoint_type ep;
      const host* backend;
      acquire_site site;
      clock::duration held;
    };
    std::vector<held_long> late;
    std::vector<key_type> refill;
    learned_changes learned;
    {
      section s(*this);
      timer_armed_ = false;
      if (books_.closed()) return;
      std::vector<ep_node*> below;
      const time_point now = clock::now();  // one clock for every due time: none found early
      if (books_.watching_leases()) {
        books_.overdue(now, [&](conn_node& n, clock::duration held) {
          const connection& c = *as_connection(&n);
          try {
            if (events_on()) late.push_back({c.remote, c.backend, c.site, held});
          } catch (...) {  // out of memory: counted, not reported
          }
        });
      }
      if (check_ && options().ping_interval.count() > 0) {
        std::vector<conn_node*> due;
        arm_timer(books_.expire(now, s.dead, &due, &below));
        if (!due.empty()) {
          check = check_;
          take_pings(due, jobs, s.dead);
          rearm();  // a check that could not start closed its connection: a refill may be due
        }
      } else {
        arm_timer(books_.expire(now, s.dead, nullptr, &below));
      }
      try {
        refill.reserve(below.size());
        for (ep_node* e : below) refill.push_back(static_cast<entry*>(e)->key);
      } catch (...) {  // out of memory: the next close or release asks again
      }
      take_learned(learned);
    }
    emit_learned(learned);
    for (ping_job& j : jobs) start_ping(j, check);
    for (const key_type& k : refill) start_refill(k);
    for (const held_long& h : late) {
      event ev;
      ev.kind = event_kind::lease_held_long;
      ev.endpoint = &h.ep;
      ev.backend = h.backend;
      ev.site = &h.site;
      ev.duration = std::chrono::duration_cast<std::chrono::nanoseconds>(h.held);
      emit(ev);
    }
  }

  // ---------------------------------------------------------------- idle watch

  /// Under the lock. Arm first, then drain: an event that lands between our last drain and the
  /// re-arm is still in the epoll set, so the drain after arming sees it.
  void arm_watch() {
    watch_desc_.async_wait(net::posix::descriptor_base::wait_read,
                           [w = this->weak_from_this()](error_code ec) {
                             if (ec == net::error::operation_aborted) return;
                             if (auto s = w.lock()) s->on_watch();
                           });
  }

  void on_watch() {
    {
      std::lock_guard<spin_mutex> lk(mu_);
      if (books_.closed()) return;
      arm_watch();
    }
    watch_event events[64];
    int n;
    do {
      n = watch_.poll(events, 64);
      learned_changes learned;
      {
        section s(*this);
        const time_point now = coarse_now();
        for (int i = 0; i < n; ++i) {
          conn_node* c = books_.lookup(events[i].id);
          if (!c) continue;  // closed since
          if (c->check == check_mark::pinging) continue;  // its check sees it; a probe follows it
          // Leased: remember what happened, release() will not keep it. Idle: probe it here, under
          // the lock, so that it cannot be handed out meanwhile.
          const probe_result r = c->state == conn_state::leased
                                     ? (events[i].reset ? probe_result::peer_reset : probe_result::peer_closed)
                                     : probe_conn(*as_connection(c));
          books_.peer_event(*c, r, now, s.dead);
        }
        rearm();
        take_learned(learned);
      }
      emit_learned(learned);
    } while (n == 64);
  }

  // First: destroyed last, after every I/O object.
  std::unique_ptr<net::io_context> own_ctx_;
  std::shared_ptr<net::io_context> own_io_;  // shared with its connections
  Executor ex_;
  Executor socket_ex_;

  // Under mu_ from here on. What every acquire and release touches shares the mutex's cache line,
  // or the next ones (the books' first fields).
  alignas(64) mutable spin_mutex mu_;
  const std::uint64_t uid_ = next_uid();
  time_point timer_at_{};  // when the retire timer is armed for, if timer_armed_
  bool timer_armed_ = false;
  books_type books_;
  std::map<std::uint64_t, std::weak_ptr<dial_race>> dials_;  // async connects and setup steps in flight
  ext_factory make_ext_;                                       // set before the first acquire
  std::shared_ptr<const listener_fn> listener_;                // under mu_; null: none
  std::shared_ptr<const setup_step> setup_;                    // under mu_; null: none
  std::shared_ptr<const setup_step> check_;                    // under mu_; null: none
  std::shared_ptr<const resolver> resolver_;                   // under mu_; null: Asio's
  std::unordered_map<std::string, std::unique_ptr<backend>> backends_;  // under mu_; by name '\0' service
  std::atomic<bool> check_on_{false};                          // check_ is set: read without the lock
  std::atomic<bool> events_on_{false};                         // listener_ is set: read without the lock
  std::atomic<bool> observed_{false};                          // events_on_, or lease_warn_after is set
  spin_mutex budget_mu_;                                       // guards budget_ alone
  retry_budget budget_{books_.options().retry_budget_ratio, books_.options().retry_budget_per_second};
  std::uint64_t next_dial_id_ = 0;
  std::shared_ptr<pool_state> anchor_;  // see orphan()
  std::vector<std::shared_ptr<drain_watch>> drains_;  // drains waiting for the last lease
  bool watch_zero_ = false;  // anchor_ or drains_: the last lease's end has work (lease_ended())
  bool gone_ = false;        // the pool object was destroyed (abort_drains())

  timer_type timer_;

  watch_set watch_;
  net::posix::basic_stream_descriptor<Executor> watch_desc_;
  bool watching_ = false;
};

template <class Protocol, class Executor>
pool_state<Protocol, Executor>::connection::~connection() {
  if (addr) --addr->open;
}

}  // namespace detail
CONNPOOL_ABI_END
}  // namespace connpool

#endif
