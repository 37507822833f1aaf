#ifndef CONNPOOL_ERROR_HPP
#define CONNPOOL_ERROR_HPP

#include <string>
#include <system_error>
#include <type_traits>

namespace connpool {

/// Errors the pool itself reports. System errors (refused, unreachable, EMFILE...) reach the caller
/// unchanged, as their own std::error_code.
enum class error {
  pool_closed = 1,   ///< the pool was closed (or destroyed) before or while the acquire waited
  acquire_timeout,   ///< acquire_timeout passed before a connection could be handed out
  connect_timeout,   ///< connect_timeout passed while connecting
  invalid_options,   ///< a pool_options value is out of range (for example a negative duration)
};

/// The category of connpool::error; its name is "connpool".
const std::error_category& error_category() noexcept;

inline std::error_code make_error_code(error e) noexcept {
  return {static_cast<int>(e), error_category()};
}

namespace detail {
class error_category_impl final : public std::error_category {
 public:
  const char* name() const noexcept override { return "connpool"; }
  std::string message(int ev) const override {
    // Never throws beyond std::string's own allocation.
    switch (static_cast<error>(ev)) {
      case error::pool_closed: return "connection pool is closed";
      case error::acquire_timeout: return "timed out waiting to acquire a connection";
      case error::connect_timeout: return "timed out connecting";
      case error::invalid_options: return "invalid connection pool options";
    }
    return "unknown connpool error";
  }
};
}  // namespace detail

inline const std::error_category& error_category() noexcept {
  static const detail::error_category_impl instance;
  return instance;
}

}  // namespace connpool

namespace std {
template <>
struct is_error_code_enum<connpool::error> : true_type {};
}  // namespace std

#endif
