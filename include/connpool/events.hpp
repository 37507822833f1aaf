#ifndef CONNPOOL_EVENTS_HPP
#define CONNPOOL_EVENTS_HPP

/// \file
/// What a pool's listener is told (basic_pool::set_listener()).

#include <chrono>
#include <cstdint>

#include "connpool/detail/config.hpp"
#include "connpool/error.hpp"
#include "connpool/host.hpp"

namespace connpool {
CONNPOOL_ABI_BEGIN

/// Why the pool closed a connection: each is the pool_stats counter of the same name.
enum class close_reason {
  discarded,          ///< discard(), a lease destroyed unreleased
  peer_closed,        ///< the peer had sent FIN (or close_notify, over TLS)
  peer_reset,         ///< the peer reset it, or another socket error was pending
  unexpected_data,    ///< bytes arrived on an idle connection (protocol desync)
  idle_timeout,       ///< idle longer than idle_timeout
  max_lifetime,       ///< older than its (jittered) max_lifetime
  surplus,            ///< over max_idle_per_endpoint, or evicted to make room under max_total
  pool_closed,        ///< closed by close(), or returned after it
  validation_failed,  ///< failed its health check
  address_removed,    ///< its address left its named backend's addresses
  max_uses,           ///< reached max_uses leases
  /// idle for its endpoint's learned idle timeout less the margin (pool_options::learn_idle_timeout)
  learned_idle_timeout
};

/// The name of `r`, as pool_stats spells its counter ("peer_closed").
inline const char* to_string(close_reason r) noexcept {
  switch (r) {
    case close_reason::discarded: return "discarded";
    case close_reason::peer_closed: return "peer_closed";
    case close_reason::peer_reset: return "peer_reset";
    case close_reason::unexpected_data: return "unexpected_data";
    case close_reason::idle_timeout: return "idle_timeout";
    case close_reason::max_lifetime: return "max_lifetime";
    case close_reason::surplus: return "surplus";
    case close_reason::pool_closed: return "pool_closed";
    case close_reason::validation_failed: return "validation_failed";
    case close_reason::address_removed: return "address_removed";
    case close_reason::max_uses: return "max_uses";
    case close_reason::learned_idle_timeout: return "learned_idle_timeout";
  }
  return "unknown";
}

/// Where a lease was acquired (pool_options::lease_warn_after): the caller's source location,
/// which the acquire functions record through their default argument, or a tag the caller passes
/// instead (`pool.acquire(ep, "cache refill")`). Holds pointers only: to string literals, or to
/// other strings that outlive the lease (which may outlive the pool). `file` is null for a tag.
struct acquire_site {
  const char* file = nullptr;      ///< the source file, or null (a tag)
  const char* function = nullptr;  ///< the function, or the tag
  unsigned line = 0;               ///< the line, or 0 (a tag)

  constexpr acquire_site() noexcept = default;
  /// A tag instead of a source location.
  constexpr acquire_site(const char* tag) noexcept : function(tag) {}  // NOLINT(google-explicit-constructor)
  /// Its caller's location, where the compiler gives it (g++, clang++); else empty.
#if defined(__GNUC__) || defined(__clang__)
  static constexpr acquire_site current(const char* file = __builtin_FILE(), unsigned line = __builtin_LINE(),
                                        const char* function = __builtin_FUNCTION()) noexcept {
    acquire_site s;
    s.file = file;
    s.function = function;
    s.line = line;
    return s;
  }
#else
  static constexpr acquire_site current() noexcept { return {}; }
#endif
};

/// What happened (pool_event::kind).
enum class event_kind {
  connect_started,    ///< a new connection's connect began (a named backend's: before it has an address)
  connect_succeeded,  ///< it connected and its setup step (TLS handshake, ...) passed: `duration`
  connect_failed,     ///< it failed (`error`, `duration`); not for a connect stopped by close() or a cancellation
  acquired,           ///< an acquire got a connection (`source`, `waited`, `duration`: the acquire's time)
  acquire_failed,     ///< an acquire failed (`error`: acquire_timeout, too_many_waiters, ...; `duration`)
  released,           ///< a lease was released (`duration`: how long it was held)
  discarded,          ///< a lease was discarded or destroyed unreleased (`duration`)
  closed,             ///< the pool closed a connection (`reason`, `duration`: its age, `uses`)
  /// a connect failure started (or lengthened) the endpoint's connect backoff (pool_options::
  /// connect_backoff): `error` the connect's, `duration` the backoff, `uses` the consecutive failures
  backoff_started,
  backoff_ended,  ///< a connect succeeded after failures: the backoff is over (`uses`: the failures before)
  /// a lease has been held pool_options::lease_warn_after or longer (`duration`: so far; `site`:
  /// where it was acquired); reported once per lease, on the pool's executor
  lease_held_long,
  /// a lease reported by lease_held_long ended (`duration`: how long it was held; `site`; `error`:
  /// none), on the thread that ended it, before its released or discarded event
  long_lease_ended,
  /// the endpoint's learned idle timeout changed (pool_options::learn_idle_timeout): `duration`
  /// the new value, or 0 when it was forgotten; on the thread that saw the change (a value an
  /// endpoint forgotten and back again recalls: at the pool's next timer or watch event)
  idle_timeout_learned,
  /// run() runs an exchange again, on a new connection (or an idle one where no connect can start
  /// now): `error` the first attempt's (EOF, a reset or a broken pipe on a reused connection,
  /// before any byte of the response)
  retried,
  /// as retried, but the retry budget refused it: `error` is the error run() returns
  retry_refused
};

/// Where an acquire's connection came from (pool_event::source).
enum class acquire_source {
  idle,    ///< an idle connection, probed (and checked, with a health check)
  connect  ///< a new connection
};

/// One event. Pointers are valid during the call only.
template <class Endpoint>
struct basic_pool_event {
  event_kind kind = event_kind::acquired;  ///< what happened
  /// The connection's endpoint; for an acquire, connect or failure without a connection, the
  /// endpoint acquired (null for a named backend, whose address is not known then).
  const Endpoint* endpoint = nullptr;
  const host* backend = nullptr;  ///< the named backend, for a connection or acquire by name; else null
  error_code error;               ///< connect_failed, acquire_failed: why
  /// connect_*: since the connect began; acquired, acquire_failed: since the acquire began;
  /// released, discarded: since the lease began; closed: since the connection connected. Zero
  /// where the start was before the listener was set.
  std::chrono::nanoseconds duration{0};
  acquire_source source = acquire_source::idle;  ///< acquired: where from
  bool waited = false;                           ///< acquired, acquire_failed: the acquire queued behind the limits
  close_reason reason = close_reason::discarded;  ///< closed: why
  /// closed: leases it served while the listener was set; backoff_*: consecutive connect failures
  std::uint64_t uses = 0;
  /// lease_held_long, long_lease_ended: where the lease was acquired; else null
  const acquire_site* site = nullptr;
};

CONNPOOL_ABI_END
}  // namespace connpool

#endif
