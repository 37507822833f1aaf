// Against a real server no one here wrote: redis-server on a loopback port with `timeout 1`, so
// Redis closes every client connection idle for more than a second. Pooled PING/SET/GET across idle
// gaps longer than that never fail because of a server-closed connection; the pool closes those
// connections itself, without an acquire; no CLOSE_WAIT stays. With learn_idle_timeout (on by
// default) the pool learns that timeout from the first closes and closes idle connections first.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "../support.hpp"
#include "netns.hpp"
#include "servers/spawn.hpp"

using namespace std::chrono_literals;
using connpool::tcp_pool;
using connpool::diag::tcp_state;
using test::eventually;

namespace {

std::string find_redis() {
  return test::find_exe({"/usr/bin/redis-server", "/usr/local/bin/redis-server", "/usr/sbin/redis-server"});
}

/// The arguments of redis-server (`exe`) on 127.0.0.1:port with `timeout 1`; `extra`: more
/// options, which override these (Redis takes the last).
std::vector<std::string> redis_args(const std::string& exe, unsigned short port, const std::vector<std::string>& extra) {
  std::vector<std::string> args{exe,     "--port",    std::to_string(port), "--bind",     "127.0.0.1",
                                "--timeout", "1",     "--save",             "",           "--appendonly",
                                "no",      "--daemonize", "no",             "--logfile",  "",
                                "--loglevel", "warning", "--protected-mode", "no",        "--dir",
                                "/tmp"};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

/// redis-server (`exe`) on a free port of 127.0.0.1, with `extra` options; `ep` is where.
struct redis_on_loopback {
  explicit redis_on_loopback(const std::string& exe, const std::vector<std::string>& extra = {})
      : port(test::free_port()), process(redis_args(exe, port, extra)), ep(net::ip::make_address("127.0.0.1"), port) {}
  unsigned short port;
  test::spawned_process process;
  net::ip::tcp::endpoint ep;
};

/// The first lease from `pool` to the Redis at `ep`, once it listens (within 5 s), or an empty one.
tcp_pool::lease first_lease(tcp_pool& pool, const net::ip::tcp::endpoint& ep) {
  tcp_pool::lease l;
  eventually(
      [&] {
        connpool::error_code ec;
        l = pool.acquire(ep, ec);
        return !ec;
      },
      5000ms);
  return l;
}

/// One RESP command and its reply, as the reply's first line plus a bulk string's body if any.
std::string command(tcp_pool::lease& l, const std::vector<std::string>& args, connpool::error_code& ec) {
  std::string req = "*" + std::to_string(args.size()) + "\r\n";
  for (auto& a : args) req += "$" + std::to_string(a.size()) + "\r\n" + a + "\r\n";
  net::write(l.socket(), net::buffer(req), ec);
  if (ec) return {};
  std::string in;
  const std::size_t line = net::read_until(l.socket(), net::dynamic_buffer(in), "\r\n", ec);
  if (ec) return {};
  std::string reply = in.substr(0, line - 2);
  if (reply.size() > 1 && reply[0] == '$' && reply != "$-1") {
    const std::size_t body = std::stoul(reply.substr(1)) + 2;
    if (in.size() - line < body) net::read(l.socket(), net::dynamic_buffer(in), net::transfer_exactly(body - (in.size() - line)), ec);
    if (ec) return {};
    reply = in.substr(line, body - 2);
  }
  return reply;
}

/// A burst on four connections at once (PING, SET and GET on each), then all four released:
/// the number of commands that failed.
std::size_t burst(tcp_pool& pool, const tcp_pool::endpoint_type& ep, int round) {
  std::size_t failures = 0;
  std::vector<tcp_pool::lease> ls;
  for (int i = 0; i < 4; ++i) ls.push_back(pool.acquire(ep));
  for (int i = 0; i < 4; ++i) {
    connpool::error_code ec;
    const std::string key = "k" + std::to_string(i), value = "v" + std::to_string(round * 10 + i);
    if (command(ls[i], {"PING"}, ec) != "+PONG" || ec) ++failures;
    if (command(ls[i], {"SET", key, value}, ec) != "+OK" || ec) ++failures;
    if (command(ls[i], {"GET", key}, ec) != value || ec) ++failures;
  }
  for (auto& l : ls) l.release();
  return failures;
}

}  // namespace

TEST_CASE("redis: pooled commands across idle gaps longer than the server's 1 s client timeout") {
  const std::string exe = find_redis();
  if (test::cannot_run(exe.empty() ? "redis-server (Debian package redis-server) is not installed" : "")) return;
  test::fd_guard fds;
  redis_on_loopback redis(exe);
  REQUIRE(redis.process.started());
  const auto ep = redis.ep;
  connpool::pool_options o;
  o.acquire_timeout = 2000ms;
  o.connect_timeout = 1000ms;
  o.learn_idle_timeout = false;  // Redis closes every connection (the next test: the pool learns)
  tcp_pool pool(o);
  // Wait (bounded) until Redis listens.
  REQUIRE(eventually(
      [&] {
        connpool::error_code ec;
        auto l = pool.acquire(ep, ec);
        if (!ec) l.release();
        return !ec;
      },
      5000ms));

  std::size_t failures = 0;
  for (int gap = 0; gap < 3; ++gap) {
    CAPTURE(gap);
    failures += burst(pool, ep, gap);
    REQUIRE(pool.stats().idle == 4);
    const auto before = pool.stats();
    // Idle gap: Redis closes the connections; the pool closes its end with no acquire.
    CHECK(eventually([&] { return pool.stats().idle == 0; }, 5000ms));
    const auto after = pool.stats();
    CHECK(after.peer_closed - before.peer_closed == 4);
    CHECK(after.reused == before.reused);
    CHECK(after.created == before.created);
    CHECK(eventually([&] { return test::client_sockets(ep, tcp_state::close_wait) == 0; }));
  }
  CHECK(failures == 0);
  // A request right after a gap goes out on a fresh connection.
  auto l = pool.acquire(ep);
  CHECK_FALSE(l.reused());
  connpool::error_code ec;
  CHECK(command(l, {"GET", "k3"}, ec) == "v23");
  CHECK_FALSE(ec);
  l.release();
  pool.close();
  CHECK(pool.stats().pool_closed == 1);
}

namespace {
/// A setup step for Redis: AUTH with `password`, then SELECT `db`, pipelined; any reply but +OK
/// fails the connection with access_denied.
tcp_pool::setup_step redis_setup(std::string password, std::string db) {
  return [password = std::move(password), db = std::move(db)](tcp_pool::socket_type& s, const tcp_pool::endpoint_type&,
                                                                 tcp_pool::setup_done done) {
    auto out = std::make_shared<std::string>("*2\r\n$4\r\nAUTH\r\n$" + std::to_string(password.size()) + "\r\n" + password +
                                             "\r\n*2\r\n$6\r\nSELECT\r\n$" + std::to_string(db.size()) + "\r\n" + db + "\r\n");
    auto in = std::make_shared<std::string>();
    net::async_write(s, net::buffer(*out), [&s, out, in, done](connpool::error_code ec, std::size_t) {
      if (ec) return done(ec);
      // Two replies; each must be +OK.
      net::async_read_until(s, net::dynamic_buffer(*in), "\r\n", [&s, in, done](connpool::error_code rec, std::size_t n) {
        if (rec) return done(rec);
        if (in->compare(0, n, "+OK\r\n") != 0) return done(net::error::access_denied);
        in->erase(0, n);
        net::async_read_until(s, net::dynamic_buffer(*in), "\r\n", [in, done](connpool::error_code rec2, std::size_t n2) {
          if (rec2) return done(rec2);
          done(in->compare(0, n2, "+OK\r\n") == 0 && in->size() == n2 ? connpool::error_code()
                                                                       : connpool::error_code(net::error::access_denied));
        });
      });
    });
  };
}
}  // namespace

TEST_CASE("redis: a setup step does AUTH and SELECT 1 on every new connection; a wrong password fails the connect") {
  const std::string exe = find_redis();
  if (test::cannot_run(exe.empty() ? "redis-server (Debian package redis-server) is not installed" : "")) return;
  test::fd_guard fds;
  redis_on_loopback redis(exe, {"--requirepass", "s3cret", "--timeout", "0"});
  REQUIRE(redis.process.started());
  const auto ep = redis.ep;
  connpool::pool_options o;
  o.acquire_timeout = 2000ms;
  o.connect_timeout = 1000ms;
  tcp_pool pool(o);
  pool.set_setup(redis_setup("s3cret", "1"));
  tcp_pool::lease l = first_lease(pool, ep);
  REQUIRE(l);
  connpool::error_code ec;
  CHECK(command(l, {"SET", "setup:key", "in db 1"}, ec) == "+OK");
  l.release();
  // Reused: still authenticated, still in db 1, and nothing left unread by the step.
  l = pool.acquire(ep);
  CHECK(l.reused());
  CHECK(command(l, {"GET", "setup:key"}, ec) == "in db 1");
  l.release();
  CHECK(pool.stats().unexpected_data == 0);
  // The key is in db 1, not in db 0: seen through a pool whose step selects db 0.
  tcp_pool db0(o);
  db0.set_setup(redis_setup("s3cret", "0"));
  auto l0 = db0.acquire(ep);
  CHECK(command(l0, {"GET", "setup:key"}, ec) == "$-1");
  CHECK(command(l0, {"SELECT", "1"}, ec) == "+OK");
  CHECK(command(l0, {"GET", "setup:key"}, ec) == "in db 1");
  l0.discard();  // it selected another db: not for reuse
  // A wrong password: the acquire fails with the step's error; nothing was created or leaked.
  tcp_pool wrong(o);
  wrong.set_setup(redis_setup("not it", "1"));
  auto lw = wrong.acquire(ep, ec);
  CHECK(ec == net::error::access_denied);
  CHECK_FALSE(lw);
  const auto s = wrong.stats();
  CHECK(s.connect_failed == 1);
  CHECK(s.created == 0);
  CHECK(s.open() == 0);
}

namespace {
/// A health check: PING, and +PONG back.
void redis_ping(tcp_pool::socket_type& s, const tcp_pool::endpoint_type&, tcp_pool::setup_done done) {
  auto buf = std::make_shared<std::string>("*1\r\n$4\r\nPING\r\n");
  net::async_write(s, net::buffer(*buf), [&s, buf, done](connpool::error_code ec, std::size_t) {
    if (ec) return done(ec);
    buf->assign(7, '\0');
    net::async_read(s, net::buffer(*buf), [buf, done](connpool::error_code rec, std::size_t) {
      done(rec ? rec : *buf == "+PONG\r\n" ? connpool::error_code() : connpool::error_code(net::error::invalid_argument));
    });
  });
}

/// Drop every packet from Redis to the client port of `l`: the connection is dead, silently.
bool blackhole(test::scoped_netns& ns, const net::ip::tcp::endpoint& redis, tcp_pool::lease& l) {
  return ns.nft("add rule inet t in tcp sport " + std::to_string(redis.port()) + " tcp dport " +
                std::to_string(l.socket().local_endpoint().port()) + " drop");
}
}  // namespace

TEST_CASE("redis (netns): a PING health check finds a blackholed connection the probe cannot see, at acquire and in the background") {
  const std::string exe = find_redis();
  if (test::cannot_run(exe.empty() ? "redis-server (Debian package redis-server) is not installed" : "")) return;
  test::fd_guard fds;
  test::scoped_netns ns;
  if (test::cannot_run(!ns.why_not().empty() ? ns.why_not()
                       : !test::scoped_netns::have_nft() ? "nft (Debian package nftables) is not installed"
                                                          : ""))
    return;
  redis_on_loopback redis(exe, {"--timeout", "0"});  // in the namespace: a child of this thread
  REQUIRE(redis.process.started());
  const auto ep = redis.ep;
  connpool::pool_options o;
  o.acquire_timeout = 3000ms;
  o.connect_timeout = 1000ms;
  o.validate_after_idle = 0ms;
  o.validate_timeout = 300ms;
  tcp_pool pool(o);
  tcp_pool::lease l = first_lease(pool, ep);
  REQUIRE(l);
  connpool::error_code ec;
  CHECK(command(l, {"PING"}, ec) == "+PONG");
  REQUIRE(blackhole(ns, ep, l));
  l.release();
  // The probe sees nothing wrong: no FIN, no RST, no bytes.
  l = pool.try_acquire(ep);
  REQUIRE(l);
  CHECK(l.reused());
  l.release();
  // The check does: its PING goes unanswered, validate_timeout cuts it, and the acquire connects.
  pool.set_health_check(redis_ping);
  const auto t0 = std::chrono::steady_clock::now();
  l = pool.acquire(ep);
  const auto took = std::chrono::steady_clock::now() - t0;
  CHECK(took >= 300ms);
  CHECK(took < 2000ms);
  CHECK_FALSE(l.reused());
  CHECK(command(l, {"PING"}, ec) == "+PONG");
  auto s = pool.stats();
  CHECK(s.validation_failed == 1);
  CHECK(s.created == 2);
  l.release();

  // In the background: with ping_interval, a blackholed idle connection is closed without an acquire.
  connpool::pool_options po = o;
  po.validate_after_idle = 1h;
  po.ping_interval = 200ms;
  tcp_pool pinged(po);
  pinged.set_health_check(redis_ping);
  auto a = pinged.acquire(ep);
  auto b = pinged.acquire(ep);
  CHECK(command(a, {"PING"}, ec) == "+PONG");
  REQUIRE(blackhole(ns, ep, a));
  a.release();
  b.release();
  CHECK(eventually([&] { return pinged.stats().validation_failed == 1; }, 3000ms));
  s = pinged.stats();
  CHECK(s.idle == 1);  // the healthy one stays, pinged
  CHECK(s.open() == 1);
  auto c = pinged.acquire(ep);
  CHECK(c.reused());
  CHECK(command(c, {"PING"}, ec) == "+PONG");
  c.release();
}

TEST_CASE("redis: the pool learns the server's 1 s idle timeout from its closes, then closes idle connections first") {
  const std::string exe = find_redis();
  if (test::cannot_run(exe.empty() ? "redis-server (Debian package redis-server) is not installed" : "")) return;
  test::fd_guard fds;
  redis_on_loopback redis(exe);  // timeout 1: Redis closes a client idle for more than 1 s (counted in whole seconds)
  REQUIRE(redis.process.started());
  const auto ep = redis.ep;
  connpool::pool_options o;
  o.acquire_timeout = 2000ms;
  o.connect_timeout = 1000ms;
  tcp_pool pool(o);
  test::event_log learned;  // idle_timeout_learned events
  pool.set_listener([&](const tcp_pool::event& ev) {
    if (ev.kind == connpool::event_kind::idle_timeout_learned) learned.add(ev.duration);
  });
  tcp_pool::lease first = first_lease(pool, ep);
  REQUIRE(first);
  first.release();
  std::size_t failures = 0;
  // Round 0: Redis closes the four idle connections, at the same idle age: three closes teach it.
  failures += burst(pool, ep, 0);
  REQUIRE(learned.wait_for(1, 5000ms));
  const auto t = pool.stats(ep).peer_idle_timeout;
  CHECK(t >= 1000ms);
  CHECK(t < 2500ms);  // whole seconds: Redis closes at 1 to 2 s, plus its 100 ms cron
  CHECK(std::chrono::duration_cast<std::chrono::milliseconds>(learned.at(0)) == t);
  CHECK(eventually([&] { return pool.stats().idle == 0; }, 5000ms));
  const auto before = pool.stats(ep);
  // Rounds 1, 2: the pool closes three of them itself, before Redis could; the fourth is kept,
  // held back (never handed out), until Redis closes it.
  for (int round = 1; round <= 2; ++round) {
    CAPTURE(round);
    const auto b = pool.stats(ep);
    failures += burst(pool, ep, round);
    CHECK(eventually([&] { return pool.stats(ep).learned_idle_timeout - b.learned_idle_timeout == 3; }, 5000ms));
    CHECK(eventually([&] { return pool.stats().idle == 0; }, 5000ms));
    CHECK(pool.stats(ep).peer_closed - b.peer_closed == 1);  // the canary
    CHECK(eventually([&] { return test::client_sockets(ep, tcp_state::close_wait) == 0; }));
  }
  CHECK(failures == 0);
  const auto after = pool.stats(ep);
  CHECK(after.learned_idle_timeout - before.learned_idle_timeout == 6);
  CHECK(after.peer_idle_timeout >= 1000ms);
  CHECK(after.peer_idle_timeout < 2500ms);
  pool.close();
}
