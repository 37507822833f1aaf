#ifndef CONNPOOL_IMPL_BASIC_POOL_HPP
#define CONNPOOL_IMPL_BASIC_POOL_HPP

#include <stdexcept>
#include <string>

#include "connpool/detail/asio.hpp"

namespace connpool {
CONNPOOL_ABI_BEGIN

namespace detail {
inline pool_options checked(pool_options o) {
  if (const char* field = o.invalid_field())
    throw system_error(error::invalid_options, std::string("connpool: pool_options::") + field + " out of range");
  return o;
}
}  // namespace detail

template <class Protocol, class Executor>
basic_pool<Protocol, Executor>::basic_pool(pool_options options)
    : basic_pool(std::make_unique<net::io_context>(1), std::move(options)) {}

template <class Protocol, class Executor>
basic_pool<Protocol, Executor>::basic_pool(std::unique_ptr<net::io_context> own, pool_options options) {
  net::io_context& ctx = *own;
  const Executor ex(ctx.get_executor());
  state_ = std::make_shared<state_type>(std::move(own), std::make_unique<net::io_context>(1), ex,
                                        detail::checked(std::move(options)));
  state_->start();
  work_ = std::make_unique<net::executor_work_guard<net::io_context::executor_type>>(ctx.get_executor());
  // The thread shares ownership of the state, so the context it runs outlives its run(), even when
  // the pool is destroyed from one of its own handlers.
  thread_ = std::thread([s = state_] { s->owned_context()->run(); });
}

template <class Protocol, class Executor>
basic_pool<Protocol, Executor>::basic_pool(const Executor& ex, pool_options options)
    : state_(std::make_shared<state_type>(nullptr, nullptr, ex, detail::checked(std::move(options)))) {
  state_->start();
}

template <class Protocol, class Executor>
basic_pool<Protocol, Executor>::~basic_pool() {
  state_->close();
  state_->abort_drains();
  state_->orphan();
  if (!thread_.joinable()) return;
  // close() cancelled the watch, the retire timer and every connect in flight, and failed every
  // waiter; without the work guard, run() returns once those completions have been delivered.
  work_.reset();
  if (thread_.get_id() == std::this_thread::get_id())
    thread_.detach();  // destroyed from one of its own handlers: the thread finishes on its own
  else
    thread_.join();
}

namespace detail {
/// The throwing acquire's exception: `what`, and for endpoint_unavailable the last connect error.
[[noreturn]] inline void throw_acquire_error(const error_code& ec, const std::string& what, const error_code& last) {
  if (ec == error::endpoint_unavailable && last)
    throw system_error(ec, what + " (last connect error: " + last.message() + ")");
  throw system_error(ec, what);
}
}  // namespace detail

template <class Protocol, class Executor>
typename basic_pool<Protocol, Executor>::lease basic_pool<Protocol, Executor>::acquire(const endpoint_type& ep,
                                                                                   const acquire_site& site) {
  error_code ec;
  lease l = acquire(ep, ec, site);
  if (ec) detail::throw_acquire_error(ec, "connpool acquire", state_->last_connect_error(ep));
  return l;
}

template <class Protocol, class Executor>
typename basic_pool<Protocol, Executor>::lease basic_pool<Protocol, Executor>::acquire(const endpoint_type& ep,
                                                                                   error_code& ec,
                                                                                   const acquire_site& site) {
  ec.clear();
  bool reused = false;
  if (state_->observed()) return acquire_observed(ep, ec, site);
  auto* c = state_->acquire(ep, reused, ec);
  if (!c) return lease();
  return lease(state_.get(), c, reused);
}

template <class Protocol, class Executor>
typename basic_pool<Protocol, Executor>::lease basic_pool<Protocol, Executor>::acquire_observed(const endpoint_type& ep,
                                                                                            error_code& ec,
                                                                                            const acquire_site& site,
                                                                                            bool fresh) {
  bool reused = false;
  auto take = [&] { return fresh ? state_->acquire_fresh(ep, reused, ec) : state_->acquire(ep, reused, ec); };
  if (!state_->events_on()) {  // watching leases only (or run()'s fresh acquire, unobserved)
    auto* c = take();
    if (!c) return lease();
    if (state_->watching_leases()) state_->lease_began(c, site);
    return lease(state_.get(), c, reused);
  }
  const auto started = detail::clock::now();
  const bool outer = std::exchange(state_type::sync_waited(), false);  // a listener's own acquire, say
  auto* c = take();
  const bool waited = std::exchange(state_type::sync_waited(), outer);
  state_->acquire_event(c, reused, ec, started, waited, &ep, nullptr);
  if (!c) return lease();
  if (state_->watching_leases()) state_->lease_began(c, site);
  return lease(state_.get(), c, reused);
}

template <class Protocol, class Executor>
typename basic_pool<Protocol, Executor>::lease basic_pool<Protocol, Executor>::try_acquire(const endpoint_type& ep,
                                                                                       const acquire_site& site) {
  const auto started = state_->events_on() ? detail::clock::now() : detail::time_point{};
  auto* c = state_->try_acquire(ep);
  if (!c) return lease();
  if (state_->observed()) {
    if (started != detail::time_point{}) state_->acquire_event(c, true, {}, started, false, &ep, nullptr);
    if (state_->watching_leases()) state_->lease_began(c, site);
  }
  return lease(state_.get(), c, true);
}

template <class Protocol, class Executor>
template <class Handler, class Lease>
struct basic_pool<Protocol, Executor>::completion_impl final : state_type::completion {
  using work_executor = net::associated_executor_t<Handler, Executor>;

  completion_impl(Handler&& h, const Executor& pool_ex)
      : handler(std::move(h)), work(net::make_work_guard(net::get_associated_executor(handler, pool_ex))) {}

  void complete(state_type* s, error_code ec, typename state_type::connection* c, bool reused) override {
    Lease l = c ? Lease(s, c, reused) : Lease();
    auto ex = work.get_executor();
    net::post(ex, [h = std::move(handler), ec, l = std::move(l)]() mutable {
#if defined(CONNPOOL_HAS_CANCELLATION_SLOTS)
      // On the handler's executor, where its cancellation is emitted: the operation is over.
      net::get_associated_cancellation_slot(h).clear();
#endif
      h(ec, std::move(l));
    });
    work.reset();
  }

#if defined(CONNPOOL_HAS_CANCELLATION_SLOTS)
  net::cancellation_slot cancellation_slot() const noexcept override {
    return net::get_associated_cancellation_slot(handler);
  }

#endif
  Handler handler;
  net::executor_work_guard<work_executor> work;
};

template <class Protocol, class Executor>
template <class Lease>
struct basic_pool<Protocol, Executor>::initiate_acquire {
  std::shared_ptr<state_type> state;
  template <class Handler>
  void operator()(Handler&& h, const endpoint_type& ep, const acquire_site& site) const {
    using H = std::decay_t<Handler>;
    auto c = std::make_unique<completion_impl<H, Lease>>(H(std::forward<Handler>(h)), state->executor());
    c->site = site;
    state->async_acquire(ep, std::move(c));
  }
};

template <class Protocol, class Executor>
template <class Token, class>
auto basic_pool<Protocol, Executor>::async_acquire(const endpoint_type& ep, Token&& token, const acquire_site& site) {
  return net::async_initiate<Token, void(error_code, lease)>(initiate_acquire<>{state_}, token, ep, site);
}

template <class Protocol, class Executor>
typename basic_pool<Protocol, Executor>::lease basic_pool<Protocol, Executor>::acquire(const host& h, const acquire_site& site) {
  error_code ec;
  lease l = acquire(h, ec, site);
  if (ec) detail::throw_acquire_error(ec, "connpool acquire " + h.name + ":" + h.service, last_connect_error(h));
  return l;
}

template <class Protocol, class Executor>
typename basic_pool<Protocol, Executor>::lease basic_pool<Protocol, Executor>::acquire(const host& h,
                                                                                   error_code& ec,
                                                                                   const acquire_site& site) {
  return acquire_named(h, false, ec, site);
}

template <class Protocol, class Executor>
typename basic_pool<Protocol, Executor>::lease basic_pool<Protocol, Executor>::acquire_named(const host& h, bool fresh,
                                                                                         error_code& ec,
                                                                                         const acquire_site& site) {
  static_assert(std::is_same_v<Protocol, net::ip::tcp>, "backends by name are TCP");
  ec.clear();
  const typename state_type::backend* b = nullptr;
  try {
    b = state_->backend_for(h, true);
  } catch (const std::bad_alloc&) {
    ec = net::error::no_memory;
    return lease();
  }
  bool reused = false;
  auto* c = state_->acquire_by_name(typename state_type::key_type(static_cast<const void*>(b)), reused, ec, fresh);
  if (!c) return lease();
  if (state_->watching_leases()) state_->lease_began(c, site);
  return lease(state_.get(), c, reused);
}

template <class Protocol, class Executor>
typename basic_pool<Protocol, Executor>::lease basic_pool<Protocol, Executor>::try_acquire(const host& h,
                                                                                       const acquire_site& site) {
  static_assert(std::is_same_v<Protocol, net::ip::tcp>, "backends by name are TCP");
  const auto* b = state_->backend_for(h, false);
  if (!b) return lease();
  const auto started = state_->events_on() ? detail::clock::now() : detail::time_point{};
  auto* c = state_->try_acquire(typename state_type::key_type(static_cast<const void*>(b)));
  if (!c) return lease();
  if (started != detail::time_point{}) state_->acquire_event(c, true, {}, started, false, nullptr, &b->name);
  if (state_->watching_leases()) state_->lease_began(c, site);
  return lease(state_.get(), c, true);
}

template <class Protocol, class Executor>
template <class Lease>
struct basic_pool<Protocol, Executor>::initiate_acquire_named {
  std::shared_ptr<state_type> state;
  template <class Handler>
  void operator()(Handler&& h, const host& name, const acquire_site& site) const {
    using H = std::decay_t<Handler>;
    auto c = std::make_unique<completion_impl<H, Lease>>(H(std::forward<Handler>(h)), state->executor());
    c->site = site;
    const auto* b = state->backend_for(name, true);
    state->async_acquire(typename state_type::key_type(static_cast<const void*>(b)), std::move(c));
  }
};

template <class Protocol, class Executor>
template <class Token>
auto basic_pool<Protocol, Executor>::async_acquire(const host& h, Token&& token, const acquire_site& site) {
  static_assert(std::is_same_v<Protocol, net::ip::tcp>, "backends by name are TCP");
  return net::async_initiate<Token, void(error_code, lease)>(initiate_acquire_named<>{state_}, token, h, site);
}

template <class Protocol, class Executor>
pool_stats basic_pool<Protocol, Executor>::stats(const host& h) const {
  const auto* b = state_->backend_for(h, false);
  return b ? state_->stats(typename state_type::key_type(static_cast<const void*>(b))) : pool_stats{};
}

template <class Protocol, class Executor>
error_code basic_pool<Protocol, Executor>::last_connect_error(const host& h) const {
  const auto* b = state_->backend_for(h, false);
  return b ? state_->last_connect_error(typename state_type::key_type(static_cast<const void*>(b))) : error_code();
}

template <class Protocol, class Executor>
void basic_pool<Protocol, Executor>::set_resolver(resolver r) {
  state_->set_resolver(std::move(r));
}

template <class Protocol, class Executor>
pool_stats basic_pool<Protocol, Executor>::stats() const {
  return state_->stats();
}

template <class Protocol, class Executor>
pool_stats basic_pool<Protocol, Executor>::stats(const endpoint_type& ep) const {
  return state_->stats(ep);
}

template <class Protocol, class Executor>
typename basic_pool<Protocol, Executor>::stats_snapshot basic_pool<Protocol, Executor>::snapshot() const {
  stats_snapshot out;
  out.forgotten = state_->each_stats([&](const endpoint_type& ep, const host* h, const pool_stats& st) {
    endpoint_stats e;
    e.endpoint = ep;
    if (h) e.backend = *h;
    e.stats = st;
    out.endpoints.push_back(std::move(e));
  });
  return out;
}

template <class Protocol, class Executor>
error_code basic_pool<Protocol, Executor>::last_connect_error(const endpoint_type& ep) const {
  return state_->last_connect_error(ep);
}

template <class Protocol, class Executor>
void basic_pool<Protocol, Executor>::close() {
  state_->close();
}

template <class Protocol, class Executor>
std::size_t basic_pool<Protocol, Executor>::drain(std::chrono::steady_clock::time_point deadline) {
  return state_->drain(deadline);
}

namespace detail {
/// A drain's deadline `timeout` from now (now, for none or less).
inline time_point drain_deadline(clock::duration timeout) noexcept {
  const time_point now = clock::now();
  return timeout.count() > 0 ? later(now, timeout) : now;
}
}  // namespace detail

template <class Protocol, class Executor>
std::size_t basic_pool<Protocol, Executor>::drain(std::chrono::steady_clock::duration timeout) {
  return state_->drain(detail::drain_deadline(timeout));
}

template <class Protocol, class Executor>
template <class Handler>
struct basic_pool<Protocol, Executor>::count_completion_impl final : state_type::count_completion {
  using work_executor = net::associated_executor_t<Handler, Executor>;
  count_completion_impl(Handler&& h, const Executor& pool_ex)
      : handler(std::move(h)), work(net::make_work_guard(net::get_associated_executor(handler, pool_ex))) {}
  void complete(error_code ec, std::size_t cut) override {
    auto ex = work.get_executor();
    net::post(ex, [h = std::move(handler), ec, cut]() mutable { h(ec, cut); });
    work.reset();
  }
  Handler handler;
  net::executor_work_guard<work_executor> work;
};

template <class Protocol, class Executor>
struct basic_pool<Protocol, Executor>::initiate_drain {
  std::shared_ptr<state_type> state;
  template <class Handler>
  void operator()(Handler&& h, std::chrono::steady_clock::time_point deadline) const {
    using H = std::decay_t<Handler>;
    state->async_drain(deadline, std::make_unique<count_completion_impl<H>>(H(std::forward<Handler>(h)), state->executor()));
  }
  /// The deadline counts from the initiation (a deferred drain's launch).
  template <class Handler>
  void operator()(Handler&& h, std::chrono::steady_clock::duration timeout) const {
    (*this)(std::forward<Handler>(h), detail::drain_deadline(timeout));
  }
};

template <class Protocol, class Executor>
template <class Token>
auto basic_pool<Protocol, Executor>::async_drain(std::chrono::steady_clock::time_point deadline, Token&& token) {
  return net::async_initiate<Token, void(error_code, std::size_t)>(initiate_drain{state_}, token, deadline);
}

template <class Protocol, class Executor>
template <class Token>
auto basic_pool<Protocol, Executor>::async_drain(std::chrono::steady_clock::duration timeout, Token&& token) {
  return net::async_initiate<Token, void(error_code, std::size_t)>(initiate_drain{state_}, token, timeout);
}

template <class Protocol, class Executor>
std::size_t basic_pool<Protocol, Executor>::prewarm(const endpoint_type& ep, std::size_t n, error_code& ec) {
  return state_->prewarm_sync(typename state_type::key_type(ep), n, ec);
}

template <class Protocol, class Executor>
std::size_t basic_pool<Protocol, Executor>::prewarm(const endpoint_type& ep, std::size_t n) {
  error_code ec;
  const std::size_t opened = prewarm(ep, n, ec);
  if (ec) detail::throw_acquire_error(ec, "connpool prewarm", state_->last_connect_error(ep));
  return opened;
}

template <class Protocol, class Executor>
std::size_t basic_pool<Protocol, Executor>::prewarm(const host& h, std::size_t n, error_code& ec) {
  static_assert(std::is_same_v<Protocol, net::ip::tcp>, "backends by name are TCP");
  const typename state_type::backend* b = nullptr;
  try {
    b = state_->backend_for(h, true);
  } catch (const std::bad_alloc&) {
    ec = net::error::no_memory;
    return 0;
  }
  return state_->prewarm_sync(typename state_type::key_type(static_cast<const void*>(b)), n, ec);
}

template <class Protocol, class Executor>
std::size_t basic_pool<Protocol, Executor>::prewarm(const host& h, std::size_t n) {
  error_code ec;
  const std::size_t opened = prewarm(h, n, ec);
  if (ec) detail::throw_acquire_error(ec, "connpool prewarm " + h.name + ":" + h.service, last_connect_error(h));
  return opened;
}

template <class Protocol, class Executor>
struct basic_pool<Protocol, Executor>::initiate_prewarm {
  std::shared_ptr<state_type> state;
  template <class Handler>
  void operator()(Handler&& h, const endpoint_type& ep, std::size_t n) const {
    start(std::forward<Handler>(h), typename state_type::key_type(ep), n);
  }
  template <class Handler>
  void operator()(Handler&& h, const host& name, std::size_t n) const {
    const auto* b = state->backend_for(name, true);
    start(std::forward<Handler>(h), typename state_type::key_type(static_cast<const void*>(b)), n);
  }
  template <class Handler>
  void start(Handler&& h, const typename state_type::key_type& k, std::size_t n) const {
    using H = std::decay_t<Handler>;
    state->prewarm(k, n, std::make_unique<count_completion_impl<H>>(H(std::forward<Handler>(h)), state->executor()));
  }
};

template <class Protocol, class Executor>
template <class Token>
auto basic_pool<Protocol, Executor>::async_prewarm(const endpoint_type& ep, std::size_t n, Token&& token) {
  return net::async_initiate<Token, void(error_code, std::size_t)>(initiate_prewarm{state_}, token, ep, n);
}

template <class Protocol, class Executor>
template <class Token>
auto basic_pool<Protocol, Executor>::async_prewarm(const host& h, std::size_t n, Token&& token) {
  static_assert(std::is_same_v<Protocol, net::ip::tcp>, "backends by name are TCP");
  return net::async_initiate<Token, void(error_code, std::size_t)>(initiate_prewarm{state_}, token, h, n);
}

template <class Protocol, class Executor>
Executor basic_pool<Protocol, Executor>::get_executor() const {
  return state_->executor();
}

template <class Protocol, class Executor>
void basic_pool<Protocol, Executor>::set_setup(setup_step step) {
  state_->set_setup(as_step(std::move(step)));
}

template <class Protocol, class Executor>
void basic_pool<Protocol, Executor>::set_health_check(health_check check) {
  state_->set_health_check(as_step(std::move(check)));
}

template <class Protocol, class Executor>
void basic_pool<Protocol, Executor>::set_listener(listener l) {
  state_->set_listener(std::move(l));
}

template <class Protocol, class Executor>
typename basic_pool<Protocol, Executor>::state_type::setup_step basic_pool<Protocol, Executor>::as_step(
    setup_step step) {
  if (!step) return nullptr;
  return [s = std::move(step)](socket_type& sock, const endpoint_type& ep, detail::connection_ext*, setup_done done) {
    s(sock, ep, std::move(done));
  };
}

template <class Protocol, class Executor>
const pool_options& basic_pool<Protocol, Executor>::options() const noexcept {
  return state_->options();
}

// ------------------------------------------------------------------------------------------ lease

template <class Protocol, class Executor>
basic_pool<Protocol, Executor>::lease::lease(lease&& o) noexcept
    : state_(std::exchange(o.state_, nullptr)),
      conn_(std::exchange(o.conn_, nullptr)),
      reused_(o.reused_),
      shut_(std::exchange(o.shut_, false)) {}

template <class Protocol, class Executor>
typename basic_pool<Protocol, Executor>::lease& basic_pool<Protocol, Executor>::lease::operator=(lease&& o) noexcept {
  if (this != &o) {
    discard();
    state_ = std::exchange(o.state_, nullptr);
    conn_ = std::exchange(o.conn_, nullptr);
    reused_ = o.reused_;
    shut_ = std::exchange(o.shut_, false);
  }
  return *this;
}

template <class Protocol, class Executor>
basic_pool<Protocol, Executor>::lease::~lease() {
  discard();
}

template <class Protocol, class Executor>
typename basic_pool<Protocol, Executor>::socket_type& basic_pool<Protocol, Executor>::lease::socket() {
  if (!conn_) throw std::logic_error("connpool: socket() on an empty lease");
  return conn_->socket;
}

template <class Protocol, class Executor>
typename basic_pool<Protocol, Executor>::endpoint_type basic_pool<Protocol, Executor>::lease::endpoint() const {
  if (!conn_) throw std::logic_error("connpool: endpoint() on an empty lease");
  return conn_->endpoint();
}

template <class Protocol, class Executor>
void basic_pool<Protocol, Executor>::lease::release() noexcept {
  if (!conn_) return;
  if (shut_) return discard();
  std::exchange(state_, nullptr)->release(std::exchange(conn_, nullptr));
}

template <class Protocol, class Executor>
void basic_pool<Protocol, Executor>::lease::shutdown(net::socket_base::shutdown_type what) {
  error_code ec;
  shutdown(what, ec);
  if (ec) throw system_error(ec, "connpool lease shutdown");
}

template <class Protocol, class Executor>
void basic_pool<Protocol, Executor>::lease::shutdown(net::socket_base::shutdown_type what, error_code& ec) {
  shut_ = true;
  socket().shutdown(what, ec);
}

template <class Protocol, class Executor>
void basic_pool<Protocol, Executor>::lease::discard(close_mode mode) noexcept {
  if (!conn_) return;
  shut_ = false;
  std::exchange(state_, nullptr)->discard(std::exchange(conn_, nullptr), mode);
}

// ------------------------------------------------------------------------------- run()

template <class Protocol, class Executor>
bool basic_pool<Protocol, Executor>::shut(const lease& l) noexcept {
  return l.shut_;
}

template <class Protocol, class Executor>
typename basic_pool<Protocol, Executor>::lease basic_pool<Protocol, Executor>::acquire_for_run(
    const endpoint_type& ep, bool fresh, error_code& ec, const acquire_site& site) {
  if (!fresh) return acquire(ep, ec, site);
  ec.clear();
  return acquire_observed(ep, ec, site, true);
}

template <class Protocol, class Executor>
typename basic_pool<Protocol, Executor>::lease basic_pool<Protocol, Executor>::acquire_for_run(
    const host& h, bool fresh, error_code& ec, const acquire_site& site) {
  return acquire_named(h, fresh, ec, site);
}

template <class Protocol, class Executor>
template <class Key>
bool basic_pool<Protocol, Executor>::retry_allowed(state_type& s, const Key& key, error_code ec, bool sync_by_name) {
  if constexpr (std::is_same_v<Key, host>) {
    const auto* b = s.backend_for(key, false);
    return b && s.retry_allowed(typename state_type::key_type(static_cast<const void*>(b)), ec, sync_by_name);
  } else {
    return s.retry_allowed(key, ec);
  }
}

namespace detail {
/// run()'s look at a lease before its exchange, to tell after a failure whether it may run again:
/// the connection (its socket and descriptor) and the data segments it had received.
struct run_watch {
  bool on = false;
  const void* socket = nullptr;
  int fd = -1;
  std::uint32_t before = 0;

  run_watch() noexcept = default;
  template <class Lease>
  run_watch(Lease& l, retry r, bool retried) noexcept {
    if (retried || r != retry::idempotent || !l || !l.reused()) return;
    socket = &l.socket();
    fd = l.socket().native_handle();
    tcp_look t;
    on = look_tcp(fd, t);
    before = t.data_segs_in;
  }
  /// After the exchange failed with `ec`: whether it may run again. The lease must still hold the
  /// same connection, open, not shut down by its holder (`shut`: then a FIN of ours and theirs
  /// leave the same state as a reset); the peer ended it (not a drain: the pool is closed then),
  /// with end of stream, a reset or a broken pipe; no segment with data arrived since.
  template <class Lease>
  bool retryable(const error_code& ec, Lease& l, bool shut) const noexcept {
    if (!on || shut || !l || &l.socket() != socket || !l.socket().is_open() || l.socket().native_handle() != fd)
      return false;
    tcp_look t;
    return stale_error(ec) && look_tcp(fd, t) && t.peer_ended() && t.data_segs_in == before;
  }
};
}  // namespace detail

template <class Protocol, class Executor>
template <class Key, class Fn>
void basic_pool<Protocol, Executor>::run_sync(const Key& key, retry r, Fn& fn, error_code& ec,
                                              const acquire_site& site) {
  static_assert(std::is_invocable_r_v<error_code, Fn&, lease&>, "run(): fn(lease&) must return an error_code");
  ec.clear();
  state_->run_began();
  lease l = acquire_for_run(key, false, ec, site);
  if (ec) return;
  const detail::run_watch watch(l, r, false);
  ec = fn(l);
  if (!ec) {
    l.release();
    return;
  }
  const bool again = watch.retryable(ec, l, shut(l));
  l.discard();
  if (!again || !retry_allowed(*state_, key, ec, true)) return;
  error_code aec;
  l = acquire_for_run(key, true, aec, site);
  if (aec) return;  // no connection for the retry: the first attempt's error stands
  ec = fn(l);
  if (!ec) l.release();
  else l.discard();
}

template <class Protocol, class Executor>
template <class Fn>
void basic_pool<Protocol, Executor>::run(const endpoint_type& ep, retry r, Fn&& fn, error_code& ec,
                                         const acquire_site& site) {
  run_sync(ep, r, fn, ec, site);
}

template <class Protocol, class Executor>
template <class Fn>
void basic_pool<Protocol, Executor>::run(const endpoint_type& ep, retry r, Fn&& fn, const acquire_site& site) {
  error_code ec;
  run_sync(ep, r, fn, ec, site);
  if (ec) detail::throw_acquire_error(ec, "connpool run", state_->last_connect_error(ep));
}

template <class Protocol, class Executor>
template <class Fn>
void basic_pool<Protocol, Executor>::run(const host& h, retry r, Fn&& fn, error_code& ec, const acquire_site& site) {
  run_sync(h, r, fn, ec, site);
}

template <class Protocol, class Executor>
template <class Fn>
void basic_pool<Protocol, Executor>::run(const host& h, retry r, Fn&& fn, const acquire_site& site) {
  error_code ec;
  run_sync(h, r, fn, ec, site);
  if (ec) detail::throw_acquire_error(ec, "connpool run " + h.name + ":" + h.service, last_connect_error(h));
}

/// One async_run(): acquire, the exchange, maybe once more; then the handler, on its executor.
/// Each attempt's `done` carries its number: a late or second call is ignored. A cancellation of
/// the handler's slot stops the acquire in flight (any type), or ends the exchange (terminal
/// only: its request may have gone out); no retry follows it. Its steps (the acquire's
/// completion, `done`, a cancellation) may come on different threads: `mu` orders what they
/// share, and is never held while the pool or the user's code runs.
template <class Protocol, class Executor>
template <class Handler, class Fn, class Key>
struct basic_pool<Protocol, Executor>::run_op : std::enable_shared_from_this<run_op<Handler, Fn, Key>> {
  using work_executor = net::associated_executor_t<Handler, Executor>;

  run_op(std::shared_ptr<state_type> s, Key k, retry rr, Fn f, Handler h, const acquire_site& st)
      : state(std::move(s)), key(std::move(k)), r(rr), fn(std::move(f)), handler(std::move(h)), site(st) {
    // Work on the handler's executor while the operation runs, as Asio's own operations keep it;
    // not on a default pool's own context, whose thread runs while the pool lives and whose
    // destructor must not wait for an exchange that never ends.
    auto ex = net::get_associated_executor(handler, state->executor());
    bool own = false;
    if constexpr (std::is_same_v<work_executor, Executor>) own = state->owned_context() && ex == state->executor();
    if (!own) work.emplace(ex);
  }

  /// The acquire's completion: back to acquired(), on the pool's executor. Its cancellation slot
  /// is the operation's own signal, emitted only under `mu` (and never cleared by the pool, so
  /// that no emit races a clear on another thread).
  struct acquire_completion final : state_type::completion {
    acquire_completion(std::shared_ptr<run_op> o, const Executor& ex) : op(std::move(o)), work(net::make_work_guard(ex)) {}
    void complete(state_type* s, error_code ec, typename state_type::connection* c, bool reused) override {
      lease l = c ? lease(s, c, reused) : lease();
      net::post(work.get_executor(), [o = op, ec, l = std::move(l)]() mutable { o->acquired(ec, std::move(l)); });
      work.reset();
    }
#if defined(CONNPOOL_HAS_CANCELLATION_SLOTS)
    net::cancellation_slot cancellation_slot() const noexcept override {
      return op->cancellable ? op->acquire_cancel.slot() : net::cancellation_slot();
    }
#endif
    std::shared_ptr<run_op> op;
    net::executor_work_guard<Executor> work;
  };

#if defined(CONNPOOL_HAS_CANCELLATION_SLOTS)
  /// Installed in the handler's cancellation slot.
  struct cancel_hook {
    explicit cancel_hook(std::weak_ptr<run_op> o) : op(std::move(o)) {}
    void operator()(net::cancellation_type_t type) {
      if (type == net::cancellation_type::none) return;
      if (auto o = op.lock()) o->cancel(type);
    }
    std::weak_ptr<run_op> op;
  };

  void cancel(net::cancellation_type_t type) {
    {
      std::lock_guard<detail::spin_mutex> lk(mu);
      if (ended || cancelled) return;
      if (exchanging) {
        // Its request may have gone out: only a terminal cancellation ends it (partial and total
        // promise no side effects, or known ones). Pending reads and writes end with
        // operation_aborted; a shutdown fails the ones fn starts after this at once.
        if ((type & net::cancellation_type::terminal) == net::cancellation_type::none) return;
        cancelled = true;
        error_code ig;
        if (held) {
          held.socket().cancel(ig);
          held.socket().shutdown(net::socket_base::shutdown_both, ig);
        }
        return;
      }
      cancelled = true;
      cancel_type = type;
      if (!acquiring || hooking >= 0) return;  // none in flight, or acquire() emits when its call returns
      emitted = true;
    }
    acquire_cancel.emit(type);  // the pool's own acquire cancellation (outside mu: it may call a listener)
  }
#endif

  /// The first step, once the operation is shared: hook the handler's cancellation slot, acquire.
  void start() {
#if defined(CONNPOOL_HAS_CANCELLATION_SLOTS)
    auto slot = net::get_associated_cancellation_slot(handler);
    if (slot.is_connected()) {
      cancellable = true;
      slot.template emplace<cancel_hook>(this->weak_from_this());
    }
#endif
    acquire();
  }

  void acquire() {
    auto c = std::make_unique<acquire_completion>(this->shared_from_this(), state->executor());
    c->site = site;
    c->fresh = attempt > 0;
    bool go;
    int n;
    {
      std::lock_guard<detail::spin_mutex> lk(mu);
      go = !cancelled;
      n = attempt;
      if (go) {
        acquiring = true;
        hooking = n;  // the pool hooks acquire_cancel's slot in this call: a cancellation waits for it
      }
    }
    if (!go) return finish(net::error::operation_aborted);  // cancelled before the retry's acquire
    if constexpr (std::is_same_v<Key, host>) {
      const auto* b = state->backend_for(key, true);
      state->async_acquire(typename state_type::key_type(static_cast<const void*>(b)), std::move(c));
    } else {
      state->async_acquire(key, std::move(c));
    }
#if defined(CONNPOOL_HAS_CANCELLATION_SLOTS)
    net::cancellation_type_t type = net::cancellation_type::none;
    {
      std::lock_guard<detail::spin_mutex> lk(mu);
      // (Not if the retry's acquire, begun on another thread once this one was served, hooks now.)
      if (hooking == n) {
        hooking = -1;
        if (cancelled && acquiring && !emitted) {  // a cancellation came during the call
          emitted = true;
          type = cancel_type;
        }
      }
    }
    if (type != net::cancellation_type::none) acquire_cancel.emit(type);
#else
    std::lock_guard<detail::spin_mutex> lk(mu);
    if (hooking == n) hooking = -1;
#endif
  }

  void acquired(error_code ec, lease l) {
    const detail::run_watch w(l, r, attempt > 0);  // (off for an empty lease)
    bool stop, was_cancelled;
    lease spare;  // not to be exchanged on
    {
      std::lock_guard<detail::spin_mutex> lk(mu);
      acquiring = false;
      stop = ended;
      was_cancelled = cancelled;
      if (!stop && !was_cancelled && !ec) {
        held = std::move(l);
        watch = w;
        exchanging = true;
      } else {
        spare = std::move(l);
      }
    }
    if (stop) return;  // (spare is discarded by its destructor)
    if (was_cancelled) {
      if (spare) spare.release();  // granted as the cancellation came: unused, back to idle
      return finish(net::error::operation_aborted);
    }
    if (ec) return finish(attempt > 0 ? first_error : ec);  // no connection for the retry: the first error stands
    auto self = this->shared_from_this();
    const int n = attempt;
    try {
      fn(held, run_done([self, n](error_code e) { self->exchanged(n, e); }));
    } catch (...) {
      lease h;
      {
        std::lock_guard<detail::spin_mutex> lk(mu);
        if (exchanging && n == attempt) {  // (else done was called first: the exception is dropped)
          exchanging = false;
          h = std::move(held);
        } else {
          return;
        }
      }
      h.discard();
      finish(error::exchange_threw);  // on the pool's executor: not rethrown there
    }
  }

  void exchanged(int n, error_code ec) {
    lease h;
    bool was_cancelled;
    {
      std::lock_guard<detail::spin_mutex> lk(mu);
      if (!exchanging || n != attempt || ended) return;  // a second call, or a late one
      exchanging = false;
      h = std::move(held);  // (fn's reference to held sees an empty lease, as after a release)
      was_cancelled = cancelled;
    }
    auto self = this->shared_from_this();  // (the caller's copy of done may be its last holder)
    if (!ec) {
      if (was_cancelled) h.discard();  // (done, but cancel() shut its socket down)
      else h.release();
      return finish({});
    }
    const bool again = attempt == 0 && !was_cancelled && watch.retryable(ec, h, shut(h));
    h.discard();  // (after retryable() looked at its socket)
    if (was_cancelled) return finish(net::error::operation_aborted);  // whatever its reads saw after it
    if (!again || !retry_allowed(*state, key, ec, false)) return finish(ec);
    first_error = ec;
    {
      std::lock_guard<detail::spin_mutex> lk(mu);
      ++attempt;
    }
    acquire();
  }

  void finish(error_code ec) {
    {
      std::lock_guard<detail::spin_mutex> lk(mu);
      if (ended) return;
      ended = true;
    }
    auto ex = net::get_associated_executor(handler, state->executor());
    net::post(ex, [h = std::move(handler), ec]() mutable {
#if defined(CONNPOOL_HAS_CANCELLATION_SLOTS)
      // On the handler's executor, where its cancellation is emitted: the operation is over.
      net::get_associated_cancellation_slot(h).clear();
#endif
      h(ec);
    });
    work.reset();
  }

  std::shared_ptr<state_type> state;
  Key key;
  retry r;
  Fn fn;
  Handler handler;
  std::optional<net::executor_work_guard<work_executor>> work;
  acquire_site site;
  lease held;
  detail::run_watch watch;
  error_code first_error;
  int attempt = 0;          // 0, then 1 for the retry
  detail::spin_mutex mu;    // the flags below and `held`, between the steps and a cancellation
  bool acquiring = false;   // an acquire is in flight (its completion has not run)
  int hooking = -1;         // the attempt whose acquire() is in the pool's async_acquire(), which hooks acquire_cancel
  bool exchanging = false;  // fn's exchange runs: its done is awaited
  bool cancelled = false;
  bool ended = false;
#if defined(CONNPOOL_HAS_CANCELLATION_SLOTS)
  bool cancellable = false;  // the handler has a cancellation slot (set before the first acquire)
  bool emitted = false;      // acquire_cancel was emitted (once: by cancel(), or by acquire() after its call)
  net::cancellation_type_t cancel_type = net::cancellation_type::none;
  net::cancellation_signal acquire_cancel;  // the acquire in flight's cancellation
#endif
};

template <class Protocol, class Executor>
template <class Fn, class Key>
struct basic_pool<Protocol, Executor>::initiate_run {
  std::shared_ptr<state_type> state;
  template <class Handler>
  void operator()(Handler&& h, const Key& key, retry r, Fn fn, const acquire_site& site) const {
    using H = std::decay_t<Handler>;
    state->run_began();
    auto op = std::make_shared<run_op<H, Fn, Key>>(state, key, r, std::move(fn), H(std::forward<Handler>(h)), site);
    op->start();
  }
};

template <class Protocol, class Executor>
template <class Fn, class Token>
auto basic_pool<Protocol, Executor>::async_run(const endpoint_type& ep, retry r, Fn&& fn, Token&& token,
                                               const acquire_site& site) {
  using F = std::decay_t<Fn>;
  return net::async_initiate<Token, void(error_code)>(initiate_run<F, endpoint_type>{state_}, token, ep, r,
                                                      F(std::forward<Fn>(fn)), site);
}

template <class Protocol, class Executor>
template <class Fn, class Token>
auto basic_pool<Protocol, Executor>::async_run(const host& h, retry r, Fn&& fn, Token&& token, const acquire_site& site) {
  static_assert(std::is_same_v<Protocol, net::ip::tcp>, "backends by name are TCP");
  using F = std::decay_t<Fn>;
  return net::async_initiate<Token, void(error_code)>(initiate_run<F, host>{state_}, token, h, r, F(std::forward<Fn>(fn)),
                                                      site);
}

CONNPOOL_ABI_END
}  // namespace connpool

#endif
