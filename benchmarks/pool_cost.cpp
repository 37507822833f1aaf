// The pool's own cost: acquire + release of an idle connection, nanoseconds per pair, at 1, 2 and 8
// threads, against a hand-rolled std::mutex + std::deque pool of sockets with no check at all (what
// many services write), with the probe syscall timed alone, and async_acquire + release on one
// thread. Interleaved in rounds; printed as ratios of the same run.
//
// connpool probes twice per pair (before hand-out and on release), so its bookkeeping is reported
// as pair - 2 x probe.
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "connpool/connpool.hpp"

namespace {

using clock_type = std::chrono::steady_clock;

/// What most services write: a mutex, a deque, no checks.
class handrolled_pool {
 public:
  explicit handrolled_pool(std::vector<asio::ip::tcp::socket>& sockets) {
    for (auto& s : sockets) idle_.push_back(&s);
  }
  asio::ip::tcp::socket* acquire() {
    std::lock_guard<std::mutex> lk(mu_);
    if (idle_.empty()) return nullptr;
    auto* s = idle_.back();
    idle_.pop_back();
    return s;
  }
  void release(asio::ip::tcp::socket* s) {
    std::lock_guard<std::mutex> lk(mu_);
    idle_.push_back(s);
  }

 private:
  std::mutex mu_;
  std::deque<asio::ip::tcp::socket*> idle_;
};

/// Run `body(thread_index, iterations)` on `threads` threads at once; total pairs per second.
template <class Body>
double run_threads(int threads, long iterations, Body body) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&, t] {
      ++ready;
      while (!go) std::this_thread::yield();
      body(t, iterations);
    });
  while (ready < threads) std::this_thread::yield();
  const auto t0 = clock_type::now();
  go = true;
  for (auto& th : ts) th.join();
  const double secs = std::chrono::duration<double>(clock_type::now() - t0).count();
  return static_cast<double>(iterations) * threads / secs;
}

}  // namespace

int main(int argc, char** argv) {
  long iterations = 200000;
  int rounds = 5;
  std::string json;
  std::vector<int> thread_counts{1, 2, 8};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string("0"); };
    if (a == "--iterations") iterations = std::stol(next());
    else if (a == "--rounds") rounds = std::stoi(next());
    else if (a == "--json") json = next();
    else {
      std::printf("usage: %s [--iterations 200000] [--rounds 5] [--json out.json]\n", argv[0]);
      return a == "--help" ? 0 : 2;
    }
  }

  // Idle connections to a listener that never accepts: the kernel completes the handshakes, and a
  // probe of such a connection says "would block", as for a healthy idle one.
  asio::io_context io;
  asio::ip::tcp::acceptor listener(io, {asio::ip::make_address("127.0.0.1"), 0});
  listener.listen(4096);
  const auto ep = listener.local_endpoint();
  const int max_threads = *std::max_element(thread_counts.begin(), thread_counts.end());

  std::vector<asio::ip::tcp::socket> raw;
  for (int i = 0; i < max_threads; ++i) {
    raw.emplace_back(io);
    raw.back().connect(ep);
  }
  handrolled_pool hand(raw);

  std::printf("connpool pool-cost benchmark: acquire + release of an idle loopback connection\n"
              "machine: %u cores; %ld pairs per thread per round, %d rounds, modes interleaved\n\n",
              std::thread::hardware_concurrency(), iterations, rounds);

  // The probe alone, the same syscall connpool makes.
  double probe_ns = 0;
  for (int r = 0; r < rounds; ++r) {
    const int fd = raw[0].native_handle();
    const auto t0 = clock_type::now();
    for (long i = 0; i < iterations; ++i) {
      char c;
      if (::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) != -1) return 1;
    }
    probe_ns += std::chrono::duration<double, std::nano>(clock_type::now() - t0).count() / iterations;
  }
  probe_ns /= rounds;

  std::string out = "{\n  \"probe_ns\": " + std::to_string(probe_ns) + ",\n  \"results\": [\n";
  std::printf("  %-8s %14s %14s %14s %16s %12s\n", "threads", "connpool ns", "hand-rolled ns", "probe ns",
              "bookkeeping ns", "pairs/s");
  bool first = true;
  for (int threads : thread_counts) {
    connpool::pool_options o;
    o.max_per_endpoint = static_cast<std::size_t>(threads);
    connpool::tcp_pool pool(o);
    {  // warm: `threads` idle connections
      std::vector<connpool::tcp_pool::lease> ls;
      for (int t = 0; t < threads; ++t) ls.push_back(pool.acquire(ep));
      for (auto& l : ls) l.release();
    }
    double pool_rate = 0, hand_rate = 0;
    for (int r = 0; r < rounds; ++r) {
      pool_rate += run_threads(threads, iterations, [&](int, long n) {
        for (long i = 0; i < n; ++i) {
          auto l = pool.acquire(ep);
          l.release();
        }
      });
      hand_rate += run_threads(threads, iterations, [&](int, long n) {
        for (long i = 0; i < n; ++i) {
          auto* s = hand.acquire();
          if (!s) std::abort();
          hand.release(s);
        }
      });
    }
    pool_rate /= rounds;
    hand_rate /= rounds;
    // Per pair as one thread sees it: threads / rate.
    const double pool_ns = 1e9 * threads / pool_rate, hand_ns = 1e9 * threads / hand_rate;
    const double bookkeeping = pool_ns - 2 * probe_ns;
    std::printf("  %-8d %14.0f %14.0f %14.0f %16.0f %12.0f\n", threads, pool_ns, hand_ns, probe_ns, bookkeeping,
                pool_rate);
    std::printf("           connpool / (hand-rolled + 2 probes) = %.2fx   connpool / hand-rolled = %.1fx\n",
                pool_ns / (hand_ns + 2 * probe_ns), pool_ns / hand_ns);
    out += std::string(first ? "" : ",\n") + "    {\"threads\": " + std::to_string(threads) +
           ", \"connpool_ns\": " + std::to_string(pool_ns) + ", \"handrolled_ns\": " + std::to_string(hand_ns) +
           ", \"bookkeeping_ns\": " + std::to_string(bookkeeping) + ", \"connpool_pairs_per_s\": " +
           std::to_string(pool_rate) + ", \"handrolled_pairs_per_s\": " + std::to_string(hand_rate) + "}";
    first = false;
    if (threads == 1) std::printf("\n");
  }

  // async_acquire + release on one thread, the pool on that thread's io_context.
  double async_ns = 0;
  {
    asio::io_context aio(1);
    connpool::tcp_pool apool(aio);
    long left = 0;
    std::function<void()> step = [&] {
      apool.async_acquire(ep, [&](std::error_code ec, connpool::tcp_pool::lease l) {
        if (ec) std::abort();
        l.release();
        if (--left > 0) step();
      });
    };
    for (int r = 0; r < rounds; ++r) {
      left = iterations;
      const auto t0 = clock_type::now();
      step();
      aio.restart();
      while (left > 0) aio.run_one();
      async_ns += std::chrono::duration<double, std::nano>(clock_type::now() - t0).count() / iterations;
    }
    async_ns /= rounds;
    apool.close();
    aio.restart();
    aio.poll();
  }
  std::printf("\n  async_acquire + release, one thread, completion posted: %.0f ns per pair\n", async_ns);
  out += "\n  ],\n  \"async_pair_ns\": " + std::to_string(async_ns) + "\n}\n";
  if (!json.empty()) std::ofstream(json) << out;
  return 0;
}
