#ifndef CONNPOOL_BASIC_POOL_HPP
#define CONNPOOL_BASIC_POOL_HPP

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <system_error>
#include <thread>
#include <type_traits>
#include <vector>

#include "connpool/detail/asio.hpp"

#include "connpool/detail/pool_state.hpp"
#include "connpool/error.hpp"
#include "connpool/events.hpp"
#include "connpool/host.hpp"
#include "connpool/pool_options.hpp"

namespace connpool {
CONNPOOL_ABI_BEGIN

template <class Executor>
class basic_tls_pool;

/// A pool of stream connections per endpoint, which checks every idle connection before it hands
/// it out, closes idle connections as soon as their peer closes or resets them, and bounds every
/// wait.
///
/// Thread safety: every member function may be called concurrently from any thread. A lease is
/// used by one thread at a time.
///
/// Background work (the idle watch, idle_timeout/max_lifetime retirement, asynchronous connects
/// and timeouts) runs on the pool's executor: on the pool's own thread for a default-constructed
/// pool, else on the executor or execution context you passed, which you run.
template <class Protocol, class Executor = net::any_io_executor>
class basic_pool {
 public:
  /// The stream protocol: `net::ip::tcp` (tcp_pool) or `net::local::stream_protocol` (local_pool).
  using protocol_type = Protocol;
  /// The type of the executor the pool's background work runs on (get_executor()).
  using executor_type = Executor;
  /// What acquire() takes: `Protocol::endpoint`.
  using endpoint_type = typename Protocol::endpoint;
  /// The socket a lease holds (lease::socket()).
  using socket_type = net::basic_stream_socket<Protocol, Executor>;

  class lease;

  /// A pool with its own io_context, run by one thread the pool owns and joins on destruction.
  /// Meant for thread-per-request services: acquire() and synchronous I/O on leases need nothing
  /// else. Throws system_error(error::invalid_options) for bad options.
  ///
  /// The sockets of such a pool live on a second io_context that no thread runs, so that a
  /// response arriving on a leased socket does not wake the pool's thread (Asio registers every
  /// socket with its context's reactor). Use them with synchronous reads and writes; for
  /// asynchronous I/O on leases, construct the pool with the executor that runs your I/O.
  explicit basic_pool(pool_options options = {});

  /// A pool whose background work and sockets run on `ex`; you run its execution context. Throws
  /// system_error(error::invalid_options) for bad options.
  explicit basic_pool(const Executor& ex, pool_options options = {});

  /// A pool whose background work and sockets run on `ctx`; you run `ctx`. Throws
  /// system_error(error::invalid_options) for bad options.
  template <class ExecutionContext,
            class = std::enable_if_t<std::is_convertible_v<ExecutionContext&, net::execution_context&>>>
  explicit basic_pool(ExecutionContext& ctx, pool_options options = {})
      : basic_pool(Executor(ctx.get_executor()), std::move(options)) {}

  /// Closes the pool (see close()). Leases may outlive the pool: they close their connection when
  /// released or destroyed.
  ~basic_pool();

  /// Neither copyable nor movable.
  basic_pool(const basic_pool&) = delete;
  /// Neither copyable nor movable.
  basic_pool& operator=(const basic_pool&) = delete;

  /// Get a connection to `ep`: a healthy idle one (the one this thread released last if it is still
  /// idle, else the most recently released one), else a new one.
  /// Waits, in FIFO order, while the limits are reached. Bounded by options().acquire_timeout.
  /// Throws system_error: error::pool_closed, error::acquire_timeout, error::connect_timeout,
  /// or the connect's own error (connection refused, EMFILE, ...).
  ///
  /// Every acquire function takes a last argument `site`: where the lease is acquired, reported if
  /// it is held longer than options().lease_warn_after. Its default is the caller's source location
  /// (file, line, function); pass a tag instead to name the work: `pool.acquire(ep, "refill")`.
  lease acquire(const endpoint_type& ep, const acquire_site& site = acquire_site::current());

  /// As acquire(ep), reporting errors in `ec` instead of throwing; returns an empty lease on error.
  lease acquire(const endpoint_type& ep, error_code& ec, const acquire_site& site = acquire_site::current());

  /// Non-blocking: a healthy idle connection to `ep`, chosen and probed as acquire() chooses and
  /// probes it, if there is one right now and no acquire for `ep` is waiting; else an empty lease
  /// (also once the pool is closed). Never connects and never waits. Meant for event loops: it is
  /// served without the completion hop of async_acquire(), which remains the way to wait or connect:
  /// `auto l = pool.try_acquire(ep); if (!l) l = co_await pool.async_acquire(ep, use_awaitable);`
  lease try_acquire(const endpoint_type& ep, const acquire_site& site = acquire_site::current());

  /// Asynchronous acquire. Completion signature: void(error_code, lease). The completion runs
  /// on the handler's associated executor, else on the pool's executor; never inside this call.
  /// Errors as for acquire(). Bounded by acquire_timeout; close() completes it with pool_closed.
  ///
  /// Per-operation cancellation: an acquire bound to a cancellation slot (net::bind_cancellation_slot,
  /// awaitable operators, parallel_group) that is cancelled while it waits or connects completes
  /// promptly with net::error::operation_aborted: it leaves the queue, its connect in flight is
  /// stopped, and the pool is left as if it had not been made. Terminal, partial and total
  /// cancellation all do this. An acquire already granted a connection completes with it. Emit the
  /// cancellation from the handler's executor, as for Asio's own operations.
  ///
  /// The pool's executor also runs the idle watch, the retire timer and the deadlines of other
  /// acquires. On a default-constructed pool that is the pool's only thread: a completion handler
  /// without an executor of its own that blocks (synchronous I/O on the lease, a long computation)
  /// stalls all of them until it returns. Bind such a handler to an executor of yours, e.g.
  /// `pool.async_acquire(ep, net::bind_executor(my_thread_pool, handler))` (examples/async_client.cpp).
  template <class Token, class = std::enable_if_t<!std::is_convertible_v<Token&&, const acquire_site&>>>
  auto async_acquire(const endpoint_type& ep, Token&& token, const acquire_site& site = acquire_site::current());

  /// As above, with the default completion token of the executor, where it has one (and `site`
  /// a tag, if you pass one: `async_acquire(ep, "refill")`).
  template <class E = Executor,
            class = std::enable_if_t<!std::is_void_v<net::default_completion_token_t<E>>>>
  auto async_acquire(const endpoint_type& ep, const acquire_site& site = acquire_site::current()) {
    return async_acquire(ep, net::default_completion_token_t<E>(), site);
  }

  /// \name Backends by name (tcp_pool only)
  /// A named backend is one pool key for all of its addresses: one set of limits, idle
  /// connections, waiters and stats, per host. Its addresses are looked up asynchronously (the
  /// resolver of set_resolver(), else getaddrinfo on a thread of its own, one per backend at a
  /// time, so a lookup that hangs holds neither the pool's executor nor other backends) on the
  /// first connect, cached, and
  /// looked up again every options().resolve_interval while the backend is in use, in the
  /// background: never on an acquire's path once cached. A lookup that fails keeps the last good
  /// addresses; the first one's error (e.g. net::error::host_not_found) is the error of the
  /// acquires that waited for it. An address that leaves the set has its idle connections closed
  /// at once and its leased ones when they come back (address_removed), and gets no new ones.
  ///
  /// A new connection goes to the address with the fewest connections (an address whose connect
  /// failed goes last for a second), families alternating; connects follow Happy Eyeballs
  /// (RFC 8305): the next address starts options().happy_eyeballs_delay after the last one or as
  /// soon as it fails, and the first to connect wins. The lookup and the connects are bounded by
  /// the connect deadline (connect_timeout, or acquire_timeout if nearer); a lookup that hangs
  /// gives connect_timeout or acquire_timeout (each lookup is also bounded by connect_timeout, or
  /// resolve_interval if shorter; then another one starts for the connects still waiting). The setup step and the health check run as for any
  /// connection; lease::endpoint() is the address it is connected to.
  ///@{

  /// As acquire(ep), for a named backend. The synchronous form waits for the asynchronous one, so
  /// the pool's executor must run meanwhile: on a default-constructed pool's own thread, an
  /// acquire that cannot be served at once from idle fails with net::error::would_block; on a pool
  /// built on your executor, do not acquire by name synchronously from the only thread that runs
  /// it (it would wait until acquire_timeout, and 200 ms more).
  lease acquire(const host& h, const acquire_site& site = acquire_site::current());
  /// As above, reporting errors in `ec`.
  lease acquire(const host& h, error_code& ec, const acquire_site& site = acquire_site::current());
  /// As try_acquire(ep), for a named backend.
  lease try_acquire(const host& h, const acquire_site& site = acquire_site::current());
  /// As async_acquire(ep, token), for a named backend.
  template <class Token>
  auto async_acquire(const host& h, Token&& token, const acquire_site& site = acquire_site::current());
  /// One named backend (all zero for one the pool never saw).
  pool_stats stats(const host& h) const;
  /// As last_connect_error(ep), for a named backend.
  error_code last_connect_error(const host& h) const;

  /// Completion of a lookup: the addresses, or an error. Call it once, from any thread.
  using resolve_done = std::function<void(error_code, std::vector<endpoint_type>)>;
  /// A resolver: `resolver(host, done)` looks `host` up asynchronously (it must not block).
  using resolver = std::function<void(const host&, resolve_done)>;
  /// Look named backends up with `r` instead of getaddrinfo (a service registry, a test's own
  /// table). A lookup that does not call `done` within the connect timeout (or resolve_interval,
  /// if shorter) counts as failed with net::error::timed_out. Null: getaddrinfo again. Applies
  /// to lookups that start after the call.
  void set_resolver(resolver r);
  ///@}

  /// One endpoint's gauges and counters, in a snapshot().
  struct endpoint_stats {
    endpoint_type endpoint{};     ///< the endpoint (default-constructed for a named backend)
    std::optional<host> backend;  ///< the named backend, or none
    pool_stats stats;             ///< its gauges and counters
  };
  /// Every endpoint and named backend the pool has now, and the counters of those it forgot
  /// (endpoint_grace), from one instant: their sum is stats().
  struct stats_snapshot {
    std::vector<endpoint_stats> endpoints;  ///< in no particular order
    pool_stats forgotten;                   ///< counters of forgotten endpoints (gauges zero)
    /// The sum of all: what stats() returns.
    pool_stats total() const {
      pool_stats t = forgotten;
      for (const auto& e : endpoints) t += e.stats;
      return t;
    }
  };
  /// Per-endpoint stats, for metrics (connpool/metrics.hpp). O(endpoints), under the lock once.
  stats_snapshot snapshot() const;

  /// Totals across endpoints.
  pool_stats stats() const;
  /// One endpoint (all zero for an endpoint the pool never saw).
  pool_stats stats(const endpoint_type& ep) const;
  /// With pool_options::connect_backoff: the error of the endpoint's last failed connect, from
  /// that failure until a connect there succeeds (what an acquire failed with
  /// error::endpoint_unavailable was refused for); else none. The throwing acquire() puts it in
  /// its message.
  error_code last_connect_error(const endpoint_type& ep) const;

  /// Close idle connections (retire_close), fail waiting acquires and every later acquire with
  /// error::pool_closed. Leased connections close when they come back. Idempotent.
  void close();

  /// \name Prewarming: connections ready before traffic
  /// Open connections to an endpoint (or named backend) until `n` are idle, counting the ones this
  /// call is connecting, so that the first requests (after a deploy, a failover, a scale-up) find
  /// them instead of paying the connect. Only what the limits give without taking anything from
  /// traffic: never past max_per_endpoint, max_idle_per_endpoint or max_total (no idle connection
  /// of another endpoint is closed for it), at most max_connecting_per_endpoint connects at once
  /// (the next starts as one ends), none during a connect backoff, none while acquires of that
  /// endpoint wait (their own connects serve them). Each connection goes idle as soon as it is
  /// connected and set up, or to an acquire that began to wait meanwhile: nothing is held back.
  /// Connects, setup steps and events are those of any new connection. It starts at most n less the
  /// connections idle when it begins (a connection that leaves idle meanwhile, to traffic or
  /// closed, is not made up for). It stops at the first connect failure (that error; the
  /// connections opened before stay), during a connect backoff (error::endpoint_unavailable, if
  /// nothing was opened), and at close() (pool_closed); no connect starts after acquire_timeout
  /// (then acquire_timeout, if one was still needed), and each is bounded by connect_timeout.
  /// Returns the number of connections it opened (a connection closed at once, by its peer or a
  /// close(), counts): fewer than needed, with no error, where the limits stopped it.
  ///@{

  /// Prewarm, waiting on the calling thread for the pool's executor to run the connects: on a
  /// default-constructed pool's own thread it fails at once with net::error::would_block; on a
  /// pool built on your executor, something must run it on another thread (else it waits until
  /// acquire_timeout, and 200 ms more: use async_prewarm() there). Throws system_error (for
  /// endpoint_unavailable with the last connect error in its message); the count is lost then.
  std::size_t prewarm(const endpoint_type& ep, std::size_t n);
  /// As above, reporting errors in `ec`.
  std::size_t prewarm(const endpoint_type& ep, std::size_t n, error_code& ec);
  /// As above, for a named backend (tcp_pool only).
  std::size_t prewarm(const host& h, std::size_t n);
  /// As above, reporting errors in `ec`.
  std::size_t prewarm(const host& h, std::size_t n, error_code& ec);
  /// Prewarm asynchronously. Completion signature: void(error_code, std::size_t opened), on the
  /// handler's associated executor, else the pool's; never inside this call. Not cancellable
  /// (close() ends it).
  template <class Token>
  auto async_prewarm(const endpoint_type& ep, std::size_t n, Token&& token);
  /// As above, for a named backend (tcp_pool only).
  template <class Token>
  auto async_prewarm(const host& h, std::size_t n, Token&& token);
  ///@}

  /// \name Draining: graceful shutdown (a service's SIGTERM)
  /// close() (no more hand-outs; waiting acquires, connects in flight and every later acquire fail
  /// with error::pool_closed; idle connections close), then wait until no connection is leased
  /// (each lease that comes back closes its connection on the thread that returns it; the drain
  /// ends after the last one's close), or until the deadline. At the deadline, the connections
  /// still leased are cut as options().retire_close says, under the pool's lock, but their
  /// descriptors stay with their leases, which close them when they end:
  /// - graceful: shutdown of both directions, a FIN; the holder's reads see EOF, its writes fail;
  /// - abortive (TCP): an RST at once (Linux's connect(AF_UNSPEC)), no TIME_WAIT; its reads and
  ///   writes fail.
  /// A read or write blocked on a cut connection in another thread returns. The result is the
  /// number of connections cut: 0 when every lease came back in time (a connection whose health
  /// check was running is not cut: close() stopped the check, which closes it). A deadline already
  /// passed cuts at once. Any number of drains may wait at once; close() before is fine.
  ///
  /// A lease's socket must not be closed, released or moved through socket() while a drain may
  /// cut it (use discard()): the cut would reach whatever descriptor took its number.
  ///@{

  /// Drain, waiting on the calling thread (it needs no executor). On a default-constructed pool's
  /// own thread, an asynchronous acquire granted and not yet delivered there, or a health check in
  /// progress, stays leased until the deadline: give such a drain a finite one.
  std::size_t drain(std::chrono::steady_clock::time_point deadline);
  /// As above, with the deadline `timeout` from now.
  std::size_t drain(std::chrono::steady_clock::duration timeout);
  /// Drain asynchronously. Completion signature: void(error_code, std::size_t cut), on the
  /// handler's associated executor, else the pool's; never inside this call. The error is none,
  /// or net::error::operation_aborted when the pool object is destroyed first (nothing is cut
  /// then: leases may outlive the pool). The deadline runs on the pool's executor. Not
  /// cancellable: a drain is begun to be finished (close() has already happened).
  template <class Token>
  auto async_drain(std::chrono::steady_clock::time_point deadline, Token&& token);
  /// As above, with the deadline `timeout` from the initiation (a deferred drain's launch).
  template <class Token>
  auto async_drain(std::chrono::steady_clock::duration timeout, Token&& token);
  ///@}

  /// \name Running an exchange, with one safe retry
  /// run() acquires a connection (as acquire() does, `site` included), runs `fn` on its lease (a
  /// request and its response), then releases the lease, or discards it if `fn` failed. `fn(lease&)`
  /// returns an error_code: none for success, else the error of its reads or writes (map your
  /// protocol library's own end-of-stream error, as Beast's http::error::end_of_stream, to
  /// net::error::eof). It may release or discard the lease itself, which gives up the retry.
  ///
  /// One retry, only when it is safe: `r` is retry::idempotent; the exchange failed on a reused
  /// connection with end of stream, a reset or a broken pipe; the peer had closed or reset the
  /// connection (its TCP state says so; not after lease::shutdown(), nor a drain: a shutdown made
  /// through socket() directly is not seen, as for release()), and no segment with data arrived
  /// during the lease (the kernel's count: Linux 4.6 on, TCP; a local_pool is never retried, nor
  /// TLS over a lease when the server's close_notify, which is data, arrived). The server had closed the
  /// connection as the request went out: the stale keep-alive race, the part no probe can see.
  /// Then `fn` runs once more, on a new connection, if the retry budget allows
  /// (pool_options::retry_budget_ratio; not once the pool is closed): counted retries, else
  /// retries_refused, and reported to the listener (retried, retry_refused). For room, the
  /// endpoint's least recently used idle connection is closed at max_per_endpoint; where no
  /// connect can start now (the connect limit), an idle connection serves it, or one another
  /// lease gives back. Go's net/http replays requests on the same rule.
  ///
  /// The error is the acquire's, or `fn`'s (after a retry, the second attempt's; the first's if
  /// the retry got no connection); none on success.
  ///@{

  /// Run `fn` as above; throws system_error with the error.
  template <class Fn>
  void run(const endpoint_type& ep, retry r, Fn&& fn, const acquire_site& site = acquire_site::current());
  /// As above, reporting the error in `ec`.
  template <class Fn>
  void run(const endpoint_type& ep, retry r, Fn&& fn, error_code& ec, const acquire_site& site = acquire_site::current());
  /// As above, for a named backend (tcp_pool only; the synchronous acquire by name's rules apply).
  template <class Fn>
  void run(const host& h, retry r, Fn&& fn, const acquire_site& site = acquire_site::current());
  /// As above, reporting the error in `ec`.
  template <class Fn>
  void run(const host& h, retry r, Fn&& fn, error_code& ec, const acquire_site& site = acquire_site::current());

  /// Completion of an asynchronous exchange: call it once, with its error or none.
  using run_done = std::function<void(error_code)>;
  /// Asynchronously: `fn(lease&, run_done done)` starts the exchange (without blocking: it runs on
  /// the pool's executor) and calls `done` once when it has ended; the lease lives until then.
  /// Completion signature: void(error_code), on the handler's associated executor, else the
  /// pool's; never inside this call. If `fn` throws, the lease is discarded and the error is
  /// error::exchange_threw.
  ///
  /// Cancellable (Asio 1.19 / Boost 1.77 on) through the handler's cancellation slot
  /// (`bind_cancellation_slot`, an awaitable operator): an acquire in flight stops as
  /// async_acquire()'s does, on any cancellation type. During the exchange, whose request may
  /// have gone out, only a terminal cancellation acts: the operations pending on the lease's
  /// socket are cancelled and the socket is shut down, so that they and any `fn` starts later
  /// fail at once, and `fn` calls `done` (an exchange that waits on something else ends when it
  /// ends); partial and total cancellations are ignored there. No retry follows a cancellation,
  /// the lease of a cancelled exchange is discarded (a connection granted as the cancellation came
  /// goes back idle), and the error is operation_aborted (none if the exchange had succeeded).
  /// Emit it on the handler's executor, as async_acquire()'s.
  ///
  /// For a pool built on your executor: a default-constructed pool's sockets live on a context
  /// no thread runs (see basic_pool()), where an asynchronous exchange never ends.
  template <class Fn, class Token>
  auto async_run(const endpoint_type& ep, retry r, Fn&& fn, Token&& token,
                 const acquire_site& site = acquire_site::current());
  /// As above, for a named backend (tcp_pool only).
  template <class Fn, class Token>
  auto async_run(const host& h, retry r, Fn&& fn, Token&& token, const acquire_site& site = acquire_site::current());
  ///@}

  /// The executor the pool's background work runs on.
  executor_type get_executor() const;

  /// Completion of a setup step: call it once, with no error to let the connection be handed out,
  /// or with the error the acquire should get.
  using setup_done = std::function<void(error_code)>;
  /// A setup step: `step(socket, endpoint, done)`.
  using setup_step = std::function<void(socket_type&, const endpoint_type&, setup_done)>;

  /// Run `step` on every new connection, after it connects and before it is handed out or counted
  /// as created: AUTH, SELECT, a protocol hello. The step may write and read on the socket; it runs
  /// on the pool's executor, asynchronously (it must not block that thread), and calls `done` once
  /// when it has finished. The socket's default executor is a strand of the pool's executor (where
  /// the executor type can hold one, as any_io_executor can), so the step's handlers never run
  /// concurrently with the pool's own work on it; on another executor type, the executor must be
  /// single-threaded. Copies of `done` keep the socket object alive: let the handlers that use
  /// the socket hold one, and destroy them before the pool.
  ///
  /// The connect deadline bounds connect and setup together (connect_timeout, or acquire_timeout if
  /// nearer). If the step fails (done with an error), throws (error::setup_failed), or passes the
  /// deadline (connect_timeout or acquire_timeout: its socket is closed and its operations fail),
  /// the connection is closed with RST, counted in connect_failed, never created or leased, and the
  /// acquire gets that error. close() ends a step in progress (pool_closed), and so does an
  /// async_acquire's cancellation (operation_aborted, not counted as failed); a `done` after that
  /// is ignored.
  ///
  /// A synchronous acquire runs the step on the pool's executor while the calling thread waits,
  /// until the deadline and at most 200 ms more for the executor to report (then connect_timeout).
  /// On a default-constructed pool's own thread (in a completion handler) it fails at once with
  /// net::error::would_block; on a pool built on your executor, do not acquire synchronously from
  /// the only thread that runs it. A null step removes it. Applies to connects that complete after
  /// the call. Without a step, a new connection costs one read of it under the pool's lock.
  void set_setup(setup_step step);

  /// A health check: `check(socket, endpoint, done)`, run as a setup step is (e.g. a Redis PING
  /// and its PONG); `done` with no error means the connection is healthy.
  using health_check = std::function<void(socket_type&, const endpoint_type&, setup_done)>;

  /// Check connections that may have died where no probe can see it (a NAT or load balancer that
  /// dropped them silently, a peer that stopped answering): `check` runs, on the pool's executor as
  /// a setup step does (see set_setup(): the socket, the strand, `done`), on
  /// - every connection taken from idle that has been idle for options().validate_after_idle or
  ///   longer (since its last lease or passed check), before it is handed out, bounded by
  ///   validate_timeout and the acquire's deadline;
  /// - with options().ping_interval, every connection idle that long, in the background, again
  ///   every ping_interval while it stays idle: a keepalive for NAT and load balancer mappings.
  ///   Such a connection counts as idle meanwhile, is not handed out, and keeps its idle time for
  ///   idle_timeout.
  ///
  /// The probe runs before the check, and again after it passed. A check that fails, throws or
  /// passes its deadline closes the connection with RST, counted validation_failed (not reused);
  /// the acquire goes on to the next idle connection, or connects. A connection that was checked
  /// and failed is never handed out.
  ///
  /// try_acquire() never runs a check: a connection that needs one is left idle for an acquire.
  /// A synchronous acquire waits for the check as for a setup step; on a default-constructed pool's
  /// own thread it fails with net::error::would_block instead. An asynchronous acquire's
  /// cancellation and close() end a check in progress (that connection is closed). A null check
  /// removes it. Without a check, these options cost nothing.
  void set_health_check(health_check check);

  /// An event (connpool/events.hpp).
  using event = basic_pool_event<endpoint_type>;
  /// A listener: called with each event.
  using listener = std::function<void(const event&)>;

  /// Tell `l` what happens: connects started, succeeded and failed (with their time and error),
  /// acquires served (from idle or a new connection, whether they queued, how long they took) and
  /// failed (acquire_timeout, too_many_waiters, a connect's error...), leases released and
  /// discarded (how long they were held), and connections closed (the reason, as pool_stats counts
  /// it, the age and the leases served). See event_kind for each event's fields.
  ///
  /// `l` runs on the thread where the event happens (the acquiring or releasing thread, the pool's
  /// executor for background work), outside the pool's lock, possibly on several threads at once:
  /// it must be thread-safe and quick. It may call stats(); it must not acquire, release or close
  /// (an event can come from inside a release, or from the pool's own thread). An exception it
  /// throws is ignored. A connect that began while `l` was set ends with connect_succeeded or
  /// connect_failed (close() and a cancellation: pool_closed, operation_aborted). Not reported: a
  /// synchronous acquire by name on a default pool's own thread (served from idle or would_block),
  /// and try_acquire() calls that found nothing.
  ///
  /// Null removes it; a call already under way may still finish after set_listener() returns.
  /// Events can come after the pool object is destroyed (a lease that outlived it, an asynchronous
  /// acquire pending on your executor): what `l` uses must outlive them. Without a listener,
  /// events cost a relaxed atomic load or two per acquire and per release, and no clock read.
  void set_listener(listener l);

  /// The options the pool was constructed with.
  const pool_options& options() const noexcept;

 private:
  lease acquire_observed(const endpoint_type& ep, error_code& ec, const acquire_site& site, bool fresh = false);
  using state_type = detail::pool_state<Protocol, Executor>;
  template <class Lease = lease>
  struct initiate_acquire;
  template <class Lease = lease>
  struct initiate_acquire_named;
  template <class Handler, class Lease = lease>
  struct completion_impl;
  template <class Handler>
  struct count_completion_impl;
  template <class Key, class Fn>
  void run_sync(const Key& key, retry r, Fn& fn, error_code& ec, const acquire_site& site);
  lease acquire_for_run(const endpoint_type& ep, bool fresh, error_code& ec, const acquire_site& site);
  lease acquire_for_run(const host& h, bool fresh, error_code& ec, const acquire_site& site);
  lease acquire_named(const host& h, bool fresh, error_code& ec, const acquire_site& site);
  /// run()'s retry budget, by the key of `key` (`sync_by_name`: a synchronous run() by name; see
  /// pool_state::retry_allowed()).
  template <class Key>
  static bool retry_allowed(state_type& s, const Key& key, error_code ec, bool sync_by_name);
  template <class Handler, class Fn, class Key>
  struct run_op;
  static bool shut(const lease& l) noexcept;
  template <class Fn, class Key>
  struct initiate_run;
  struct initiate_drain;
  struct initiate_prewarm;

  basic_pool(std::unique_ptr<net::io_context> own, pool_options options);
  static typename state_type::setup_step as_step(setup_step step);
  template <class>
  friend class basic_tls_pool;  // connpool/tls.hpp: a layer over this pool's sockets

  std::shared_ptr<state_type> state_;
  std::unique_ptr<net::executor_work_guard<net::io_context::executor_type>> work_;
  std::thread thread_;
};

/// The right to use one connection until release(), discard() or destruction. Move-only.
template <class Protocol, class Executor>
class basic_pool<Protocol, Executor>::lease {
 public:
  /// An empty lease (what a failed acquire returns).
  lease() noexcept = default;
  /// Takes the connection `other` holds, if any; `other` is left empty.
  lease(lease&& other) noexcept;
  /// Discards the connection this lease holds, if any (as discard() does: closed gracefully, never
  /// reused), then takes the one `other` holds; `other` is left empty. No effect if `other` is this
  /// lease.
  lease& operator=(lease&& other) noexcept;
  /// Not copyable.
  lease(const lease&) = delete;
  /// Not copyable.
  lease& operator=(const lease&) = delete;

  /// If neither release() nor discard() was called: the connection is closed and never reused,
  /// because its protocol state is unknown. Counted as discarded.
  ~lease();

  /// The connected socket. Precondition: the lease is not empty (else std::logic_error).
  socket_type& socket();
  /// `&socket()`, for `lease->write_some(...)`; the same precondition.
  socket_type* operator->() { return &socket(); }

  /// True while the lease holds a connection.
  explicit operator bool() const noexcept { return conn_ != nullptr; }

  /// True if the connection was taken from idle rather than freshly connected. A request on a
  /// reused connection can still meet a peer that closed just after the check: idempotent requests
  /// may retry once on a fresh connection.
  bool reused() const noexcept { return reused_; }

  /// The endpoint this connection was made to. Precondition: the lease is not empty (else
  /// std::logic_error).
  endpoint_type endpoint() const;

  /// The exchange is complete: hand the connection back for reuse. A connection whose peer sent a
  /// FIN or RST during the lease is closed, not kept: on Linux the idle watch has recorded it (or
  /// closes it as soon as it gets to the event), so release() makes no syscall; where there is no
  /// watch, release() probes. If the lease set the socket non-blocking, release() sets it back: the
  /// next lease starts in blocking mode. Bytes left unread are never handed to the next lease: the
  /// probe before every hand-out finds them and closes the connection (counted unexpected_data).
  /// Synchronous: on return the connection is idle or closed, and the lease is empty. No effect on
  /// an empty lease.
  void release() noexcept;

  /// Close the connection now and never reuse it. No effect on an empty lease.
  void discard(close_mode mode = close_mode::graceful) noexcept;

  /// Shut down one or both directions of the connection (a half-close, for protocols that end a
  /// request with EOF), and mark it so that release() closes it instead of keeping it: a
  /// connection whose sending side is shut down would fail the next lease's first write. The pool
  /// cannot see a shutdown made through socket() directly (that would cost a syscall on every
  /// release): after one, call discard(). Throws system_error; precondition: not empty.
  void shutdown(net::socket_base::shutdown_type what);
  /// As above, reporting errors in `ec`. The lease is marked even if the shutdown failed.
  void shutdown(net::socket_base::shutdown_type what, error_code& ec);

 private:
  friend class basic_pool;
  template <class>
  friend class basic_tls_pool;
  using connection = typename state_type::connection;
  lease(state_type* s, connection* c, bool reused) noexcept : state_(s), conn_(c), reused_(reused) {}

  // Not an owning pointer, so a lease costs no reference count: once the pool object is gone, the
  // state keeps itself alive while any connection is leased (pool_state::orphan()).
  state_type* state_ = nullptr;
  connection* conn_ = nullptr;
  bool reused_ = false;
  bool shut_ = false;  // shutdown() was called: never reuse
};

CONNPOOL_ABI_END
}  // namespace connpool

#include "connpool/impl/basic_pool.hpp"

#endif
