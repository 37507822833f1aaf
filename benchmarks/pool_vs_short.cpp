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
//
// Two server models (--server asio|threads|both; asio by default):
//   asio     one Asio thread serves every connection (echo_server_process in
//            tests/servers/server_process.hpp): all five modes, as above
//   threads  one server thread per connection with blocking I/O (thread_echo_server_process, same
//            file), the way memcached workers, many RPC servers and sidecars serve a connection.
//            There a client thread that trades connections with another is paired with another
//            server thread, and the scheduler takes a while to co-locate the new pairs (issue 16).
//            pool, dedicated and probed run in short slices (--slice, 0.2 s) over many rounds
//            (15), the order rotated each round, by client threads that live for the whole cell
//            (so that the pool's thread affinity sees one thread throughout, as in a service).
//            Reported: the median of per-round ratios, and the switches of connection between
//            threads.
// A switch: a pool acquire that hands a thread a different connection (by local port) than the one
// it got from its previous acquire. The port is read with getsockname when the pool hands out a
// fresh connection and remembered by descriptor, so counting adds no syscall per request.
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/utsname.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "connpool/connpool.hpp"
#include "connpool/diag.hpp"

#include "bench_util.hpp"
#include "servers/server_process.hpp"

#if defined(__cpp_impl_coroutine) && defined(CONNPOOL_HAS_CO_AWAIT)
#include "servers/net.hpp"
#define CONNPOOL_BENCH_COROUTINES 1
#endif

namespace {

using bench::clock_type;
using namespace std::chrono_literals;

enum mode { short_fin, short_rst, pooled, dedicated, probed, mode_count };
const char* const mode_names[] = {"short", "short_rst", "pool", "dedicated", "probed"};

struct config {
  std::vector<std::size_t> payloads{64, 4096};
  std::vector<std::string> clients{"1", "2", "8", "64", "1000c"};
  double seconds = 1.0;  // per cell (payload, clients, mode), split across rounds
  int rounds = 8;
  std::vector<bool> modes = std::vector<bool>(mode_count, true);  // which modes run
  std::string server = "asio";  // asio, threads or both
  // The thread-per-connection server's part has defaults of its own; --payloads, --clients (without
  // the coroutine entries) and --rounds, when given, set them too.
  std::vector<std::size_t> thread_payloads{64};
  std::vector<std::string> thread_clients{"1", "2", "8"};
  int thread_rounds = 15;
  double slice = 0.2;  // seconds per mode slice
};

/// The local port of a pooled connection, by descriptor, without a syscall per request: read with
/// getsockname when the pool hands out a fresh connection (lease::reused() false), remembered until
/// the descriptor's next fresh connection. A connection is handed out fresh before it is ever reused,
/// and the pool's lock orders one lease's store before another's load.
class port_book {
 public:
  std::uint16_t port_of(int fd, bool fresh) {
    if (fd < 0 || static_cast<std::size_t>(fd) >= size) return local_port(fd);
    std::atomic<std::uint16_t>& slot = ports_[static_cast<std::size_t>(fd)];
    std::uint16_t p = fresh ? 0 : slot.load(std::memory_order_relaxed);
    if (p == 0) {
      p = local_port(fd);
      slot.store(p, std::memory_order_relaxed);
    }
    return p;
  }

 private:
  static constexpr std::size_t size = 4096;
  static std::uint16_t local_port(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return 0;
    if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&ss)->sin_port);
    if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_port);
    return 0;
  }
  std::unique_ptr<std::atomic<std::uint16_t>[]> ports_{new std::atomic<std::uint16_t>[size]()};
};

/// What one client (thread or coroutine) did in one slice.
struct slice_result {
  std::size_t requests = 0, errors = 0, connects = 0;
  std::size_t acquires = 0, switches = 0;  // pool mode with threads: connections by port
  std::vector<std::uint32_t> latency_ns;
  std::map<std::string, std::size_t> error_kinds;

  void record(clock_type::time_point t0, connpool::error_code ec) {
    if (ec) {
      ++errors;
      ++error_kinds[ec.message()];
    } else {
      ++requests;
      latency_ns.push_back(
          static_cast<std::uint32_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now() - t0).count()));
    }
  }
  /// A pool acquire handed this thread the connection with local port `port`; `last` is the port of
  /// the one it got before (0: none yet).
  void saw(std::uint16_t port, std::uint16_t& last) {
    ++acquires;
    if (last != 0 && port != last) ++switches;
    last = port;
  }
};

struct totals {
  std::size_t requests = 0, errors = 0, connects = 0;
  std::size_t acquires = 0, switches = 0;
  double wall = 0, cpu = 0;
  long ctx_switches = 0;
  std::vector<std::uint32_t> latency_ns;
  std::map<std::string, std::size_t> error_kinds;
  std::vector<double> round_rps;              // requests/s in each round's slice
  std::vector<std::size_t> round_switches;    // switches of connection in each round's slice

  void add(const slice_result& r) {
    requests += r.requests;
    errors += r.errors;
    connects += r.connects;
    acquires += r.acquires;
    switches += r.switches;
    latency_ns.insert(latency_ns.end(), r.latency_ns.begin(), r.latency_ns.end());
    for (auto& [k, n] : r.error_kinds) error_kinds[k] += n;
  }
  double switches_per_1k() const {
    return requests ? 1000.0 * static_cast<double>(switches) / static_cast<double>(requests) : 0;
  }
};

/// One client thread's loop for one slice, synchronous I/O. With `book`, pool acquires are checked
/// for switches of connection against `last` (the thread's previous pooled connection, by port).
void thread_client(mode m, const net::ip::tcp::endpoint& ep, std::size_t payload, connpool::tcp_pool& pool,
                   net::ip::tcp::socket& mine, clock_type::time_point until, slice_result& r, port_book* book,
                   std::uint16_t& last) {
  net::io_context unrun;  // sockets are used synchronously; nobody runs this context
  std::string out(payload, 'x'), in(payload, '\0');
  auto exchange = [&](net::ip::tcp::socket& s, connpool::error_code& ec) {
    net::write(s, net::buffer(out), ec);
    if (!ec) net::read(s, net::buffer(in), ec);
  };
  while (clock_type::now() < until) {
    for (int batch = 0; batch < 16; ++batch) {
      const auto t0 = clock_type::now();
      connpool::error_code ec;
      if (m == short_fin || m == short_rst) {
        net::ip::tcp::socket s(unrun);
        s.connect(ep, ec);
        if (!ec) {
          ++r.connects;
          s.set_option(net::ip::tcp::no_delay(true), ec);
          exchange(s, ec);
          connpool::error_code ignored;
          if (m == short_rst) s.set_option(net::socket_base::linger(true, 0), ignored);
          s.close(ignored);
        }
      } else if (m == pooled) {
        auto l = pool.acquire(ep, ec);
        if (!ec) {
          if (book) r.saw(book->port_of(l.socket().native_handle(), !l.reused()), last);
          exchange(l.socket(), ec);
          if (!ec) l.release();
        }
      } else {
        if (m == probed && connpool::detail::probe(mine.native_handle()) != connpool::detail::probe_result::healthy)
          ec = net::error::connection_reset;
        if (!ec) exchange(mine, ec);
      }
      r.record(t0, ec);
    }
  }
}

#ifdef CONNPOOL_BENCH_COROUTINES
/// One coroutine client for one slice, asynchronous I/O on the thread's io_context.
net::awaitable<void> coroutine_client(mode m, net::ip::tcp::endpoint ep, std::size_t payload,
                                       connpool::tcp_pool& pool, net::ip::tcp::socket& mine,
                                       clock_type::time_point until, slice_result& r, int& live) {
  struct leave {
    int& live;
    ~leave() { --live; }
  } on_exit{live};
  auto ex = co_await net::this_coro::executor;
  std::string out(payload, 'x'), in(payload, '\0');
  while (clock_type::now() < until) {
    const auto t0 = clock_type::now();
    connpool::error_code ec;
    auto exchange = [&](net::ip::tcp::socket& s) -> net::awaitable<void> {
      co_await net::async_write(s, net::buffer(out), net::redirect_error(net::use_awaitable, ec));
      if (!ec) co_await net::async_read(s, net::buffer(in), net::redirect_error(net::use_awaitable, ec));
    };
    if (m == short_fin || m == short_rst) {
      net::ip::tcp::socket s(ex);
      co_await s.async_connect(ep, net::redirect_error(net::use_awaitable, ec));
      if (!ec) {
        ++r.connects;
        s.set_option(net::ip::tcp::no_delay(true), ec);
        co_await exchange(s);
        connpool::error_code ignored;
        if (m == short_rst) s.set_option(net::socket_base::linger(true, 0), ignored);
        s.close(ignored);
      }
    } else if (m == pooled) {
      connpool::tcp_pool::lease l = pool.try_acquire(ep);  // an idle connection without a completion hop
      if (!l) {
        try {
          l = co_await pool.async_acquire(ep, net::use_awaitable);
        } catch (const connpool::system_error& e) {
          ec = e.code();
        }
      }
      if (!ec) {
        co_await exchange(l.socket());
        if (!ec) l.release();
      }
    } else {
      if (m == probed && connpool::detail::probe(mine.native_handle()) != connpool::detail::probe_result::healthy)
        ec = net::error::connection_reset;
      if (!ec) co_await exchange(mine);
    }
    r.record(t0, ec);
  }
}
#endif

/// A mode's figures in one cell, as printed and written.
struct figures {
  double rps = 0, p50 = 0, p99 = 0, p999 = 0, cpu_per = 0, cs_per = 0;
  std::size_t connects = 0, tw = 0, errors = 0;
};

figures figures_of(const totals& T, std::size_t tw) {
  // The sample at floor(p n), as this benchmark has always taken it.
  auto us_at = [&](double p) { return bench::percentile(T.latency_ns, p, bench::rank::above) / 1000.0; };
  figures f;
  f.rps = T.wall > 0 ? static_cast<double>(T.requests) / T.wall : 0;
  f.p50 = us_at(0.50);
  f.p99 = us_at(0.99);
  f.p999 = us_at(0.999);
  f.cpu_per = T.requests ? T.cpu * 1e6 / static_cast<double>(T.requests) : 0;
  f.cs_per = T.requests ? static_cast<double>(T.ctx_switches) / static_cast<double>(T.requests) : 0;
  f.connects = T.connects;
  f.tw = tw;
  f.errors = T.errors;
  return f;
}

/// The ratio a/b within each round (the modes of a round ran back to back, so a ratio within a
/// round sees the same machine state): median and middle half over rounds. The median is less moved
/// by a burst of noise than the ratio of totals. The quartiles are the ratios at floor(p n) of the n
/// sorted; the median is the true median.
struct round_ratios {
  double median = 0, q1 = 0, q3 = 0;
};

round_ratios ratios_by_round(const totals& a, const totals& b) {
  std::vector<double> r;
  for (std::size_t i = 0; i < std::min(a.round_rps.size(), b.round_rps.size()); ++i)
    if (b.round_rps[i] > 0) r.push_back(a.round_rps[i] / b.round_rps[i]);
  if (r.empty()) return {};
  auto at = [&](double p) { return bench::percentile(r, p, bench::rank::above); };
  // The median is the true one (with an even number of rounds, the mean of the two middle ratios):
  // the upper of the two, which earlier runs took, flattered the pool by up to half a step.
  return {bench::median(r), at(0.25), at(0.75)};
}

/// `x` with `decimals` decimals, as printed and written.
std::string fmt(double x, int decimals) { return bench::value(x, decimals).str(); }

/// Everything written to --json and --csv.
struct output {
  std::vector<std::string> results;         // JSON rows of the Asio server's part (read by scripts/plot.sh)
  std::vector<std::string> thread_results;  // JSON rows of the thread-per-connection server's part
  std::vector<std::string> thread_targets;
  std::string csv =
      "payload,clients,mode,rps,p50_us,p99_us,p999_us,connects,time_wait,errors,cpu_us_per_req,cs_per_req,"
      "server,switches_per_1k_req,pool_vs_dedicated,pool_vs_probed\n";

  /// The first fields of every JSON row: which cell, and which mode (or "ratios").
  static bench::json_object cell(std::size_t payload, const std::string& clients, const char* mode) {
    bench::json_object j;
    j.add("payload", payload).add("clients", clients).add("mode", mode);
    return j;
  }

  /// One mode's row in a cell. `switches`: switches per 1000 requests, where counted (else < 0);
  /// `vs_dedicated`, `vs_probed`: pool rows, median of per-round ratios (else < 0).
  void row(const char* server, std::size_t payload, const std::string& clients, int m, const figures& f,
           double switches, double vs_dedicated, double vs_probed) {
    auto opt = [](double x) { return x < 0 ? bench::value(bench::na()) : bench::value(x, 3); };
    csv += bench::csv_line({payload, clients, mode_names[m], bench::value(f.rps, 1), bench::value(f.p50, 2),
                            bench::value(f.p99, 2), bench::value(f.p999, 2), f.connects, f.tw, f.errors,
                            bench::value(f.cpu_per, 3), bench::value(f.cs_per, 3), server, opt(switches),
                            opt(vs_dedicated), opt(vs_probed)});
    bench::json_object j = cell(payload, clients, mode_names[m]);
    j.add("rps", bench::value(f.rps, 1))
        .add("p50_us", bench::value(f.p50, 2))
        .add("p99_us", bench::value(f.p99, 2))
        .add("p999_us", bench::value(f.p999, 2))
        .add("connects", f.connects)
        .add("time_wait", f.tw)
        .add("errors", f.errors)
        .add("cpu_us_per_req", bench::value(f.cpu_per, 3))
        .add("cs_per_req", bench::value(f.cs_per, 3));
    if (switches >= 0) j.add("switches_per_1k_req", bench::value(switches, 3));
    (std::string(server) == "asio" ? results : thread_results).push_back(j.line());
  }
};

std::string list(const std::vector<std::string>& v) {
  std::string out;
  for (auto& x : v) out += (out.empty() ? "" : ", ") + x;
  return out;
}

std::string clients_label(int n) { return std::to_string(n) + (n == 1 ? " client thread" : " client threads"); }

/// The Asio server's part: every mode, threads and coroutines.
void run_asio_server(const config& cfg, test::echo_server_process& server, output& out) {
  std::printf("connpool pool-vs-short benchmark: request/response over loopback, echo server in a child process\n"
              "machine: %u cores; modes interleaved in %d rounds, %.2f s per mode and cell\n",
              std::thread::hardware_concurrency(), cfg.rounds, cfg.seconds);
  std::size_t cell = 0;
  std::vector<std::string> below_target, tw_over;  // cells that miss a target of issue 4
  double worst_pd = 1e9;
  for (std::size_t payload : cfg.payloads) {
    for (const std::string& clients : cfg.clients) {
      const bool coroutines = clients.back() == 'c';
      const int n = std::stoi(clients);
      auto port = [&](int m) { return server.endpoint(cell * mode_count + static_cast<std::size_t>(m)); };
      net::io_context io(1);  // coroutines: everything runs here; threads: the dedicated sockets only
      connpool::pool_options opts;
      opts.max_per_endpoint = static_cast<std::size_t>(n);
      opts.max_idle_per_endpoint = opts.max_per_endpoint;
      std::unique_ptr<connpool::tcp_pool> pool = coroutines ? std::make_unique<connpool::tcp_pool>(io, opts)
                                                            : std::make_unique<connpool::tcp_pool>(opts);
      std::vector<net::ip::tcp::socket> mine;
      for (int t = 0; t < n; ++t) {
        mine.emplace_back(io);
        mine.back().connect(port(dedicated));
        mine.back().set_option(net::ip::tcp::no_delay(true));
      }
      port_book book;
      {  // steady state: the pool holds its connections before anything is measured, as dedicated does
        std::vector<connpool::tcp_pool::lease> warm;
        for (int t = 0; t < n; ++t) warm.push_back(pool->acquire(port(pooled)));
        for (auto& l : warm) book.port_of(l.socket().native_handle(), true);
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
          const bench::usage u0 = bench::usage::now();
          const auto t0 = clock_type::now();
          const auto until = t0 + slice;
          if (coroutines) {
#ifdef CONNPOOL_BENCH_COROUTINES
            int live = n;
            for (int c = 0; c < n; ++c)
              net::co_spawn(io, coroutine_client(m, port(m), payload, *pool, mine[c], until, rs[c], live),
                             net::detached);
            io.restart();
            while (live > 0 && clock_type::now() < until + 5s) io.run_one_for(100ms);  // bounded
#endif
          } else {
            std::vector<std::thread> ts;
            for (int t = 0; t < n; ++t)
              ts.emplace_back([&, t] {
                std::uint16_t last = 0;  // a new thread each slice: switches are counted within it
                thread_client(m, port(m), payload, *pool, mine[t], until, rs[t], &book, last);
              });
            for (auto& th : ts) th.join();
          }
          const auto t1 = clock_type::now();
          const bench::usage used = bench::usage::now() - u0;
          auto& T = tot[m];
          const double wall = bench::seconds(t1 - t0);
          const std::size_t before = T.requests;
          T.wall += wall;
          T.cpu += used.cpu_ms() / 1e3;
          T.ctx_switches += used.switches();
          for (auto& r : rs) T.add(r);
          T.round_rps.push_back(static_cast<double>(T.requests - before) / wall);
        }
      }
      tot[pooled].connects = pool->stats().created;
      tot[dedicated].connects = tot[probed].connects = static_cast<std::size_t>(n);

      std::printf("\npayload %zu B, %s\n", payload,
                  coroutines ? (std::to_string(n) + " coroutines on one thread").c_str() : clients_label(n).c_str());
      std::printf("  %-10s %10s %9s %9s %9s %9s %10s %8s %9s %7s\n", "mode", "req/s", "p50 us", "p99 us", "p99.9 us",
                  "connects", "TIME_WAIT", "errors", "cpu us/req", "cs/req");
      auto runs = [&](int m) { return static_cast<bool>(cfg.modes[static_cast<std::size_t>(m)]); };
      const double vs_dedicated = runs(pooled) && runs(dedicated) ? ratios_by_round(tot[pooled], tot[dedicated]).median : -1;
      const double vs_probed = runs(pooled) && runs(probed) ? ratios_by_round(tot[pooled], tot[probed]).median : -1;
      double rps[mode_count] = {};
      std::size_t time_wait[mode_count] = {};
      for (int m = 0; m < mode_count; ++m) {
        if (!runs(m)) continue;
        auto& T = tot[m];
        connpool::error_code ec;
        const std::size_t tw = connpool::diag::kernel_sockets(connpool::diag::tcp_state::time_wait, port(m), ec);
        time_wait[m] = tw;
        const figures f = figures_of(T, tw);
        rps[m] = f.rps;
        std::printf("  %-10s %10.0f %9.1f %9.1f %9.1f %9zu %10zu %8zu %9.2f %7.2f\n", mode_names[m], f.rps, f.p50,
                    f.p99, f.p999, f.connects, tw, f.errors, f.cpu_per, f.cs_per);
        for (auto& [k, cnt] : T.error_kinds) std::printf("             error: %s x%zu\n", k.c_str(), cnt);
        const bool pool_row = m == pooled;
        out.row("asio", payload, clients, m, f, pool_row && !coroutines ? T.switches_per_1k() : -1,
                pool_row ? vs_dedicated : -1, pool_row ? vs_probed : -1);
      }
      std::string line = "  pool against the others, median of per-round ratios (ratio of totals):";
      bench::json_object ratio_row = output::cell(payload, clients, "ratios");
      double pd = 0;
      for (int other : {dedicated, short_fin, short_rst, probed}) {
        if (!runs(pooled) || !runs(other)) continue;
        const double med = ratios_by_round(tot[pooled], tot[other]).median,
                     total = rps[other] > 0 ? rps[pooled] / rps[other] : 0;
        if (other == dedicated) pd = med;
        char part[160];
        std::snprintf(part, sizeof part, "\n    pool/%-10s %.2fx (%.2fx)", mode_names[other], med, total);
        line += part;
        ratio_row.add(std::string("pool_vs_") + mode_names[other], bench::value(med, 3));
      }
      std::printf("%s\n", line.c_str());
      if (runs(pooled) && !coroutines)
        std::printf("  pool: %.2f switches of connection between threads per 1000 requests (a thread per slice)\n",
                    tot[pooled].switches_per_1k());
      out.results.push_back(ratio_row.line());
      const std::string name = std::to_string(payload) + " B x " + clients;
      if (runs(pooled) && runs(dedicated)) {
        worst_pd = std::min(worst_pd, pd);
        if (pd < 0.90) below_target.push_back(name + " (" + std::to_string(pd).substr(0, 4) + "x)");
      }
      if (runs(pooled) && time_wait[pooled] > tot[pooled].connects) tw_over.push_back(name);
      if (coroutines) pool->close();
      ++cell;
    }
  }
  if (worst_pd < 1e9)
    std::printf("\ntarget pool >= 0.90x dedicated (median of per-round ratios) in every cell: %s; lowest %.2fx%s%s\n",
                below_target.empty() ? "met" : "NOT met", worst_pd, below_target.empty() ? "" : "; below: ",
                list(below_target).c_str());
  if (cfg.modes[pooled])
    std::printf("target pool TIME_WAIT <= connections it opened, in every cell: %s%s%s\n",
                tw_over.empty() ? "met" : "NOT met", tw_over.empty() ? "" : "; over: ", list(tw_over).c_str());
}

/// Client threads that live for a whole cell and run one slice at a time when told to, so that
/// each keeps its identity across slices (and the pool its affinity to them), as a service's
/// threads do.
class crew {
 public:
  using work = void (*)(void* ctx, int t, mode m, clock_type::time_point until, slice_result& r, std::uint16_t& last);

  crew(int n, work w, void* ctx) : n_(n) {
    for (int t = 0; t < n; ++t) threads_.emplace_back([this, t, w, ctx] { loop(t, w, ctx); });
  }
  ~crew() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      quit_ = true;
    }
    go_.notify_all();
    for (auto& th : threads_) th.join();  // each is waiting for work, or returns within its slice
  }
  crew(const crew&) = delete;
  crew& operator=(const crew&) = delete;

  /// Run one slice on every thread; false if they are not all done `grace` after `until`.
  bool run(mode m, clock_type::time_point until, std::vector<slice_result>& rs, clock_type::duration grace) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      mode_ = m;
      until_ = until;
      rs_ = &rs;
      done_ = 0;
      ++generation_;
    }
    go_.notify_all();
    return wait(until + grace);
  }
  /// Wait for the current slice until `deadline`.
  bool wait(clock_type::time_point deadline) {
    std::unique_lock<std::mutex> lk(mu_);
    return done_cv_.wait_until(lk, deadline, [&] { return done_ == n_; });
  }

 private:
  void loop(int t, work w, void* ctx) {
    std::uint16_t last = 0;  // the port of the pooled connection this thread got last
    std::uint64_t seen = 0;
    for (;;) {
      std::unique_lock<std::mutex> lk(mu_);
      // Bounded: slices follow each other within milliseconds; a minute means the run is over.
      if (!go_.wait_for(lk, 60s, [&] { return quit_ || generation_ != seen; }) || quit_) return;
      seen = generation_;
      const mode m = mode_;
      const auto until = until_;
      slice_result& r = (*rs_)[static_cast<std::size_t>(t)];
      lk.unlock();
      w(ctx, t, m, until, r, last);
      lk.lock();
      if (++done_ == n_) done_cv_.notify_one();
    }
  }

  const int n_;
  std::mutex mu_;
  std::condition_variable go_, done_cv_;
  std::uint64_t generation_ = 0;
  int done_ = 0;
  bool quit_ = false;
  mode mode_ = pooled;
  clock_type::time_point until_{};
  std::vector<slice_result>* rs_ = nullptr;
  std::vector<std::thread> threads_;
};

/// The thread-per-connection server's part: pool, dedicated and probed, in short slices.
void run_thread_server(const config& cfg, test::thread_echo_server_process& server, output& out) {
  const mode order[] = {pooled, dedicated, probed};
  std::vector<mode> modes;
  for (mode m : order)
    if (cfg.modes[static_cast<std::size_t>(m)]) modes.push_back(m);
  const auto slice =
      std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(cfg.slice));
  std::printf("\nthread-per-connection echo server: a child process, one thread per connection, blocking recv/send\n"
              "machine: %u cores; %zu modes interleaved in %d rounds of %.2f s slices, order rotated each round;\n"
              "client threads live for the whole cell; switches: pool acquires that hand a thread another\n"
              "connection than its previous one\n",
              std::thread::hardware_concurrency(), modes.size(), cfg.thread_rounds, cfg.slice);
  struct summary_row {
    std::size_t payload;
    int n;
    double vs_dedicated, vs_probed, switches;
  };
  std::vector<summary_row> summary;
  std::size_t cell = 0;
  for (std::size_t payload : cfg.thread_payloads) {
    for (const std::string& clients : cfg.thread_clients) {
      const int n = std::stoi(clients);
      const net::ip::tcp::endpoint pool_ep = server.endpoint(2 * cell), own_ep = server.endpoint(2 * cell + 1);
      net::io_context io(1);  // the dedicated sockets, used synchronously
      connpool::pool_options opts;
      opts.max_per_endpoint = static_cast<std::size_t>(n);
      opts.max_idle_per_endpoint = opts.max_per_endpoint;
      connpool::tcp_pool pool(opts);
      std::vector<net::ip::tcp::socket> mine;
      for (int t = 0; t < n; ++t) {
        mine.emplace_back(io);
        mine.back().connect(own_ep);
        mine.back().set_option(net::ip::tcp::no_delay(true));
      }
      port_book book;
      {  // steady state: the pool holds its connections before anything is measured, as dedicated does
        std::vector<connpool::tcp_pool::lease> warm;
        for (int t = 0; t < n; ++t) warm.push_back(pool.acquire(pool_ep));
        for (auto& l : warm) book.port_of(l.socket().native_handle(), true);
        for (auto& l : warm) l.release();
      }
      struct context {
        const net::ip::tcp::endpoint &pool_ep, &own_ep;
        std::size_t payload;
        connpool::tcp_pool& pool;
        std::vector<net::ip::tcp::socket>& mine;
        port_book& book;
      } ctx{pool_ep, own_ep, payload, pool, mine, book};
      auto work = [](void* c, int t, mode m, clock_type::time_point until, slice_result& r, std::uint16_t& last) {
        auto& x = *static_cast<context*>(c);
        thread_client(m, m == pooled ? x.pool_ep : x.own_ep, x.payload, x.pool, x.mine[static_cast<std::size_t>(t)],
                      until, r, &x.book, last);
      };
      totals tot[mode_count];
      {
        crew threads(n, work, &ctx);
        for (int round = 0; round < cfg.thread_rounds; ++round) {
          for (std::size_t k = 0; k < modes.size(); ++k) {
            const mode m = modes[(k + static_cast<std::size_t>(round)) % modes.size()];  // rotate per round
            std::vector<slice_result> rs(static_cast<std::size_t>(n));
            const bench::usage u0 = bench::usage::now();
            const auto t0 = clock_type::now();
            if (!threads.run(m, t0 + slice, rs, 10s)) {
              // A client blocked reading from a server that stopped answering: killing the server ends
              // its reads (EOF or reset). Bounded either way.
              std::fprintf(stderr, "client threads still busy 10 s after their slice: killing the server\n");
              server.kill();
              if (!threads.wait(clock_type::now() + 5s)) {
                std::fprintf(stderr, "client threads still busy: giving up\n");
                std::fflush(nullptr);
                std::_Exit(1);
              }
            }
            const auto t1 = clock_type::now();
            const bench::usage used = bench::usage::now() - u0;
            auto& T = tot[m];
            const double wall = bench::seconds(t1 - t0);
            const std::size_t before = T.requests, switches_before = T.switches;
            T.wall += wall;
            T.cpu += used.cpu_ms() / 1e3;
            T.ctx_switches += used.switches();
            for (auto& r : rs) T.add(r);
            T.round_rps.push_back(static_cast<double>(T.requests - before) / wall);
            T.round_switches.push_back(T.switches - switches_before);
          }
        }
      }
      tot[pooled].connects = pool.stats().created;
      tot[dedicated].connects = tot[probed].connects = static_cast<std::size_t>(n);

      std::printf("\nthread-per-connection server, payload %zu B, %s\n", payload, clients_label(n).c_str());
      std::printf("  %-10s %10s %9s %9s %9s %9s %10s %8s %9s %7s %11s\n", "mode", "req/s", "p50 us", "p99 us",
                  "p99.9 us", "connects", "TIME_WAIT", "errors", "cpu us/req", "cs/req", "switches/1k");
      auto runs = [&](int m) { return std::find(modes.begin(), modes.end(), m) != modes.end(); };
      const bool with_pd = runs(pooled) && runs(dedicated), with_pp = runs(pooled) && runs(probed);
      const round_ratios pd = with_pd ? ratios_by_round(tot[pooled], tot[dedicated]) : round_ratios{},
                         pp = with_pp ? ratios_by_round(tot[pooled], tot[probed]) : round_ratios{};
      double rps[mode_count] = {};
      for (mode m : order) {
        if (!runs(m)) continue;
        auto& T = tot[m];
        connpool::error_code ec;
        const std::size_t tw = connpool::diag::kernel_sockets(connpool::diag::tcp_state::time_wait,
                                                              m == pooled ? pool_ep : own_ep, ec);
        const figures f = figures_of(T, tw);
        rps[m] = f.rps;
        const std::string sw = m == pooled ? fmt(T.switches_per_1k(), 2) : "-";
        std::printf("  %-10s %10.0f %9.1f %9.1f %9.1f %9zu %10zu %8zu %9.2f %7.2f %11s\n", mode_names[m], f.rps,
                    f.p50, f.p99, f.p999, f.connects, tw, f.errors, f.cpu_per, f.cs_per, sw.c_str());
        for (auto& [k, cnt] : T.error_kinds) std::printf("             error: %s x%zu\n", k.c_str(), cnt);
        const bool pool_row = m == pooled;
        out.row("threads", payload, clients, m, f, pool_row ? T.switches_per_1k() : -1,
                pool_row && with_pd ? pd.median : -1, pool_row && with_pp ? pp.median : -1);
      }
      bench::json_object ratio_row = output::cell(payload, clients, "ratios");
      if (with_pd || with_pp) {
        std::printf("  pool against the others, median of per-round ratios (ratio of totals) [middle half of rounds]:\n");
        for (int other : {dedicated, probed}) {
          if (!runs(other)) continue;
          const round_ratios& r = other == dedicated ? pd : pp;
          const double total = rps[other] > 0 ? rps[pooled] / rps[other] : 0;
          std::printf("    pool/%-10s %.2fx (%.2fx) [%.2fx-%.2fx]\n", mode_names[other], r.median, total, r.q1, r.q3);
          const std::string key = std::string("pool_vs_") + mode_names[other];
          ratio_row.add(key, bench::value(r.median, 3))
              .add(key + "_q1", bench::value(r.q1, 3))
              .add(key + "_q3", bench::value(r.q3, 3));
        }
      }
      if (runs(pooled)) {
        const auto& T = tot[pooled];
        const auto with_switch = static_cast<std::size_t>(std::count_if(
            T.round_switches.begin(), T.round_switches.end(), [](std::size_t s) { return s > 0; }));
        std::printf("  pool: %.2f switches per 1000 requests (%zu in %zu acquires); pool slices with a switch: %zu of %zu\n",
                    T.switches_per_1k(), T.switches, T.acquires, with_switch, T.round_switches.size());
        ratio_row.add("switches_per_1k_req", bench::value(T.switches_per_1k(), 3))
            .add("switches", T.switches)
            .add("acquires", T.acquires);
      }
      // Per-round figures, for a look at what the medians summarize.
      bench::json_object round_rps;
      for (mode m : modes) {
        std::vector<bench::value> v;
        for (double x : tot[m].round_rps) v.emplace_back(x, 0);
        round_rps.raw(mode_names[m], bench::json_array(v));
      }
      ratio_row.raw("round_rps", round_rps.line());
      if (runs(pooled)) {
        std::vector<bench::value> v;
        for (std::size_t sw : tot[pooled].round_switches) v.emplace_back(sw);
        ratio_row.raw("round_switches", bench::json_array(v));
      }
      out.thread_results.push_back(ratio_row.line());
      if (with_pd || with_pp)
        summary.push_back({payload, n, with_pd ? pd.median : -1, with_pp ? pp.median : -1,
                           runs(pooled) ? tot[pooled].switches_per_1k() : -1});
      ++cell;
    }
  }
  if (summary.empty()) return;
  auto x = [](double v) { return v < 0 ? std::string("-") : fmt(v, 2) + "x"; };
  std::printf("\nthread-per-connection server: pool against the others (median of per-round ratios), switches\n");
  std::printf("  %8s %-16s %15s %12s %18s\n", "payload", "clients", "pool/dedicated", "pool/probed", "switches/1k req");
  for (const auto& s : summary)
    std::printf("  %6zu B %-16s %15s %12s %18s\n", s.payload,
                (std::to_string(s.n) + (s.n == 1 ? " thread" : " threads")).c_str(),
                x(s.vs_dedicated).c_str(), x(s.vs_probed).c_str(),
                s.switches < 0 ? "-" : fmt(s.switches, 2).c_str());
  // Targets of issue 16: pool >= 0.95x dedicated at 1 and 2 threads, >= 0.93x at 8. Printed, not asserted.
  std::vector<std::string> missed;
  std::size_t checked = 0;
  std::string lines;
  for (const auto& s : summary) {
    if (s.vs_dedicated < 0 || (s.n != 1 && s.n != 2 && s.n != 8)) continue;
    const double want = s.n == 8 ? 0.93 : 0.95;
    const bool met = s.vs_dedicated >= want;
    const std::string name =
        std::to_string(s.payload) + " B, " + std::to_string(s.n) + (s.n == 1 ? " thread" : " threads");
    char b[200];
    std::snprintf(b, sizeof b, "    %-20s pool/dedicated %.3fx (>= %.2fx): %s\n", name.c_str(), s.vs_dedicated, want,
                  met ? "met" : "NOT met");
    lines += b;
    if (!met) missed.push_back(name);
    ++checked;
    out.thread_targets.push_back(bench::json_object()
                                     .add("payload", s.payload)
                                     .add("clients", std::to_string(s.n))
                                     .add("pool_vs_dedicated", bench::value(s.vs_dedicated, 3))
                                     .add("at_least", bench::value(want, 2))
                                     .add("met", met)
                                     .line());
  }
  if (checked > 0)
    std::printf("\ntargets, thread-per-connection server (issue 16; median of per-round ratios):\n%s"
                "  pool >= 0.95x dedicated at 1 and 2 threads, >= 0.93x at 8: %s%s%s\n",
                lines.c_str(), missed.empty() ? "met" : "NOT met", missed.empty() ? "" : "; missed: ",
                list(missed).c_str());
}

void print_usage(const char* self) {
  std::printf(
      "usage: %s [--server asio|threads|both] [--clients 1,2,8,64,1000c] [--payloads 64,4096]\n"
      "          [--seconds 1.0] [--rounds 8] [--slice 0.2]\n"
      "          [--modes short,short_rst,pool,dedicated,probed] [--json out.json] [--csv out.csv]\n"
      "  --server: the echo server model: asio (one Asio thread serves every connection; the default),\n"
      "           threads (a thread per connection, blocking I/O: pool, dedicated and probed in short\n"
      "           slices by client threads that live for the whole cell), or both\n"
      "  --clients: client threads, or Nc for N coroutines on one thread (Asio server only);\n"
      "           thread server: 1,2,8 by default\n"
      "  --payloads: bytes per request; thread server: 64 by default\n"
      "  --modes: any of short, short_rst, pool, dedicated, probed (dedicated plus connpool's probe\n"
      "           before each request: what the pool costs beyond its one syscall); all by default;\n"
      "           the thread server runs pool, dedicated and probed among them\n"
      "  --seconds: Asio server: measured time per payload, clients and mode, split into interleaved rounds\n"
      "  --rounds: rounds per cell (by default 8 with the Asio server, 15 with the thread server)\n"
      "  --slice: thread server: seconds per mode and round\n",
      self);
}

}  // namespace

int main(int argc, char** argv) {
  bench::args a = bench::parse_args(argc, argv,
                                    {"--clients", "--threads", "--payloads", "--payload", "--seconds",
                                     "--modes", "--rounds", "--slice", "--server"});
  config cfg;
  if (a.has("--clients") || a.has("--threads")) {  // --threads: the older name
    cfg.clients = a.strings(a.has("--clients") ? "--clients" : "--threads");
    cfg.thread_clients.clear();
    for (auto& c : cfg.clients)
      if (c.back() != 'c') cfg.thread_clients.push_back(c);
  }
  if (a.has("--payloads") || a.has("--payload")) {
    cfg.payloads.clear();
    for (long p : a.list(a.has("--payloads") ? "--payloads" : "--payload", {}))
      cfg.payloads.push_back(static_cast<std::size_t>(p));
    cfg.thread_payloads = cfg.payloads;
  }
  cfg.seconds = a.number("--seconds", cfg.seconds);
  if (a.has("--modes")) {
    cfg.modes.assign(mode_count, false);
    for (auto& name : a.strings("--modes"))
      for (int m = 0; m < mode_count; ++m)
        if (name == mode_names[m]) cfg.modes[static_cast<std::size_t>(m)] = true;
  }
  if (a.has("--rounds")) cfg.rounds = cfg.thread_rounds = static_cast<int>(a.number("--rounds", 0));
  cfg.slice = a.number("--slice", cfg.slice);
  cfg.server = a.get("--server", cfg.server);
  if (cfg.server != "asio" && cfg.server != "threads" && cfg.server != "both")
    a.errors.push_back("--server takes asio, threads or both");
  if (cfg.rounds < 1 || !(cfg.slice > 0) || !(cfg.seconds > 0))
    a.errors.push_back("--rounds takes a whole number of at least 1, --seconds and --slice a time above 0");
  const int stop = bench::stop_code(a, [&] { print_usage(argv[0]); });
  if (stop >= 0) return stop;
#ifndef CONNPOOL_BENCH_COROUTINES
  cfg.clients.erase(std::remove_if(cfg.clients.begin(), cfg.clients.end(),
                                   [](const std::string& c) { return c.back() == 'c'; }),
                    cfg.clients.end());
#endif
  const bool asio_server = cfg.server != "threads", thread_server = cfg.server != "asio";
  bench::raise_descriptor_limit();

  // Both servers are forked before any thread starts.
  std::unique_ptr<test::echo_server_process> server;
  if (asio_server) server = std::make_unique<test::echo_server_process>(cfg.payloads.size() * cfg.clients.size() * mode_count);
  std::unique_ptr<test::thread_echo_server_process> threads_server;
  if (thread_server)  // a port for the pool's connections and one for the dedicated ones, per cell
    threads_server = std::make_unique<test::thread_echo_server_process>(
        std::max<std::size_t>(1, cfg.thread_payloads.size() * cfg.thread_clients.size() * 2));

  output out;
  if (asio_server) run_asio_server(cfg, *server, out);
  server.reset();
  if (thread_server) run_thread_server(cfg, *threads_server, out);
  threads_server.reset();

  utsname un{};
  ::uname(&un);
  bench::json_object top;
  top.add("cores", std::thread::hardware_concurrency())
      .add("kernel", std::string(un.sysname) + " " + un.release)
      .add("rounds", cfg.rounds)
      .add("seconds_per_cell", bench::value(cfg.seconds, 6))
      .add("server", cfg.server)
      .raw("results", bench::json_array_lines(out.results, "    "));
  if (thread_server)
    top.raw("thread_server", bench::json_object()
                                 .add("rounds", cfg.thread_rounds)
                                 .add("slice_seconds", bench::value(cfg.slice, 3))
                                 .raw("results", bench::json_array_lines(out.thread_results, "      "))
                                 .raw("targets", bench::json_array_lines(out.thread_targets, "      "))
                                 .lines("    "));
  return bench::write_outputs(a, top.lines() + "\n", out.csv) ? 0 : 1;
}
