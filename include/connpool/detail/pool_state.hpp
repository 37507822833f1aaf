#ifndef CONNPOOL_DETAIL_POOL_STATE_HPP
#define CONNPOOL_DETAIL_POOL_STATE_HPP

// The pool's engine. All bookkeeping sits behind one mutex; no I/O is done while it is held,
// except the rare probe that classifies a connection the idle watch reported.
//
// A connection is, at any time, in exactly one of: connecting (owned by the acquire that opens it),
// leased (owned by a lease), idle (on its endpoint's idle list). The registry maps every connected
// connection's id to it, so an idle-watch event that arrives late finds nothing rather than a
// reused pointer. Every connection leaves through close_now()/retire(), which close its socket once.

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <unordered_map>
#include <utility>
#include <vector>

#include <asio/basic_stream_socket.hpp>
#include <asio/basic_waitable_timer.hpp>
#include <asio/bind_executor.hpp>
#include <asio/dispatch.hpp>
#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/posix/basic_stream_descriptor.hpp>
#include <asio/strand.hpp>

#include "connpool/detail/socket_ops.hpp"
#include "connpool/detail/spin_mutex.hpp"
#include "connpool/error.hpp"
#include "connpool/pool_options.hpp"

namespace connpool::detail {

using clock = std::chrono::steady_clock;

/// A time point not computed yet.
inline constexpr clock::time_point unset = clock::time_point::min();

/// Why a connection is closed; each maps to one pool_stats counter.
enum class close_reason {
  discarded, peer_closed, peer_reset, unexpected_data, idle_timeout, max_lifetime, surplus, pool_closed
};

inline close_reason reason_of(probe_result r) noexcept {
  switch (r) {
    case probe_result::peer_closed: return close_reason::peer_closed;
    case probe_result::unexpected_data: return close_reason::unexpected_data;
    default: return close_reason::peer_reset;
  }
}

inline void count(pool_stats& s, close_reason r) noexcept {
  switch (r) {
    case close_reason::discarded: ++s.discarded; break;
    case close_reason::peer_closed: ++s.peer_closed; break;
    case close_reason::peer_reset: ++s.peer_reset; break;
    case close_reason::unexpected_data: ++s.unexpected_data; break;
    case close_reason::idle_timeout: ++s.idle_timeout; break;
    case close_reason::max_lifetime: ++s.max_lifetime; break;
    case close_reason::surplus: ++s.surplus; break;
    case close_reason::pool_closed: ++s.pool_closed; break;
  }
}

template <class Protocol, class Executor>
class pool_state : public std::enable_shared_from_this<pool_state<Protocol, Executor>> {
 public:
  using endpoint_type = typename Protocol::endpoint;
  using socket_type = asio::basic_stream_socket<Protocol, Executor>;
  using timer_type = asio::basic_waitable_timer<clock, asio::wait_traits<clock>, Executor>;

  struct endpoint_entry;

  // Layout: a lock holder on one core touches what another core touched last, so the fields that
  // acquire() and release() write share as few cache lines as possible.

  struct alignas(64) connection {
    connection(const Executor& ex, endpoint_entry* e, std::shared_ptr<asio::io_context> ctx)
        : ep(e), context(std::move(ctx)), socket(ex) {}
    endpoint_entry* ep;
    connection* prev = nullptr;  // idle list links
    connection* next = nullptr;
    std::uint64_t id = 0;
    std::uint64_t idle_order = 0;  // when it became idle, in release order: for LRU across endpoints
    clock::time_point idle_since{};  // coarse clock: for idle_timeout
    clock::time_point expires = clock::time_point::max();  // jittered max_lifetime
    bool idle = false;
    bool watched = false;    // in the idle watch's epoll set
    bool peer_gone = false;  // retired because the peer closed or reset it: no FIN or RST of ours
    probe_result peer_event = probe_result::healthy;  // what the watch saw while it was leased
    // The context its socket lives on, when the pool owns it (default-constructed pool): a
    // connection being closed by a release() that raced the pool's destruction must not outlive it.
    std::shared_ptr<asio::io_context> context;
    socket_type socket;
  };

  struct alignas(64) endpoint_entry {
    explicit endpoint_entry(const endpoint_type& e) : endpoint(e) {}
    connection* lru = nullptr;  // idle list: lru ... mru
    connection* mru = nullptr;
    std::size_t idle = 0, leased = 0, connecting = 0, waiting = 0;
    std::size_t idle_taken = 0;  // reused = idle_taken - probe_failed
    std::size_t released = 0;
    std::size_t probe_failed = 0;
    pool_stats counters;  // the other counters (its gauges, reused and released are not used)
    endpoint_type endpoint;
    std::size_t open() const noexcept { return idle + leased + connecting; }
    pool_stats snapshot() const noexcept {
      pool_stats s = counters;
      s.idle = idle;
      s.leased = leased;
      s.connecting = connecting;
      s.waiting = waiting;
      s.reused = idle_taken - probe_failed;
      s.released = released;
      return s;
    }
  };

  /// What an acquire was given: an idle connection to probe, or a slot to connect in.
  struct grant {
    connection* conn = nullptr;
    bool slot = false;
    std::error_code ec;
    explicit operator bool() const noexcept { return conn || slot || ec; }
  };

  /// A queued acquire. granted() runs under the lock and must not block.
  struct waiter {
    explicit waiter(endpoint_entry* e) : ep(e) {}
    virtual ~waiter() = default;
    virtual void granted(grant g) = 0;
    endpoint_entry* ep;
    typename std::list<waiter*>::iterator pos;
    bool queued = false;
  };

  /// Type-erased async completion: (error, leased connection or null, reused).
  struct completion {
    virtual ~completion() = default;
    virtual void complete(pool_state* s, std::error_code ec, connection* c, bool reused) = 0;
  };

  using graveyard = std::vector<std::pair<std::unique_ptr<connection>, close_mode>>;

  /// `own`: the context a default-constructed pool runs on its thread (else null). `own_io`: the
  /// context its sockets live on, which nobody runs (else null; sockets then use `ex`).
  pool_state(std::unique_ptr<asio::io_context> own, std::shared_ptr<asio::io_context> own_io, const Executor& ex,
             const pool_options& o)
      : own_ctx_(std::move(own)),
        own_io_(std::move(own_io)),
        ex_(ex),
        socket_ex_(own_io_ ? Executor(own_io_->get_executor()) : ex),
        opts_(o),
        timer_(ex),
        watch_desc_(ex),
        rng_(std::random_device{}()) {
    // Asio makes a context's reactor (three descriptors) with its first socket. Make it now, so
    // that the first acquire under a descriptor shortage fails with EMFILE like any other.
    { socket_type warm(socket_ex_); }
    if (watch_supported && watch_.native_handle() >= 0) {
      std::error_code ec;
      watch_desc_.assign(watch_.native_handle(), ec);
      watching_ = !ec;
    }
  }

  ~pool_state() {
    // The epoll descriptor belongs to watch_; the asio wrapper must not close it a second time.
    if (watch_desc_.is_open()) watch_desc_.release();
  }

  /// Start the idle watch. Called once the state is owned by a shared_ptr.
  void start() {
    std::lock_guard<spin_mutex> lk(mu_);
    if (watching_) arm_watch();
  }

  const Executor& executor() const noexcept { return ex_; }
  asio::io_context* owned_context() const noexcept { return own_ctx_.get(); }
  const pool_options& options() const noexcept { return opts_; }

  // ---------------------------------------------------------------- synchronous acquire

  /// On success returns a leased connection and sets `reused`.
  connection* acquire(const endpoint_type& ep, bool& reused, std::error_code& ec) {
    // The common case first: an idle connection, taken under the lock and probed outside it. No
    // clock read, no allocation.
    endpoint_entry* e;
    connection* c = nullptr;
    {
      std::lock_guard<spin_mutex> lk(mu_);
      if (closed_) {
        ec = error::pool_closed;
        return nullptr;
      }
      e = &entry(ep);
      if (waiters_.empty()) c = take_idle(*e);
    }
    if (c) {
      const probe_result r = probe(c->socket.native_handle());
      if (r == probe_result::healthy) {
        reused = true;
        return c;
      }
      return finish(*e, replace_dead(*e, c, r), unset, reused, ec);
    }
    return acquire_wait(*e, reused, ec);
  }

  /// A healthy idle connection now, or null: never connects, never waits, never passes a waiter of
  /// its endpoint.
  connection* try_acquire(const endpoint_type& ep) {
    endpoint_entry* e;
    connection* c = nullptr;
    {
      std::lock_guard<spin_mutex> lk(mu_);
      if (closed_) return nullptr;
      e = &entry(ep);
      if (e->waiting == 0) c = take_idle(*e);  // waiters of this endpoint come first
    }
    while (c) {
      const probe_result r = probe(c->socket.native_handle());
      if (r == probe_result::healthy) return c;
      c = replace_dead(*e, c, r, /*idle_only=*/true).conn;
    }
    return nullptr;
  }

  // ---------------------------------------------------------------- asynchronous acquire

  void async_acquire(const endpoint_type& ep, std::unique_ptr<completion> handler) {
    graveyard dead;
    grant g;
    endpoint_entry* e = nullptr;
    {
      std::lock_guard<spin_mutex> lk(mu_);
      if (closed_) {
        g.ec = error::pool_closed;
      } else {
        e = &entry(ep);
        if (waiters_.empty()) g = try_grant(*e, dead);
      }
    }
    bury(dead);
    // Served at once (an idle connection, or an error): no operation object and no timer.
    while (g.conn) {
      const probe_result r = probe(g.conn->socket.native_handle());
      if (r == probe_result::healthy) return handler->complete(this, {}, g.conn, true);
      g = replace_dead(*e, g.conn, r);
    }
    if (g.ec) return handler->complete(this, g.ec, nullptr, false);

    auto op = std::make_shared<async_op>(this->shared_from_this(), std::move(handler));
    op->ep = e;
    op->deadline = deadline_from(opts_.acquire_timeout);
    if (g.slot) return async_connect(op);
    // Nothing free: queue, after checking once more under the lock (a release may have come
    // in between).
    {
      std::lock_guard<spin_mutex> lk(mu_);
      if (closed_) {
        g.ec = error::pool_closed;
      } else if (waiters_.empty()) {
        g = try_grant(*e, dead);
      }
      if (!g) {
        if (op->deadline != clock::time_point::max()) {  // first: it is the step that may throw
          op->timer.expires_at(op->deadline);
          op->timer.async_wait([w = std::weak_ptr<async_op>(op)](std::error_code tec) {
            if (auto o = w.lock(); o && !tec) o->state->on_wait_timeout(*o);
          });
        }
        enqueue(*op);
        op->keep_alive = op;
        dispatch(dead);
      }
    }
    bury(dead);
    if (g) op->proceed(g);
  }

  // ---------------------------------------------------------------- returning connections

  /// Exchange complete: keep for reuse, or close. For a connection in the idle watch's set, the
  /// watch has recorded any FIN or RST that came while it was leased (`peer_event`), or it will find
  /// the connection idle when it gets to the event; either way no syscall is needed here. Unread
  /// bytes are left for the probe before the next hand-out. A connection the watch does not see is
  /// probed.
  void release(connection* c) noexcept {
    const probe_result r = c->watched ? probe_result::healthy : probe(c->socket.native_handle());
    const clock::time_point now = coarse_now();
    std::shared_ptr<pool_state> last_owner;  // see lease_ended(); declared before `dead`, so destroyed after
    graveyard dead;
    {
      std::lock_guard<spin_mutex> lk(mu_);
      endpoint_entry& e = *c->ep;
      last_owner = lease_ended(e);
      ++e.released;
      if (closed_) {
        retire(c, close_reason::pool_closed, opts_.retire_close, dead);
      } else if (r != probe_result::healthy) {
        retire(c, reason_of(r), close_mode::graceful, dead);
      } else if (c->peer_event != probe_result::healthy) {
        retire(c, reason_of(c->peer_event), close_mode::graceful, dead);
      } else if (c->expires <= now) {
        retire(c, close_reason::max_lifetime, opts_.retire_close, dead);
      } else {
        c->idle_since = now;
        push_idle(e, c);
        if (opts_.max_idle_per_endpoint && e.idle > opts_.max_idle_per_endpoint) {
          connection* old = e.lru;
          unlink_idle(e, old);
          retire(old, close_reason::surplus, opts_.retire_close, dead);
        }
        arm_timer(std::min(retire_at(*c), c->expires));
      }
      if (!waiters_.empty()) dispatch(dead);
    }
    bury(dead);
  }

  /// Close a leased connection: discard() or a lease destroyed without release().
  void discard(connection* c, close_mode mode) noexcept {
    std::shared_ptr<pool_state> last_owner;  // see lease_ended(); declared before `dead`, so destroyed after
    graveyard dead;
    {
      std::lock_guard<spin_mutex> lk(mu_);
      last_owner = lease_ended(*c->ep);
      retire(c, close_reason::discarded, mode, dead);
      if (!waiters_.empty()) dispatch(dead);
    }
    bury(dead);
  }

  /// The pool object is going away (after close()). Leases hold no reference to the state, so while
  /// any connection is leased, the state holds one to itself; the last lease to end drops it (see
  /// lease_ended()).
  void orphan() {
    std::lock_guard<spin_mutex> lk(mu_);
    if (any_leased()) anchor_ = this->shared_from_this();
  }

  // ---------------------------------------------------------------- shutdown and stats

  void close() noexcept {
    graveyard dead;
    {
      std::lock_guard<spin_mutex> lk(mu_);
      if (closed_) return;
      closed_ = true;
      for (auto& [key, e] : endpoints_) {
        while (connection* c = e.lru) {
          unlink_idle(e, c);
          retire(c, close_reason::pool_closed, opts_.retire_close, dead);
        }
      }
      while (!waiters_.empty()) {
        waiter* w = waiters_.front();
        dequeue(*w);
        grant g;
        g.ec = error::pool_closed;
        w->granted(g);
      }
      cancel_dials();
      std::error_code ignored;
      timer_.cancel();
      if (watch_desc_.is_open()) watch_desc_.cancel(ignored);
    }
    bury(dead);
  }

  pool_stats stats() const {
    std::lock_guard<spin_mutex> lk(mu_);
    pool_stats s;
    for (auto& [key, e] : endpoints_) add(s, e.snapshot());
    return s;
  }

  pool_stats stats(const endpoint_type& ep) const {
    std::lock_guard<spin_mutex> lk(mu_);
    auto it = endpoints_.find(ep);
    return it == endpoints_.end() ? pool_stats{} : it->second.snapshot();
  }

 private:
  // ---------------------------------------------------------------- waiters

  struct sync_waiter final : waiter {
    using waiter::waiter;
    void granted(grant g) override {
      result = g;
      done = true;
      cv.notify_one();
    }
    std::condition_variable_any cv;
    grant result;
    bool done = false;
  };

  struct async_op final : waiter, std::enable_shared_from_this<async_op> {
    async_op(std::shared_ptr<pool_state> s, std::unique_ptr<completion> h)
        : waiter(nullptr), state(std::move(s)), handler(std::move(h)), timer(state->ex_) {}

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
        asio::post(state->ex_, [self = keep_alive] { self->proceed(std::exchange(self->pending, grant{})); });
      } catch (...) {
        pending = grant{};
        throw;
      }
      keep_alive.reset();
    }

    // Not under the lock.
    void proceed(grant g) {
      bool reused = false;
      while (g.conn) {
        const probe_result r = probe(g.conn->socket.native_handle());
        if (r == probe_result::healthy) {
          reused = true;
          break;
        }
        g = state->replace_dead(*this->ep, g.conn, r);
      }
      if (g.slot) return state->async_connect(this->shared_from_this());
      finish(g.ec, g.conn, reused);
    }

    void finish(std::error_code ec, connection* c, bool reused) {
      auto h = std::move(handler);
      if (h) h->complete(state.get(), ec, c, reused);
    }

    std::shared_ptr<pool_state> state;
    std::unique_ptr<completion> handler;
    timer_type timer;
    clock::time_point deadline = clock::time_point::max();
    std::shared_ptr<async_op> keep_alive;  // while queued: the queue holds raw pointers
    grant pending;                         // posted to proceed(), not taken yet
  };

  /// An async acquire died with a grant it never took (see ~async_op): give the connection or the
  /// slot back.
  void abandon(endpoint_entry& e, grant g) noexcept {
    std::shared_ptr<pool_state> last_owner;  // see lease_ended(); declared before `dead`, so destroyed after
    graveyard dead;
    {
      std::lock_guard<spin_mutex> lk(mu_);
      if (g.conn) {
        last_owner = lease_ended(e);
        retire(g.conn, closed_ ? close_reason::pool_closed : close_reason::discarded, opts_.retire_close, dead);
      } else {
        --e.connecting;
        --open_total_;
      }
      if (!waiters_.empty()) dispatch(dead);
    }
    bury(dead);
  }

  void enqueue(waiter& w) {
    w.pos = waiters_.insert(waiters_.end(), &w);
    w.queued = true;
    ++w.ep->waiting;
  }

  void dequeue(waiter& w) {
    waiters_.erase(w.pos);
    w.queued = false;
    --w.ep->waiting;
  }

  /// Give freed slots and idle connections to waiters, oldest first. A waiter whose endpoint is
  /// at its limit does not hold up one whose endpoint is not.
  void dispatch(graveyard& dead) {
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      waiter* w = *it;
      ++it;
      grant g = try_grant(*w->ep, dead);
      if (!g) continue;
      dequeue(*w);
      w->granted(g);
    }
  }

  void on_wait_timeout(async_op& op) {
    {
      std::lock_guard<spin_mutex> lk(mu_);
      if (!op.queued) return;  // granted meanwhile: the grant wins
      dequeue(op);
      ++op.ep->counters.acquire_timeouts;
    }
    auto self = std::move(op.keep_alive);
    op.finish(error::acquire_timeout, nullptr, false);
  }

  // ---------------------------------------------------------------- grants

  /// Under the lock: lease the endpoint's most recently released idle connection, if any.
  connection* take_idle(endpoint_entry& e) {
    connection* c = e.mru;
    if (c) {
      unlink_idle(e, c);
      ++e.leased;
      ++e.idle_taken;
    }
    return c;
  }

  grant try_grant(endpoint_entry& e, graveyard& dead) {
    grant g;
    if ((g.conn = take_idle(e))) return g;
    if (opts_.max_per_endpoint && e.open() >= opts_.max_per_endpoint) return g;
    if (opts_.max_total && open_total_ >= opts_.max_total) {
      connection* victim = lru_idle_elsewhere(e);
      if (!victim) return g;
      unlink_idle(*victim->ep, victim);
      retire(victim, close_reason::surplus, opts_.retire_close, dead);
    }
    ++e.connecting;
    ++open_total_;
    g.slot = true;
    return g;
  }

  connection* lru_idle_elsewhere(const endpoint_entry& except) {
    connection* best = nullptr;
    for (auto& [key, e] : endpoints_)
      if (&e != &except && e.lru && (!best || e.lru->idle_order < best->idle_order)) best = e.lru;
    return best;
  }

  /// A handed-out idle connection failed its probe: close it, and use its place for the next
  /// idle connection of the endpoint, or for a new one (the place just freed guarantees a grant).
  /// `idle_only` (try_acquire): only the next idle connection, and none while the endpoint has a
  /// waiter.
  grant replace_dead(endpoint_entry& e, connection* c, probe_result r, bool idle_only = false) {
    std::shared_ptr<pool_state> last_owner;  // see lease_ended(); declared before `dead`, so destroyed after
    graveyard dead;
    grant g;
    {
      std::lock_guard<spin_mutex> lk(mu_);
      ++e.probe_failed;
      last_owner = lease_ended(e);
      retire(c, reason_of(r), close_mode::graceful, dead);
      if (closed_) {
        g.ec = error::pool_closed;
      } else if (!idle_only) {
        g = try_grant(e, dead);
      } else if (e.waiting == 0) {
        g.conn = take_idle(e);
      }
      if (!waiters_.empty()) dispatch(dead);
    }
    bury(dead);
    return g;
  }

  /// acquire() when no idle connection was free: connect in a free slot, or queue until one is
  /// granted or the deadline passes.
  connection* acquire_wait(endpoint_entry& e, bool& reused, std::error_code& ec) {
    clock::time_point deadline = unset;  // read the clock only if the acquire has to wait or connect
    graveyard dead;
    grant g;
    {
      std::unique_lock<spin_mutex> lk(mu_);
      if (closed_) {
        ec = error::pool_closed;
        return nullptr;
      }
      if (waiters_.empty()) g = try_grant(e, dead);
      if (!g) {
        deadline = deadline_from(opts_.acquire_timeout);
        sync_waiter w(&e);
        enqueue(w);
        struct leave_queue {  // if anything below throws, `w` must not stay queued
          pool_state& s;
          sync_waiter& w;
          ~leave_queue() {
            if (w.queued) s.dequeue(w);
          }
        } guard{*this, w};
        dispatch(dead);
        while (!w.done) {
          if (!dead.empty()) {  // close evicted connections without holding the lock
            lk.unlock();
            bury(dead);
            lk.lock();
            continue;
          }
          if (w.cv.wait_until(lk, deadline) == std::cv_status::timeout && !w.done) {
            dequeue(w);
            ++e.counters.acquire_timeouts;
            ec = error::acquire_timeout;
            return nullptr;
          }
        }
        g = w.result;
      }
    }
    bury(dead);
    return finish(e, g, deadline, reused, ec);
  }

  /// `deadline`: the acquire's, or `unset` if it has not been needed yet.
  connection* finish(endpoint_entry& e, grant g, clock::time_point deadline, bool& reused,
                     std::error_code& ec) {
    while (g.conn) {
      const probe_result r = probe(g.conn->socket.native_handle());
      if (r == probe_result::healthy) {
        reused = true;
        return g.conn;
      }
      g = replace_dead(e, g.conn, r);
    }
    if (g.ec) {
      ec = g.ec;
      return nullptr;
    }
    // A slot: connect synchronously on this thread, by the nearer of the two deadlines.
    reused = false;
    std::unique_ptr<connection> c = new_connection(e, ec);
    if (!c) return connected(e, nullptr, ec);
    if (deadline == unset) deadline = deadline_from(opts_.acquire_timeout);
    const clock::time_point connect_by = deadline_from(opts_.connect_timeout);
    bool deadline_passed = false;
    ec = connect_sync(*c, std::min(connect_by, deadline), deadline_passed);
    if (deadline_passed) ec = deadline < connect_by ? error::acquire_timeout : error::connect_timeout;
    return connected(e, std::move(c), ec);
  }

  /// A connection object for a granted slot, or null with `ec` set (the caller then gives the slot
  /// back through connected()).
  std::unique_ptr<connection> new_connection(endpoint_entry& e, std::error_code& ec) noexcept {
    try {
      return std::make_unique<connection>(socket_ex_, &e, own_io_);
    } catch (const std::bad_alloc&) {
      ec = std::make_error_code(std::errc::not_enough_memory);
    } catch (const std::system_error& x) {
      ec = x.code();
    }
    return nullptr;
  }

  std::error_code connect_sync(connection& c, clock::time_point deadline, bool& deadline_passed) {
    std::error_code ec;
    const endpoint_type& ep = c.ep->endpoint;
    c.socket.open(ep.protocol(), ec);
    if (!ec) ec = apply_socket_options(c.socket, opts_);
    if (!ec) c.socket.non_blocking(true, ec);
    if (!ec)
      ec = connect_with_deadline(c.socket.native_handle(), ep.data(), static_cast<socklen_t>(ep.size()), deadline,
                                 deadline_passed);
    if (!ec) c.socket.non_blocking(false, ec);
    return ec;
  }

  /// Book a finished connection attempt and give its slot back or turn it into a lease. Takes
  /// ownership of `c` (null if it could not even be made); returns it leased, or null.
  connection* connected(endpoint_entry& e, std::unique_ptr<connection> c, std::error_code& ec,
                        std::uint64_t dial_id = 0) {
    // Asio reports system errors in its own category; callers compare with std::errc.
    if (ec.category() == asio::error::get_system_category()) ec.assign(ec.value(), std::system_category());
    graveyard dead;
    connection* out = nullptr;
    {
      std::lock_guard<spin_mutex> lk(mu_);
      if (dial_id) dials_.erase(dial_id);
      --e.connecting;
      if (!ec && closed_) {  // connected, but the pool closed meanwhile: made, then retired
        --open_total_;
        ++e.counters.created;
        count(e.counters, close_reason::pool_closed);
        dead.emplace_back(std::move(c), opts_.retire_close);
        ec = error::pool_closed;
      } else if (ec) {
        --open_total_;
        if (ec != error::pool_closed) {  // a connect that close() stopped did not fail
          ++e.counters.connect_failed;
        }
        if (ec == error::acquire_timeout) {
          ++e.counters.acquire_timeouts;
        }
        if (c) dead.emplace_back(std::move(c), close_mode::abortive);
      } else {
        c->id = ++next_id_;
        if (opts_.max_lifetime.count() > 0) c->expires = clock::now() + jittered_lifetime();
        ++e.leased;
        ++e.counters.created;
        c->watched = watching_ && watch_.add(c->socket.native_handle(), c->id);
        out = c.get();
        registry_.emplace(c->id, std::move(c));
      }
      if (ec && !waiters_.empty()) dispatch(dead);
    }
    bury(dead);
    return out;
  }

  /// An asynchronous connect racing its deadline timer. Everything that touches `dial` or `timer`
  /// runs on `strand`; close() cancels it there too.
  struct dial_race {
    dial_race(const Executor& ex, std::unique_ptr<connection> c)
        : strand(ex), timer(ex), dial(ex), conn(std::move(c)) {}
    asio::strand<Executor> strand;
    timer_type timer;
    socket_type dial;  // only for the connect: the connected descriptor moves to conn->socket
    std::unique_ptr<connection> conn;
    std::uint64_t id = 0;
    bool timed_out = false, cancelled = false, done = false;
  };

  /// Connect on the pool's executor (the only one known to run), racing a timer, on a socket used
  /// only for dialling; once connected, the descriptor moves to the connection's own socket (two
  /// epoll_ctl calls per new connection). Two reasons: the default-constructed pool keeps its
  /// sockets on a context nobody runs, and Asio's reactor, once a socket has waited for a connect
  /// (a write operation to it), keeps EPOLLOUT registered for the socket's life, so every ACK that
  /// frees send space would wake the reactor of a pool on your executor: measured 0.3 us of client
  /// CPU per request with 1000 coroutines on one thread (docs/benchmarks.md). The moved descriptor
  /// is registered afresh, without EPOLLOUT.
  void async_connect(std::shared_ptr<async_op> opp) {
    async_op& op = *opp;
    const clock::time_point connect_by = deadline_from(opts_.connect_timeout);
    const clock::time_point connect_deadline = std::min(connect_by, op.deadline);
    const bool acquire_bound = op.deadline < connect_by;
    std::error_code ec;
    std::shared_ptr<dial_race> rc;
    if (std::unique_ptr<connection> c = new_connection(*op.ep, ec)) {
      try {
        rc = std::make_shared<dial_race>(ex_, std::move(c));
      } catch (const std::bad_alloc&) {
        ec = std::make_error_code(std::errc::not_enough_memory);
      }
    }
    if (!rc) {
      connection* out = connected(*op.ep, nullptr, ec);
      return op.finish(ec, out, false);
    }
    socket_type& dial = rc->dial;
    dial.open(op.ep->endpoint.protocol(), ec);
    if (!ec) ec = apply_socket_options(dial, opts_);
    if (!ec) {
      std::lock_guard<spin_mutex> lk(mu_);
      if (closed_) {
        ec = error::pool_closed;
      } else {
        try {
          dials_.emplace(next_dial_id_ + 1, rc);
          rc->id = ++next_dial_id_;
        } catch (const std::bad_alloc&) {
          ec = std::make_error_code(std::errc::not_enough_memory);
        }
      }
    }
    if (ec) {
      close_socket(rc->dial, close_mode::abortive, false);
      connection* out = connected(*op.ep, std::move(rc->conn), ec, rc->id);
      return op.finish(ec, out, false);
    }
    // Every step from here runs on the strand: the timer cannot cancel a connect not started yet,
    // and a close() that came first (its cancel is queued on the strand) stops the connect here.
    auto on_connect = [self = this->shared_from_this(), rc, opp, acquire_bound](std::error_code cec) {
      rc->done = true;
      rc->timer.cancel();
      // Stopped by close(): pool_closed. One that connected anyway goes on, and connected() counts
      // it made, then closes it.
      if (rc->cancelled && cec)
        cec = error::pool_closed;
      else if (rc->timed_out)
        cec = acquire_bound ? error::acquire_timeout : error::connect_timeout;
      if (!cec) cec = move_descriptor(rc->dial, rc->conn->socket, opp->ep->endpoint.protocol());
      if (rc->dial.is_open()) close_socket(rc->dial, close_mode::abortive, false);
      connection* out = self->connected(*opp->ep, std::move(rc->conn), cec, rc->id);
      opp->finish(cec, out, false);
    };
    auto start = [rc, opp, &dial, connect_deadline, on_connect] {
      if (rc->cancelled) return on_connect(asio::error::operation_aborted);
      dial.async_connect(opp->ep->endpoint, asio::bind_executor(rc->strand, on_connect));
      if (connect_deadline == clock::time_point::max()) return;
      rc->timer.expires_at(connect_deadline);
      rc->timer.async_wait(asio::bind_executor(rc->strand, [rc, &dial](std::error_code tec) {
        if (tec || rc->done) return;
        rc->timed_out = true;
        std::error_code ignored;
        dial.cancel(ignored);
      }));
    };
    try {
      asio::dispatch(rc->strand, std::move(start));
    } catch (const std::bad_alloc&) {
      ec = std::make_error_code(std::errc::not_enough_memory);
      close_socket(rc->dial, close_mode::abortive, false);
      connection* out = connected(*op.ep, std::move(rc->conn), ec, rc->id);
      op.finish(ec, out, false);
    }
  }

  /// Under the lock (close()): cancel every connect in flight; each completes with pool_closed.
  void cancel_dials() {
    for (auto& [id, weak] : dials_) {
      if (auto rc = weak.lock()) {
        asio::post(rc->strand, [rc] {
          if (rc->done) return;
          rc->cancelled = true;
          std::error_code ignored;
          rc->dial.cancel(ignored);
          rc->timer.cancel();
        });
      }
    }
  }

  /// Move a connected descriptor from `from` (the dialling socket) to `to` (the connection's), as a
  /// blocking socket: a fresh reactor registration.
  static std::error_code move_descriptor(socket_type& from, socket_type& to, const Protocol& protocol) {
    std::error_code ec;
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

  // ---------------------------------------------------------------- idle list and retiring

  void push_idle(endpoint_entry& e, connection* c) {
    c->idle = true;
    c->idle_order = ++idle_counter_;
    c->prev = e.mru;
    c->next = nullptr;
    (e.mru ? e.mru->next : e.lru) = c;
    e.mru = c;
    ++e.idle;
  }

  void unlink_idle(endpoint_entry& e, connection* c) {
    (c->prev ? c->prev->next : e.lru) = c->next;
    (c->next ? c->next->prev : e.mru) = c->prev;
    c->prev = c->next = nullptr;
    c->idle = false;
    --e.idle;
  }

  /// Under the lock: take `c` (not idle, not counted as leased) out of the books; its socket is
  /// closed by bury() once the lock is released.
  void retire(connection* c, close_reason why, close_mode mode, graveyard& dead) {
    endpoint_entry& e = *c->ep;
    count(e.counters, why);
    --open_total_;
    auto it = registry_.find(c->id);
    c->peer_gone = why == close_reason::peer_closed || why == close_reason::peer_reset;
    dead.emplace_back(std::move(it->second), mode);
    registry_.erase(it);
  }

  static void bury(graveyard& dead) noexcept {
    if (!dead.empty()) bury_all(dead);
  }

  static void bury_all(graveyard& dead) noexcept {
    for (auto& [c, mode] : dead) close_socket(c->socket, mode, c->peer_gone);
    dead.clear();
  }

  clock::time_point retire_at(const connection& c) const {
    return opts_.idle_timeout.count() > 0 ? c.idle_since + opts_.idle_timeout : clock::time_point::max();
  }

  clock::duration jittered_lifetime() {
    const auto full = std::chrono::duration_cast<clock::duration>(opts_.max_lifetime);
    std::uniform_int_distribution<long long> d(0, full.count() / 10);
    return full - clock::duration(d(rng_));
  }

  /// Under the lock. Timers fire a little late, never early, so that connections retiring close
  /// together are handled in one pass.
  void arm_timer(clock::time_point when) {
    if (when == clock::time_point::max() || closed_ || (timer_armed_ && timer_at_ <= when)) return;
    auto slack = std::chrono::duration_cast<clock::duration>(
        std::min(opts_.idle_timeout.count() > 0 ? opts_.idle_timeout : opts_.max_lifetime,
                 opts_.max_lifetime.count() > 0 ? opts_.max_lifetime : opts_.idle_timeout) /
        32);
    slack = std::min<clock::duration>(slack, std::chrono::seconds(1));
    timer_at_ = when;
    timer_armed_ = true;
    timer_.expires_at(when + slack);
    timer_.async_wait([w = this->weak_from_this()](std::error_code ec) {
      if (ec == asio::error::operation_aborted) return;
      if (auto s = w.lock()) s->on_timer();
    });
  }

  void on_timer() {
    graveyard dead;
    {
      std::lock_guard<spin_mutex> lk(mu_);
      timer_armed_ = false;
      if (closed_) return;
      const clock::time_point now = clock::now();
      clock::time_point next = clock::time_point::max();
      for (auto& [key, e] : endpoints_) {
        for (connection* c = e.lru; c;) {
          connection* n = c->next;
          if (retire_at(*c) <= now) {
            unlink_idle(e, c);
            retire(c, close_reason::idle_timeout, opts_.retire_close, dead);
          } else if (c->expires <= now) {
            unlink_idle(e, c);
            retire(c, close_reason::max_lifetime, opts_.retire_close, dead);
          } else {
            next = std::min({next, retire_at(*c), c->expires});
          }
          c = n;
        }
      }
      arm_timer(next);
      if (!waiters_.empty()) dispatch(dead);
    }
    bury(dead);
  }

  // ---------------------------------------------------------------- idle watch

  /// Under the lock. Arm first, then drain: an event that lands between our last drain and the
  /// re-arm is still in the epoll set, so the drain after arming sees it.
  void arm_watch() {
    watch_desc_.async_wait(asio::posix::descriptor_base::wait_read,
                           [w = this->weak_from_this()](std::error_code ec) {
                             if (ec == asio::error::operation_aborted) return;
                             if (auto s = w.lock()) s->on_watch();
                           });
  }

  void on_watch() {
    {
      std::lock_guard<spin_mutex> lk(mu_);
      if (closed_) return;
      arm_watch();
    }
    watch_event events[64];
    int n;
    do {
      n = watch_.poll(events, 64);
      graveyard dead;
      {
        std::lock_guard<spin_mutex> lk(mu_);
        for (int i = 0; i < n; ++i) {
          auto it = registry_.find(events[i].id);
          if (it == registry_.end()) continue;  // closed since
          connection* c = it->second.get();
          if (!c->idle) {  // leased: release() will not keep it
            c->peer_event = events[i].reset ? probe_result::peer_reset : probe_result::peer_closed;
            continue;
          }
          const probe_result r = probe(c->socket.native_handle());
          if (r == probe_result::healthy) continue;
          unlink_idle(*c->ep, c);
          retire(c, reason_of(r), close_mode::graceful, dead);
        }
        if (!dead.empty() && !waiters_.empty()) dispatch(dead);
      }
      bury(dead);
    } while (n == 64);
  }

  // ---------------------------------------------------------------- helpers

  /// Under the lock: a leased connection of `e` came back (released, discarded, or failed the probe
  /// of an async grant that may run after the pool object is gone). Once the pool is orphaned and
  /// no lease is left, returns the state's reference to itself: the caller drops it after the lock
  /// and its graveyard, and with it the state. Connections in that graveyard keep the context their
  /// sockets live on.
  std::shared_ptr<pool_state> lease_ended(endpoint_entry& e) noexcept {
    --e.leased;
    if (!anchor_ || any_leased()) return nullptr;
    return std::move(anchor_);
  }

  bool any_leased() const noexcept {
    for (auto& [key, e] : endpoints_)
      if (e.leased) return true;
    return false;
  }

  /// Under the lock. Services mostly talk to one or a few endpoints, so the last one found is
  /// checked first, byte for byte (equal bytes are the same endpoint; anything else goes to the map,
  /// whose nodes never move).
  endpoint_entry& entry(const endpoint_type& ep) {
    if (last_ && same_bytes(last_->endpoint, ep)) return *last_;
    auto it = endpoints_.find(ep);
    if (it == endpoints_.end()) it = endpoints_.emplace(ep, endpoint_entry(ep)).first;
    last_ = &it->second;
    return *last_;
  }

  static bool same_bytes(const endpoint_type& a, const endpoint_type& b) noexcept {
    const std::size_t n = a.size();
    if (n != b.size()) return false;
    // IPv4 is the common size: a fixed-size compare the compiler inlines.
    if (n == sizeof(sockaddr_in)) return std::memcmp(a.data(), b.data(), sizeof(sockaddr_in)) == 0;
    return std::memcmp(a.data(), b.data(), n) == 0;
  }

  static clock::time_point deadline_from(std::chrono::milliseconds d) {
    return d.count() > 0 ? clock::now() + d : clock::time_point::max();
  }

  static void add(pool_stats& s, const pool_stats& e) noexcept {
    s.idle += e.idle;
    s.leased += e.leased;
    s.connecting += e.connecting;
    s.waiting += e.waiting;
    s.created += e.created;
    s.reused += e.reused;
    s.released += e.released;
    s.discarded += e.discarded;
    s.connect_failed += e.connect_failed;
    s.acquire_timeouts += e.acquire_timeouts;
    s.peer_closed += e.peer_closed;
    s.peer_reset += e.peer_reset;
    s.unexpected_data += e.unexpected_data;
    s.idle_timeout += e.idle_timeout;
    s.max_lifetime += e.max_lifetime;
    s.surplus += e.surplus;
    s.pool_closed += e.pool_closed;
  }

  // First: destroyed last, after every I/O object.
  std::unique_ptr<asio::io_context> own_ctx_;
  std::shared_ptr<asio::io_context> own_io_;  // shared with its connections
  Executor ex_;
  Executor socket_ex_;
  const pool_options opts_;

  // Under mu_ from here on. What every acquire and release touches shares the mutex's cache line,
  // or the next one.
  alignas(64) mutable spin_mutex mu_;
  bool closed_ = false;
  endpoint_entry* last_ = nullptr;  // the endpoint entry() found last
  std::uint64_t idle_counter_ = 0;
  std::map<endpoint_type, endpoint_entry> endpoints_;
  std::unordered_map<std::uint64_t, std::unique_ptr<connection>> registry_;
  std::list<waiter*> waiters_;
  std::size_t open_total_ = 0;
  std::uint64_t next_id_ = 0;
  std::map<std::uint64_t, std::weak_ptr<dial_race>> dials_;  // async connects in flight
  std::uint64_t next_dial_id_ = 0;
  std::shared_ptr<pool_state> anchor_;  // see orphan()

  timer_type timer_;
  clock::time_point timer_at_{};
  bool timer_armed_ = false;

  watch_set watch_;
  asio::posix::basic_stream_descriptor<Executor> watch_desc_;
  bool watching_ = false;
  std::minstd_rand rng_;
};

}  // namespace connpool::detail

#endif
