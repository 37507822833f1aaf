// The stale keep-alive race against real servers (issue 15): requests at random idle gaps around a
// server's idle timeout, with pool_options::learn_idle_timeout off and on (learned_idle_margin 1 s,
// the default, and 100 ms), side by side in one run. IDLE_RACE_DEBUG=1 prints each failure and each
// change of a learned timeout (stderr).
//
// Servers no one here wrote, each started here with a 1 s idle timeout on a loopback port:
//   redis      redis-server --timeout 1          (whole seconds: it closes at 1-3 s of idleness)
//   nginx      keepalive_timeout 1s               (1.000-1.006 s)
//   memcached  memcached -o idle_timeout=1        (a background pass: 1.2-3.9 s)
// Optionally through a relay that delays every chunk, FIN and RST by --delay-ms each way, as a
// network would: the race's window grows from microseconds on loopback to about the round trip.
//
// Each client is a loop: acquire, one request, its reply, release; then an idle gap drawn uniformly
// from the server's range (below and around its closes), so that every request meets its connection
// at that idle age. A client has a pool of its own (the pools share one thread): a client that
// talks to a server now and then, which is where the race bites. The modes run at once against the
// same server, with the same gaps. A failure is an exchange on a reused connection that failed with
// EOF, a reset or a broken pipe: the server had closed the connection as the request went out. With
// learning on, a failure is also counted "after learning" when its pool had learned a timeout then.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <deque>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "connpool/connpool.hpp"

#include "bench_util.hpp"
#include "servers/spawn.hpp"

namespace {

using namespace std::chrono_literals;
using bench::clock_type;
using connpool::tcp_pool;
using tcp = net::ip::tcp;

// --------------------------------------------------------------------------- the servers

struct server_kind {
  std::string name;
  std::string exe;
  double gap_lo, gap_hi;  // seconds: the idle gaps
  std::string request;    // one request
  std::string reply_end;  // its reply ends with this
};

/// A server (a child process) on 127.0.0.1:port, with a 1 s idle timeout.
struct server {
  server(const server_kind& k, const std::string& dir) : kind(k), port(test::free_port()) {
    const std::string p = std::to_string(port);
    if (k.name == "redis") {
      proc = std::make_unique<test::spawned_process>(std::vector<std::string>{
          k.exe, "--port", p, "--bind", "127.0.0.1", "--timeout", "1", "--save", "", "--appendonly", "no",
          "--daemonize", "no", "--logfile", "", "--protected-mode", "no", "--dir", dir, "--maxclients", "4096"});
    } else if (k.name == "nginx") {
      const std::string d = dir + "/nginx-" + p;
      const std::string conf = test::write_nginx_conf(
          d, "1s", "    listen 127.0.0.1:" + p + ";\n    location / { default_type text/plain; return 200 \"ok\\n\"; }\n",
          4096);
      proc = std::make_unique<test::spawned_process>(std::vector<std::string>{k.exe, "-p", d, "-c", conf});
    } else {
      std::vector<std::string> args{k.exe, "-p", p, "-l", "127.0.0.1", "-U", "0", "-c", "4096", "-t", "1", "-o", "idle_timeout=1"};
      if (::geteuid() == 0) {
        args.push_back("-u");
        args.push_back("nobody");
      }
      proc = std::make_unique<test::spawned_process>(args);
    }
  }
  tcp::endpoint ep() const { return {net::ip::make_address("127.0.0.1"), port}; }

  /// Whether it answers a request within `limit`.
  bool ready(std::chrono::milliseconds limit) const {
    const auto end = clock_type::now() + limit;
    while (clock_type::now() < end) {
      net::io_context io;
      tcp::socket s(io);
      connpool::error_code ec;
      s.connect(ep(), ec);
      if (!ec) {
        net::write(s, net::buffer(kind.request), ec);
        std::string in;
        if (!ec) net::read_until(s, net::dynamic_buffer(in), kind.reply_end, ec);
        if (!ec) return true;
      }
      std::this_thread::sleep_for(20ms);
    }
    return false;
  }

  server_kind kind;
  unsigned short port;
  std::unique_ptr<test::spawned_process> proc;
};

// --------------------------------------------------------------------------- the relay

/// Listens on 127.0.0.1 and forwards each connection to `upstream`: every chunk, FIN and RST
/// `delay` after it arrived, in order, each way.
class relay {
 public:
  relay(net::io_context& io, tcp::endpoint upstream, std::chrono::milliseconds delay)
      : io_(io), upstream_(upstream), delay_(delay), acceptor_(io, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0)) {
    accept();
  }
  tcp::endpoint ep() const { return acceptor_.local_endpoint(); }

 private:
  enum class what { data, fin, rst };
  struct item {
    clock_type::time_point due;
    what kind;
    std::string data;
  };
  struct link;
  struct side {
    side(net::io_context& io, tcp::socket& f, tcp::socket& t) : from(f), to(t), timer(io) {}
    tcp::socket& from;
    tcp::socket& to;
    net::steady_timer timer;
    std::deque<item> q;
    bool writing = false;
    bool ended = false;  // its FIN or RST passed on
    char buf[16384];
  };
  struct link : std::enable_shared_from_this<link> {
    link(net::io_context& io, std::chrono::milliseconds d)
        : client(io), server(io), up(io, client, server), down(io, server, client), delay(d) {}
    tcp::socket client, server;
    side up, down;
    std::chrono::milliseconds delay;

    void start() {
      read(up);
      read(down);
    }
    void read(side& s) {
      s.from.async_read_some(net::buffer(s.buf), [self = shared_from_this(), &s](connpool::error_code ec, std::size_t n) {
        const auto due = clock_type::now() + self->delay;
        if (!ec) {
          self->push(s, {due, what::data, std::string(s.buf, n)});
          self->read(s);
        } else {
          self->push(s, {due, ec == net::error::eof ? what::fin : what::rst, {}});
        }
      });
    }
    void push(side& s, item i) {
      s.q.push_back(std::move(i));
      if (!s.writing) pump(s);
    }
    void pump(side& s) {
      if (s.q.empty()) {
        s.writing = false;
        return;
      }
      s.writing = true;
      s.timer.expires_at(s.q.front().due);
      s.timer.async_wait([self = shared_from_this(), &s](connpool::error_code) {
        item& i = s.q.front();
        connpool::error_code ig;
        if (i.kind == what::data) {
          net::async_write(s.to, net::buffer(i.data), [self, &s](connpool::error_code ec, std::size_t) {
            s.q.pop_front();
            if (ec) return self->abort();
            self->pump(s);
          });
          return;
        }
        if (i.kind == what::fin) {
          s.to.shutdown(tcp::socket::shutdown_send, ig);
          s.ended = true;
          s.q.clear();
          s.writing = false;
          if (self->up.ended && self->down.ended) self->close();
          return;
        }
        s.q.clear();
        s.writing = false;
        self->abort();
      });
    }
    /// A reset (or a write that failed): reset both ends.
    void abort() {
      connpool::error_code ig;
      for (tcp::socket* t : {&client, &server}) {
        if (!t->is_open()) continue;
        t->set_option(net::socket_base::linger(true, 0), ig);
        t->close(ig);
      }
      up.ended = down.ended = true;
    }
    void close() {
      connpool::error_code ig;
      client.close(ig);
      server.close(ig);
    }
  };

  void accept() {
    auto l = std::make_shared<link>(io_, delay_);
    acceptor_.async_accept(l->client, [this, l](connpool::error_code ec) {
      if (ec) return;
      l->client.set_option(tcp::no_delay(true), ec);
      l->server.async_connect(upstream_, [l](connpool::error_code cec) {
        if (cec) return l->abort();
        connpool::error_code ig;
        l->server.set_option(tcp::no_delay(true), ig);
        l->start();
      });
      accept();
    });
  }

  net::io_context& io_;
  tcp::endpoint upstream_;
  std::chrono::milliseconds delay_;
  tcp::acceptor acceptor_;
};

// --------------------------------------------------------------------------- the clients

struct tally {
  std::atomic<long> requests{0}, failed{0}, failed_learned{0}, other_errors{0}, reused{0};
};

/// One client: a pool of its own, `n` exchanges at random idle gaps.
class client {
 public:
  client(net::io_context& io, const server_kind& k, tcp::endpoint ep, long margin_ms, long n, std::uint64_t seed,
         tally& t, std::atomic<long>& running)
      : pool_(io, options(margin_ms)), kind_(k), ep_(ep), left_(n), rng_(seed), gap_(k.gap_lo, k.gap_hi), timer_(io),
        t_(t), running_(running) {}

  /// `margin_ms` < 0: learn_idle_timeout off; else on, with that learned_idle_margin.
  static connpool::pool_options options(long margin_ms) {
    connpool::pool_options o;
    o.learn_idle_timeout = margin_ms >= 0;
    if (margin_ms >= 0) o.learned_idle_margin = std::chrono::milliseconds(margin_ms);
    o.acquire_timeout = 5000ms;
    o.connect_timeout = 2000ms;
    o.max_per_endpoint = 1;
    return o;
  }

  /// What its pool had learned at its last request (0: nothing).
  std::chrono::milliseconds learned() const { return learned_; }

  void start() {
    if (std::getenv("IDLE_RACE_DEBUG"))
      pool_.set_listener([this](const tcp_pool::event& ev) {
        if (ev.kind == connpool::event_kind::idle_timeout_learned)
          std::fprintf(stderr, "%s %p learned %.3f s\n", kind_.name.c_str(), static_cast<void*>(this),
                       std::chrono::duration<double>(ev.duration).count());
      });
    wait();
  }
  tcp_pool& pool() { return pool_; }

 private:
  void wait() {
    last_gap_ = gap_(rng_);
    timer_.expires_after(std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(last_gap_)));
    timer_.async_wait([this](connpool::error_code) { exchange(); });
  }
  void exchange() {
    pool_.async_acquire(ep_, [this](connpool::error_code ec, tcp_pool::lease l) {
      if (ec) return done(ec, false);
      lease_ = std::move(l);
      net::async_write(lease_.socket(), net::buffer(kind_.request), [this](connpool::error_code wec, std::size_t) {
        if (wec) return done(wec, true);
        in_.clear();
        net::async_read_until(lease_.socket(), net::dynamic_buffer(in_), kind_.reply_end,
                              [this](connpool::error_code rec, std::size_t) { done(rec, true); });
      });
    });
  }
  void done(connpool::error_code ec, bool had_lease) {
    ++t_.requests;
    const bool reused = had_lease && lease_.reused();
    if (reused) ++t_.reused;
    if (!ec) {
      lease_.release();
    } else {
      const bool stale = reused && (ec == net::error::eof || ec == net::error::connection_reset ||
                                    ec == net::error::broken_pipe);
      if (stale) {
        ++t_.failed;
        if (pool_.stats(ep_).peer_idle_timeout.count() > 0) ++t_.failed_learned;
        if (std::getenv("IDLE_RACE_DEBUG"))
          std::fprintf(stderr, "fail %s gap %.3f learned %lld ms ec %s\n", kind_.name.c_str(), last_gap_,
                       static_cast<long long>(pool_.stats(ep_).peer_idle_timeout.count()), ec.message().c_str());
      } else {
        ++t_.other_errors;
      }
      if (lease_) lease_.discard();
    }
    if (--left_ > 0) return wait();
    learned_ = pool_.stats(ep_).peer_idle_timeout;  // at its last request (the pool may forget it later)
    --running_;  // the main thread waits for all to end
  }

  tcp_pool pool_;
  const server_kind& kind_;
  tcp::endpoint ep_;
  long left_;
  std::mt19937_64 rng_;
  std::uniform_real_distribution<double> gap_;
  double last_gap_ = 0;
  std::chrono::milliseconds learned_{0};
  net::steady_timer timer_;
  tcp_pool::lease lease_;
  std::string in_;
  tally& t_;
  std::atomic<long>& running_;
};

struct mode_result {
  std::string server;
  long margin_ms;  // < 0: learning off
  tally t;
  connpool::pool_stats totals;
  std::vector<double> learned_ms;  // per client that learned one
};

/// One run: every server installed and selected, both modes at once, through a relay if `delay`.
/// Adds a row per server and mode to `t`; returns false if no server ran.
bool run(const std::vector<server_kind>& kinds, const std::vector<std::string>& only, const std::string& dir,
         std::chrono::milliseconds delay, const std::vector<long>& margins, long requests, long clients, bench::table& t) {
  net::io_context io, relay_io;
  std::vector<std::unique_ptr<server>> servers;
  std::vector<std::unique_ptr<relay>> relays;
  std::vector<std::unique_ptr<mode_result>> results;
  std::vector<std::unique_ptr<client>> all;
  std::atomic<long> running{0};
  for (const auto& k : kinds) {
    if (!only.empty() && std::find(only.begin(), only.end(), k.name) == only.end()) continue;
    if (k.exe.empty()) {
      std::printf("%s: not installed (Debian package %s): skipped\n", k.name.c_str(),
                  k.name == "redis" ? "redis-server" : k.name.c_str());
      continue;
    }
    auto s = std::make_unique<server>(k, dir);
    if (!s->proc->started() || !s->ready(5000ms)) {
      std::printf("%s: did not start: skipped\n", k.name.c_str());
      continue;
    }
    tcp::endpoint ep = s->ep();
    if (delay.count() > 0) {
      relays.push_back(std::make_unique<relay>(relay_io, ep, delay));
      ep = relays.back()->ep();
    }
    const long per_client = (requests + clients - 1) / clients;
    for (long margin_ms : margins) {
      results.push_back(std::make_unique<mode_result>());
      mode_result& r = *results.back();
      r.server = k.name;
      r.margin_ms = margin_ms;
      for (long c = 0; c < clients; ++c) {
        // The same gaps in both modes: client c's seed.
        all.push_back(std::make_unique<client>(io, s->kind, ep, margin_ms, per_client, 1000 + static_cast<std::uint64_t>(c),
                                               r.t, running));
        ++running;
      }
    }
    servers.push_back(std::move(s));
  }
  if (all.empty()) return false;
  for (auto& c : all) c->start();
  auto guard_r = net::make_work_guard(relay_io);
  std::thread relay_thread([&] { relay_io.run(); });
  auto guard = net::make_work_guard(io);
  std::thread io_thread([&] { io.run(); });
  const auto began = clock_type::now();
  while (running.load() > 0 && clock_type::now() - began < std::chrono::minutes(20)) std::this_thread::sleep_for(100ms);
  std::printf("delay %ld ms: took %.0f s\n", static_cast<long>(delay.count()), bench::seconds(clock_type::now() - began));

  std::size_t i = 0;
  for (auto& r : results) {
    for (long c = 0; c < clients; ++c, ++i) {
      r->totals += all[i]->pool().stats();
      if (all[i]->learned().count() > 0) r->learned_ms.push_back(static_cast<double>(all[i]->learned().count()));
    }
  }
  for (auto& c : all) c->pool().close();
  io.stop();
  relay_io.stop();
  io_thread.join();
  relay_thread.join();

  for (auto& r : results) {
    const long n = r->t.requests.load();
    const double per = n > 0 ? 1e4 * static_cast<double>(r->t.failed.load()) / static_cast<double>(n) : bench::na();
    const bool learn = r->margin_ms >= 0;
    t.add({r->server, static_cast<long>(delay.count()), std::string(learn ? "on" : "off"),
           learn ? bench::value(r->margin_ms) : bench::value("-"), n, r->t.failed.load(), bench::value(per, 1),
           learn ? bench::value(r->t.failed_learned.load()) : bench::value("-"),
           r->t.other_errors.load(),
           bench::value(n > 0 ? 100.0 * static_cast<double>(r->t.reused.load()) / static_cast<double>(n) : bench::na(), 1),
           r->totals.created, r->totals.peer_closed + r->totals.peer_reset, r->totals.learned_idle_timeout,
           r->learned_ms.empty() ? bench::value(bench::na()) : bench::value(bench::median(r->learned_ms), 0),
           r->learned_ms.size()});
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const bench::args a = bench::parse_args(argc, argv, {"--requests", "--clients", "--delay-ms", "--margins-ms", "--servers"});
  const int stop = bench::stop_code(a, [&] {
    std::printf("usage: %s [--requests 10000] [--clients 200] [--delay-ms 0,5] [--margins-ms -1,1000,100]\n"
                "          [--servers redis,nginx,memcached] [--json out.json] [--csv out.csv]\n"
                "  --margins-ms: the modes, run at once: -1 is learn_idle_timeout off, else on with that learned_idle_margin\n",
                argv[0]);
  });
  if (stop >= 0) return stop;
  const long requests = std::max(1L, static_cast<long>(a.number("--requests", 10000)));
  const long clients = std::max(1L, static_cast<long>(a.number("--clients", 200)));
  const std::vector<long> delays = a.list("--delay-ms", {0, 5});
  const std::vector<long> margins = a.list("--margins-ms", {-1, 1000, 100});
  bench::raise_descriptor_limit();

  const std::vector<server_kind> kinds = {
      {"redis", test::find_exe({"/usr/bin/redis-server", "/usr/local/bin/redis-server"}), 0.5, 3.2, "PING\r\n", "\r\n"},
      {"nginx", test::nginx_exe(), 0.5, 1.1,
       "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", "ok\n"},
      {"memcached", test::find_exe({"/usr/bin/memcached", "/usr/local/bin/memcached"}), 0.5, 4.0, "version\r\n", "\r\n"},
  };
  char tmpl[] = "/tmp/connpool-idle-race-XXXXXX";
  const std::string dir = ::mkdtemp(tmpl) ? tmpl : "/tmp";
  std::printf(
      "connpool idle race: %ld requests per server and mode, %ld clients (a pool each, one connection); idle gaps\n"
      "uniform in 0.5-3.2 s (redis), 0.5-1.1 s (nginx), 0.5-4.0 s (memcached); learn_idle_timeout off, and on\n"
      "with learned_idle_margin 1 s (the default) and 100 ms, at once; direct (delay 0) or through a relay that\n"
      "delays each chunk, FIN and RST by the delay, each way\n"
      "machine: %u cores\n\n",
      requests, clients, std::thread::hardware_concurrency());
  bench::report rep;
  rep.meta("requests", requests);
  rep.meta("clients", clients);
  bench::table& t = rep.add(bench::table(
      "idle_race", "requests at random idle gaps around the server's 1 s idle timeout",
      {"server", "delay_ms", "learning", "margin_ms", "requests", "failed", "per_10k", "after_learning", "other_errors", "reused_pct",
       "created", "peer_closed", "learned_closes", "learned_ms_median", "clients_learned"}));
  bool ran = false;
  for (long d : delays)
    ran = run(kinds, a.strings("--servers"), dir, std::chrono::milliseconds(d), margins, requests, clients, t) || ran;
  if (!ran) {
    std::printf("no server to run against\n");
    return 1;
  }
  t.notes.push_back("failed: a reused connection's exchange failed with EOF, a reset or a broken pipe (the server had closed it);");
  t.notes.push_back("after_learning: of those, while the client's pool had learned a timeout; per_10k: failed per 10,000 requests;");
  t.notes.push_back("peer_closed: closed by the server (FIN or RST), learned_closes: closed by the pool at the learned timeout;");
  t.notes.push_back("margin_ms: learned_idle_margin (the margin is that or T/10, at most T/2: 500 ms and 100 ms for T = 1 s)");
  std::printf("\n");
  t.print();
  bench::write_outputs(a, rep.json(), rep.csv());
  return 0;
}
