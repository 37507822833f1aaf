#ifndef CONNPOOL_POOL_OPTIONS_HPP
#define CONNPOOL_POOL_OPTIONS_HPP

#include <chrono>
#include <cstddef>
#include <system_error>

#include "connpool/error.hpp"

namespace connpool {
CONNPOOL_ABI_BEGIN

/// How a connection is closed.
enum class close_mode {
  graceful,  ///< FIN: shutdown(send), then close. The side that closes first keeps TIME_WAIT for 60 s.
  abortive,  ///< RST: SO_LINGER {1,0}, then close. No TIME_WAIT anywhere; unsent data is dropped.
};

/// Whether basic_pool::run() may run an exchange a second time.
enum class retry {
  never,      ///< run it once: it must not happen twice (a payment, an increment, a non-idempotent write)
  idempotent  ///< running it twice does no harm (a read, a GET, a SET of a fixed value)
};

/// Pool configuration. For limits and durations, 0 means "none" / "never".
struct pool_options {
  std::size_t max_per_endpoint = 64;        ///< idle + leased + connecting, per endpoint
  std::size_t max_idle_per_endpoint = 64;   ///< idle connections beyond this are closed (surplus)
  /// For each endpoint in use (a lease of it is out or ended within endpoint_grace, or an acquire
  /// of it waits; always, with endpoint_grace 0), keep at least this many connections idle: after a release or a close
  /// leaves fewer, the pool opens more in the background (as basic_pool::prewarm() does, within
  /// the limits, after a random delay of up to 200 ms; one that fails is tried again after 1 s, or
  /// after the connect backoff), and idle_timeout does not close the last ones (their health check
  /// is then due before their next hand-out; renewed, they are the next handed out). A refill
  /// the limits refuse (max_per_endpoint, max_total, the connect limit, acquires waiting) is asked
  /// again at the next release or close. At most max_idle_per_endpoint, max_per_endpoint and
  /// max_total. 0: off.
  std::size_t min_idle_per_endpoint = 0;
  std::size_t max_total = 0;                ///< idle + leased + connecting, across endpoints
  /// An acquire that would wait while this many acquires of its endpoint wait already fails at
  /// once with error::too_many_waiters (counted waiters_rejected): fail fast under overload
  /// instead of queueing past any useful deadline. 0: no limit.
  std::size_t max_waiting_per_endpoint = 0;
  /// At most this many connects in flight per endpoint (a named backend's Happy Eyeballs race
  /// counts one); acquires beyond it wait for a connect to end or a connection to come back. Not
  /// off by default: it stops the connect storm a backend restart brings, when every waiting
  /// acquire would dial at once (and again after each refusal). 0: no limit.
  std::size_t max_connecting_per_endpoint = 4;
  /// Connect failure backoff: after a connect to an endpoint fails, no new connect starts there for
  /// a random time in [0, connect_backoff * 2^(failures - 1)], at most connect_backoff_max (full
  /// jitter; `failures` counts rounds: connects in flight together that fail count once). Meanwhile an acquire that finds no idle connection fails at once with
  /// error::endpoint_unavailable (counted backoff_rejected), as do the waiting acquires once no
  /// connection is leased or connecting there to serve them. After it, one trial connect at a
  /// time; the first success ends the backoff. 0: off.
  std::chrono::milliseconds connect_backoff{0};
  std::chrono::milliseconds connect_backoff_max{10000};  ///< the longest connect backoff
  /// A connection is closed when its lease count reaches this (counted max_uses), as nginx's
  /// keepalive_requests, so that load spreads again across backends behind a balancer. 0: no limit.
  std::size_t max_uses = 0;
  /// Leak detection: a lease held this long is reported once (the listener's lease_held_long
  /// event, with where it was acquired: basic_pool::acquire()'s `site`), counted in held_long and
  /// leases_held_long, and reported again when it ends (long_lease_ended). Checked by the retire
  /// timer while the pool is open. Costs, when set, a second short lock per acquire and per
  /// release or discard. 0: off.
  std::chrono::milliseconds lease_warn_after{0};
  /// Bounds each connection attempt, from its start; error::connect_timeout when it passes first
  /// (when acquire_timeout passes first: error::acquire_timeout).
  std::chrono::milliseconds connect_timeout{3000};
  std::chrono::milliseconds acquire_timeout{5000};  ///< bounds the whole acquire, connecting included
  std::chrono::milliseconds idle_timeout{60000};    ///< a connection idle for longer is closed
  std::chrono::milliseconds max_lifetime{0};        ///< jittered: each connection gets 90-100% of it
  close_mode retire_close = close_mode::graceful;   ///< how the pool closes connections it retires itself
  /// An endpoint with no connections, no waiting acquires and no connect in flight for this long is
  /// forgotten: its entry is freed (its counters stay in the totals of stats(); stats(ep) starts
  /// again from zero). Keeps memory and every per-endpoint walk bounded by the endpoints in use,
  /// when endpoints come and go. 0: never forget.
  std::chrono::milliseconds endpoint_grace{60000};
  /// Learn each endpoint's idle timeout from its peer, and close idle connections before the peer
  /// does, so that no request meets a connection the server is closing (the stale keep-alive race).
  /// A sample: the peer closes (FIN or RST) an idle connection, seen by the idle watch or by the
  /// probe at hand-out; its idle age since its last lease or passed check. Ages under 500 ms,
  /// connections in a health check, put back unchecked or kept by min_idle_per_endpoint, and
  /// leased ones count nothing. Three samples in a row within a factor of two, with no idle
  /// connection of the endpoint alive and older, teach the youngest of them, T. From then on idle
  /// connections of the endpoint close at T less the margin (learned_idle_margin) after their last
  /// lease (counted learned_idle_timeout), those kept by min_idle_per_endpoint too (then refilled),
  /// but one: held back (never handed out) until the peer closes it, its close a sample too, so
  /// that T follows the peer. It gives way to traffic (a connect that max_per_endpoint would
  /// refuse closes it) and to the limits (max_idle_per_endpoint, max_total, idle_timeout). One
  /// sample younger than T lowers T to it, to half of what the last three taught at most (a
  /// restart's young closes cannot pull it further); three in a row within a factor of two, the
  /// youngest more than the margin above T, lift it; a held-back connection still open at twice
  /// what the last three taught forgets T (and is handed out again). An endpoint forgotten
  /// (endpoint_grace) keeps its T for when it comes back (the 1,024 forgotten last). The retire timer
  /// fires at most 20 ms late while this is on. Shown in stats(ep).peer_idle_timeout, the
  /// listener's idle_timeout_learned event and metrics.
  bool learn_idle_timeout = true;
  /// The margin before a learned idle timeout T: this or T / 10, whichever is larger, and at most
  /// T / 2 (so a 1 s timeout is beaten by 0.5 s, 60 s by 6 s).
  std::chrono::milliseconds learned_idle_margin{1000};
  /// The retry budget of basic_pool::run() (Finagle's RetryBudget): over the last 10 s, the pool's
  /// retries may reach this fraction of its run() calls, plus retry_budget_per_second for each
  /// second of it, so that a server in trouble never gets a storm of retries. A retry the budget
  /// refuses is not made (counted retries_refused). 0 and 0: no retries.
  double retry_budget_ratio = 0.2;
  std::size_t retry_budget_per_second = 10;  ///< see retry_budget_ratio

  /// \name Backends by name
  /// For acquires by connpool::host.
  ///@{

  /// A named backend's addresses are looked up again this often while it is in use (open
  /// connections or waiting acquires), in the background; a lookup that fails keeps the last good
  /// addresses. Connections to an address that left the set are closed (address_removed). Also
  /// bounds each lookup (or connect_timeout, if shorter). 0: look up once.
  std::chrono::milliseconds resolve_interval{30000};
  /// Happy Eyeballs (RFC 8305): the next address's connect starts this long after the last one
  /// started, or as soon as it fails; the first to connect wins and the others are closed.
  std::chrono::milliseconds happy_eyeballs_delay{250};
  ///@}

  /// \name Health check
  /// Used only with a check set by basic_pool::set_health_check(); without one they cost nothing.
  ///@{

  /// A connection idle this long (since its last lease or its last passed check) is checked
  /// before it is handed out; one used more recently is handed out after the probe alone.
  /// 0: check at every hand-out from idle.
  std::chrono::milliseconds validate_after_idle{1000};
  /// Bounds each check (at an acquire, the acquire's deadline too, if nearer). Must be positive.
  std::chrono::milliseconds validate_timeout{1000};
  /// Check connections in the background once they have been idle this long, and again every
  /// ping_interval while they stay idle, so that NAT and load balancer mappings stay alive and a
  /// silently dropped connection is found before an acquire meets it. Idle time for idle_timeout
  /// still counts from the last lease. 0: no background checks.
  std::chrono::milliseconds ping_interval{0};
  ///@}

  /// \name Socket options
  /// Applied to TCP sockets before connecting; Unix stream sockets get none. If the kernel refuses
  /// one, the connect fails with the kernel's error.
  ///@{
  bool tcp_nodelay = true;                     ///< TCP_NODELAY (Nagle's algorithm off)
  std::chrono::seconds keepalive_idle{0};      ///< SO_KEEPALIVE + TCP_KEEPIDLE; 0 leaves keepalive off
  std::chrono::seconds keepalive_interval{0};  ///< TCP_KEEPINTVL; 0 keeps the kernel's value
  unsigned keepalive_count = 0;                ///< TCP_KEEPCNT; 0 keeps the kernel's value
  std::chrono::milliseconds user_timeout{0};   ///< TCP_USER_TIMEOUT (Linux); 0 keeps the kernel's value
  ///@}

  /// error::invalid_options if a value is out of range (see invalid_field()), else a default
  /// error_code. The pool's constructors throw system_error with it, naming the field.
  error_code validate() const noexcept {
    return invalid_field() ? error_code(error::invalid_options) : error_code();
  }

  /// The name of the first field whose value is out of range, or nullptr. Durations must not be
  /// negative; any other duration is valid, up to `std::chrono::milliseconds::max()` (a deadline
  /// past the clock's range means "never"); validate_timeout must be positive. The TCP options must fit what Linux accepts:
  /// keepalive_idle and keepalive_interval at most 32767 s, keepalive_count at most 127,
  /// user_timeout at most 2^31 - 1 ms.
  const char* invalid_field() const noexcept {
    using std::chrono::milliseconds;
    using std::chrono::seconds;
    if (connect_timeout < milliseconds::zero()) return "connect_timeout";
    if (acquire_timeout < milliseconds::zero()) return "acquire_timeout";
    if (idle_timeout < milliseconds::zero()) return "idle_timeout";
    if (max_lifetime < milliseconds::zero()) return "max_lifetime";
    if (endpoint_grace < milliseconds::zero()) return "endpoint_grace";
    if (resolve_interval < milliseconds::zero()) return "resolve_interval";
    if (connect_backoff < milliseconds::zero()) return "connect_backoff";
    if (connect_backoff_max < milliseconds::zero()) return "connect_backoff_max";
    if (happy_eyeballs_delay < milliseconds::zero()) return "happy_eyeballs_delay";
    if (validate_after_idle < milliseconds::zero()) return "validate_after_idle";
    if (validate_timeout <= milliseconds::zero()) return "validate_timeout";
    if (ping_interval < milliseconds::zero()) return "ping_interval";
    if (lease_warn_after < milliseconds::zero()) return "lease_warn_after";
    if (learned_idle_margin < milliseconds::zero()) return "learned_idle_margin";
    if (!(retry_budget_ratio >= 0 && retry_budget_ratio <= 1000)) return "retry_budget_ratio";  // NaN too
    if ((max_idle_per_endpoint && min_idle_per_endpoint > max_idle_per_endpoint) ||
        (max_per_endpoint && min_idle_per_endpoint > max_per_endpoint) ||
        (max_total && min_idle_per_endpoint > max_total))
      return "min_idle_per_endpoint";
    if (keepalive_idle < seconds::zero() || keepalive_idle > seconds(32767)) return "keepalive_idle";
    if (keepalive_interval < seconds::zero() || keepalive_interval > seconds(32767)) return "keepalive_interval";
    if (keepalive_count > 127) return "keepalive_count";
    if (user_timeout < milliseconds::zero() || user_timeout > milliseconds(2147483647)) return "user_timeout";
    return nullptr;
  }
};

/// A snapshot of the pool's gauges and counters (totals, or one endpoint).
struct pool_stats {
  /// \name Gauges
  /// The state right now.
  ///@{
  std::size_t idle = 0;        ///< connections waiting in the pool
  std::size_t leased = 0;      ///< connections handed out
  std::size_t connecting = 0;  ///< connections being opened
  std::size_t waiting = 0;     ///< acquires waiting for a free slot or connection
  std::size_t held_long = 0;   ///< leases held lease_warn_after or longer (reported, not ended yet)
  ///@}

  /// \name Counters
  /// Since the pool was made.
  ///@{
  std::size_t created = 0;           ///< connections opened successfully
  std::size_t reused = 0;            ///< acquires served from idle (the connection passed its probe)
  std::size_t released = 0;          ///< release() calls (one after lease::shutdown() counts as discarded)
  std::size_t discarded = 0;  ///< discard() calls, leases destroyed unreleased, and connections granted to an
                              ///< async acquire that was destroyed before it completed
  std::size_t connect_failed = 0;    ///< connection attempts that failed (timeouts included; those
                                     ///< stopped by close() or by cancellation not)
  std::size_t acquire_timeouts = 0;  ///< acquires that failed with error::acquire_timeout
  std::size_t waiters_rejected = 0;  ///< acquires that failed with error::too_many_waiters
  std::size_t backoff_rejected = 0;  ///< acquires that failed with error::endpoint_unavailable
  std::size_t leases_held_long = 0;  ///< leases reported held lease_warn_after or longer
  std::size_t retries = 0;           ///< run() exchanges run a second time, on a new connection
  std::size_t retries_refused = 0;   ///< run() retries the retry budget refused
  ///@}

  /// \name Connections the pool closed, by reason
  /// Counters since the pool was made.
  ///@{
  std::size_t peer_closed = 0;      ///< the peer had sent FIN
  std::size_t peer_reset = 0;       ///< the peer reset it, or another socket error was pending
  std::size_t unexpected_data = 0;  ///< bytes arrived on an idle connection (protocol desync)
  std::size_t idle_timeout = 0;     ///< idle longer than idle_timeout
  std::size_t max_lifetime = 0;     ///< older than its (jittered) max_lifetime
  std::size_t surplus = 0;          ///< over max_idle_per_endpoint, or evicted to make room under max_total
  std::size_t pool_closed = 0;      ///< closed by close(), or returned after it
  std::size_t validation_failed = 0;  ///< failed its health check, or the check passed its deadline
  std::size_t address_removed = 0;    ///< its address left its named backend's addresses (a refresh)
  std::size_t max_uses = 0;           ///< reached max_uses leases
  std::size_t learned_idle_timeout = 0;  ///< idle for the learned idle timeout less the margin (learn_idle_timeout)
  ///@}

  /// The peer's idle timeout the pool learned for this endpoint (pool_options::learn_idle_timeout),
  /// or 0: none. In stats(ep) only; 0 in the totals, which add endpoints up.
  std::chrono::milliseconds peer_idle_timeout{0};

  /// Connections currently open (idle + leased), plus those being opened.
  std::size_t open() const noexcept { return idle + leased + connecting; }

  /// Connections the pool closed, for every reason (discarded included).
  std::size_t closed() const noexcept {
    return discarded + peer_closed + peer_reset + unexpected_data + idle_timeout + max_lifetime + surplus +
           pool_closed + validation_failed + address_removed + max_uses + learned_idle_timeout;
  }

  /// Adds every gauge and counter of `o`.
  pool_stats& operator+=(const pool_stats& o) noexcept {
    idle += o.idle;
    leased += o.leased;
    connecting += o.connecting;
    waiting += o.waiting;
    held_long += o.held_long;
    created += o.created;
    reused += o.reused;
    released += o.released;
    discarded += o.discarded;
    connect_failed += o.connect_failed;
    acquire_timeouts += o.acquire_timeouts;
    peer_closed += o.peer_closed;
    peer_reset += o.peer_reset;
    unexpected_data += o.unexpected_data;
    idle_timeout += o.idle_timeout;
    max_lifetime += o.max_lifetime;
    surplus += o.surplus;
    pool_closed += o.pool_closed;
    validation_failed += o.validation_failed;
    address_removed += o.address_removed;
    max_uses += o.max_uses;
    learned_idle_timeout += o.learned_idle_timeout;
    waiters_rejected += o.waiters_rejected;
    backoff_rejected += o.backoff_rejected;
    leases_held_long += o.leases_held_long;
    retries += o.retries;
    retries_refused += o.retries_refused;
    return *this;
  }
};

CONNPOOL_ABI_END
}  // namespace connpool

#endif
