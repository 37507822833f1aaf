#ifndef CONNPOOL_DETAIL_SPIN_MUTEX_HPP
#define CONNPOOL_DETAIL_SPIN_MUTEX_HPP

// The pool's lock: a std::mutex that spins briefly before it blocks. The pool's critical sections
// are a few dozen nanoseconds, while blocking in the kernel and being woken costs microseconds; a
// thread that blocks at once on a lock held that briefly starts a convoy, where every unlock makes
// a wake-up syscall and throughput with 8 threads on 2 cores falls to half that of one thread
// (measured: benchmarks/pool_cost.cpp, docs/benchmarks.md). Spinning first, on a plain load so the
// spinners do not take the cache line from the holder, lets the lock change hands without the
// kernel in the common case.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>

#include "connpool/detail/config.hpp"

namespace connpool {
CONNPOOL_ABI_BEGIN
namespace detail {

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
  asm volatile("yield" ::: "memory");
#endif
}

/// BasicLockable and Lockable: use with std::lock_guard and std::unique_lock; wait with
/// wait_until().
class spin_mutex {
 public:
  void lock() {
    for (int i = 0; i < spin_limit; ++i) {
      if (!held_.load(std::memory_order_relaxed) && try_lock()) return;
      cpu_relax();
    }
    m_.lock();
    held_.store(true, std::memory_order_relaxed);
  }

  bool try_lock() noexcept {
    if (!m_.try_lock()) return false;
    held_.store(true, std::memory_order_relaxed);
    return true;
  }

  void unlock() noexcept {
    held_.store(false, std::memory_order_relaxed);
    m_.unlock();
  }

  /// With this mutex held: wait on `cv` until notified or `deadline` (time_point::max(): no
  /// deadline), the mutex released meanwhile and held again on return. A std::condition_variable
  /// on the inner std::mutex, rather than std::condition_variable_any on this one: no allocation
  /// and no second mutex per wait.
  template <class Clock, class Duration>
  std::cv_status wait_until(std::condition_variable& cv, std::chrono::time_point<Clock, Duration> deadline) {
    held_.store(false, std::memory_order_relaxed);
    std::unique_lock<std::mutex> lk(m_, std::adopt_lock);
    std::cv_status status = std::cv_status::no_timeout;
    if (deadline == std::chrono::time_point<Clock, Duration>::max())
      cv.wait(lk);  // NOLINT(bugprone-spuriously-wake-up-functions): the caller loops on its predicate
    else
      status = cv.wait_until(lk, deadline);
    lk.release();
    held_.store(true, std::memory_order_relaxed);
    return status;
  }

 private:
  // About 2 us of pauses here (22 ns each on this machine's AMD EPYC; more where pause is slower):
  // longer than any critical section of the pool, shorter than a sleep and a wake-up.
  static constexpr int spin_limit = 100;
  std::mutex m_;
  std::atomic<bool> held_{false};  // a hint for spinners only; the mutex decides
};

}  // namespace detail
CONNPOOL_ABI_END
}  // namespace connpool

#endif
