// Eviction at scale: N idle pooled connections (default 1000 and 10000), then the server closes all
// of them. Measures how long the pool takes to close its ends (no CLOSE_WAIT left), per connection
// and in all, the user-space memory per idle connection (RSS delta / N), and what N idle connections
// cost while nothing happens (process CPU time and context switches over one second).
//
// The server is a child process with plain blocking sockets (test::closing_server_process in
// tests/servers/server_process.hpp): it accepts N connections, waits for a command, closes them all
// (FIN), and sends back the CLOCK_MONOTONIC time of each close.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "connpool/connpool.hpp"
#include "connpool/diag.hpp"
#include "servers/server_process.hpp"

namespace {

using clock_type = std::chrono::steady_clock;  // CLOCK_MONOTONIC, shared with the child

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now().time_since_epoch()).count();
}

long rss_kib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
  return -1;
}

double cpu_ms() {
  rusage r{};
  ::getrusage(RUSAGE_SELF, &r);
  return (r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1e3 + (r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e3;
}

long switches() {
  rusage r{};
  ::getrusage(RUSAGE_SELF, &r);
  return r.ru_nvcsw + r.ru_nivcsw;
}

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p * v.size()))];
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::size_t> sizes{1000, 10000};
  std::string json, csv_path;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--sizes" && i + 1 < argc) {
      sizes.clear();
      for (std::string s = argv[++i]; !s.empty();) {
        const auto comma = s.find(',');
        sizes.push_back(std::stoul(s.substr(0, comma)));
        s = comma == std::string::npos ? "" : s.substr(comma + 1);
      }
    } else if (a == "--json" && i + 1 < argc) {
      json = argv[++i];
    } else if (a == "--csv" && i + 1 < argc) {
      csv_path = argv[++i];
    } else {
      std::printf("usage: %s [--sizes 1000,10000] [--json out.json] [--csv out.csv]\n", argv[0]);
      return a == "--help" ? 0 : 2;
    }
  }
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &rl);
  std::printf("connpool eviction benchmark: N idle connections, then the server closes them all\n"
              "machine: %u cores; descriptor limit %llu\n\n",
              std::thread::hardware_concurrency(), static_cast<unsigned long long>(rl.rlim_cur));
  std::printf("  %7s %12s %12s %14s %16s %12s %12s %10s %11s\n", "N", "median ms", "p99 ms", "max ms",
              "all closed ms*", "CLOSE_WAIT", "B/idle conn", "idle cpu", "idle cs/s");
  std::string out = "{\n  \"results\": [\n";
  std::string csv = "n,median_ms,p99_ms,max_ms,all_closed_after_last_fin_ms,close_wait_left,bytes_per_idle_connection,"
                    "idle_cpu_ms_per_s,idle_context_switches_per_s\n";
  bool first = true;
  bool all_fast = true, all_small = true, none_left = true;  // the targets of issue 4, for the sizes run
  for (std::size_t k = 0; k < sizes.size(); ++k) {
    const std::size_t n = sizes[k];
    if (n + 64 > rl.rlim_cur) {  // each process holds one end of every connection
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
    const long rss0 = rss_kib();
    for (std::size_t i = 0; i < n; ++i) ls.push_back(pool.acquire(ep));
    for (auto& l : ls) l.release();
    ls.clear();
    const long rss1 = rss_kib();
    const double bytes_per_conn = (rss1 - rss0) * 1024.0 / static_cast<double>(n);

    // One second of idleness with N idle connections.
    const double cpu0 = cpu_ms();
    const long cs0 = switches();
    std::this_thread::sleep_for(std::chrono::seconds(1));
    const double idle_cpu = cpu_ms() - cpu0;
    const long idle_cs = switches() - cs0 - 1;  // this thread's own sleep

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
    std::error_code ec;
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
    std::printf("  %7zu %12.2f %12.2f %14.2f %16.2f %12zu %12.0f %8.1fms %11ld\n", n, pct(lat, 0.5), pct(lat, 0.99),
                pct(lat, 1.0), all_ms, close_wait, bytes_per_conn, idle_cpu, idle_cs);
    if (n >= 10000 && all_ms > 100) all_fast = false;
    if (bytes_per_conn > 1024) all_small = false;
    if (close_wait != 0) none_left = false;
    char row[256];
    std::snprintf(row, sizeof row, "%zu,%.3f,%.3f,%.3f,%.3f,%zu,%.0f,%.2f,%ld\n", n, pct(lat, 0.5), pct(lat, 0.99),
                  pct(lat, 1.0), all_ms, close_wait, bytes_per_conn, idle_cpu, idle_cs);
    csv += row;
    out += std::string(first ? "" : ",\n") + "    {\"n\": " + std::to_string(n) + ", \"median_ms\": " +
           std::to_string(pct(lat, 0.5)) + ", \"p99_ms\": " + std::to_string(pct(lat, 0.99)) + ", \"max_ms\": " +
           std::to_string(pct(lat, 1.0)) + ", \"all_closed_after_last_fin_ms\": " + std::to_string(all_ms) +
           ", \"close_wait_left\": " + std::to_string(close_wait) + ", \"bytes_per_idle_connection\": " +
           std::to_string(bytes_per_conn) + ", \"idle_cpu_ms_per_s\": " + std::to_string(idle_cpu) +
           ", \"idle_context_switches_per_s\": " + std::to_string(idle_cs) + "}";
    first = false;
  }
  out += "\n  ]\n}\n";
  std::printf("\n  per connection: the k-th close by the pool minus the k-th FIN sent by the server, both in time\n"
              "  order (idle count sampled every 50 us); * all closed: the last close minus the last FIN.\n"
              "  B/idle conn: process RSS growth while the N connections were made and released, over N.\n"
              "  idle cpu, idle cs/s: the whole process over one second with the N connections idle.\n");
  if (!first)
    std::printf("\n  targets: every run of 10 000 or more closed within 100 ms of the last FIN: %s; no CLOSE_WAIT left: "
                "%s; <= 1 KiB of user-space memory per idle connection: %s\n",
                all_fast ? "met" : "NOT met", none_left ? "met" : "NOT met", all_small ? "met" : "NOT met");
  if (!json.empty()) std::ofstream(json) << out;
  if (!csv_path.empty()) std::ofstream(csv_path) << csv;
  return 0;
}
