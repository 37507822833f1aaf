// An asynchronous client: coroutines on one io_context share a pool that runs on that context.
//   async_client HOST PORT       talks to a line echo server, e.g. `socat TCP-LISTEN:7000,fork EXEC:cat`
#include <connpool/connpool.hpp>

// connpool builds on standalone Asio, or on Boost.Asio with CONNPOOL_USE_BOOST_ASIO defined;
// connpool::net names the one in use.
#if defined(CONNPOOL_USE_BOOST_ASIO)
#include <boost/asio.hpp>
#else
#include <asio.hpp>
#endif

#include <cstdio>
#include <future>
#include <string>

namespace net = connpool::net;

#if defined(__cpp_impl_coroutine) && defined(CONNPOOL_HAS_CO_AWAIT)

net::awaitable<void> client(connpool::tcp_pool& pool, net::ip::tcp::endpoint server, int id, int& running) {
  struct done_guard {  // the last coroutine to finish closes the pool, so io.run() returns
    connpool::tcp_pool& pool;
    int& running;
    ~done_guard() {
      if (--running == 0) pool.close();
    }
  } guard{pool, running};
  for (int i = 0; i < 100; ++i) {
    try {
      // An idle connection at once if there is one (no completion hop), else wait or connect.
      auto conn = pool.try_acquire(server);
      if (!conn) conn = co_await pool.async_acquire(server, net::use_awaitable);
      const std::string request = "hello " + std::to_string(id) + "\n";
      std::string reply(request.size(), '\0');
      co_await net::async_write(conn.socket(), net::buffer(request), net::use_awaitable);
      co_await net::async_read(conn.socket(), net::buffer(reply), net::use_awaitable);
      conn.release();
      // On an exception the lease is destroyed unreleased: its connection is closed, never reused.
    } catch (const connpool::system_error& e) {
      std::fprintf(stderr, "client %d: %s\n", id, e.what());
      co_return;
    }
  }
}

// A default-constructed pool runs its background work (idle watch, retire timer, deadlines) on its
// own single thread, and so does a completion handler with no executor of its own. A handler that
// blocks must not run there: bind it to an executor of yours.
void blocking_handlers(const net::ip::tcp::endpoint& server) {
  connpool::tcp_pool pool;  // its own thread
  net::thread_pool workers(2);
  std::promise<void> done;
  pool.async_acquire(server, net::bind_executor(workers, [&](connpool::error_code ec, connpool::tcp_pool::lease conn) {
    if (!ec) {
      // Synchronous I/O is fine here: this runs on `workers`, not on the pool's thread.
      const std::string request = "blocking\n";
      std::string reply(request.size(), '\0');
      net::write(conn.socket(), net::buffer(request), ec);
      if (!ec) net::read(conn.socket(), net::buffer(reply), ec);
      if (!ec) conn.release();
    }
    std::printf("bound handler: %s\n", ec ? ec.message().c_str() : "ok");
    done.set_value();
  }));
  done.get_future().wait();
  workers.join();
}

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s HOST PORT\n", argv[0]);
    return 2;
  }
  const net::ip::tcp::endpoint server(net::ip::make_address(argv[1]),
                                      static_cast<unsigned short>(std::stoi(argv[2])));
  net::io_context io;
  connpool::pool_options options;
  options.max_per_endpoint = 4;  // 50 coroutines share four connections
  connpool::tcp_pool pool(io, options);
  int running = 50;
  for (int id = 0; id < 50; ++id) net::co_spawn(io, client(pool, server, id, running), net::detached);
  io.run();  // returns once the pool is closed and nothing else is pending
  const connpool::pool_stats s = pool.stats();
  std::printf("connections created %zu, reused %zu times\n", s.created, s.reused);
  blocking_handlers(server);
}
#else
int main() {
  std::puts("this compiler has no C++20 coroutines; see sync_client.cpp");
}
#endif
