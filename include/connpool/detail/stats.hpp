#ifndef CONNPOOL_DETAIL_STATS_HPP
#define CONNPOOL_DETAIL_STATS_HPP

// Why connections close, and what a look at an idle socket found: the vocabulary the books and the
// I/O layer share. No I/O here.

#include "connpool/events.hpp"
#include "connpool/pool_options.hpp"

#include "connpool/detail/config.hpp"

namespace connpool {
CONNPOOL_ABI_BEGIN
namespace detail {

/// What a non-blocking look at an idle connection found.
/// `address_removed` is no probe's finding: it is recorded on a leased connection whose address left
/// its named backend's set, so that its release closes it.
enum class probe_result : unsigned char { healthy, peer_closed, peer_reset, unexpected_data, address_removed };

/// Why a connection is closed; each maps to one pool_stats counter (connpool/events.hpp).
using close_reason = connpool::close_reason;

inline close_reason reason_of(probe_result r) noexcept {
  switch (r) {
    case probe_result::peer_closed: return close_reason::peer_closed;
    case probe_result::unexpected_data: return close_reason::unexpected_data;
    case probe_result::address_removed: return close_reason::address_removed;
    default: return close_reason::peer_reset;
  }
}

/// The counter of `s` that counts closes for reason `r`.
inline std::size_t& counter(pool_stats& s, close_reason r) noexcept {
  switch (r) {
    case close_reason::discarded: return s.discarded;
    case close_reason::peer_closed: return s.peer_closed;
    case close_reason::peer_reset: return s.peer_reset;
    case close_reason::unexpected_data: return s.unexpected_data;
    case close_reason::idle_timeout: return s.idle_timeout;
    case close_reason::max_lifetime: return s.max_lifetime;
    case close_reason::surplus: return s.surplus;
    case close_reason::validation_failed: return s.validation_failed;
    case close_reason::address_removed: return s.address_removed;
    case close_reason::max_uses: return s.max_uses;
    case close_reason::learned_idle_timeout: return s.learned_idle_timeout;
    case close_reason::pool_closed: break;
  }
  return s.pool_closed;
}

}  // namespace detail
CONNPOOL_ABI_END
}  // namespace connpool

#endif
