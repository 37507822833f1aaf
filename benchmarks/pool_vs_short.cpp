// connpool's headline benchmark: request/response over loopback against an echo server in a child
// process, four ways, interleaved in one run so that the machine's noise hits every mode alike:
//   short      connect, one exchange, close (the client keeps TIME_WAIT)
//   short_rst  the same, closed with SO_LINGER {1,0}: RST, no TIME_WAIT, no graceful close
//   pool       connpool::tcp_pool (default constructed), acquire, exchange, release
//   dedicated  one connection per client thread for the whole run: the upper bound for a pool
// Each mode has its own server port, so client TIME_WAIT sockets are counted per mode.
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "connpool/connpool.hpp"
#include "connpool/diag.hpp"
#include "echo_server.hpp"

namespace {

using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

enum mode { short_fin, short_rst, pooled, dedicated, mode_count };
const char* const mode_names[] = {"short", "short_rst", "pool", "dedicated"};

struct config {
  std::vector<int> threads{1, 8};
  std::size_t payload = 64;
  double seconds = 1.0;  // per mode and concurrency, split across rounds
  int rounds = 4;
  std::string json;
};

struct totals {
  std::size_t requests = 0, errors = 0, connects = 0;
  double wall = 0, cpu = 0;
  long switches = 0;
  std::vector<std::uint32_t> latency_ns;
  std::map<std::string, std::size_t> error_kinds;
};

double cpu_seconds(const rusage& r) {
  return r.ru_utime.tv_sec + r.ru_stime.tv_sec + (r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
}

// One client thread's loop for one slice.
struct worker {
  mode m;
  asio::ip::tcp::endpoint ep;
  std::size_t payload;
  connpool::tcp_pool* pool;
  asio::ip::tcp::socket* mine;  // dedicated
  clock_type::time_point until;
  std::size_t requests = 0, errors = 0, connects = 0;
  std::vector<std::uint32_t> lat;
  std::map<std::string, std::size_t> kinds;

  void run() {
    asio::io_context unrun;  // sockets are used synchronously; nobody runs this context
    std::string out(payload, 'x'), in(payload, '\0');
    auto exchange = [&](asio::ip::tcp::socket& s, std::error_code& ec) {
      asio::write(s, asio::buffer(out), ec);
      if (!ec) asio::read(s, asio::buffer(in), ec);
    };
    while (clock_type::now() < until) {
      for (int batch = 0; batch < 16; ++batch) {
        const auto t0 = clock_type::now();
        std::error_code ec;
        if (m == short_fin || m == short_rst) {
          asio::ip::tcp::socket s(unrun);
          s.connect(ep, ec);
          if (!ec) {
            ++connects;
            s.set_option(asio::ip::tcp::no_delay(true), ec);
            exchange(s, ec);
            if (m == short_rst) s.set_option(asio::socket_base::linger(true, 0));
            std::error_code ignored;
            s.close(ignored);
          }
        } else if (m == pooled) {
          auto l = pool->acquire(ep, ec);
          if (!ec) {
            exchange(l.socket(), ec);
            if (!ec) l.release();
          }
        } else {
          exchange(*mine, ec);
        }
        const auto t1 = clock_type::now();
        if (ec) {
          ++errors;
          ++kinds[ec.message()];
        } else {
          ++requests;
          lat.push_back(static_cast<std::uint32_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count()));
        }
      }
    }
  }
};

double percentile(std::vector<std::uint32_t>& v, double p) {
  if (v.empty()) return 0;
  const std::size_t k = std::min(v.size() - 1, static_cast<std::size_t>(p * v.size()));
  std::nth_element(v.begin(), v.begin() + k, v.end());
  return v[k] / 1000.0;
}

}  // namespace

int main(int argc, char** argv) {
  config cfg;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--threads") {
      cfg.threads.clear();
      std::string list = next();
      for (std::size_t p = 0; p < list.size();) {
        std::size_t q = list.find(',', p);
        cfg.threads.push_back(std::stoi(list.substr(p, q - p)));
        p = q == std::string::npos ? list.size() : q + 1;
      }
    } else if (a == "--payload") cfg.payload = std::stoul(next());
    else if (a == "--seconds") cfg.seconds = std::stod(next());
    else if (a == "--rounds") cfg.rounds = std::stoi(next());
    else if (a == "--json") cfg.json = next();
    else {
      std::printf("usage: %s [--threads 1,8] [--payload 64] [--seconds 1.0] [--rounds 4] [--json out.json]\n"
                  "  --seconds: measured time per mode and concurrency, split into interleaved rounds\n", argv[0]);
      return a == "--help" ? 0 : 2;
    }
  }

  bench::echo_server_process server(mode_count);
  std::printf("connpool pool-vs-short benchmark: %zu B request/response over loopback, server in a child process\n"
              "machine: %u cores; modes interleaved in %d rounds, %.2f s per mode and concurrency\n\n",
              cfg.payload, std::thread::hardware_concurrency(), cfg.rounds, cfg.seconds);

  std::string json = "{\n  \"payload\": " + std::to_string(cfg.payload) + ",\n  \"results\": [\n";
  bool first_json = true;
  for (int nthreads : cfg.threads) {
    connpool::pool_options opts;
    opts.max_per_endpoint = static_cast<std::size_t>(nthreads);
    connpool::tcp_pool pool(opts);
    asio::io_context unrun;
    std::vector<asio::ip::tcp::socket> mine;
    for (int t = 0; t < nthreads; ++t) {
      mine.emplace_back(unrun);
      mine.back().connect(server.endpoint(dedicated));
      mine.back().set_option(asio::ip::tcp::no_delay(true));
    }
    totals tot[mode_count];
    const auto slice = std::chrono::duration<double>(cfg.seconds / cfg.rounds);
    for (int round = 0; round < cfg.rounds; ++round) {
      for (int mi = 0; mi < mode_count; ++mi) {
        const mode m = static_cast<mode>((mi + round) % mode_count);  // rotate the order per round
        std::vector<worker> ws(nthreads);
        rusage r0{}, r1{};
        ::getrusage(RUSAGE_SELF, &r0);
        const auto t0 = clock_type::now();
        const auto until = t0 + std::chrono::duration_cast<clock_type::duration>(slice);
        std::vector<std::thread> ts;
        for (int t = 0; t < nthreads; ++t) {
          ws[t] = worker{m, server.endpoint(m), cfg.payload, &pool, &mine[t], until, 0, 0, 0, {}, {}};
          ts.emplace_back([&w = ws[t]] { w.run(); });
        }
        for (auto& t : ts) t.join();
        const auto t1 = clock_type::now();
        ::getrusage(RUSAGE_SELF, &r1);
        auto& T = tot[m];
        T.wall += std::chrono::duration<double>(t1 - t0).count();
        T.cpu += cpu_seconds(r1) - cpu_seconds(r0);
        T.switches += (r1.ru_nvcsw - r0.ru_nvcsw) + (r1.ru_nivcsw - r0.ru_nivcsw);
        for (auto& w : ws) {
          T.requests += w.requests;
          T.errors += w.errors;
          T.connects += w.connects;
          T.latency_ns.insert(T.latency_ns.end(), w.lat.begin(), w.lat.end());
          for (auto& [k, n] : w.kinds) T.error_kinds[k] += n;
        }
      }
    }
    tot[pooled].connects = pool.stats().created;
    tot[dedicated].connects = static_cast<std::size_t>(nthreads);

    std::printf("concurrency %d (client threads)\n", nthreads);
    std::printf("  %-10s %10s %9s %9s %9s %10s %10s %8s %9s %7s\n", "mode", "req/s", "p50 us", "p99 us",
                "p99.9 us", "connects", "TIME_WAIT", "errors", "cpu us/req", "cs/req");
    double rps[mode_count];
    for (int m = 0; m < mode_count; ++m) {
      auto& T = tot[m];
      rps[m] = T.wall > 0 ? T.requests / T.wall : 0;
      std::error_code ec;
      const std::size_t tw = connpool::diag::kernel_sockets(connpool::diag::tcp_state::time_wait, server.endpoint(m), ec);
      const double p50 = percentile(T.latency_ns, 0.50), p99 = percentile(T.latency_ns, 0.99),
                   p999 = percentile(T.latency_ns, 0.999);
      const double cpu_per = T.requests ? T.cpu * 1e6 / T.requests : 0;
      const double cs_per = T.requests ? static_cast<double>(T.switches) / T.requests : 0;
      std::printf("  %-10s %10.0f %9.1f %9.1f %9.1f %10zu %10zu %8zu %9.2f %7.2f\n", mode_names[m], rps[m], p50, p99,
                  p999, T.connects, tw, T.errors, cpu_per, cs_per);
      for (auto& [k, n] : T.error_kinds) std::printf("             error: %s x%zu\n", k.c_str(), n);
      json += std::string(first_json ? "" : ",\n") + "    {\"threads\": " + std::to_string(nthreads) +
              ", \"mode\": \"" + mode_names[m] + "\", \"rps\": " + std::to_string(rps[m]) +
              ", \"p50_us\": " + std::to_string(p50) + ", \"p99_us\": " + std::to_string(p99) +
              ", \"p999_us\": " + std::to_string(p999) + ", \"connects\": " + std::to_string(T.connects) +
              ", \"time_wait\": " + std::to_string(tw) + ", \"errors\": " + std::to_string(T.errors) +
              ", \"cpu_us_per_req\": " + std::to_string(cpu_per) + ", \"cs_per_req\": " + std::to_string(cs_per) + "}";
      first_json = false;
    }
    std::printf("  ratios: pool/dedicated %.2fx   pool/short %.2fx   pool/short_rst %.2fx\n\n",
                rps[pooled] / rps[dedicated], rps[pooled] / rps[short_fin], rps[pooled] / rps[short_rst]);
  }
  json += "\n  ]\n}\n";
  if (!cfg.json.empty()) std::ofstream(cfg.json) << json;
  return 0;
}
