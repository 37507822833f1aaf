// A thread-per-request client: four threads share one default-constructed pool, which runs its
// background work (idle watch, retiring) on its own thread.
//   sync_client HOST PORT        talks to a line echo server, e.g. `socat TCP-LISTEN:7000,fork EXEC:cat`
#include <connpool/connpool.hpp>

#include <asio/read.hpp>
#include <asio/write.hpp>

#include <cstdio>
#include <string>
#include <thread>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s HOST PORT\n", argv[0]);
    return 2;
  }
  const asio::ip::tcp::endpoint server(asio::ip::make_address(argv[1]),
                                       static_cast<unsigned short>(std::stoi(argv[2])));
  connpool::pool_options options;
  options.max_per_endpoint = 2;  // four threads share two connections
  connpool::tcp_pool pool(options);

  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 100; ++i) {
        std::error_code ec;
        connpool::tcp_pool::lease conn = pool.acquire(server, ec);  // waits for a free connection
        if (ec) {
          std::fprintf(stderr, "acquire: %s\n", ec.message().c_str());
          return;
        }
        const std::string request = "hello " + std::to_string(t) + "\n";
        std::string reply(request.size(), '\0');
        asio::write(conn.socket(), asio::buffer(request), ec);
        if (!ec) asio::read(conn.socket(), asio::buffer(reply), ec);
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
