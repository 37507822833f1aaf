// Test support: bounded waits, descriptor and socket census helpers, a full accept queue, a round
// trip through a lease. The test servers are in servers/ (echo_server.hpp, server_process.hpp) and
// the dead hand-out classifier in servers/outcome.hpp.
#ifndef CONNPOOL_TESTS_SUPPORT_HPP
#define CONNPOOL_TESTS_SUPPORT_HPP

#include <dirent.h>
#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <future>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "servers/net.hpp"
#include <doctest/doctest.h>

#include "connpool/connpool.hpp"
#include "connpool/diag.hpp"

namespace test {

using namespace std::chrono_literals;

/// Poll `pred` until it holds or `limit` passes. For waiting on effects that have no event we can
/// block on from the test (the pool's background thread closing a socket). Returns pred().
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = 3000ms) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return pred();
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

/// Run `f` on the thread that runs `io`, and wait until it has run.
inline void run_on(net::io_context& io, const std::function<void()>& f) {
  std::promise<void> done;
  net::post(io, [&] {
    f();
    done.set_value();
  });
  done.get_future().wait();
}

/// Runs `io` on a thread of its own (bounded: at most `limit`) until destroyed, which stops `io`
/// and joins the thread, on every exit of the test (a failed REQUIRE included).
struct io_thread {
  explicit io_thread(net::io_context& c, std::chrono::seconds limit = std::chrono::seconds(30))
      : io(c), t([this, limit] {
          auto guard = net::make_work_guard(io);
          io.run_for(limit);
        }) {}
  ~io_thread() {
    io.stop();
    t.join();
  }
  io_thread(const io_thread&) = delete;
  io_thread& operator=(const io_thread&) = delete;
  net::io_context& io;
  std::thread t;
};

/// Durations a listener reports from the pool's threads, and a bounded wait for them.
class event_log {
 public:
  void add(std::chrono::nanoseconds d) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      v_.push_back(d);
    }
    cv_.notify_all();
  }
  /// Waits until `n` have been added, at most `limit`; returns whether they were.
  bool wait_for(std::size_t n, std::chrono::milliseconds limit) {
    std::unique_lock<std::mutex> lk(mu_);
    return cv_.wait_for(lk, limit, [&] { return v_.size() >= n; });
  }
  std::size_t size() {
    std::lock_guard<std::mutex> lk(mu_);
    return v_.size();
  }
  std::chrono::nanoseconds at(std::size_t i) {
    std::lock_guard<std::mutex> lk(mu_);
    return i < v_.size() ? v_[i] : std::chrono::nanoseconds(-1);
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::chrono::nanoseconds> v_;
};

inline net::ip::tcp::endpoint loopback() { return {net::ip::make_address("127.0.0.1"), 0}; }

/// A listener whose accept queue is full: further connects stay in SYN_SENT (loopback, no root).
struct full_backlog {
  net::io_context io;
  net::ip::tcp::acceptor acc{io};
  std::vector<net::ip::tcp::socket> fillers;
  full_backlog() {
    acc.open(net::ip::tcp::v4());
    acc.bind(loopback());
    acc.listen(0);
    // Fill the queue: connects that complete without accept. Stop once one does not.
    for (int i = 0; i < 8; ++i) {
      fillers.emplace_back(io);
      auto& s = fillers.back();
      s.open(net::ip::tcp::v4());
      s.non_blocking(true);
      auto target = acc.local_endpoint();
      (void)::connect(s.native_handle(), target.data(), static_cast<socklen_t>(target.size()));
      pollfd p{s.native_handle(), POLLOUT, 0};
      if (::poll(&p, 1, 200) == 0) break;  // this one is stuck in SYN_SENT: queue full
    }
  }
};

/// One request/response through a lease; returns the echo.
template <class Lease>
std::string roundtrip(Lease& l, const std::string& msg) {
  net::write(l.socket(), net::buffer(msg));
  std::string back(msg.size(), '\0');
  net::read(l.socket(), net::buffer(back));
  return back;
}

/// The pool still works: a fresh connection (not reused) carries an exchange, and goes back.
template <class Pool>
void check_fresh_roundtrip(Pool& pool, const typename Pool::endpoint_type& ep) {
  auto l = pool.acquire(ep);
  CHECK_FALSE(l.reused());
  CHECK(roundtrip(l, "after") == "after");
  l.release();
}

/// A scenario that cannot run here (no root, a tool missing) when `why` is not empty: it is
/// skipped with the reason, or fails when CONNPOOL_REQUIRE_FAULTS is set (CI, which has them all).
inline bool cannot_run(const std::string& why) {
  if (why.empty()) return false;
  if (std::getenv("CONNPOOL_REQUIRE_FAULTS")) {
    FAIL_CHECK("required scenario cannot run: " << why);
  } else {
    MESSAGE("SKIPPED: " << why);
  }
  return true;
}

/// The process's open descriptors, each as "N -> what it refers to" (socket:[inode], a path...).
inline std::set<std::string> descriptor_set() {
  std::set<std::string> out;
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) return out;
  const int self = ::dirfd(d);
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.' || std::atoi(e->d_name) == self) continue;
    char target[512];
    const std::string link = std::string("/proc/self/fd/") + e->d_name;
    const ssize_t n = ::readlink(link.c_str(), target, sizeof target);
    out.insert(std::string(e->d_name) + " -> " + (n > 0 ? std::string(target, static_cast<std::size_t>(n)) : "?"));
  }
  ::closedir(d);
  return out;
}

#if defined(__SANITIZE_THREAD__)
#define CONNPOOL_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CONNPOOL_TEST_TSAN 1
#endif
#endif

/// Descriptors open now that were not open in `before`: what a test leaked. Descriptors that
/// closed meanwhile (a sanitizer runtime's own, say) do not count against it. Under clang's
/// ThreadSanitizer, pipes do not count either: its runtime starts llvm-symbolizer on a pipe pair
/// the first time it symbolizes (to match a suppression) and keeps it open. connpool itself opens
/// no pipes (sockets, epoll and eventfd only).
inline std::string opened_since(const std::set<std::string>& before) {
  std::string leaked;
  for (const auto& fd : descriptor_set()) {
#ifdef CONNPOOL_TEST_TSAN
    if (fd.find("-> pipe:") != std::string::npos) continue;
#endif
    if (!before.count(fd)) leaked += (leaked.empty() ? "" : ", ") + fd;
  }
  return leaked;
}

/// Every descriptor a test opens is closed by its end (bounded wait): declare one first.
struct fd_guard {
  std::set<std::string> before = descriptor_set();
  ~fd_guard() {
    std::string leaked;
    const bool none = eventually([&] { return (leaked = opened_since(before)).empty(); });
    CHECK_MESSAGE(none, "descriptors left open: " << leaked);
  }
};

inline std::size_t client_sockets(const net::ip::tcp::endpoint& server, connpool::diag::tcp_state st) {
  connpool::error_code ec;
  return connpool::diag::census(server, ec)[st];
}

}  // namespace test

#endif
