// The pool's own cost: acquire + release of an idle connection, nanoseconds per pair, at 1, 2 and 8
// threads, against a hand-rolled std::mutex + std::deque pool of sockets with no check at all (what
// many services write), and the probe syscall alone; then try_acquire + release and async_acquire +
// release on one thread. The modes run interleaved in rounds (their order rotated each round) and
// every figure is the median over rounds, so a burst of noise on this shared machine moves one
// round, not the result.
//
// connpool probes once per pair: before hand-out. release() makes no syscall where the idle watch
// runs (Linux): the watch has recorded any FIN or RST that came during the lease. So the pool's
// bookkeeping is reported as pair - probe, both measured in the same round.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <functional>
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

/// Run `body(iterations)` on `threads` threads started together; ns per operation as one thread
/// sees it (threads / total rate).
template <class Body>
double ns_per_op(int threads, long iterations, Body body) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&] {
      ++ready;
      while (!go) std::this_thread::yield();
      body(iterations);
    });
  while (ready < threads) std::this_thread::yield();
  const auto t0 = clock_type::now();
  go = true;
  for (auto& th : ts) th.join();
  const double ns = std::chrono::duration<double, std::nano>(clock_type::now() - t0).count();
  return ns / static_cast<double>(iterations);
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

std::string num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f", v);
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  long iterations = 200000;
  int rounds = 9;
  std::string json, csv_path;
  const std::vector<int> thread_counts{1, 2, 8};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string("0"); };
    if (a == "--iterations") iterations = std::stol(next());
    else if (a == "--rounds") rounds = std::stoi(next());
    else if (a == "--json") json = next();
    else if (a == "--csv") csv_path = next();
    else {
      std::printf("usage: %s [--iterations 200000] [--rounds 9] [--json out.json] [--csv out.csv]\n", argv[0]);
      return a == "--help" ? 0 : 2;
    }
  }
  if (iterations < 1 || rounds < 1) return 2;

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
  const int probes_per_pair = connpool::detail::watch_supported ? 1 : 2;

  std::printf("connpool pool-cost benchmark: acquire + release of an idle loopback connection\n"
              "machine: %u cores; %ld pairs per thread per round, %d rounds, modes interleaved, medians over rounds\n"
              "connpool makes %d probe syscall%s per pair\n\n",
              std::thread::hardware_concurrency(), iterations, rounds, probes_per_pair,
              probes_per_pair == 1 ? "" : "s");
  std::printf("  %-8s %12s %15s %9s %15s %13s %13s\n", "threads", "connpool ns", "hand-rolled ns", "probe ns",
              "bookkeeping ns", "connpool/s", "hand-rolled/s");

  // The probe alone: the same function connpool calls, on an idle connection.
  auto time_probe = [&] {
    const int fd = raw[0].native_handle();
    return ns_per_op(1, iterations, [fd](long n) {
      for (long i = 0; i < n; ++i)
        if (connpool::detail::probe(fd) != connpool::detail::probe_result::healthy) std::abort();
    });
  };

  std::string out = "{\n  \"probes_per_pair\": " + std::to_string(probes_per_pair) + ",\n  \"results\": [\n";
  std::string csv = "threads,connpool_ns,handrolled_ns,probe_ns,bookkeeping_ns,connpool_pairs_per_s,handrolled_pairs_per_s\n";
  double pairs_per_s_at_1 = 0, pairs_per_s_at_max = 0, bookkeeping_at_1 = 0, ratio_at_1 = 0;
  for (int threads : thread_counts) {
    connpool::pool_options o;
    o.max_per_endpoint = static_cast<std::size_t>(threads);
    connpool::tcp_pool pool(o);
    {  // warm: `threads` idle connections
      std::vector<connpool::tcp_pool::lease> ls;
      for (int t = 0; t < threads; ++t) ls.push_back(pool.acquire(ep));
      for (auto& l : ls) l.release();
    }
    std::vector<double> pool_ns, hand_ns, probe_ns, book_ns;
    for (int r = 0; r < rounds; ++r) {
      double p = 0, h = 0, q = 0;
      for (int k = 0; k < 3; ++k) {
        switch ((k + r) % 3) {  // rotate the order per round
          case 0:
            p = ns_per_op(threads, iterations, [&](long n) {
              for (long i = 0; i < n; ++i) {
                auto l = pool.acquire(ep);
                l.release();
              }
            });
            break;
          case 1:
            h = ns_per_op(threads, iterations, [&](long n) {
              for (long i = 0; i < n; ++i) {
                auto* s = hand.acquire();
                if (!s) std::abort();
                hand.release(s);
              }
            });
            break;
          default:
            q = time_probe();
        }
      }
      pool_ns.push_back(p);
      hand_ns.push_back(h);
      probe_ns.push_back(q);
      book_ns.push_back(p - probes_per_pair * q);
    }
    if (pool.stats().created != static_cast<std::size_t>(threads)) {
      std::printf("connpool made %zu connections, expected %d: the measurement is void\n", pool.stats().created,
                  threads);
      return 1;
    }
    const double P = median(pool_ns), H = median(hand_ns), Q = median(probe_ns), B = median(book_ns);
    const double pool_rate = 1e9 * threads / P, hand_rate = 1e9 * threads / H;
    std::printf("  %-8d %12.0f %15.0f %9.0f %15.0f %13.0f %13.0f\n", threads, P, H, Q, B, pool_rate, hand_rate);
    out += std::string(threads == thread_counts.front() ? "" : ",\n") + "    {\"threads\": " +
           std::to_string(threads) + ", \"connpool_ns\": " + num(P) + ", \"handrolled_ns\": " + num(H) +
           ", \"probe_ns\": " + num(Q) + ", \"bookkeeping_ns\": " + num(B) +
           ", \"connpool_pairs_per_s\": " + num(pool_rate) + ", \"handrolled_pairs_per_s\": " + num(hand_rate) + "}";
    csv += std::to_string(threads) + "," + num(P) + "," + num(H) + "," + num(Q) + "," + num(B) + "," + num(pool_rate) +
           "," + num(hand_rate) + "\n";
    if (threads == 1) {
      pairs_per_s_at_1 = pool_rate;
      bookkeeping_at_1 = B;
      ratio_at_1 = P / (H + Q);
    }
    if (threads == max_threads) pairs_per_s_at_max = pool_rate;
  }

  // One thread, the pool on that thread's io_context: try_acquire (no completion hop) and
  // async_acquire (completion posted to the context), each followed by release().
  std::vector<double> try_ns, async_ns;
  {
    asio::io_context aio(1);
    connpool::tcp_pool apool(aio);
    apool.acquire(ep).release();
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
      auto t0 = clock_type::now();
      step();
      aio.restart();
      while (left > 0) aio.run_one();
      async_ns.push_back(std::chrono::duration<double, std::nano>(clock_type::now() - t0).count() / iterations);
      t0 = clock_type::now();
      for (long i = 0; i < iterations; ++i) {
        auto l = apool.try_acquire(ep);
        if (!l) std::abort();
        l.release();
      }
      try_ns.push_back(std::chrono::duration<double, std::nano>(clock_type::now() - t0).count() / iterations);
    }
    apool.close();
    aio.restart();
    aio.poll();
  }
  const double T = median(try_ns), A = median(async_ns);
  std::printf("\n  one thread, pool on its io_context: try_acquire + release %.0f ns, async_acquire + release "
              "(completion posted) %.0f ns\n",
              T, A);

  std::printf("\n  targets at 1 thread: pair / (hand-rolled + probe) = %.2fx (<= 1.30x: %s); bookkeeping %.0f ns "
              "(<= 60 ns: %s)\n  no lock convoy: %d threads %.2f M pairs/s against 1 thread %.2f M (%s)\n",
              ratio_at_1, ratio_at_1 <= 1.30 ? "met" : "NOT met", bookkeeping_at_1,
              bookkeeping_at_1 <= 60 ? "met" : "NOT met", max_threads, pairs_per_s_at_max / 1e6,
              pairs_per_s_at_1 / 1e6, pairs_per_s_at_max >= pairs_per_s_at_1 ? "met" : "NOT met");
  out += "\n  ],\n  \"try_acquire_pair_ns\": " + num(T) + ",\n  \"async_pair_ns\": " + num(A) + "\n}\n";
  if (!json.empty()) std::ofstream(json) << out;
  if (!csv_path.empty()) std::ofstream(csv_path) << csv;
  return 0;
}
