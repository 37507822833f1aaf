#ifndef CONNPOOL_ERROR_HPP
#define CONNPOOL_ERROR_HPP

#include <string>
#include <system_error>
#include <type_traits>

#include "connpool/detail/config.hpp"

namespace connpool {
CONNPOOL_ABI_BEGIN

/// Errors the pool itself reports. System errors (refused, unreachable, EMFILE...) reach the caller
/// unchanged, as the Asio in use reports them (connpool::error_code).
enum class error {
  pool_closed = 1,   ///< the pool was closed (or destroyed) before or while the acquire waited
  acquire_timeout,   ///< acquire_timeout passed before a connection could be handed out
  connect_timeout,   ///< connect_timeout passed while connecting
  invalid_options,   ///< a pool_options value is out of range (for example a negative duration)
  setup_failed,      ///< the connection's setup step (basic_pool::set_setup()) threw an exception
  too_many_waiters,  ///< the endpoint had max_waiting_per_endpoint acquires waiting already
  /// the endpoint is in its connect backoff after connect failures (pool_options::connect_backoff),
  /// and no idle connection was there; basic_pool::last_connect_error() tells the last failure
  endpoint_unavailable,
  exchange_threw,  ///< async_run()'s exchange function threw an exception (its lease was discarded)
};

namespace detail {
#if defined(CONNPOOL_USE_BOOST_ASIO)
using error_category_base = ::boost::system::error_category;
#else
using error_category_base = std::error_category;
#endif
}  // namespace detail

/// The category of connpool::error; its name is "connpool". A `boost::system::error_category`
/// with CONNPOOL_USE_BOOST_ASIO, else a `std::error_category`.
const detail::error_category_base& error_category() noexcept;

/// Makes connpool::error an error code enum: `ec == connpool::error::acquire_timeout` compares.
inline error_code make_error_code(error e) noexcept {
  return {static_cast<int>(e), error_category()};
}

namespace detail {
class error_category_impl final : public error_category_base {
 public:
#if defined(CONNPOOL_USE_BOOST_ASIO)
  // Boost compares categories by this id when it is not 0, so codes made in one shared library
  // compare equal in another even where each has its own instance (hidden visibility).
  constexpr error_category_impl() noexcept : error_category_base(0x636f6e6e706f6f6cULL) {}  // "connpool"
#endif
  const char* name() const noexcept override { return "connpool"; }
  std::string message(int ev) const override {
    // Never throws beyond std::string's own allocation.
    switch (static_cast<error>(ev)) {
      case error::pool_closed: return "connection pool is closed";
      case error::acquire_timeout: return "timed out waiting to acquire a connection";
      case error::connect_timeout: return "timed out connecting";
      case error::invalid_options: return "invalid connection pool options";
      case error::setup_failed: return "the connection's setup step threw an exception";
      case error::too_many_waiters: return "too many acquires waiting for this endpoint";
      case error::endpoint_unavailable: return "endpoint unavailable: its connects failed, backing off";
      case error::exchange_threw: return "the exchange function threw an exception";
    }
    return "unknown connpool error";
  }
};
}  // namespace detail

inline const detail::error_category_base& error_category() noexcept {
  static const detail::error_category_impl instance;
  return instance;
}

CONNPOOL_ABI_END
}  // namespace connpool

#if defined(CONNPOOL_USE_BOOST_ASIO)
namespace boost::system {
/// connpool::error is an error code enum: it converts to connpool::error_code (make_error_code()).
template <>
struct is_error_code_enum<connpool::error> : std::true_type {};
}  // namespace boost::system
#else
namespace std {
/// connpool::error is an error code enum: it converts to connpool::error_code (make_error_code()).
template <>
struct is_error_code_enum<connpool::error> : true_type {};
}  // namespace std
#endif

#endif
