// A Redis client on a pool: RESP over pooled TCP connections, against a real redis-server.
//   redis_client HOST PORT
// PING; SET and GET from four threads sharing two connections; a pipeline of 100 commands in one
// write; an error reply (the connection stays usable: release it); a protocol error (Redis answers
// and closes the connection: discard it). Exits 0 only if every answer was the expected one.
#include <connpool/connpool.hpp>

// connpool builds on standalone Asio, or on Boost.Asio with CONNPOOL_USE_BOOST_ASIO defined;
// connpool::net names the one in use.
#if defined(CONNPOOL_USE_BOOST_ASIO)
#include <boost/asio/buffer.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/write.hpp>
#else
#include <asio/buffer.hpp>
#include <asio/read.hpp>
#include <asio/read_until.hpp>
#include <asio/write.hpp>
#endif

#include <atomic>
#include <cstdio>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace net = connpool::net;
using connpool::tcp_pool;

namespace {

/// One RESP reply. Arrays are not needed here, and are treated as a protocol error.
struct reply {
  char type = 0;      // '+' simple string, '-' error, ':' integer, '$' bulk string
  std::string value;  // the text; for a nil bulk string, empty with nil set
  bool nil = false;
};

/// The reply could not be parsed: the byte stream is out of step, so the connection can only be
/// discarded.
struct protocol_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// A command as a RESP array of bulk strings.
std::string command(std::initializer_list<std::string_view> args) {
  std::string out = "*" + std::to_string(args.size()) + "\r\n";
  for (std::string_view a : args) {
    out += "$" + std::to_string(a.size()) + "\r\n";
    out.append(a.data(), a.size());
    out += "\r\n";
  }
  return out;
}

/// Reads one reply. `buf` keeps bytes read past it (the next replies of a pipeline), so it lives
/// as long as the lease. Throws connpool::system_error on I/O errors, protocol_error on bad input.
reply read_reply(tcp_pool::lease& conn, std::string& buf) {
  const std::size_t eol = net::read_until(conn.socket(), net::dynamic_buffer(buf), "\r\n");
  reply r;
  r.type = buf[0];
  r.value = buf.substr(1, eol - 3);
  buf.erase(0, eol);
  switch (r.type) {
    case '+': case '-': case ':': return r;
    case '$': {
      const long long len = std::stoll(r.value);
      if (len < 0) return r.nil = true, r.value.clear(), r;
      const std::size_t want = static_cast<std::size_t>(len) + 2;  // the data and its CRLF
      if (buf.size() < want)
        net::read(conn.socket(), net::dynamic_buffer(buf), net::transfer_exactly(want - buf.size()));
      r.value = buf.substr(0, static_cast<std::size_t>(len));
      buf.erase(0, want);
      return r;
    }
    default: throw protocol_error("unexpected RESP type '" + std::string(1, r.type) + "'");
  }
}

int failures = 0;
void expect(bool ok, const char* what) {
  std::printf("%-62s %s\n", what, ok ? "ok" : "FAILED");
  if (!ok) ++failures;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s HOST PORT\n", argv[0]);
    return 2;
  }
  const tcp_pool::endpoint_type server(net::ip::make_address(argv[1]), static_cast<unsigned short>(std::stoi(argv[2])));
  connpool::pool_options options;
  options.max_per_endpoint = 2;
  tcp_pool pool(options);

  try {
    // PING. Every exchange: acquire, write, read the complete reply, release.
    {
      tcp_pool::lease conn = pool.acquire(server);
      std::string buf;
      net::write(conn.socket(), net::buffer(command({"PING"})));
      const reply r = read_reply(conn, buf);
      expect(r.type == '+' && r.value == "PONG", "PING answers PONG");
      conn.release();  // the reply was read to its end: the connection is ready for the next lease
    }

    // SET and GET from four threads that share two connections.
    std::atomic<int> matched{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < 50; ++i) {
          const std::string key = "connpool:example:" + std::to_string(t) + ":" + std::to_string(i);
          const std::string value = "value " + std::to_string(i * t);
          try {
            tcp_pool::lease conn = pool.acquire(server);  // waits while both connections are leased
            std::string buf;
            net::write(conn.socket(), net::buffer(command({"SET", key, value}) + command({"GET", key})));
            const reply set = read_reply(conn, buf);
            const reply get = read_reply(conn, buf);
            if (set.value == "OK" && get.type == '$' && get.value == value) ++matched;
            conn.release();
          } catch (const std::exception& e) {  // the lease, destroyed unreleased, closes its connection
            std::fprintf(stderr, "thread %d: %s\n", t, e.what());
          }
        }
      });
    }
    for (auto& th : threads) th.join();
    expect(matched == 200, "200 SET+GET pairs from 4 threads read back their values");

    // Pipelining: 100 commands in one write, then their 100 replies in order.
    {
      tcp_pool::lease conn = pool.acquire(server);
      std::string batch, buf;
      for (int i = 0; i < 100; ++i) batch += command({"INCR", "connpool:example:counter"});
      net::write(conn.socket(), net::buffer(command({"DEL", "connpool:example:counter"}) + batch));
      read_reply(conn, buf);  // DEL's count
      long long last = 0;
      for (int i = 0; i < 100; ++i) last = std::stoll(read_reply(conn, buf).value);
      expect(last == 100 && buf.empty(), "a pipeline of 100 INCR: 100 replies, the last is 100");
      conn.release();
    }

    // An error reply is a complete reply: the stream is in step, so the connection is released.
    {
      tcp_pool::lease conn = pool.acquire(server);
      std::string buf;
      net::write(conn.socket(), net::buffer(command({"NOSUCHCOMMAND"})));
      const reply r = read_reply(conn, buf);
      expect(r.type == '-', "an unknown command gets an error reply (-ERR ...)");
      conn.release();
    }
    const connpool::pool_stats before = pool.stats();

    // A protocol error: Redis answers "-ERR Protocol error" and closes the connection. Its state
    // is gone, so the lease is discarded (closed now, never reused), not released.
    {
      tcp_pool::lease conn = pool.acquire(server);
      std::string buf;
      net::write(conn.socket(), net::buffer(std::string("*1\r\n$abc\r\n")));
      const reply r = read_reply(conn, buf);
      expect(r.type == '-' && r.value.find("Protocol error") != std::string::npos,
             "a malformed request: -ERR Protocol error, then Redis closes");
      conn.discard();
    }
    const connpool::pool_stats s = pool.stats();
    expect(s.discarded == before.discarded + 1, "that connection was discarded, and counted so");
    expect(s.created <= 3 && s.reused > s.created, "connections were reused, not made per command");
    std::printf("connections created %zu, reused %zu times, discarded %zu, idle now %zu\n", s.created, s.reused,
                s.discarded, s.idle);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "redis_client: %s\n", e.what());
    return 1;
  }
  return failures == 0 ? 0 : 1;
}
