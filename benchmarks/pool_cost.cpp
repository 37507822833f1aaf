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
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "connpool/connpool.hpp"

#include "bench_util.hpp"

namespace net = connpool::net;

namespace {

using bench::clock_type;

/// What most services write: a mutex, a deque, no checks.
class handrolled_pool {
 public:
  explicit handrolled_pool(std::vector<net::ip::tcp::socket>& sockets) {
    for (auto& s : sockets) idle_.push_back(&s);
  }
  net::ip::tcp::socket* acquire() {
    std::lock_guard<std::mutex> lk(mu_);
    if (idle_.empty()) return nullptr;
    auto* s = idle_.back();
    idle_.pop_back();
    return s;
  }
  void release(net::ip::tcp::socket* s) {
    std::lock_guard<std::mutex> lk(mu_);
    idle_.push_back(s);
  }

 private:
  std::mutex mu_;
  std::deque<net::ip::tcp::socket*> idle_;
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
  return bench::ns(clock_type::now() - t0) / static_cast<double>(iterations);
}

/// A figure as written to JSON and CSV: one decimal.
bench::value num(double v) { return bench::value(v, 1); }

}  // namespace

int main(int argc, char** argv) {
  bench::args a = bench::parse_args(argc, argv, {"--iterations", "--rounds"});
  const long iterations = static_cast<long>(a.number("--iterations", 200000));
  const int rounds = static_cast<int>(a.number("--rounds", 9));
  if (iterations < 1 || rounds < 1)
    a.errors.push_back("--iterations and --rounds take a whole number of at least 1");
  const int stop = bench::stop_code(a, [&] {
    std::printf("usage: %s [--iterations 200000] [--rounds 9] [--json out.json] [--csv out.csv]\n", argv[0]);
  });
  if (stop >= 0) return stop;
  const std::vector<int> thread_counts{1, 2, 8};

  // Idle connections to a listener that never accepts: the kernel completes the handshakes, and a
  // probe of such a connection says "would block", as for a healthy idle one.
  net::io_context io;
  net::ip::tcp::acceptor listener(io, {net::ip::make_address("127.0.0.1"), 0});
  listener.listen(4096);
  const auto ep = listener.local_endpoint();
  const int max_threads = *std::max_element(thread_counts.begin(), thread_counts.end());

  std::vector<net::ip::tcp::socket> raw;
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

  std::vector<std::string> rows;  // JSON
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
    const double P = bench::median(pool_ns), H = bench::median(hand_ns), Q = bench::median(probe_ns),
                 B = bench::median(book_ns);
    const double pool_rate = 1e9 * threads / P, hand_rate = 1e9 * threads / H;
    std::printf("  %-8d %12.0f %15.0f %9.0f %15.0f %13.0f %13.0f\n", threads, P, H, Q, B, pool_rate, hand_rate);
    rows.push_back(bench::json_object()
                       .add("threads", threads)
                       .add("connpool_ns", num(P))
                       .add("handrolled_ns", num(H))
                       .add("probe_ns", num(Q))
                       .add("bookkeeping_ns", num(B))
                       .add("connpool_pairs_per_s", num(pool_rate))
                       .add("handrolled_pairs_per_s", num(hand_rate))
                       .line());
    csv += bench::csv_line({threads, num(P), num(H), num(Q), num(B), num(pool_rate), num(hand_rate)});
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
    net::io_context aio(1);
    connpool::tcp_pool apool(aio);
    apool.acquire(ep).release();
    long left = 0;
    std::function<void()> step = [&] {
      apool.async_acquire(ep, [&](connpool::error_code ec, connpool::tcp_pool::lease l) {
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
      async_ns.push_back(bench::ns(clock_type::now() - t0) / static_cast<double>(iterations));
      t0 = clock_type::now();
      for (long i = 0; i < iterations; ++i) {
        auto l = apool.try_acquire(ep);
        if (!l) std::abort();
        l.release();
      }
      try_ns.push_back(bench::ns(clock_type::now() - t0) / static_cast<double>(iterations));
    }
    apool.close();
    aio.restart();
    aio.poll();
  }
  const double T = bench::median(try_ns), A = bench::median(async_ns);
  std::printf("\n  one thread, pool on its io_context: try_acquire + release %.0f ns, async_acquire + release "
              "(completion posted) %.0f ns\n",
              T, A);

  std::printf("\n  targets at 1 thread: pair / (hand-rolled + probe) = %.2fx (<= 1.30x: %s); bookkeeping %.0f ns "
              "(<= 60 ns: %s)\n  no lock convoy: %d threads %.2f M pairs/s against 1 thread %.2f M (%s)\n",
              ratio_at_1, ratio_at_1 <= 1.30 ? "met" : "NOT met", bookkeeping_at_1,
              bookkeeping_at_1 <= 60 ? "met" : "NOT met", max_threads, pairs_per_s_at_max / 1e6,
              pairs_per_s_at_1 / 1e6, pairs_per_s_at_max >= pairs_per_s_at_1 ? "met" : "NOT met");
  const std::string json = bench::json_object()
                               .add("probes_per_pair", probes_per_pair)
                               .raw("results", bench::json_array_lines(rows, "    "))
                               .add("try_acquire_pair_ns", num(T))
                               .add("async_pair_ns", num(A))
                               .lines() +
                           "\n";
  return bench::write_outputs(a, json, csv) ? 0 : 1;
}
