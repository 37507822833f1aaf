// A backend restart under load (issue 14, part 4): 200 clients run request/response exchanges
// through one pool; the backend, a child process, is killed (SIGKILL: the kernel closes its
// listener and every connection) and started again on the same port 2 s later. Measures, per configuration of the pool, the connect attempts
// while it is down (per second), the connects in flight at once, and the time until the first
// client, and then every client, is served again after the restart.
//
// Each client is a loop of async_acquire, a 64-byte write, a 64-byte read and release (discard on
// error); after an error it pauses 10 ms and tries again, as a service would retry a request. The
// configurations differ only in the pool's options:
//   off:         max_connecting_per_endpoint 0, no backoff (every acquire that finds no idle
//                connection dials, again after each refusal: the connect storm);
//   connecting:  max_connecting_per_endpoint 4 (the default), no backoff;
//   backoff:     max_connecting_per_endpoint 4 and connect_backoff 100 ms doubling up to 10 s,
//                full jitter (acquires fail at once with endpoint_unavailable while it holds);
//   backoff_1s:  the same, up to 1 s.
// The connect attempts are counted by the pool's listener (connect_started).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "connpool/connpool.hpp"

#include "bench_util.hpp"
#include "servers/server_process.hpp"

namespace {

using namespace std::chrono_literals;
using bench::clock_type;
using connpool::tcp_pool;

struct config {
  std::string name;
  std::size_t max_connecting;
  std::chrono::milliseconds backoff, backoff_max;
};

struct sample {  // one time bucket
  double t_ms;
  std::uint64_t connects, ok, failed;
};

struct outcome {
  std::string name;
  std::uint64_t connects_down = 0;  // connect attempts while the backend was down
  double down_s = 0;
  std::uint64_t connects_after = 0;  // in the seconds after the restart
  std::uint64_t peak_in_flight = 0;  // connects in flight at once, most (after the restart)
  std::uint64_t peak_down = 0;       // the same, while the backend was down
  std::uint64_t unavailable = 0;     // acquires failed with endpoint_unavailable
  std::uint64_t failed_down = 0;     // failed exchanges while down
  double first_ok_ms = -1;           // after the restart
  double worst_first_ok_ms = -1;     // the longest of the rounds (-1: a round with none in the window)
  double all_ok_ms = -1;             // every client served again, after the restart
  double ok_per_s_before = 0, ok_per_s_after = 0;
  std::vector<sample> timeline;
};

struct counters {
  std::atomic<std::uint64_t> connects{0}, in_flight{0}, peak{0}, ok{0}, failed{0}, unavailable{0};
  std::atomic<bool> track_peak{false};
  std::atomic<std::int64_t> restart_ns{0};  // when the backend came back (clock_type ticks), once it has
};

class client {
 public:
  client(net::io_context& io, tcp_pool& pool, net::ip::tcp::endpoint ep, counters& c, std::atomic<std::int64_t>& back)
      : pool_(pool), ep_(ep), c_(c), timer_(io), back_(back), out_(64, 'x'), in_(64, '\0') {}
  void start() { go(); }
  void stop() { stopped_ = true; }

 private:
  void go() {
    if (stopped_) return;
    pool_.async_acquire(ep_, [this](connpool::error_code ec, tcp_pool::lease l) {
      if (ec) {
        if (ec == connpool::error::endpoint_unavailable) ++c_.unavailable;
        return fail();
      }
      lease_ = std::move(l);
      net::async_write(lease_.socket(), net::buffer(out_), [this](connpool::error_code wec, std::size_t) {
        if (wec) return fail();
        net::async_read(lease_.socket(), net::buffer(in_), [this](connpool::error_code rec, std::size_t) {
          if (rec) return fail();
          lease_.release();
          ++c_.ok;
          if (const std::int64_t r = c_.restart_ns.load(std::memory_order_relaxed); r && !back_.load()) {
            const std::int64_t now = clock_type::now().time_since_epoch().count();
            if (now >= r) back_.store(now);  // its first exchange after the restart
          }
          go();
        });
      });
    });
  }
  void fail() {
    if (lease_) lease_.discard();
    ++c_.failed;
    if (stopped_) return;
    timer_.expires_after(10ms);
    timer_.async_wait([this](connpool::error_code) { go(); });
  }

  tcp_pool& pool_;
  net::ip::tcp::endpoint ep_;
  counters& c_;
  net::steady_timer timer_;
  std::atomic<std::int64_t>& back_;
  std::string out_, in_;
  tcp_pool::lease lease_;
  bool stopped_ = false;
};

double ms_since(clock_type::time_point t0, clock_type::time_point t) {
  return std::chrono::duration<double, std::milli>(t - t0).count();
}

outcome run(const config& cfg, std::size_t clients, std::chrono::milliseconds before, std::chrono::milliseconds down,
            std::chrono::milliseconds after, std::chrono::milliseconds bucket) {
  outcome out;
  out.name = cfg.name;
  test::echo_server_process server(1);  // a child process: one Asio thread
  const auto ep = server.endpoint(0);
  connpool::pool_options o;
  o.max_per_endpoint = clients + 16;
  o.max_idle_per_endpoint = clients + 16;
  o.acquire_timeout = 1000ms;
  o.connect_timeout = 1000ms;
  o.max_connecting_per_endpoint = cfg.max_connecting;
  o.connect_backoff = cfg.backoff;
  o.connect_backoff_max = cfg.backoff_max;
  counters c;
  net::io_context io;
  std::vector<std::atomic<std::int64_t>> back(clients);
  for (auto& x : back) x = 0;
  {
    tcp_pool pool(io, o);  // everything on one thread: the pool, its connections, the clients
    pool.set_listener([&c](const tcp_pool::event& ev) {
      switch (ev.kind) {
        case connpool::event_kind::connect_started: {
          ++c.connects;
          const std::uint64_t now = ++c.in_flight;
          if (c.track_peak.load(std::memory_order_relaxed)) {
            std::uint64_t p = c.peak.load();
            while (now > p && !c.peak.compare_exchange_weak(p, now)) {
            }
          }
          break;
        }
        case connpool::event_kind::connect_succeeded:
        case connpool::event_kind::connect_failed: --c.in_flight; break;
        default: break;
      }
    });
    std::vector<std::unique_ptr<client>> cs;
    for (std::size_t i = 0; i < clients; ++i) cs.push_back(std::make_unique<client>(io, pool, ep, c, back[i]));
    for (auto& cl : cs) cl->start();
    auto work = net::make_work_guard(io);
    std::thread runner([&] { io.run(); });

    const auto t0 = clock_type::now();
    const auto kill_at = t0 + before, restart_at = kill_at + down, end_at = restart_at + after;
    std::uint64_t last_connects = 0, last_ok_count = 0, last_failed = 0;
    std::uint64_t ok_at_kill = 0, connects_at_kill = 0, failed_at_kill = 0, connects_at_restart = 0, ok_at_restart = 0;
    bool killed = false, restarted = false;
    for (auto t = t0 + bucket; t <= end_at; t += bucket) {
      std::this_thread::sleep_until(t);
      const std::uint64_t n = c.connects, k = c.ok, f = c.failed;
      out.timeline.push_back({ms_since(t0, t), n - last_connects, k - last_ok_count, f - last_failed});
      last_connects = n;
      last_ok_count = k;
      last_failed = f;
      if (!killed && t >= kill_at) {
        ok_at_kill = k;
        connects_at_kill = n;
        failed_at_kill = f;
        c.peak = c.in_flight.load();
        c.track_peak = true;
        server.kill();  // SIGKILL: the kernel closes its listener and every connection
        killed = true;
      } else if (killed && !restarted && t >= restart_at) {
        connects_at_restart = n;
        out.failed_down = f - failed_at_kill;
        ok_at_restart = k;
        out.peak_down = c.peak.exchange(c.in_flight.load());
        server.restart();  // back on the same port
        c.restart_ns = clock_type::now().time_since_epoch().count();
        restarted = true;
        out.down_s = ms_since(kill_at, clock_type::now()) / 1000;
      }
    }
    out.connects_down = connects_at_restart - connects_at_kill;
    out.connects_after = c.connects - connects_at_restart;
    out.peak_in_flight = c.peak;
    out.unavailable = c.unavailable;
    out.ok_per_s_before = static_cast<double>(ok_at_kill) / std::chrono::duration<double>(before).count();
    out.ok_per_s_after = static_cast<double>(c.ok - ok_at_restart) / std::chrono::duration<double>(after).count();
    // Recovery: the first exchange after the restart, and the time by which every client had one.
    const std::int64_t r = c.restart_ns;
    std::int64_t first = 0, all = 0;
    bool everyone = true;
    for (auto& x : back) {
      const std::int64_t v = x.load();
      if (!v) {
        everyone = false;
        continue;
      }
      if (!first || v < first) first = v;
      all = std::max(all, v);
    }
    auto ms = [](std::int64_t ticks) { return std::chrono::duration<double, std::milli>(clock_type::duration(ticks)).count(); };
    if (first) out.first_ok_ms = ms(first - r);
    if (everyone) out.all_ok_ms = ms(all - r);
    for (auto& cl : cs) net::post(io, [p = cl.get()] { p->stop(); });
    pool.close();
    work.reset();
    runner.join();
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const bench::args a = bench::parse_args(argc, argv, {"--clients", "--down-ms", "--rounds"});
  const int stop = bench::stop_code(a, [&] {
    std::printf("usage: %s [--clients 200] [--down-ms 2000] [--rounds 3] [--json out.json] [--csv out.csv]\n", argv[0]);
  });
  if (stop >= 0) return stop;
  const auto clients = static_cast<std::size_t>(a.number("--clients", 200));
  const int rounds = std::max(1, static_cast<int>(a.number("--rounds", 3)));
  const auto down = std::chrono::milliseconds(static_cast<long>(a.number("--down-ms", 2000)));
  bench::raise_descriptor_limit();
  const std::vector<config> configs = {
      {"off", 0, 0ms, 0ms},
      {"connecting", 4, 0ms, 0ms},
      {"backoff", 4, 100ms, 10000ms},
      {"backoff_1s", 4, 100ms, 1000ms},
  };
  std::printf(
      "connpool backend restart: %zu clients, the backend killed after 1 s and restarted %ld ms later, 3 s more;\n"
      "%d rounds, the configurations interleaved; medians of the rounds\n"
      "machine: %u cores\n\n",
      clients, static_cast<long>(down.count()), rounds, std::thread::hardware_concurrency());
  std::vector<std::vector<outcome>> runs(configs.size());
  for (int k = 0; k < rounds; ++k)
    for (std::size_t i = 0; i < configs.size(); ++i) runs[i].push_back(run(configs[i], clients, 1000ms, down, 3000ms, 50ms));
  std::vector<outcome> results;
  for (auto& rs : runs) {
    auto med = [&](auto field) {
      std::vector<double> v;
      for (const auto& r : rs) v.push_back(static_cast<double>(field(r)));
      return bench::median(v);
    };
    outcome m = rs.front();  // its timeline: the first round's
    m.connects_down = static_cast<std::uint64_t>(med([](const outcome& r) { return r.connects_down; }));
    m.down_s = med([](const outcome& r) { return r.down_s; });
    m.connects_after = static_cast<std::uint64_t>(med([](const outcome& r) { return r.connects_after; }));
    m.peak_in_flight = static_cast<std::uint64_t>(med([](const outcome& r) { return r.peak_in_flight; }));
    m.peak_down = static_cast<std::uint64_t>(med([](const outcome& r) { return r.peak_down; }));
    m.unavailable = static_cast<std::uint64_t>(med([](const outcome& r) { return r.unavailable; }));
    m.failed_down = static_cast<std::uint64_t>(med([](const outcome& r) { return r.failed_down; }));
    m.first_ok_ms = med([](const outcome& r) { return r.first_ok_ms < 0 ? 1e9 : r.first_ok_ms; });
    if (m.first_ok_ms >= 1e9) m.first_ok_ms = -1;
    m.worst_first_ok_ms = 0;
    for (const auto& r : rs)
      if (r.first_ok_ms < 0 || m.worst_first_ok_ms < 0) m.worst_first_ok_ms = -1;
      else m.worst_first_ok_ms = std::max(m.worst_first_ok_ms, r.first_ok_ms);
    m.all_ok_ms = med([](const outcome& r) { return r.all_ok_ms < 0 ? 1e9 : r.all_ok_ms; });
    if (m.all_ok_ms >= 1e9) m.all_ok_ms = -1;
    m.ok_per_s_before = med([](const outcome& r) { return r.ok_per_s_before; });
    m.ok_per_s_after = med([](const outcome& r) { return r.ok_per_s_after; });
    results.push_back(m);
  }

  std::printf("  %-11s %13s %11s %10s %12s %12s %11s %12s %14s %10s %15s\n", "config", "connects down", "connects/s",
              "peak down", "failed down", "unavailable", "peak after", "first ok ms", "worst first ok", "all ok ms",
              "connects after");
  std::vector<std::string> rows;
  std::string csv = "config,t_ms,connects,ok,failed\n";
  for (const auto& r : results) {
    const double rate = r.down_s > 0 ? static_cast<double>(r.connects_down) / r.down_s : 0;
    auto ms = [](double v) { return v < 0 ? std::string("none") : std::to_string(static_cast<long>(v + 0.5)); };
    std::printf("  %-11s %13llu %11.0f %10llu %12llu %12llu %11llu %12s %14s %10s %15llu\n", r.name.c_str(),
                static_cast<unsigned long long>(r.connects_down), rate, static_cast<unsigned long long>(r.peak_down),
                static_cast<unsigned long long>(r.failed_down), static_cast<unsigned long long>(r.unavailable),
                static_cast<unsigned long long>(r.peak_in_flight), ms(r.first_ok_ms).c_str(),
                ms(r.worst_first_ok_ms).c_str(), ms(r.all_ok_ms).c_str(), static_cast<unsigned long long>(r.connects_after));
    bench::json_object row;
    row.add("config", r.name)
        .add("connects_while_down", static_cast<unsigned long long>(r.connects_down))
        .add("connects_per_s_while_down", rate)
        .add("failed_exchanges_while_down", static_cast<unsigned long long>(r.failed_down))
        .add("endpoint_unavailable", static_cast<unsigned long long>(r.unavailable))
        .add("peak_connects_in_flight_while_down", static_cast<unsigned long long>(r.peak_down))
        .add("peak_connects_in_flight_after_restart", static_cast<unsigned long long>(r.peak_in_flight))
        .add("first_ok_after_restart_ms", r.first_ok_ms < 0 ? bench::na() : r.first_ok_ms)
        .add("worst_first_ok_after_restart_ms", r.worst_first_ok_ms < 0 ? bench::na() : r.worst_first_ok_ms)
        .add("all_clients_ok_after_restart_ms", r.all_ok_ms < 0 ? bench::na() : r.all_ok_ms)
        .add("connects_after_restart", static_cast<unsigned long long>(r.connects_after))
        .add("exchanges_per_s_before", r.ok_per_s_before)
        .add("exchanges_per_s_after", r.ok_per_s_after);
    rows.push_back(row.line());
    for (const auto& s : r.timeline)
      csv += bench::csv_line({r.name, s.t_ms, static_cast<unsigned long long>(s.connects),
                              static_cast<unsigned long long>(s.ok), static_cast<unsigned long long>(s.failed)});
  }
  std::printf(
      "\n  connects down: connect attempts while the backend was down (connects/s: per second of it); failed down:\n"
      "  exchanges that failed meanwhile (acquire or I/O errors); unavailable: acquires refused at once by the\n"
      "  backoff (error::endpoint_unavailable); peak down/after: connects in flight at once while it was down, and\n"
      "  after the restart; first ok, all ok: after the restart, until the first client, and every client,\n"
      "  completed an exchange (worst first ok: the longest round's; none: not within the 3 s). Medians of the\n"
      "  rounds; the timeline (CSV) is the first round's.\n");
  const std::string json = "{\n  \"clients\": " + std::to_string(clients) + ",\n  \"down_ms\": " +
                           std::to_string(down.count()) + ",\n  \"results\": " + bench::json_array_lines(rows, "  ") + "\n}\n";
  return bench::write_outputs(a, json, csv) ? 0 : 1;
}
