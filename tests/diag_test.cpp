// connpool/diag.hpp: the socket census against sockets whose state the test drives itself.
#include <doctest/doctest.h>

#include <fstream>
#include <thread>

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

// The facts docs/closing-connections.md states, shown on real loopback sockets with the census.

TEST_CASE("closing: CLOSE_WAIT lasts until we close; the side that closes second keeps no TIME_WAIT") {
  pair_on p("127.0.0.1");
  const auto ep = p.endpoint();
  const auto client_ep = p.client.local_endpoint();
  // Earlier tests may have left TIME_WAIT towards these endpoints (ports get reused): count changes.
  const std::size_t before = kernel(tcp_state::time_wait, ep);
  const std::size_t peer_before = kernel(tcp_state::time_wait, client_ep);
  p.server.close();  // the peer closes first (FIN): our end goes to CLOSE_WAIT
  REQUIRE(eventually([&] { return count(ep, tcp_state::close_wait) == 1; }));
  // The kernel keeps no timer for CLOSE_WAIT: a second later it is still there (and would be a day later).
  std::this_thread::sleep_for(1s);  // an observation window, not a synchronization
  CHECK(count(ep, tcp_state::close_wait) == 1);
  p.client.close();  // only our close ends it: LAST_ACK, then gone
  CHECK(count(ep, tcp_state::close_wait) == 0);
  CHECK(eventually([&] { return kernel(tcp_state::last_ack, ep) == 0; }));
  CHECK(kernel(tcp_state::time_wait, ep) <= before);  // no TIME_WAIT on the side that closed second
  // The peer, which closed first, has it.
  CHECK(eventually([&] { return kernel(tcp_state::time_wait, client_ep) == peer_before + 1; }));
}

TEST_CASE("closing: SO_LINGER {1,0} sends RST instead of FIN: the peer reads a reset, and no side keeps TIME_WAIT") {
  pair_on p("127.0.0.1");
  const auto ep = p.endpoint();
  const auto client_ep = p.client.local_endpoint();
  const std::size_t before = kernel(tcp_state::time_wait, ep);
  const std::size_t peer_before = kernel(tcp_state::time_wait, client_ep);
  p.client.set_option(net::socket_base::linger(true, 0));
  p.client.close();  // the active close, abortive
  char c;
  connpool::error_code ec;
  p.server.read_some(net::buffer(&c, 1), ec);
  CHECK(ec == net::error::connection_reset);
  p.server.close();
  CHECK(kernel(tcp_state::time_wait, ep) <= before);
  CHECK(kernel(tcp_state::time_wait, client_ep) <= peer_before);
}

TEST_CASE("closing: net.ipv4.tcp_tw_recycle is gone from this kernel (removed in Linux 4.12); tcp_tw_reuse is there") {
  CHECK_FALSE(std::ifstream("/proc/sys/net/ipv4/tcp_tw_recycle").good());
  std::ifstream reuse("/proc/sys/net/ipv4/tcp_tw_reuse");
  int value = -1;
  CHECK((reuse >> value));
  MESSAGE("net.ipv4.tcp_tw_reuse = " << value << " (0 off, 1 on, 2 loopback only)");
}

namespace {
/// A server on a fresh port (SO_REUSEADDR as `old_reuse`) closes its one connection first, so
/// TIME_WAIT holds its port; then it stops, and a new listener (SO_REUSEADDR as `new_reuse`)
/// binds the same port. Returns the bind's error.
connpool::error_code restart_while_time_wait(bool old_reuse, bool new_reuse) {
  net::io_context io;
  net::ip::tcp::acceptor listener(io);  // opened by hand: Asio's constructor would set SO_REUSEADDR
  listener.open(net::ip::tcp::v4());
  listener.set_option(net::socket_base::reuse_address(old_reuse));
  listener.bind({net::ip::make_address("127.0.0.1"), 0});
  listener.listen();
  const auto ep = listener.local_endpoint();
  net::ip::tcp::socket client(io), server(io);
  client.connect(ep);
  listener.accept(server);
  const auto client_ep = client.local_endpoint();
  const std::size_t before = kernel(tcp_state::time_wait, client_ep);
  server.shutdown(net::socket_base::shutdown_both);  // the server closes first: TIME_WAIT on its port
  server.close();
  char c;
  connpool::error_code ec;
  client.read_some(net::buffer(&c, 1), ec);
  CHECK(ec == net::error::eof);
  client.close();
  REQUIRE(eventually([&] { return kernel(tcp_state::time_wait, client_ep) == before + 1; }));  // the server's end
  listener.close();  // the server stops

  net::ip::tcp::acceptor again(io);
  again.open(net::ip::tcp::v4());
  again.set_option(net::socket_base::reuse_address(new_reuse));
  again.bind(ep, ec);
  return ec;
}
}  // namespace

TEST_CASE("closing: a restarted server binds its port while TIME_WAIT holds it only if both it and its predecessor set SO_REUSEADDR") {
  CHECK_FALSE(restart_while_time_wait(true, true));
  CHECK(restart_while_time_wait(true, false) == net::error::address_in_use);
  CHECK(restart_while_time_wait(false, true) == net::error::address_in_use);
}
