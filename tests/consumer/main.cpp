// Built against an installed connpool: acquires from a listener on loopback, releases, checks reuse.
#include <connpool/connpool.hpp>

#include <cstdio>
#include <type_traits>

namespace net = connpool::net;  // asio, or boost::asio with CONNPOOL_USE_BOOST_ASIO

// The package gave the Asio that was asked for.
#if defined(CONSUMER_EXPECTS_BOOST)
static_assert(std::is_same_v<connpool::error_code, boost::system::error_code>, "asked for Boost.Asio");
#else
static_assert(std::is_same_v<connpool::error_code, std::error_code>, "asked for standalone Asio");
#endif

int main() {
  net::io_context io;
  net::ip::tcp::acceptor listener(io, {net::ip::make_address("127.0.0.1"), 0});
  connpool::tcp_pool pool;
  connpool::error_code ec;
  auto first = pool.acquire(listener.local_endpoint(), ec);
  if (ec || first.reused()) return std::printf("first acquire: %s\n", ec.message().c_str()), 1;
  first.release();
  auto second = pool.acquire(listener.local_endpoint(), ec);
  if (ec || !second.reused()) return std::printf("second acquire: %s\n", ec.message().c_str()), 1;
  static_assert(CONNPOOL_VERSION >= 10000, "find_package asked for 1.0 or newer");
  std::printf("consumer: ok, connpool %s\n", CONNPOOL_VERSION_STRING);
  return 0;
}
