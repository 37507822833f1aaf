#ifndef CONNPOOL_DETAIL_CLOCK_HPP
#define CONNPOOL_DETAIL_CLOCK_HPP

// The pool's clocks, and time arithmetic that saturates: a deadline past the clock's range means
// "never" (time_point::max()), never a wrapped-around time in the past.

#include <chrono>
#include <time.h>

#include "connpool/detail/config.hpp"

namespace connpool {
CONNPOOL_ABI_BEGIN
namespace detail {

using clock = std::chrono::steady_clock;
using time_point = clock::time_point;

/// "Never": no deadline, no expiry.
inline constexpr time_point never = time_point::max();

/// A time point not computed yet.
inline constexpr time_point unset = time_point::min();

/// `t + d`, or `never` if that would pass the clock's range (or `t` is `never`). `d` >= 0. The
/// overload in the clock's own units is on the hot path (the books' next due time): one add.
constexpr time_point later(time_point t, clock::duration d) noexcept {
#if defined(__GNUC__) || defined(__clang__)
  clock::rep sum = 0;
  if (__builtin_add_overflow(t.time_since_epoch().count(), d.count(), &sum)) return never;
  return time_point(clock::duration(sum));
#else
  return t == never || d >= never - t ? never : t + d;
#endif
}

/// `t + d` for a duration in other units, saturating as above.
template <class Rep, class Period>
constexpr time_point later(time_point t, std::chrono::duration<Rep, Period> d) noexcept {
  using std::chrono::duration_cast;
  if (t == never) return never;
  const auto room = never - t;  // >= 0 for every t below never
  // Compare in d's own units, rounding room down, so the cast of d below cannot overflow.
  if (d >= duration_cast<std::chrono::duration<Rep, Period>>(room)) return never;
  const auto step = duration_cast<clock::duration>(d);
  return step >= room ? never : t + step;
}

/// The time for idle bookkeeping (idle since, lifetime checks): CLOCK_MONOTONIC at the kernel's
/// tick (a few ms), which costs a fifth of a precise read here (5 ns against 24 ns).
inline time_point coarse_now() noexcept {
#if defined(__linux__) && defined(CLOCK_MONOTONIC_COARSE)
  // libstdc++ and libc++ both build steady_clock on CLOCK_MONOTONIC: the same timeline.
  timespec ts;
  if (::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) == 0)
    return time_point(std::chrono::duration_cast<clock::duration>(std::chrono::seconds(ts.tv_sec) +
                                                                   std::chrono::nanoseconds(ts.tv_nsec)));
#endif
  return clock::now();
}

/// A deadline `d` from now; 0 (or less) means none.
inline time_point deadline_from(std::chrono::milliseconds d) noexcept {
  return d.count() > 0 ? later(clock::now(), d) : never;
}

}  // namespace detail
CONNPOOL_ABI_END
}  // namespace connpool

#endif
