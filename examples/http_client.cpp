// An HTTP/1.1 keep-alive client on a pool, against a real server (the CI runs it against nginx).
//   http_client HOST PORT [REQUESTS]
// Four threads send GET requests over at most four pooled connections. A response read to its
// end, with no "Connection: close", leaves the connection in step: release it. A response that
// says "Connection: close" (nginx does so after keepalive_requests) or cannot be parsed leaves it
// unusable: discard it. Exits 0 only if every request got a 200 and connections were reused.
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

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace net = connpool::net;
using connpool::tcp_pool;

namespace {

struct response {
  int status = 0;
  bool close = false;  // the server will close the connection after this response
  std::string body;
};

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

/// Reads one response with a Content-Length body (nginx's for a `return 200 "..."`). Throws
/// connpool::system_error on I/O errors and std::runtime_error on what it cannot parse (chunked
/// bodies included: a real client would decode them).
response read_response(tcp_pool::lease& conn) {
  std::string buf;
  const std::size_t head_end = net::read_until(conn.socket(), net::dynamic_buffer(buf), "\r\n\r\n");
  const std::string head = buf.substr(0, head_end);
  response r;
  if (head.compare(0, 9, "HTTP/1.1 ") != 0) throw std::runtime_error("not an HTTP/1.1 response");
  r.status = std::stoi(head.substr(9, 3));
  long long length = -1;
  for (std::size_t pos = head.find("\r\n") + 2; pos < head_end - 2;) {
    const std::size_t eol = head.find("\r\n", pos);
    const std::string line = head.substr(pos, eol - pos);
    const std::size_t colon = line.find(':');
    if (colon == std::string::npos) throw std::runtime_error("bad header line");
    const std::string name = lower(line.substr(0, colon));
    std::string value = line.substr(colon + 1);
    value.erase(0, value.find_first_not_of(' '));
    if (name == "content-length") length = std::stoll(value);
    if (name == "connection" && lower(value) == "close") r.close = true;
    if (name == "transfer-encoding") throw std::runtime_error("transfer-encoding not handled in this example");
    pos = eol + 2;
  }
  if (length < 0) throw std::runtime_error("no Content-Length");
  r.body = buf.substr(head_end);
  const std::size_t want = static_cast<std::size_t>(length);
  if (r.body.size() < want)
    net::read(conn.socket(), net::dynamic_buffer(r.body), net::transfer_exactly(want - r.body.size()));
  // Bytes beyond the body would be a response we did not ask for: the stream is out of step.
  if (r.body.size() != want) throw std::runtime_error("bytes after the response");
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s HOST PORT [REQUESTS]\n", argv[0]);
    return 2;
  }
  const tcp_pool::endpoint_type server(net::ip::make_address(argv[1]), static_cast<unsigned short>(std::stoi(argv[2])));
  const int requests = argc > 3 ? std::stoi(argv[3]) : 400;
  connpool::pool_options options;
  options.max_per_endpoint = 4;
  tcp_pool pool(options);
  const std::string request = "GET / HTTP/1.1\r\nHost: " + std::string(argv[1]) + "\r\n\r\n";

  std::atomic<int> ok{0}, failed{0}, closed_by_server{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < requests / 4; ++i) {
        try {
          tcp_pool::lease conn = pool.acquire(server);
          net::write(conn.socket(), net::buffer(request));
          const response r = read_response(conn);
          if (r.status == 200) ++ok; else ++failed;
          if (r.close) {
            ++closed_by_server;
            conn.discard();  // the server closes its end after this response: never reuse it
          } else {
            conn.release();  // read to its end: in step for the next request
          }
        } catch (const std::exception& e) {
          // An I/O or parse error: the lease is destroyed unreleased, so its connection is closed.
          ++failed;
          std::fprintf(stderr, "request: %s\n", e.what());
        }
      }
    });
  }
  for (auto& th : threads) th.join();

  const connpool::pool_stats s = pool.stats();
  std::printf("%d responses 200 OK, %d failed; %d said Connection: close and were discarded\n", ok.load(),
              failed.load(), closed_by_server.load());
  std::printf("connections created %zu, reused %zu times, discarded %zu\n", s.created, s.reused, s.discarded);
  return failed == 0 && ok == requests / 4 * 4 && s.reused > 0 ? 0 : 1;
}
