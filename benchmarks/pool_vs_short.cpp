// connpool's headline benchmark: request/response over loopback against an echo server in a child
// process, five ways, interleaved in rounds within one run so that the machine's noise hits every
// mode alike:
//   short      connect, one exchange, close (the client keeps TIME_WAIT)
//   short_rst  the same, closed with SO_LINGER {1,0}: RST, no TIME_WAIT, no graceful close
//   pool       connpool: acquire, exchange, release
//   dedicated  one connection per client for the whole run: the upper bound for a pool
//   probed     dedicated plus the probe connpool makes before each hand-out, so that pool/probed
//              shows what the pool costs beyond that one syscall
// Clients: N threads doing synchronous I/O (a default-constructed connpool::tcp_pool), or, with
// "1000c" in --clients, 1000 C++20 coroutines on one thread (a pool on that thread's io_context).
// Every (payload, clients, mode) cell has its own server port, so the client's TIME_WAIT sockets
// left by each cell are counted apart (they last 60 s).
#include <sys/resource.h>
#include <sys/utsname.h>

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

#if defined(__cpp_impl_coroutine) && defined(ASIO_HAS_CO_AWAIT)
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/redirect_error.hpp>
#include <asio/use_awaitable.hpp>
#define CONNPOOL_BENCH_COROUTINES 1
#endif

namespace {

using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

enum mode { short_fin, short_rst, pooled, dedicated, probed, mode_count };
const char* const mode_names[] = {"short", "short_rst", "pool", "dedicated", "probed"};

struct config {
  std::vector<std::size_t> payloads{64, 4096};
  std::vector<std::string> clients{"1", "2", "8", "64", "1000c"};
  double seconds = 1.0;  // per cell (payload, clients, mode), split across rounds
  int rounds = 8;
  std::vector<bool> modes = std::vector<bool>(mode_count, true);  // which modes run
  std::string json, csv;
};

/// What one client (thread or coroutine) did in one slice.
struct slice_result {
  std::size_t requests = 0, errors = 0, connects = 0;
  std::vector<std::uint32_t> latency_ns;
  std::map<std::string, std::size_t> error_kinds;

  void record(clock_type::time_point t0, std::error_code ec) {
    if (ec) {
      ++errors;
      ++error_kinds[ec.message()];
    } else {
      ++requests;
      latency_ns.push_back(
          static_cast<std::uint32_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now() - t0).count()));
    }
  }
};

struct totals {
  std::size_t requests = 0, errors = 0, connects = 0;
  double wall = 0, cpu = 0;
  long switches = 0;
  std::vector<std::uint32_t> latency_ns;
  std::map<std::string, std::size_t> error_kinds;
  std::vector<double> round_rps;  // requests/s in each round's slice

  void add(const slice_result& r) {
    requests += r.requests;
    errors += r.errors;
    connects += r.connects;
    latency_ns.insert(latency_ns.end(), r.latency_ns.begin(), r.latency_ns.end());
    for (auto& [k, n] : r.error_kinds) error_kinds[k] += n;
  }
};

struct usage {
  double cpu;
  long switches;
  static usage now() {
    rusage r{};
    ::getrusage(RUSAGE_SELF, &r);
    return {r.ru_utime.tv_sec + r.ru_stime.tv_sec + (r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6,
            r.ru_nvcsw + r.ru_nivcsw};
  }
};

/// One client thread's loop for one slice, synchronous I/O.
void thread_client(mode m, const asio::ip::tcp::endpoint& ep, std::size_t payload, connpool::tcp_pool& pool,
                   asio::ip::tcp::socket& mine, clock_type::time_point until, slice_result& r) {
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
          ++r.connects;
          s.set_option(asio::ip::tcp::no_delay(true), ec);
          exchange(s, ec);
          std::error_code ignored;
          if (m == short_rst) s.set_option(asio::socket_base::linger(true, 0), ignored);
          s.close(ignored);
        }
      } else if (m == pooled) {
        auto l = pool.acquire(ep, ec);
        if (!ec) {
          exchange(l.socket(), ec);
          if (!ec) l.release();
        }
      } else {
        if (m == probed && connpool::detail::probe(mine.native_handle()) != connpool::detail::probe_result::healthy)
          ec = asio::error::connection_reset;
        if (!ec) exchange(mine, ec);
      }
      r.record(t0, ec);
    }
  }
}

#ifdef CONNPOOL_BENCH_COROUTINES
/// One coroutine client for one slice, asynchronous I/O on the thread's io_context.
asio::awaitable<void> coroutine_client(mode m, asio::ip::tcp::endpoint ep, std::size_t payload,
                                       connpool::tcp_pool& pool, asio::ip::tcp::socket& mine,
                                       clock_type::time_point until, slice_result& r, int& live) {
  struct leave {
    int& live;
    ~leave() { --live; }
  } on_exit{live};
  auto ex = co_await asio::this_coro::executor;
  std::string out(payload, 'x'), in(payload, '\0');
  while (clock_type::now() < until) {
    const auto t0 = clock_type::now();
    std::error_code ec;
    auto exchange = [&](asio::ip::tcp::socket& s) -> asio::awaitable<void> {
      co_await asio::async_write(s, asio::buffer(out), asio::redirect_error(asio::use_awaitable, ec));
      if (!ec) co_await asio::async_read(s, asio::buffer(in), asio::redirect_error(asio::use_awaitable, ec));
    };
    if (m == short_fin || m == short_rst) {
      asio::ip::tcp::socket s(ex);
      co_await s.async_connect(ep, asio::redirect_error(asio::use_awaitable, ec));
      if (!ec) {
        ++r.connects;
        s.set_option(asio::ip::tcp::no_delay(true), ec);
        co_await exchange(s);
        std::error_code ignored;
        if (m == short_rst) s.set_option(asio::socket_base::linger(true, 0), ignored);
        s.close(ignored);
      }
    } else if (m == pooled) {
      connpool::tcp_pool::lease l = pool.try_acquire(ep);  // an idle connection without a completion hop
      if (!l) {
        try {
          l = co_await pool.async_acquire(ep, asio::use_awaitable);
        } catch (const std::system_error& e) {
          ec = e.code();
        }
      }
      if (!ec) {
        co_await exchange(l.socket());
        if (!ec) l.release();
      }
    } else {
      if (m == probed && connpool::detail::probe(mine.native_handle()) != connpool::detail::probe_result::healthy)
        ec = asio::error::connection_reset;
      if (!ec) co_await exchange(mine);
    }
    r.record(t0, ec);
  }
}
#endif

double percentile(std::vector<std::uint32_t>& v, double p) {
  if (v.empty()) return 0;
  const std::size_t k = std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k] / 1000.0;
}

std::vector<std::string> split(const std::string& list) {
  std::vector<std::string> out;
  for (std::size_t p = 0; p < list.size();) {
    const std::size_t q = list.find(',', p);
    out.push_back(list.substr(p, q == std::string::npos ? std::string::npos : q - p));
    p = q == std::string::npos ? list.size() : q + 1;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  config cfg;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--clients" || a == "--threads") {
      cfg.clients = split(next());
    } else if (a == "--payloads" || a == "--payload") {
      cfg.payloads.clear();
      for (auto& p : split(next())) cfg.payloads.push_back(std::stoul(p));
    } else if (a == "--seconds") {
      cfg.seconds = std::stod(next());
    } else if (a == "--modes") {
      cfg.modes.assign(mode_count, false);
      for (auto& name : split(next()))
        for (int m = 0; m < mode_count; ++m)
          if (name == mode_names[m]) cfg.modes[static_cast<std::size_t>(m)] = true;
    } else if (a == "--rounds") {
      cfg.rounds = std::stoi(next());
    } else if (a == "--json") {
      cfg.json = next();
    } else if (a == "--csv") {
      cfg.csv = next();
    } else {
      std::printf(
          "usage: %s [--clients 1,2,8,64,1000c] [--payloads 64,4096] [--seconds 1.0] [--rounds 8]\n"
          "          [--modes short,short_rst,pool,dedicated,probed] [--json out.json] [--csv out.csv]\n"
          "  --clients: client threads, or Nc for N coroutines on one thread\n"
          "  --modes: any of short, short_rst, pool, dedicated, probed (dedicated plus connpool's probe\n"
          "           before each request: what the pool costs beyond its one syscall); all by default\n"
          "  --seconds: measured time per payload, clients and mode, split into interleaved rounds\n",
          argv[0]);
      return a == "--help" ? 0 : 2;
    }
  }
#ifndef CONNPOOL_BENCH_COROUTINES
  cfg.clients.erase(std::remove_if(cfg.clients.begin(), cfg.clients.end(),
                                   [](const std::string& c) { return c.back() == 'c'; }),
                    cfg.clients.end());
#endif
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &rl);

  const std::size_t cells = cfg.payloads.size() * cfg.clients.size();
  bench::echo_server_process server(cells * mode_count);  // forked before any thread starts
  std::printf("connpool pool-vs-short benchmark: request/response over loopback, echo server in a child process\n"
              "machine: %u cores; modes interleaved in %d rounds, %.2f s per mode and cell\n",
              std::thread::hardware_concurrency(), cfg.rounds, cfg.seconds);

  utsname un{};
  ::uname(&un);
  std::string json = "{\n  \"cores\": " + std::to_string(std::thread::hardware_concurrency()) +
                     ",\n  \"kernel\": \"" + un.sysname + " " + un.release + "\",\n  \"rounds\": " +
                     std::to_string(cfg.rounds) + ",\n  \"seconds_per_cell\": " + std::to_string(cfg.seconds) +
                     ",\n  \"results\": [\n";
  std::string csv = "payload,clients,mode,rps,p50_us,p99_us,p999_us,connects,time_wait,errors,cpu_us_per_req,cs_per_req\n";
  bool first_json = true;
  std::size_t cell = 0;
  std::vector<std::string> below_target, tw_over;  // cells that miss a target of issue 4
  double worst_pd = 1e9;
  for (std::size_t payload : cfg.payloads) {
    for (const std::string& clients : cfg.clients) {
      const bool coroutines = clients.back() == 'c';
      const int n = std::stoi(clients);
      auto port = [&](int m) { return server.endpoint(cell * mode_count + static_cast<std::size_t>(m)); };
      asio::io_context io(1);  // coroutines: everything runs here; threads: the dedicated sockets only
      connpool::pool_options opts;
      opts.max_per_endpoint = static_cast<std::size_t>(n);
      opts.max_idle_per_endpoint = opts.max_per_endpoint;
      std::unique_ptr<connpool::tcp_pool> pool = coroutines ? std::make_unique<connpool::tcp_pool>(io, opts)
                                                            : std::make_unique<connpool::tcp_pool>(opts);
      std::vector<asio::ip::tcp::socket> mine;
      for (int t = 0; t < n; ++t) {
        mine.emplace_back(io);
        mine.back().connect(port(dedicated));
        mine.back().set_option(asio::ip::tcp::no_delay(true));
      }
      {  // steady state: the pool holds its connections before anything is measured, as dedicated does
        std::vector<connpool::tcp_pool::lease> warm;
        for (int t = 0; t < n; ++t) warm.push_back(pool->acquire(port(pooled)));
        for (auto& l : warm) l.release();
      }
      totals tot[mode_count];
      const auto slice = std::chrono::duration_cast<clock_type::duration>(
          std::chrono::duration<double>(cfg.seconds / cfg.rounds));
      for (int round = 0; round < cfg.rounds; ++round) {
        for (int mi = 0; mi < mode_count; ++mi) {
          const mode m = static_cast<mode>((mi + round) % mode_count);  // rotate the order per round
          if (!cfg.modes[static_cast<std::size_t>(m)]) continue;
          std::vector<slice_result> rs(static_cast<std::size_t>(n));
          const usage u0 = usage::now();
          const auto t0 = clock_type::now();
          const auto until = t0 + slice;
          if (coroutines) {
#ifdef CONNPOOL_BENCH_COROUTINES
            int live = n;
            for (int c = 0; c < n; ++c)
              asio::co_spawn(io, coroutine_client(m, port(m), payload, *pool, mine[c], until, rs[c], live),
                             asio::detached);
            io.restart();
            while (live > 0 && clock_type::now() < until + 5s) io.run_one_for(100ms);  // bounded
#endif
          } else {
            std::vector<std::thread> ts;
            for (int t = 0; t < n; ++t)
              ts.emplace_back([&, t] { thread_client(m, port(m), payload, *pool, mine[t], until, rs[t]); });
            for (auto& th : ts) th.join();
          }
          const auto t1 = clock_type::now();
          const usage u1 = usage::now();
          auto& T = tot[m];
          const double wall = std::chrono::duration<double>(t1 - t0).count();
          const std::size_t before = T.requests;
          T.wall += wall;
          T.cpu += u1.cpu - u0.cpu;
          T.switches += u1.switches - u0.switches;
          for (auto& r : rs) T.add(r);
          T.round_rps.push_back(static_cast<double>(T.requests - before) / wall);
        }
      }
      tot[pooled].connects = pool->stats().created;
      tot[dedicated].connects = tot[probed].connects = static_cast<std::size_t>(n);

      std::printf("\npayload %zu B, %s\n", payload,
                  coroutines ? (std::to_string(n) + " coroutines on one thread").c_str()
                             : (std::to_string(n) + (n == 1 ? " client thread" : " client threads")).c_str());
      std::printf("  %-10s %10s %9s %9s %9s %9s %10s %8s %9s %7s\n", "mode", "req/s", "p50 us", "p99 us", "p99.9 us",
                  "connects", "TIME_WAIT", "errors", "cpu us/req", "cs/req");
      double rps[mode_count];
      std::size_t time_wait[mode_count] = {};
      for (int m = 0; m < mode_count; ++m) {
        if (!cfg.modes[static_cast<std::size_t>(m)]) continue;
        auto& T = tot[m];
        rps[m] = T.wall > 0 ? static_cast<double>(T.requests) / T.wall : 0;
        std::error_code ec;
        const std::size_t tw = connpool::diag::kernel_sockets(connpool::diag::tcp_state::time_wait, port(m), ec);
        time_wait[m] = tw;
        const double p50 = percentile(T.latency_ns, 0.50), p99 = percentile(T.latency_ns, 0.99),
                     p999 = percentile(T.latency_ns, 0.999);
        const double cpu_per = T.requests ? T.cpu * 1e6 / static_cast<double>(T.requests) : 0;
        const double cs_per = T.requests ? static_cast<double>(T.switches) / static_cast<double>(T.requests) : 0;
        std::printf("  %-10s %10.0f %9.1f %9.1f %9.1f %9zu %10zu %8zu %9.2f %7.2f\n", mode_names[m], rps[m], p50, p99,
                    p999, T.connects, tw, T.errors, cpu_per, cs_per);
        for (auto& [k, cnt] : T.error_kinds) std::printf("             error: %s x%zu\n", k.c_str(), cnt);
        char row[512];
        std::snprintf(row, sizeof row, "%zu,%s,%s,%.1f,%.2f,%.2f,%.2f,%zu,%zu,%zu,%.3f,%.3f\n", payload, clients.c_str(),
                      mode_names[m], rps[m], p50, p99, p999, T.connects, tw, T.errors, cpu_per, cs_per);
        csv += row;
        std::snprintf(row, sizeof row,
                      "    {\"payload\": %zu, \"clients\": \"%s\", \"mode\": \"%s\", \"rps\": %.1f, \"p50_us\": %.2f, "
                      "\"p99_us\": %.2f, \"p999_us\": %.2f, \"connects\": %zu, \"time_wait\": %zu, \"errors\": %zu, "
                      "\"cpu_us_per_req\": %.3f, \"cs_per_req\": %.3f}",
                      payload, clients.c_str(), mode_names[m], rps[m], p50, p99, p999, T.connects, tw, T.errors,
                      cpu_per, cs_per);
        json += std::string(first_json ? "" : ",\n") + row;
        first_json = false;
      }
      // Each round runs the modes back to back, so a ratio within a round sees the same machine
      // state; the median of those ratios is less moved by a burst of noise than the ratio of totals.
      auto round_ratio = [&](int a, int b) {
        std::vector<double> r;
        for (std::size_t i = 0; i < std::min(tot[a].round_rps.size(), tot[b].round_rps.size()); ++i)
          if (tot[b].round_rps[i] > 0) r.push_back(tot[a].round_rps[i] / tot[b].round_rps[i]);
        std::sort(r.begin(), r.end());
        return r.empty() ? 0.0 : r[r.size() / 2];
      };
      std::string line = "  pool against the others, median of per-round ratios (ratio of totals):";
      std::string ratio_json;
      double pd = 0;
      for (int other : {dedicated, short_fin, short_rst, probed}) {
        if (!cfg.modes[pooled] || !cfg.modes[static_cast<std::size_t>(other)]) continue;
        const double med = round_ratio(pooled, other), total = rps[other] > 0 ? rps[pooled] / rps[other] : 0;
        if (other == dedicated) pd = med;
        char part[160];
        std::snprintf(part, sizeof part, "\n    pool/%-10s %.2fx (%.2fx)", mode_names[other], med, total);
        line += part;
        std::snprintf(part, sizeof part, ", \"pool_vs_%s\": %.3f", mode_names[other], med);
        ratio_json += part;
      }
      std::printf("%s\n", line.c_str());
      json += ",\n    {\"payload\": " + std::to_string(payload) + ", \"clients\": \"" + clients +
              "\", \"mode\": \"ratios\"" + ratio_json + "}";
      const std::string name = std::to_string(payload) + " B x " + clients;
      if (cfg.modes[pooled] && cfg.modes[dedicated]) {
        worst_pd = std::min(worst_pd, pd);
        if (pd < 0.90) below_target.push_back(name + " (" + std::to_string(pd).substr(0, 4) + "x)");
      }
      if (cfg.modes[pooled] && time_wait[pooled] > tot[pooled].connects) tw_over.push_back(name);
      if (coroutines) pool->close();
      ++cell;
    }
  }
  auto list = [](const std::vector<std::string>& v) {
    std::string out;
    for (auto& x : v) out += (out.empty() ? "" : ", ") + x;
    return out;
  };
  if (worst_pd < 1e9)
    std::printf("\ntarget pool >= 0.90x dedicated (median of per-round ratios) in every cell: %s; lowest %.2fx%s%s\n",
                below_target.empty() ? "met" : "NOT met", worst_pd, below_target.empty() ? "" : "; below: ",
                list(below_target).c_str());
  if (cfg.modes[pooled])
    std::printf("target pool TIME_WAIT <= connections it opened, in every cell: %s%s%s\n",
                tw_over.empty() ? "met" : "NOT met", tw_over.empty() ? "" : "; over: ", list(tw_over).c_str());
  json += "\n  ]\n}\n";
  if (!cfg.json.empty()) std::ofstream(cfg.json) << json;
  if (!cfg.csv.empty()) std::ofstream(cfg.csv) << csv;
  return 0;
}
