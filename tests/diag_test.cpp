// connpool/diag.hpp: the socket census against sockets whose state the test drives itself.
#include <doctest/doctest.h>

#include "support.hpp"

using namespace std::chrono_literals;
using connpool::diag::tcp_state;
using test::eventually;

namespace {

/// A listener and one accepted connection to it, on `address`, all synchronous.
struct pair_on {
  explicit pair_on(const char* address)
      : listener(io, {net::ip::make_address(address), 0}), client(io), server(io) {
    client.connect(listener.local_endpoint());
    listener.accept(server);
  }
  net::ip::tcp::endpoint endpoint() const { return listener.local_endpoint(); }
  net::io_context io;
  net::ip::tcp::acceptor listener;
  net::ip::tcp::socket client, server;
};

std::size_t count(const net::ip::tcp::endpoint& remote, tcp_state st) {
  connpool::error_code ec;
  const auto c = connpool::diag::census(remote, ec);
  REQUIRE_FALSE(ec);
  return c[st];
}

std::size_t kernel(tcp_state st, const net::ip::tcp::endpoint& remote) {
  connpool::error_code ec;
  const std::size_t n = connpool::diag::kernel_sockets(st, remote, ec);
  REQUIRE_FALSE(ec);
  return n;
}

}  // namespace

TEST_CASE("diag: names of TCP states") {
  CHECK(std::string(connpool::diag::to_string(tcp_state::close_wait)) == "CLOSE_WAIT");
  CHECK(std::string(connpool::diag::to_string(tcp_state::time_wait)) == "TIME_WAIT");
  CHECK(std::string(connpool::diag::to_string(static_cast<tcp_state>(99))) == "?");
}

TEST_CASE("diag: census follows a connection through ESTABLISHED, CLOSE_WAIT and closed; descriptors") {
  for (const char* address : {"127.0.0.1", "::1"}) {
    CAPTURE(address);
    connpool::error_code ec;
    const std::size_t fds_before = connpool::diag::census(ec).descriptors;
    REQUIRE_FALSE(ec);
    {
      pair_on p(address);
      const auto ep = p.endpoint();
      const std::size_t fds_with_pair = connpool::diag::census(ec).descriptors;
      CHECK(fds_with_pair >= fds_before + 3);  // listener, client, server (and the context's reactor)
      CHECK(count(ep, tcp_state::established) == 1);
      // Port 0: any port on that address, so the server's end (its peer is the client) counts too.
      CHECK(count({ep.address(), 0}, tcp_state::established) == 2);
      CHECK(count({ep.address(), static_cast<unsigned short>(ep.port() + 1)}, tcp_state::established) == 0);
      p.server.close();  // FIN to the client, which has not closed: CLOSE_WAIT
      CHECK(eventually([&] { return count(ep, tcp_state::close_wait) == 1; }));
      CHECK(count(ep, tcp_state::established) == 0);
      p.client.close();
      CHECK(count(ep, tcp_state::close_wait) == 0);
      CHECK(connpool::diag::census(ec).descriptors == fds_with_pair - 2);
    }
    CHECK(eventually([&] { return connpool::diag::census(ec).descriptors == fds_before; }));
  }
}

TEST_CASE("diag: kernel_sockets counts TIME_WAIT left by an active close, owned by no descriptor") {
  for (const char* address : {"127.0.0.1", "::1"}) {
    CAPTURE(address);
    pair_on p(address);
    const auto ep = p.endpoint();
    // An earlier test's server may have had this port: count what this one adds.
    const std::size_t before = kernel(tcp_state::time_wait, ep);
    p.client.shutdown(net::socket_base::shutdown_both);
    p.client.close();  // we close first: FIN_WAIT2, an orphan...
    char c;
    connpool::error_code ec;
    p.server.read_some(net::buffer(&c, 1), ec);
    CHECK(ec == net::error::eof);
    p.server.close();  // ...then TIME_WAIT once the peer's FIN arrives
    CHECK(eventually([&] { return kernel(tcp_state::time_wait, ep) == before + 1; }));
    CHECK(count(ep, tcp_state::time_wait) == 0);  // no descriptor holds it
  }
}
