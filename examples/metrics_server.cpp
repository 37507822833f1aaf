// A pool's Prometheus metrics served on /metrics (connpool/metrics.hpp), from a small Asio HTTP
// server, while the pool talks to a real HTTP server (the CI runs it against nginx).
//   metrics_server HOST PORT [REQUESTS] [SECONDS]
// First sends REQUESTS keep-alive GET requests to HOST:PORT through the pool (discarding each
// connection whose response says "Connection: close"), and prints what it did on one line:
//   requests 200 ok 200 closed_by_server 4 metrics http://127.0.0.1:PORT/metrics
// Then serves GET /metrics on 127.0.0.1 (a free port, printed there) for SECONDS (default 60),
// or until GET /quit. Scrape it: curl -s http://127.0.0.1:PORT/metrics
#include <connpool/connpool.hpp>
#include <connpool/metrics.hpp>

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

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>

namespace net = connpool::net;
using connpool::tcp_pool;

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

/// One GET through the pool; true if the server said 200. Sets `close` when it will close the
/// connection after this response ("Connection: close"). Throws on I/O and parse errors.
bool get(tcp_pool::lease& conn, const std::string& request, bool& close) {
  net::write(conn.socket(), net::buffer(request));
  std::string buf;
  const std::size_t head_end = net::read_until(conn.socket(), net::dynamic_buffer(buf), "\r\n\r\n");
  const std::string head = lower(buf.substr(0, head_end));
  if (head.compare(0, 9, "http/1.1 ") != 0) throw std::runtime_error("not an HTTP/1.1 response");
  const std::size_t cl = head.find("\r\ncontent-length:");
  if (cl == std::string::npos) throw std::runtime_error("no Content-Length");
  const std::size_t length = std::stoul(head.substr(cl + 17));
  close = head.find("\r\nconnection: close") != std::string::npos;
  std::string body = buf.substr(head_end);
  if (body.size() < length)
    net::read(conn.socket(), net::dynamic_buffer(body), net::transfer_exactly(length - body.size()));
  if (body.size() != length) throw std::runtime_error("bytes after the response");
  return head.compare(9, 3, "200") == 0;
}

/// Serves one request on `s`: /metrics, /quit (sets `quit`), else 404. Connection: close.
void serve(net::ip::tcp::socket& s, const connpool::pool_metrics& metrics, const tcp_pool& pool, bool& quit) {
  std::string buf;
  connpool::error_code ec;
  net::read_until(s, net::dynamic_buffer(buf), "\r\n\r\n", ec);
  if (ec) return;
  std::string status = "200 OK", type = "text/plain; charset=utf-8", body;
  if (buf.compare(0, 13, "GET /metrics ") == 0) {
    body = metrics.text(pool);
    type = connpool::pool_metrics::content_type();
  } else if (buf.compare(0, 10, "GET /quit ") == 0) {
    body = "bye\n";
    quit = true;
  } else {
    status = "404 Not Found";
    body = "not found\n";
  }
  const std::string head = "HTTP/1.1 " + status + "\r\nContent-Type: " + type +
                           "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n";
  net::write(s, net::buffer(head + body), ec);
  s.shutdown(net::socket_base::shutdown_send, ec);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s HOST PORT [REQUESTS] [SECONDS]\n", argv[0]);
    return 2;
  }
  const tcp_pool::endpoint_type server(net::ip::make_address(argv[1]), static_cast<unsigned short>(std::stoi(argv[2])));
  const int requests = argc > 3 ? std::stoi(argv[3]) : 200;
  const int seconds = argc > 4 ? std::stoi(argv[4]) : 60;
  tcp_pool pool;
  connpool::pool_metrics metrics({{"pool", "backend"}});
  pool.set_listener(metrics.listener());  // the histograms: acquire and connect times

  const std::string request = "GET / HTTP/1.1\r\nHost: " + std::string(argv[1]) + "\r\n\r\n";
  int ok = 0, closed_by_server = 0;
  for (int i = 0; i < requests; ++i) {
    try {
      tcp_pool::lease conn = pool.acquire(server);
      bool close = false;
      if (get(conn, request, close)) ++ok;
      if (close) {
        ++closed_by_server;
        conn.discard();
      } else {
        conn.release();
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "request: %s\n", e.what());  // the lease, destroyed unreleased, closes
    }
  }

  net::io_context io;
  net::ip::tcp::acceptor acceptor(io, net::ip::tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
  std::printf("requests %d ok %d closed_by_server %d metrics http://127.0.0.1:%u/metrics\n", requests, ok,
              closed_by_server, static_cast<unsigned>(acceptor.local_endpoint().port()));
  std::fflush(stdout);
  // One request at a time, on this thread: enough for a scraper.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  bool quit = false;
  std::function<void()> next = [&] {
    auto s = std::make_shared<net::ip::tcp::socket>(io);
    acceptor.async_accept(*s, [&, s](connpool::error_code ec) {
      if (ec) return;
      serve(*s, metrics, pool, quit);
      if (quit) {
        acceptor.close(ec);
        return;
      }
      next();
    });
  };
  next();
  io.run_until(until);
  return ok == requests ? 0 : 1;
}
