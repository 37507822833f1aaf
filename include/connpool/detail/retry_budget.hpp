#ifndef CONNPOOL_DETAIL_RETRY_BUDGET_HPP
#define CONNPOOL_DETAIL_RETRY_BUDGET_HPP

// run()'s retry budget, as Finagle's RetryBudget: over a sliding window of 10 s, retries may reach
// a fraction of the runs plus a floor per second. Decisions only: no clock reads, no locks (the
// caller holds one); every time comes in as an argument, so tests drive it exactly.

#include <chrono>
#include <cstddef>

#include "connpool/detail/clock.hpp"
#include "connpool/detail/config.hpp"

namespace connpool {
CONNPOOL_ABI_BEGIN
namespace detail {

class retry_budget {
 public:
  /// The window: what happened this long ago no longer counts.
  static constexpr std::chrono::seconds window{10};

  retry_budget(double ratio, std::size_t per_second) noexcept
      : ratio_(ratio), floor_(static_cast<double>(per_second) * static_cast<double>(window.count())) {}

  /// A run() began at `now`.
  void deposit(time_point now) noexcept {
    roll(now);
    runs_ += 1;
  }

  /// A run() wants a retry at `now`: whether the budget allows it (then counted).
  bool withdraw(time_point now) noexcept {
    roll(now);
    // The last window's share, by how much of it still lies within `window` of now.
    double w = 1.0 - std::chrono::duration<double>(now - start_) / std::chrono::duration<double>(window);
    if (w < 0) w = 0;
    if (w > 1) w = 1;  // (a clock read before another thread rolled the window)
    const double runs = runs_ + w * prev_runs_, retries = retries_ + w * prev_retries_;
    if (retries + 1 > ratio_ * runs + floor_) return false;
    retries_ += 1;
    return true;
  }

 private:
  void roll(time_point now) noexcept {
    if (now - start_ < window) return;
    const bool adjacent = now - start_ < 2 * window;
    prev_runs_ = adjacent ? runs_ : 0;
    prev_retries_ = adjacent ? retries_ : 0;
    runs_ = retries_ = 0;
    start_ = adjacent ? start_ + window : now;
  }

  const double ratio_, floor_;
  time_point start_{};
  double runs_ = 0, retries_ = 0, prev_runs_ = 0, prev_retries_ = 0;
};

}  // namespace detail
CONNPOOL_ABI_END
}  // namespace connpool

#endif
