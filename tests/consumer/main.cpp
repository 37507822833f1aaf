// Built against an installed connpool: acquires from a listener on loopback, releases, checks reuse.
#include <connpool/connpool.hpp>

#include <cstdio>

int main() {
  asio::io_context io;
  asio::ip::tcp::acceptor listener(io, {asio::ip::make_address("127.0.0.1"), 0});
  connpool::tcp_pool pool;
  std::error_code ec;
  auto first = pool.acquire(listener.local_endpoint(), ec);
  if (ec || first.reused()) return std::printf("first acquire: %s\n", ec.message().c_str()), 1;
  first.release();
  auto second = pool.acquire(listener.local_endpoint(), ec);
  if (ec || !second.reused()) return std::printf("second acquire: %s\n", ec.message().c_str()), 1;
  std::printf("consumer: ok\n");
  return 0;
}
