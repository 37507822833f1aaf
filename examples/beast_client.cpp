// Boost.Beast as an HTTP/1.1 client through pooled connections, on the same io_context as the
// pool. Built only with CONNPOOL_USE_BOOST_ASIO (connpool on Boost.Asio).
//   beast_client HOST PORT [REQUESTS]
// Twenty coroutines share at most four connections to the server (the CI runs it against nginx).
// A response Beast read to its end with keep-alive leaves the connection in step: release it. One
// without keep-alive ("Connection: close"), or any error, leaves it unusable: discard it (an
// exception does this by destroying the lease unreleased). Exits 0 only if every request got a
// 200 and connections were reused.
#include <connpool/connpool.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include <cstdio>
#include <string>

namespace net = boost::asio;
namespace http = boost::beast::http;
using connpool::tcp_pool;

#if defined(CONNPOOL_HAS_CO_AWAIT)

namespace {

struct totals {
  int ok = 0, failed = 0, closed_by_server = 0, running = 0;
};

net::awaitable<void> client(tcp_pool& pool, tcp_pool::endpoint_type server, std::string host, int requests,
                            totals& t) {
  struct done_guard {  // the last client to finish, however it finishes, closes the pool: io.run() returns
    tcp_pool& pool;
    int& running;
    ~done_guard() {
      if (--running == 0) pool.close();
    }
  } guard{pool, t.running};
  for (int i = 0; i < requests; ++i) {
    try {
      // An idle connection at once if there is one, else wait for one or connect.
      tcp_pool::lease conn = pool.try_acquire(server);
      if (!conn) conn = co_await pool.async_acquire(server, net::use_awaitable);

      http::request<http::empty_body> req{http::verb::get, "/", 11};
      req.set(http::field::host, host);
      co_await http::async_write(conn.socket(), req, net::use_awaitable);

      boost::beast::flat_buffer buffer;  // per lease: nothing read may outlive the exchange
      http::response<http::string_body> res;
      co_await http::async_read(conn.socket(), buffer, res, net::use_awaitable);

      if (res.result() == http::status::ok) ++t.ok; else ++t.failed;
      if (!res.need_eof() && buffer.size() == 0) {
        conn.release();  // complete, and nothing read beyond it: back to the pool
      } else {
        ++t.closed_by_server;
        conn.discard();  // the server closes after this response: never reuse it
      }
    } catch (const std::exception& e) {
      ++t.failed;  // the lease was destroyed unreleased: its connection is closed, never reused
      std::fprintf(stderr, "request: %s\n", e.what());
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s HOST PORT [REQUESTS]\n", argv[0]);
    return 2;
  }
  const tcp_pool::endpoint_type server(net::ip::make_address(argv[1]), static_cast<unsigned short>(std::stoi(argv[2])));
  const int requests = argc > 3 ? std::stoi(argv[3]) : 400;

  net::io_context io;  // one context runs Beast's I/O, the coroutines and the pool's background work
  connpool::pool_options options;
  options.max_per_endpoint = 4;
  tcp_pool pool(io, options);

  totals t;
  t.running = 20;
  for (int c = 0; c < 20; ++c) net::co_spawn(io, client(pool, server, argv[1], requests / 20, t), net::detached);
  io.run();

  const connpool::pool_stats s = pool.stats();
  std::printf("%d responses 200 OK, %d failed; %d without keep-alive were discarded\n", t.ok, t.failed,
              t.closed_by_server);
  std::printf("connections created %zu, reused %zu times, discarded %zu\n", s.created, s.reused, s.discarded);
  return t.failed == 0 && t.ok == requests / 20 * 20 && s.reused > 0 ? 0 : 1;
}

#else
int main() {
  std::puts("beast_client: this compiler has no C++20 coroutines with this Boost.Asio");
  return 77;  // ctest: skipped
}
#endif
