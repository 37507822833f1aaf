// The listener (#14, part 1): each event, with its fields, from real sockets on loopback.
#include <doctest/doctest.h>

#include <algorithm>
#include <cctype>
#include <future>
#include <thread>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "connpool/metrics.hpp"
#include "servers/echo_server.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using connpool::acquire_source;
using connpool::close_reason;
using connpool::event_kind;
using connpool::tcp_pool;
using test::eventually;

namespace {

/// What the listener saw, copied (the event's pointers are valid during the call only).
struct seen_event {
  event_kind kind;
  bool has_endpoint = false;
  net::ip::tcp::endpoint endpoint;
  std::string backend;
  connpool::error_code error;
  std::chrono::nanoseconds duration;
  acquire_source source;
  bool waited;
  close_reason reason;
  std::uint64_t uses;
  bool has_site = false;
  std::string site_file, site_function;  // lease_held_long, long_lease_ended
  unsigned site_line = 0;
};

struct recorder {
  std::mutex m;
  std::vector<seen_event> events;
  tcp_pool::listener listener() {
    return [this](const tcp_pool::event& e) {
      seen_event s{e.kind, e.endpoint != nullptr, e.endpoint ? *e.endpoint : net::ip::tcp::endpoint{},
                   e.backend ? e.backend->name : std::string(), e.error, e.duration, e.source, e.waited,
                   e.reason, e.uses, false, {}, {}, 0};
      if (e.site) {
        s.has_site = true;
        s.site_file = e.site->file ? e.site->file : "";
        s.site_function = e.site->function ? e.site->function : "";
        s.site_line = e.site->line;
      }
      std::lock_guard<std::mutex> lk(m);
      events.push_back(s);
    };
  }
  std::vector<seen_event> take() {
    std::lock_guard<std::mutex> lk(m);
    return std::exchange(events, {});
  }
  std::vector<event_kind> kinds() {
    std::vector<event_kind> k;
    for (auto& e : take()) k.push_back(e.kind);
    return k;
  }
  std::size_t count(event_kind k) {
    std::lock_guard<std::mutex> lk(m);
    std::size_t n = 0;
    for (auto& e : events)
      if (e.kind == k) ++n;
    return n;
  }
};

}  // namespace

TEST_CASE("events: connect, acquire, release, discard and close, each with its fields") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  recorder r;  // first: the pools' last events (their closes) come from their destructors
  tcp_pool pool;
  pool.set_listener(r.listener());

  auto l = pool.acquire(server.endpoint());
  auto ev = r.take();
  REQUIRE(ev.size() == 3);
  CHECK(ev[0].kind == event_kind::connect_started);
  CHECK(ev[0].endpoint == server.endpoint());
  CHECK(ev[1].kind == event_kind::connect_succeeded);
  CHECK(ev[1].endpoint == server.endpoint());
  CHECK(ev[1].duration > 0ns);
  CHECK_FALSE(ev[1].error);
  CHECK(ev[2].kind == event_kind::acquired);
  CHECK(ev[2].source == acquire_source::connect);
  CHECK_FALSE(ev[2].waited);
  CHECK(ev[2].duration >= ev[1].duration);

  CHECK(test::roundtrip(l, "x") == "x");
  l.release();
  ev = r.take();
  REQUIRE(ev.size() == 1);
  CHECK(ev[0].kind == event_kind::released);
  CHECK(ev[0].duration > 0ns);

  l = pool.acquire(server.endpoint());
  ev = r.take();
  REQUIRE(ev.size() == 1);
  CHECK(ev[0].kind == event_kind::acquired);
  CHECK(ev[0].source == acquire_source::idle);

  l.discard();
  ev = r.take();
  REQUIRE(ev.size() == 2);
  CHECK(ev[0].kind == event_kind::discarded);
  CHECK(ev[1].kind == event_kind::closed);
  CHECK(ev[1].reason == close_reason::discarded);
  CHECK(ev[1].uses == 2);
  CHECK(ev[1].duration > 0ns);
  CHECK(ev[1].endpoint == server.endpoint());
  CHECK(std::string(connpool::to_string(ev[1].reason)) == "discarded");

  // A refused connect: started, failed with the error, and the acquire's failure.
  const auto refused = server.endpoint();
  connpool::pool_options o;
  o.acquire_timeout = 2000ms;
  tcp_pool other(o);
  other.set_listener(r.listener());
  {
    net::io_context io;
    net::ip::tcp::acceptor a(io, test::loopback());
    const auto gone = a.local_endpoint();
    a.close();
    connpool::error_code ec;
    CHECK_FALSE(other.acquire(gone, ec));
    ev = r.take();
    REQUIRE(ev.size() == 3);
    CHECK(ev[0].kind == event_kind::connect_started);
    CHECK(ev[1].kind == event_kind::connect_failed);
    CHECK(ev[1].error == net::error::connection_refused);
    CHECK(ev[2].kind == event_kind::acquire_failed);
    CHECK(ev[2].error == net::error::connection_refused);
    CHECK(ev[2].endpoint == gone);
  }
  (void)refused;

  // A lease begun while no listener was set reports a zero lease time, not a stale one.
  pool.set_listener(nullptr);
  l = pool.acquire(server.endpoint());
  pool.set_listener(r.listener());
  l.release();
  ev = r.take();
  REQUIRE(ev.size() == 1);
  CHECK(ev[0].kind == event_kind::released);
  CHECK(ev[0].duration == 0ns);
}

TEST_CASE("events: a connect that close() stops ends with connect_failed (pool_closed)") {
  test::fd_guard fds;
  test::full_backlog backlog;  // connects stay in SYN_SENT
  net::io_context io;
  recorder r;
  tcp_pool pool(io);
  pool.set_listener(r.listener());
  connpool::error_code got;
  bool done = false;
  pool.async_acquire(backlog.acc.local_endpoint(), [&](connpool::error_code ec, tcp_pool::lease) {
    got = ec;
    done = true;
  });
  CHECK(eventually([&] {
    io.poll();
    return r.count(event_kind::connect_started) == 1;
  }));
  pool.close();
  CHECK(eventually([&] {
    io.poll();
    return done;
  }));
  CHECK(got == connpool::error::pool_closed);
  auto ev = r.take();
  REQUIRE(ev.size() == 3);
  CHECK(ev[0].kind == event_kind::connect_started);
  CHECK(ev[1].kind == event_kind::connect_failed);
  CHECK(ev[1].error == connpool::error::pool_closed);
  CHECK(ev[1].endpoint == backlog.acc.local_endpoint());
  CHECK(ev[2].kind == event_kind::acquire_failed);
  CHECK(ev[2].error == connpool::error::pool_closed);
}

TEST_CASE("events: a queued acquire is reported as waited; too_many_waiters as a failure; the peer's close with its reason") {
  test::fd_guard fds;
  net::io_context io;
  net::ip::tcp::acceptor acceptor(io, test::loopback());
  const auto ep = acceptor.local_endpoint();
  connpool::pool_options o;
  o.max_per_endpoint = 1;
  o.max_waiting_per_endpoint = 1;
  o.acquire_timeout = 3000ms;
  recorder r;
  tcp_pool pool(io, o);
  pool.set_listener(r.listener());

  tcp_pool::lease held;
  pool.async_acquire(ep, [&](connpool::error_code ec, tcp_pool::lease l) {
    REQUIRE(!ec);
    held = std::move(l);
  });
  CHECK(eventually([&] {
    io.poll();
    return static_cast<bool>(held);
  }));
  net::ip::tcp::socket peer(io);
  acceptor.accept(peer);
  r.take();

  bool second = false;
  pool.async_acquire(ep, [&](connpool::error_code ec, tcp_pool::lease l) {
    CHECK(!ec);
    second = true;
    l.release();
  });
  connpool::error_code third_ec;
  pool.async_acquire(ep, [&](connpool::error_code ec, tcp_pool::lease) { third_ec = ec; });
  CHECK(eventually([&] {
    io.poll();
    return static_cast<bool>(third_ec);
  }));
  CHECK(third_ec == connpool::error::too_many_waiters);
  auto ev = r.take();
  REQUIRE(ev.size() == 1);
  CHECK(ev[0].kind == event_kind::acquire_failed);
  CHECK(ev[0].error == connpool::error::too_many_waiters);
  CHECK(ev[0].endpoint == ep);

  held.release();
  CHECK(eventually([&] {
    io.poll();
    return second;
  }));
  ev = r.take();
  REQUIRE(ev.size() == 3);
  CHECK(ev[0].kind == event_kind::released);
  CHECK(ev[1].kind == event_kind::acquired);
  CHECK(ev[1].waited);
  CHECK(ev[1].source == acquire_source::idle);
  CHECK(ev[2].kind == event_kind::released);

  // The peer closes the idle connection: the idle watch closes it, reported as peer_closed.
  peer.close();
  CHECK(eventually([&] {
    io.poll();
    return r.count(event_kind::closed) == 1;
  }));
  ev = r.take();
  REQUIRE(ev.size() == 1);
  CHECK(ev[0].reason == close_reason::peer_closed);
  CHECK(ev[0].uses == 2);

  // Removed: nothing more.
  pool.set_listener(nullptr);
  auto again = pool.acquire(ep);
  again.discard();
  io.poll();
  CHECK(r.take().empty());
}

TEST_CASE("events: a named backend's events name it") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  recorder r;  // first: the pools' last events (their closes) come from their destructors
  tcp_pool pool;
  pool.set_listener(r.listener());
  const connpool::host h("127.0.0.1", server.endpoint().port());
  auto l = pool.acquire(h);
  l.release();
  auto ev = r.take();
  REQUIRE(ev.size() == 4);
  CHECK(ev[0].kind == event_kind::connect_started);
  CHECK(ev[0].backend == "127.0.0.1");
  CHECK_FALSE(ev[0].has_endpoint);  // no address yet
  CHECK(ev[1].kind == event_kind::connect_succeeded);
  CHECK(ev[1].endpoint == server.endpoint());
  CHECK(ev[2].kind == event_kind::acquired);
  CHECK(ev[2].backend == "127.0.0.1");
  CHECK(ev[3].kind == event_kind::released);
  CHECK(ev[3].backend == "127.0.0.1");
}

// ------------------------------------------------------------------------------------ metrics

namespace {

/// A strict reader of the Prometheus text format (0.0.4) for what connpool writes: every sample
/// belongs to a family declared by HELP and TYPE before it, once; names and label names are valid;
/// label values are quoted with only \\, \" and \n escaped; no series twice; a histogram's
/// buckets are cumulative, end with le="+Inf", and equal its _count. Throws std::runtime_error
/// naming the line. Returns every sample by its series ("name{labels}").
std::map<std::string, double> parse_exposition(const std::string& text) {
  auto fail = [](const std::string& why, const std::string& line) {
    throw std::runtime_error("exposition: " + why + ": " + line);
  };
  auto valid_name = [](const std::string& n, bool colon) {
    if (n.empty() || std::isdigit(static_cast<unsigned char>(n[0]))) return false;
    for (char c : n)
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || (colon && c == ':'))) return false;
    return true;
  };
  std::map<std::string, std::string> types;  // family -> type
  std::set<std::string> helped;
  std::map<std::string, double> samples;
  std::map<std::string, double> buckets, inf, counts;  // histograms, by family{labels without le}
  std::string current;  // the family being written
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) fail("empty line", line);
    if (line[0] == '#') {
      std::istringstream ls(line);
      std::string hash, kind, name;
      ls >> hash >> kind >> name;
      if (kind == "HELP") {
        if (!helped.insert(name).second) fail("HELP twice", line);
      } else if (kind == "TYPE") {
        std::string type;
        ls >> type;
        if (types.count(name)) fail("TYPE twice", line);
        if (type != "counter" && type != "gauge" && type != "histogram") fail("unknown type", line);
        if (!helped.count(name)) fail("TYPE before HELP", line);
        types[name] = type;
        current = name;
      } else {
        fail("unknown comment", line);
      }
      continue;
    }
    std::size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    const std::string name = line.substr(0, i);
    if (!valid_name(name, true)) fail("bad metric name", line);
    std::string family = name;
    for (const char* suffix : {"_bucket", "_sum", "_count"})
      if (types.count(family) == 0 && family.size() > std::strlen(suffix) &&
          family.compare(family.size() - std::strlen(suffix), std::string::npos, suffix) == 0)
        family = family.substr(0, family.size() - std::strlen(suffix));
    if (family != current || !types.count(family)) fail("sample outside its family", line);
    if (types[family] == "counter" && name.size() < 6) fail("counter without _total", line);
    if (types[family] == "counter" && name.compare(name.size() - 6, 6, "_total") != 0) fail("counter without _total", line);
    std::string labels;
    std::set<std::string> label_names;
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (line.at(i) != '}') {
        std::size_t eq = line.find('=', i);
        if (eq == std::string::npos) fail("label without =", line);
        const std::string ln = line.substr(i, eq - i);
        if (!valid_name(ln, false)) fail("bad label name", line);
        if (!label_names.insert(ln).second) fail("label twice", line);
        if (line.at(eq + 1) != '"') fail("unquoted label value", line);
        std::size_t j = eq + 2;
        for (;; ++j) {
          const char c = line.at(j);
          if (c == '\\') {
            const char n = line.at(++j);
            if (n != '\\' && n != '"' && n != 'n') fail("bad escape", line);
          } else if (c == '"') {
            break;
          } else if (c == '\n') {
            fail("raw line feed", line);
          }
        }
        labels += line.substr(i, j + 1 - i) + ",";
        i = j + 1;
        if (line.at(i) == ',') ++i;
        else if (line.at(i) != '}') fail("labels not separated", line);
      }
      ++i;
    }
    if (i >= line.size() || line[i] != ' ') fail("no value", line);
    const std::string value = line.substr(i + 1);
    double v = 0;
    if (value == "+Inf") v = HUGE_VAL;
    else {
      std::size_t used = 0;
      v = std::stod(value, &used);
      if (used != value.size()) fail("bad value", line);
    }
    const std::string series = name + "{" + labels + "}";
    if (!samples.emplace(series, v).second) fail("series twice", line);
    if (types[family] == "histogram" && name == family + "_bucket") {
      // Cumulative, in the order written, per series without its `le`; the last is +Inf.
      std::string rest = labels;
      const std::size_t le = rest.find("le=\"");
      if (le == std::string::npos) fail("bucket without le", line);
      const std::size_t end = rest.find("\",", le);
      const std::string bound = rest.substr(le + 4, end - le - 4);
      rest.erase(le, end + 2 - le);
      const std::string key = family + "{" + rest + "}";
      if (buckets.count(key) && v < buckets[key]) fail("buckets not cumulative", line);
      if (inf.count(key)) fail("a bucket after +Inf", line);
      buckets[key] = v;
      if (bound == "+Inf") inf[key] = v;
    }
    if (types[family] == "histogram" && name == family + "_count") counts[family + "{" + labels + "}"] = v;
  }
  for (const auto& [key, v] : buckets)
    if (!inf.count(key)) fail("histogram without +Inf", key);
  for (const auto& [key, v] : inf)
    if (!counts.count(key) || counts[key] != v) fail("+Inf bucket differs from _count", key);
  return samples;
}

}  // namespace

TEST_CASE("leak detection: a lease held past lease_warn_after is reported once with where it was acquired, and again when it ends") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  auto ep = server.endpoint();
  net::io_context io;
  connpool::pool_options o;
  o.lease_warn_after = 300ms;  // the leases meant to come back in time do, on a loaded machine too
  tcp_pool pool(io, o);
  recorder rec;
  pool.set_listener(rec.listener());
  test::io_thread runner(io);
  auto held_long = [&](const std::string& function) {
    for (auto& e : [&] { std::lock_guard<std::mutex> lk(rec.m); return rec.events; }())
      if (e.kind == event_kind::lease_held_long && e.site_function == function) return true;
    return false;
  };
  pool.acquire(ep, "short").release();  // back at once: never reported
  auto l = pool.acquire(ep); const unsigned line = __LINE__;  // NOLINT(readability-isolate-declaration)
  std::promise<tcp_pool::lease> tagged;
  pool.async_acquire(ep, [&](connpool::error_code ec, tcp_pool::lease x) {
    CHECK_FALSE(ec);
    tagged.set_value(std::move(x));
  }, "async work");
  auto t = tagged.get_future();
  REQUIRE(t.wait_for(5s) == std::future_status::ready);
  auto tl = t.get();
  // The events come after the gauge (outside the lock): wait for them.
  REQUIRE(eventually([&] { return rec.count(event_kind::lease_held_long) == 2; }, 5000ms));
  CHECK(pool.stats().held_long == 2);
  CHECK(pool.stats().leases_held_long == 2);
  std::vector<seen_event> warned;
  for (auto& e : [&] { std::lock_guard<std::mutex> lk(rec.m); return rec.events; }())
    if (e.kind == event_kind::lease_held_long) warned.push_back(e);
  REQUIRE(warned.size() == 2);
  const auto mine = std::find_if(warned.begin(), warned.end(), [](const seen_event& e) { return !e.site_file.empty(); });
  REQUIRE(mine != warned.end());
  CHECK(std::string(mine->site_file).find("events_test.cpp") != std::string::npos);
  CHECK(mine->site_line == line);
  CHECK_FALSE(mine->site_function.empty());
  CHECK(mine->duration >= 300ms);
  CHECK(mine->endpoint == ep);
  CHECK(held_long("async work"));
  CHECK_FALSE(held_long("short"));
  // The end of a reported lease is reported, before its released event, with the whole time held.
  rec.take();
  l.release();
  auto ends = rec.take();
  REQUIRE(ends.size() == 2);
  CHECK(ends[0].kind == event_kind::long_lease_ended);
  CHECK(ends[0].site_line == line);
  CHECK(ends[0].duration >= 300ms);
  CHECK(ends[1].kind == event_kind::released);
  CHECK(pool.stats().held_long == 1);
  tl.discard();
  CHECK(rec.count(event_kind::long_lease_ended) == 1);
  CHECK(pool.stats().held_long == 0);
  CHECK(pool.stats().leases_held_long == 2);
  // A lease that comes back in time is not reported, its end neither.
  auto quick_one = pool.acquire(ep, "quick");
  quick_one.release();
  CHECK(rec.count(event_kind::long_lease_ended) == 1);
  connpool::pool_metrics metrics;
  const auto m = parse_exposition(metrics.text(pool));
  const std::string e = "endpoint=\"127.0.0.1:" + std::to_string(ep.port()) + "\"";
  CHECK(m.at("connpool_leases_held_long_total{" + e + ",}") == 2);
  CHECK(m.at("connpool_leases_overdue{" + e + ",}") == 0);
  pool.close();
}

TEST_CASE("metrics: the text exposition carries the pool's counters per endpoint, forgotten ones, and the listener's histograms") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  connpool::pool_options o;
  o.endpoint_grace = 0ms;  // never forget (the forgotten row stays zero)
  tcp_pool pool(o);
  connpool::pool_metrics metrics({{"pool", "main \"one\"\\"}});
  pool.set_listener(metrics.listener());
  auto a = pool.acquire(server.endpoint());
  a.release();
  auto b = pool.acquire(server.endpoint());
  CHECK(b.reused());
  b.discard();
  std::map<std::string, double> m;
  const std::string text = metrics.text(pool);
  REQUIRE_NOTHROW(m = parse_exposition(text));
  const std::string ep = "127.0.0.1:" + std::to_string(server.endpoint().port());
  const std::string lp = "pool=\"main \\\"one\\\"\\\\\",";  // the label value, escaped
  auto at = [&](const std::string& name, const std::string& labels) {
    const auto it = m.find(name + "{" + lp + labels + ",}");
    if (it == m.end()) FAIL_CHECK("missing " << name << "{" << labels << "}\n" << text);
    return it == m.end() ? -1.0 : it->second;
  };
  const std::string e = "endpoint=\"" + ep + "\"";
  CHECK(at("connpool_connections_created_total", e) == 1);
  CHECK(at("connpool_connections_reused_total", e) == 1);
  CHECK(at("connpool_leases_released_total", e) == 1);
  CHECK(at("connpool_connections_closed_total", e + ",reason=\"discarded\"") == 1);
  CHECK(at("connpool_connections_closed_total", e + ",reason=\"peer_closed\"") == 0);
  CHECK(at("connpool_connections", e + ",state=\"idle\"") == 0);
  CHECK(at("connpool_connections_created_total", "endpoint=\"(forgotten)\"") == 0);
  CHECK(at("connpool_acquires_rejected_total", e + ",reason=\"endpoint_unavailable\"") == 0);
  CHECK(m.at("connpool_acquire_seconds_count{" + lp + "}") == 2);
  CHECK(m.at("connpool_acquire_seconds_bucket{" + lp + "le=\"+Inf\",}") == 2);
  CHECK(m.at("connpool_connect_seconds_count{" + lp + "}") == 1);
  CHECK(m.at("connpool_acquire_seconds_sum{" + lp + "}") > 0);
  // The sum over endpoints is the pool's total.
  const auto snap = pool.snapshot();
  CHECK(snap.total().created == pool.stats().created);
  CHECK(snap.endpoints.size() == 1);
}

TEST_CASE("metrics: a forgotten endpoint's counters stay, under endpoint=\"(forgotten)\"; a named backend is labelled backend") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  connpool::pool_options o;
  o.endpoint_grace = 1ms;
  o.idle_timeout = 1ms;
  tcp_pool pool(o);
  connpool::pool_metrics metrics;
  pool.acquire(server.endpoint()).release();
  REQUIRE(eventually([&] { return pool.snapshot().endpoints.empty(); }));  // closed, then forgotten
  auto h = pool.acquire(connpool::host("localhost", server.endpoint().port()));
  std::map<std::string, double> m;
  const std::string text = metrics.text(pool);
  REQUIRE_NOTHROW(m = parse_exposition(text));
  CHECK(m.at("connpool_connections_created_total{endpoint=\"(forgotten)\",}") == 1);
  CHECK(m.at("connpool_connections_closed_total{endpoint=\"(forgotten)\",reason=\"idle_timeout\",}") == 1);
  const std::string backend = "backend=\"localhost:" + std::to_string(server.endpoint().port()) + "\",";
  CHECK(m.at("connpool_connections{" + backend + "state=\"leased\",}") == 1);
  // No listener: the histograms are empty.
  CHECK(m.at("connpool_acquire_seconds_count{}") == 0);
}

TEST_CASE("metrics: the strict reader refuses what the format forbids") {
  CHECK_THROWS(parse_exposition("x_total{a=\"1\"} 1\n"));  // no family
  CHECK_THROWS(parse_exposition("# HELP x_total h\n# TYPE x_total counter\nx_total{a=\"1\\t\"} 1\n"));  // bad escape
  CHECK_THROWS(parse_exposition("# HELP x h\n# TYPE x counter\nx 1\n"));  // counter without _total
  CHECK_THROWS(parse_exposition("# HELP x_total h\n# TYPE x_total counter\nx_total 1\nx_total 2\n"));  // twice
  CHECK_NOTHROW(parse_exposition("# HELP x_total h\n# TYPE x_total counter\nx_total{a=\"\\\"q\\\\\"} 1\n"));
}
