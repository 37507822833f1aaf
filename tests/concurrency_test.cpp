// Several threads acquire and release against a server that closes connections at random.
#include <doctest/doctest.h>

#include <array>
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "servers/echo_server.hpp"
#include "servers/outcome.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using connpool::tcp_pool;
using connpool::diag::tcp_state;
using test::eventually;

TEST_CASE("concurrency: no dead hand-out, no leak, no CLOSE_WAIT, every acquire within its deadline") {
  test::fd_guard fds;
  {
    test::echo_server server(test::loopback());
    server.close_after(6);  // each connection is closed by the server after 1..6 exchanges
    const auto ep = server.endpoint();
    connpool::pool_options o;
    o.max_per_endpoint = 4;  // fewer slots than threads: waiting is exercised too
    o.acquire_timeout = 2000ms;
    constexpr int threads = 6, per_thread = 300;
    std::atomic<int> ok{0}, acquire_failures{0};
    test::failure_tally failed;  // failed exchanges: raced, late deliveries, dead hand-outs
    std::atomic<long long> slowest_acquire_us{0};
    // A listener on every thread at once (the clients', the pool's): it counts each kind.
    std::array<std::atomic<std::size_t>, 8> events{};
    {
      tcp_pool pool(o);
      pool.set_listener([&events](const tcp_pool::event& e) { ++events[static_cast<std::size_t>(e.kind)]; });
      std::vector<std::thread> ts;
      for (int t = 0; t < threads; ++t) {
        ts.emplace_back([&, t] {
          for (int i = 0; i < per_thread; ++i) {
            const auto start = std::chrono::steady_clock::now();
            connpool::error_code ec;
            auto l = pool.acquire(ep, ec);
            const auto took = std::chrono::duration_cast<std::chrono::microseconds>(
                std::chrono::steady_clock::now() - start);
            long long prev = slowest_acquire_us.load();
            while (took.count() > prev && !slowest_acquire_us.compare_exchange_weak(prev, took.count())) {
            }
            if (ec) {
              ++acquire_failures;
              continue;
            }
            const test::handout h = test::note_handout(l, start);  // with the client's own peek
            connpool::error_code io_ec;
            const std::string msg = "t" + std::to_string(t) + "-" + std::to_string(i);
            net::write(l.socket(), net::buffer(msg), io_ec);
            std::string back(msg.size(), '\0');
            if (!io_ec) net::read(l.socket(), net::buffer(back), io_ec);
            if (!io_ec && back == msg) {
              ++ok;
              l.release();
              continue;
            }
            // Failed exchange: a dead hand-out only if the server closed it before this acquire began
            // and the peek at the hand-out saw the FIN (servers/outcome.hpp).
            failed.add(server, h);
            l.discard();
          }
        });
      }
      for (auto& t : ts) t.join();
      auto s = pool.stats();
      for (const auto& note : failed.notes()) MESSAGE(note);
      MESSAGE("ok=" << ok.load() << " raced=" << failed.raced() << " late deliveries=" << failed.late_deliveries()
                    << " dead=" << failed.dead_handouts() << " acquire_failures=" << acquire_failures.load()
                    << " created=" << s.created << " reused=" << s.reused
                    << " peer_closed=" << s.peer_closed << " peer_reset=" << s.peer_reset
                    << " slowest acquire us=" << slowest_acquire_us.load());
      CHECK(failed.dead_handouts() == 0);
      CHECK(acquire_failures == 0);
      CHECK(static_cast<std::size_t>(ok.load()) + failed.raced() + failed.late_deliveries() ==
            static_cast<std::size_t>(threads * per_thread));
      CHECK(slowest_acquire_us < 2000 * 1000 + 500 * 1000);
      CHECK(s.leased == 0);
      CHECK(s.waiting == 0);
      CHECK(s.connecting == 0);
      // Every connection the server closed is gone from the pool, without an acquire.
      CHECK(eventually([&] { return test::client_sockets(ep, tcp_state::close_wait) == 0; }));
      CHECK(s.created == s.idle + s.discarded + s.peer_closed + s.peer_reset + s.unexpected_data + s.surplus +
                             s.idle_timeout + s.max_lifetime + s.pool_closed);
      // The events agree with the counters.
      auto count = [&](connpool::event_kind k) { return events[static_cast<std::size_t>(k)].load(); };
      CHECK(count(connpool::event_kind::acquired) == static_cast<std::size_t>(threads * per_thread));
      CHECK(count(connpool::event_kind::acquire_failed) == 0);
      CHECK(count(connpool::event_kind::released) == static_cast<std::size_t>(ok.load()));
      CHECK(count(connpool::event_kind::released) + count(connpool::event_kind::discarded) ==
            static_cast<std::size_t>(threads * per_thread));
      CHECK(count(connpool::event_kind::connect_succeeded) == s.created);
      CHECK(count(connpool::event_kind::connect_started) == s.created + s.connect_failed);
      CHECK(eventually([&] { return count(connpool::event_kind::closed) == pool.stats().closed(); }));
    }
  }
}

TEST_CASE("concurrency: by name, with a health check at every hand-out and pings every 5 ms; sync and async at once") {
  test::fd_guard fds;
  test::echo_server server(test::loopback());
  const connpool::host h("127.0.0.1", server.endpoint().port());  // getaddrinfo, numeric: no DNS
  auto o = connpool::pool_options();
  o.max_per_endpoint = 4;
  o.acquire_timeout = 3000ms;
  o.validate_after_idle = 0ms;
  o.ping_interval = 5ms;
  net::io_context io;
  std::atomic<int> ok{0}, failed{0}, checks{0};
  {
    tcp_pool pool(io, o);
    pool.set_health_check([&checks](tcp_pool::socket_type& s, const tcp_pool::endpoint_type&, tcp_pool::setup_done done) {
      ++checks;
      auto buf = std::make_shared<std::string>("ping\n");
      net::async_write(s, net::buffer(*buf), [&s, buf, done](connpool::error_code ec, std::size_t) {
        if (ec) return done(ec);
        net::async_read(s, net::buffer(*buf), [buf, done](connpool::error_code rec, std::size_t) {
          done(rec ? rec : *buf == "ping\n" ? connpool::error_code() : connpool::error_code(net::error::invalid_argument));
        });
      });
    });
    auto guard = net::make_work_guard(io);
    std::vector<std::thread> ts;
    for (int t = 0; t < 2; ++t) ts.emplace_back([&] { io.run(); });  // the pool's executor, two threads
    std::vector<std::thread> clients;
    for (int t = 0; t < 3; ++t)
      clients.emplace_back([&] {
        for (int i = 0; i < 150; ++i) {
          connpool::error_code ec;
          auto l = pool.acquire(h, ec);
          if (ec || test::roundtrip(l, "x") != "x") {
            ++failed;
            continue;
          }
          ++ok;
          if (i % 3 == 0) std::this_thread::sleep_for(2ms);  // idle gaps, so that pings run between leases
          l.release();
        }
      });
    // And asynchronous acquires on the same pool, from the executor's threads.
    std::atomic<int> async_left{150};
    std::function<void()> next = [&] {
      if (async_left-- <= 0) return;
      pool.async_acquire(h, [&](connpool::error_code ec, tcp_pool::lease l) {
        if (ec || test::roundtrip(l, "y") != "y") ++failed; else ++ok;
        l.release();
        next();
      });
    };
    next();
    for (auto& c : clients) c.join();
    CHECK(eventually([&] { return async_left.load() <= 0 && ok + failed == 600; }, 10000ms));
    const auto s = pool.stats(h);
    CHECK(failed == 0);
    CHECK(s.validation_failed == 0);
    CHECK(s.open() <= 4);
    CHECK(s.created == s.closed() + s.idle + s.leased);
    MESSAGE("checks run " << checks.load() << ", connections made " << s.created << ", reused " << s.reused);
    pool.close();
    guard.reset();
    for (auto& t : ts) t.join();
  }
  CHECK(checks > 0);
}
