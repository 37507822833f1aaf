// Eviction at scale: N idle pooled connections (default 1000 and 10000), then the server closes all
// of them. Measures how long the pool takes to close its ends (no CLOSE_WAIT left), per connection
// and in all, the user-space memory per idle connection (RSS delta / N), and what N idle connections
// cost while nothing happens (process CPU time and context switches over one second).
//
// The server is a child process with plain blocking sockets (test::closing_server_process in
// tests/servers/server_process.hpp): it accepts N connections, waits for a command, closes them all
// (FIN), and sends back the CLOCK_MONOTONIC time of each close.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "connpool/connpool.hpp"
#include "connpool/diag.hpp"

#include "bench_util.hpp"
#include "servers/server_process.hpp"

namespace {

using bench::clock_type;  // CLOCK_MONOTONIC, shared with the child

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now().time_since_epoch()).count();
}

}  // namespace

int main(int argc, char** argv) {
  const bench::args a = bench::parse_args(argc, argv, {"--sizes"});
  const int stop = bench::stop_code(
      a, [&] { std::printf("usage: %s [--sizes 1000,10000] [--json out.json] [--csv out.csv]\n", argv[0]); });
  if (stop >= 0) return stop;
  std::vector<std::size_t> sizes;
  for (long n : a.list("--sizes", {1000, 10000})) sizes.push_back(static_cast<std::size_t>(n));
  const unsigned long long fd_limit = bench::raise_descriptor_limit();
  std::printf(
      "connpool eviction benchmark: N idle connections, then the server closes them all\n"
      "machine: %u cores; descriptor limit %llu\n\n",
      std::thread::hardware_concurrency(), fd_limit);
  std::printf("  %7s %12s %12s %14s %16s %12s %12s %10s %11s\n", "N", "median ms", "p99 ms", "max ms",
              "all closed ms*", "CLOSE_WAIT", "B/idle conn", "idle cpu", "idle cs/s");
  std::vector<std::string> rows;  // JSON
  std::string csv =
      "n,median_ms,p99_ms,max_ms,all_closed_after_last_fin_ms,close_wait_left,bytes_per_idle_connection,"
      "idle_cpu_ms_per_s,idle_context_switches_per_s\n";
  bool all_fast = true, all_small = true, none_left = true;  // the targets of issue 4, for the sizes run
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    const std::size_t n = sizes[k];
    if (n + 64 > fd_limit) {  // each process holds one end of every connection
      std::printf("  %7zu skipped: needs a descriptor limit of at least %zu\n", n, n + 64);
      continue;
    }
    test::closing_server_process server(n);  // forked before the client makes any connection
    const auto ep = server.endpoint(0);
    connpool::pool_options o;
    o.max_per_endpoint = n;
    o.max_idle_per_endpoint = n;
    connpool::tcp_pool pool(o);
    std::vector<connpool::tcp_pool::lease> ls;
    ls.reserve(n);
    const long long rss0 = bench::rss_bytes();
    for (std::size_t i = 0; i < n; ++i) ls.push_back(pool.acquire(ep));
    for (auto& l : ls) l.release();
    ls.clear();
    const long long rss1 = bench::rss_bytes();
    const double bytes_per_conn = static_cast<double>(rss1 - rss0) / static_cast<double>(n);

    // One second of idleness with N idle connections.
    const bench::usage u0 = bench::usage::now();
    std::this_thread::sleep_for(std::chrono::seconds(1));
    const bench::usage idle = bench::usage::now() - u0;
    const double idle_cpu = idle.cpu_ms();
    const long idle_cs = idle.switches() - 1;  // this thread's own sleep

    // The server closes everything; sample the pool's idle count to time each close.
    std::vector<std::int64_t> pool_closed_at;  // time at which the idle count fell by one, per connection
    pool_closed_at.reserve(n);
    std::thread closer;
    std::vector<std::int64_t> server_at;
    closer = std::thread([&] { server_at = server.close_all(); });
    std::size_t last = n;
    const std::int64_t give_up = now_ns() + 10'000'000'000LL;
    while (last > 0 && now_ns() < give_up) {
      const std::size_t idle = pool.stats().idle;
      const std::int64_t t = now_ns();
      for (; last > idle; --last) pool_closed_at.push_back(t);
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    closer.join();
    connpool::error_code ec;
    std::size_t close_wait = 0;
    for (int tries = 0; tries < 200; ++tries) {  // the last closes follow the idle count by a moment
      close_wait = connpool::diag::census(ep, ec)[connpool::diag::tcp_state::close_wait];
      if (close_wait == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (server_at.size() != n || pool_closed_at.size() != n) {
      std::printf("  %7zu failed: %zu of %zu closed by the pool within 10 s\n", n, pool_closed_at.size(), n);
      continue;
    }
    // The k-th close by the pool against the k-th FIN sent (both in time order).
    std::sort(server_at.begin(), server_at.end());
    std::vector<double> lat;
    for (std::size_t i = 0; i < n; ++i) lat.push_back(std::max<double>(0, (pool_closed_at[i] - server_at[i]) / 1e6));
    const double all_ms = (pool_closed_at.back() - server_at.back()) / 1e6;
    const double median_ms = bench::percentile(lat, 0.5, bench::rank::above),
                 p99_ms = bench::percentile(lat, 0.99, bench::rank::above), max_ms = bench::max_of(lat);
    std::printf("  %7zu %12.2f %12.2f %14.2f %16.2f %12zu %12.0f %8.1fms %11ld\n", n, median_ms, p99_ms,
                max_ms, all_ms, close_wait, bytes_per_conn, idle_cpu, idle_cs);
    if (n >= 10000 && all_ms > 100) all_fast = false;
    if (bytes_per_conn > 1024) all_small = false;
    if (close_wait != 0) none_left = false;
    csv += bench::csv_line({n, bench::value(median_ms, 3), bench::value(p99_ms, 3), bench::value(max_ms, 3),
                            bench::value(all_ms, 3), close_wait, bench::value(bytes_per_conn, 0),
                            bench::value(idle_cpu, 2), idle_cs});
    rows.push_back(bench::json_object()  // six decimals, as std::to_string wrote them
                       .add("n", n)
                       .add("median_ms", bench::value(median_ms, 6))
                       .add("p99_ms", bench::value(p99_ms, 6))
                       .add("max_ms", bench::value(max_ms, 6))
                       .add("all_closed_after_last_fin_ms", bench::value(all_ms, 6))
                       .add("close_wait_left", close_wait)
                       .add("bytes_per_idle_connection", bench::value(bytes_per_conn, 6))
                       .add("idle_cpu_ms_per_s", bench::value(idle_cpu, 6))
                       .add("idle_context_switches_per_s", idle_cs)
                       .line());
  }
  std::printf("\n  per connection: the k-th close by the pool minus the k-th FIN sent by the server, both in time\n"
              "  order (idle count sampled every 50 us); * all closed: the last close minus the last FIN.\n"
              "  B/idle conn: process RSS growth while the N connections were made and released, over N.\n"
              "  idle cpu, idle cs/s: the whole process over one second with the N connections idle.\n");
  if (!rows.empty())
    std::printf("\n  targets: every run of 10 000 or more closed within 100 ms of the last FIN: %s; no CLOSE_WAIT left: "
                "%s; <= 1 KiB of user-space memory per idle connection: %s\n",
                all_fast ? "met" : "NOT met", none_left ? "met" : "NOT met", all_small ? "met" : "NOT met");
  const std::string json =
      bench::json_object().raw("results", bench::json_array_lines(rows, "    ")).lines() + "\n";
  return bench::write_outputs(a, json, csv) ? 0 : 1;
}
