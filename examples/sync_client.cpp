// A thread-per-request client: four threads share one default-constructed pool, which runs its
// background work (idle watch, retiring) on its own thread.
//   sync_client HOST PORT        talks to a line echo server, e.g. `socat TCP-LISTEN:7000,fork EXEC:cat`
#include <connpool/connpool.hpp>

// connpool builds on standalone Asio, or on Boost.Asio with CONNPOOL_USE_BOOST_ASIO defined;
// connpool::net names the one in use.
#if defined(CONNPOOL_USE_BOOST_ASIO)
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#else
#include <asio/read.hpp>
#include <asio/write.hpp>
#endif

#include <cstdio>
#include <string>
#include <thread>
#include <vector>

namespace net = connpool::net;

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s HOST PORT\n", argv[0]);
    return 2;
  }
  const net::ip::tcp::endpoint server(net::ip::make_address(argv[1]),
                                      static_cast<unsigned short>(std::stoi(argv[2])));
  connpool::pool_options options;
  options.max_per_endpoint = 2;  // four threads share two connections
  connpool::tcp_pool pool(options);

  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 100; ++i) {
        connpool::error_code ec;
        connpool::tcp_pool::lease conn = pool.acquire(server, ec);  // waits for a free connection
        if (ec) {
          std::fprintf(stderr, "acquire: %s\n", ec.message().c_str());
          return;
        }
        const std::string request = "hello " + std::to_string(t) + "\n";
        std::string reply(request.size(), '\0');
        net::write(conn.socket(), net::buffer(request), ec);
        if (!ec) net::read(conn.socket(), net::buffer(reply), ec);
        if (ec) {
          std::fprintf(stderr, "exchange: %s\n", ec.message().c_str());
          conn.discard();  // protocol state unknown: close it, never reuse
          continue;
        }
        conn.release();  // complete exchange: back to the pool
      }
    });
  }
  for (auto& th : threads) th.join();

  const connpool::pool_stats s = pool.stats();
  std::printf("connections created %zu, reused %zu times, idle now %zu\n", s.created, s.reused, s.idle);
  return 0;
}
