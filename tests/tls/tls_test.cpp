// tls_pool against real TLS servers that no one here wrote, started by the fixtures with a
// certificate the test makes with the openssl CLI: nginx (ssl, keep-alive) and openssl s_server
// (which shows what it reads and sends what it is told, key updates included).
#include <doctest/doctest.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <future>
#include <string>
#include <vector>

#include "../support.hpp"
#include "connpool/tls.hpp"
#include "servers/echo_server.hpp"
#include "servers/spawn.hpp"

extern char** environ;

using namespace std::chrono_literals;
using connpool::tls_pool;
using test::eventually;
using test::find_exe;
using test::free_port;

namespace {

/// A child process (argv), with its stdin and stdout on pipes if asked; SIGKILLed and reaped on
/// destruction.
class child {
 public:
  explicit child(std::vector<std::string> args, bool pipes = false) {
    int in[2] = {-1, -1}, out[2] = {-1, -1};
    posix_spawn_file_actions_t fa;
    ::posix_spawn_file_actions_init(&fa);
    if (pipes && ::pipe2(in, O_CLOEXEC) == 0 && ::pipe2(out, O_CLOEXEC) == 0) {
      ::posix_spawn_file_actions_adddup2(&fa, in[0], 0);
      ::posix_spawn_file_actions_adddup2(&fa, out[1], 1);
      ::posix_spawn_file_actions_adddup2(&fa, out[1], 2);
    } else {
      ::posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
      ::posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (::posix_spawn(&pid_, argv[0], &fa, nullptr, argv.data(), environ) != 0) pid_ = -1;
    ::posix_spawn_file_actions_destroy(&fa);
    if (in[0] >= 0) ::close(in[0]);
    if (out[1] >= 0) ::close(out[1]);
    in_ = in[1];
    out_ = out[0];
  }
  ~child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      ::waitpid(pid_, &status, 0);
    }
    if (in_ >= 0) ::close(in_);
    if (out_ >= 0) ::close(out_);
  }
  child(const child&) = delete;
  child& operator=(const child&) = delete;
  bool started() const { return pid_ > 0; }

  /// Wait (bounded) for the process to exit; true if it exited with status 0.
  bool exited_ok(std::chrono::milliseconds limit) {
    int status = 0;
    const bool done = eventually([&] { return ::waitpid(pid_, &status, WNOHANG) == pid_; }, limit);
    if (!done) return false;
    pid_ = -1;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }
  /// Write to its stdin.
  bool tell(const std::string& s) { return in_ >= 0 && ::write(in_, s.data(), s.size()) == static_cast<ssize_t>(s.size()); }
  /// Wait (bounded) until its output, since the last call that found something, contains `what`.
  bool said(const std::string& what, std::chrono::milliseconds limit = 5000ms) {
    const auto end = std::chrono::steady_clock::now() + limit;
    for (;;) {
      const auto at = seen_.find(what);
      if (at != std::string::npos) {
        seen_.erase(0, at + what.size());
        return true;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
      if (left.count() <= 0 || out_ < 0) return false;
      pollfd p{out_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char b[4096];
      const ssize_t n = ::read(out_, b, sizeof b);
      if (n <= 0) return false;
      seen_.append(b, static_cast<std::size_t>(n));
    }
  }

 private:
  pid_t pid_ = -1;
  int in_ = -1, out_ = -1;
  std::string seen_;
};

/// A directory of its own, removed on destruction, with a self-signed certificate for localhost,
/// 127.0.0.1 and ::1 (cert.pem, key.pem), made by the openssl CLI.
struct tls_files {
  tls_files() {
    char tmpl[] = "/tmp/connpool-tls-XXXXXX";
    if (::mkdtemp(tmpl)) dir = tmpl;
    if (dir.empty() || openssl.empty()) return;
    child req({openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
               "-keyout", dir + "/key.pem", "-out", dir + "/cert.pem", "-days", "2", "-subj", "/CN=localhost",
               "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"});
    made = req.started() && req.exited_ok(20000ms);
  }
  ~tls_files() {
    if (!dir.empty()) {
      const std::string cmd = "rm -rf '" + dir + "'";
      if (std::system(cmd.c_str()) != 0) MESSAGE("could not remove " << dir);
    }
  }
  tls_files(const tls_files&) = delete;
  tls_files& operator=(const tls_files&) = delete;
  std::string cert() const { return dir + "/cert.pem"; }
  std::string key() const { return dir + "/key.pem"; }

  std::string openssl = find_exe({"/usr/bin/openssl", "/usr/local/bin/openssl"});
  std::string dir;
  bool made = false;
};

/// nginx with ssl on 127.0.0.1:port: `/` answers "hello", `/sni` the server name the client sent.
struct nginx_tls {
  nginx_tls(const tls_files& f, const std::string& keepalive_timeout = "60s")
      : port(free_port()), ep(net::ip::make_address("127.0.0.1"), port) {
    const std::string d = f.dir + "/nginx-" + std::to_string(port);
    const std::string conf = test::write_nginx_conf(
        d, keepalive_timeout,
        "    listen 127.0.0.1:" + std::to_string(port) + " ssl;\n    ssl_certificate " + f.cert() +
            ";\n    ssl_certificate_key " + f.key() + ";\n    ssl_protocols TLSv1.2 TLSv1.3;\n" +
            "    location / { default_type text/plain; return 200 \"hello\\n\"; }\n" +
            "    location /sni { default_type text/plain; return 200 \"[$ssl_server_name]\\n\"; }\n");
    if (conf.empty()) return;
    process = std::make_unique<child>(std::vector<std::string>{exe, "-p", d, "-c", conf});
  }
  std::string exe = test::nginx_exe();
  unsigned short port;
  net::ip::tcp::endpoint ep;
  std::unique_ptr<child> process;
};

/// A client context that trusts the test's certificate (`trust`), within the given versions.
net::ssl::context client_context(const tls_files& f, bool trust = true, int min_version = TLS1_2_VERSION,
                                  int max_version = TLS1_3_VERSION) {
  net::ssl::context ctx(net::ssl::context::tls_client);
  if (trust) ctx.load_verify_file(f.cert());
  SSL_CTX_set_min_proto_version(ctx.native_handle(), min_version);
  SSL_CTX_set_max_proto_version(ctx.native_handle(), max_version);
  return ctx;
}

/// One HTTP/1.1 GET on a lease's stream; the body, or empty with `ec` set.
std::string get(tls_pool::lease& l, const std::string& path, connpool::error_code& ec) {
  const std::string req = "GET " + path + " HTTP/1.1\r\nHost: localhost\r\n\r\n";
  net::write(l.stream(), net::buffer(req), ec);
  if (ec) return {};
  std::string in;
  const std::size_t head = net::read_until(l.stream(), net::dynamic_buffer(in), "\r\n\r\n", ec);
  if (ec) return {};
  const auto at = in.find("Content-Length: ");
  if (at == std::string::npos || at > head) {
    ec = net::error::invalid_argument;
    return {};
  }
  const std::size_t length = std::stoul(in.substr(at + 16));
  if (in.size() < head + length)
    net::read(l.stream(), net::dynamic_buffer(in), net::transfer_exactly(head + length - in.size()), ec);
  if (ec) return {};
  return in.substr(head, length);
}

/// The first lease from `pool` to `ep` once the server there answers (within 5 s), or an empty one.
template <class Target>
tls_pool::lease first_lease(tls_pool& pool, const Target& where) {
  tls_pool::lease l;
  eventually(
      [&] {
        connpool::error_code ec;
        l = pool.acquire(where, ec);
        return !ec;
      },
      5000ms);
  return l;
}

/// The fixtures' tools, or the reason they cannot run.
std::string missing(const tls_files& f, const std::string& server) {
  if (f.openssl.empty()) return "openssl (Debian package openssl) is not installed";
  if (!f.made) return "the openssl CLI could not make a certificate";
  if (server.empty()) return "nginx (Debian package nginx) is not installed";
  return {};
}

/// Run `io` until `done()` holds or `limit` passes (the pool's own work never runs out).
template <class Pred>
bool run_until(net::io_context& io, Pred done, std::chrono::milliseconds limit = 10000ms) {
  const auto end = std::chrono::steady_clock::now() + limit;
  io.restart();
  while (!done() && std::chrono::steady_clock::now() < end) io.run_one_for(10ms);
  return done();
}

connpool::pool_options fast_options() {
  connpool::pool_options o;
  o.acquire_timeout = 3000ms;
  o.connect_timeout = 2000ms;
  return o;
}

}  // namespace

TEST_CASE("tls (nginx): 1,000 requests over TLS 1.3 reuse one connection; session tickets left idle are not a desync") {
  test::fd_guard fds;
  tls_files f;
  nginx_tls server(f);
  if (test::cannot_run(missing(f, server.exe))) return;
  auto ctx = client_context(f, true, TLS1_3_VERSION);
  tls_pool pool(ctx, fast_options());
  tls_pool::lease l = first_lease(pool, server.ep);
  REQUIRE(l);
  const std::size_t refused = pool.stats(server.ep).connect_failed;  // while nginx started
  CHECK(SSL_version(l.stream().native_handle()) == TLS1_3_VERSION);
  // Handed back straight after the handshake: nginx's NewSessionTicket records arrive and wait,
  // unread, on the idle socket. The plain probe would call them data and close the connection.
  const int fd = l.socket().native_handle();
  l.release();
  pollfd p{fd, POLLIN, 0};
  REQUIRE(::poll(&p, 1, 5000) == 1);
  int waiting = 0;
  REQUIRE(::ioctl(fd, FIONREAD, &waiting) == 0);
  CHECK(waiting > 0);
  CHECK(connpool::detail::probe(fd) == connpool::detail::probe_result::unexpected_data);

  std::size_t failures = 0;
  for (int i = 0; i < 1000; ++i) {
    connpool::error_code ec;
    l = pool.acquire(server.ep, ec);
    REQUIRE_MESSAGE(!ec, ec.message());
    CHECK(l.reused());
    if (get(l, "/", ec) != "hello\n" || ec) ++failures;
    l.release();
  }
  CHECK(failures == 0);
  const auto st = pool.stats(server.ep);
  CHECK(st.created == 1);
  CHECK(st.unexpected_data == 0);
  CHECK(st.idle == 1);
  CHECK(st.connect_failed == refused);
}

TEST_CASE("tls (nginx): TLS 1.2 works too, and SNI and verification use the host's name") {
  test::fd_guard fds;
  tls_files f;
  nginx_tls server(f);
  if (test::cannot_run(missing(f, server.exe))) return;
  auto ctx = client_context(f, true, TLS1_2_VERSION, TLS1_2_VERSION);
  tls_pool pool(ctx, fast_options());
  const connpool::host name("localhost", server.port);
  tls_pool::lease l = first_lease(pool, name);
  REQUIRE(l);
  CHECK(SSL_version(l.stream().native_handle()) == TLS1_2_VERSION);
  connpool::error_code ec;
  CHECK(get(l, "/sni", ec) == "[localhost]\n");
  l.release();
  for (int i = 0; i < 100; ++i) {
    l = pool.acquire(name, ec);
    REQUIRE_MESSAGE(!ec, ec.message());
    CHECK(get(l, "/", ec) == "hello\n");
    CHECK_FALSE(ec);
    l.release();
  }
  CHECK(pool.stats(name).created == 1);
  CHECK(pool.stats(name).unexpected_data == 0);

  // By endpoint: no SNI, and the certificate must name 127.0.0.1 (it does).
  l = pool.acquire(server.ep, ec);
  REQUIRE_MESSAGE(!ec, ec.message());
  CHECK(get(l, "/sni", ec) == "[]\n");
  l.release();
}

TEST_CASE("tls (nginx): a certificate that does not verify is a clear connect error, and nothing leaks") {
  test::fd_guard fds;
  tls_files f;
  nginx_tls server(f);
  if (test::cannot_run(missing(f, server.exe))) return;
  {
    auto good = client_context(f);
    tls_pool probe_pool(good, fast_options());
    REQUIRE(first_lease(probe_pool, server.ep));  // the server is up
  }
  SUBCASE("not trusted") {
    auto ctx = client_context(f, /*trust=*/false);
    tls_pool pool(ctx, fast_options());
    connpool::error_code ec;
    auto l = pool.acquire(server.ep, ec);
    CHECK_FALSE(l);
    REQUIRE(ec);
    CHECK(ec.category() == net::error::get_ssl_category());
    CHECK_MESSAGE(ec.message().find("certificate verify failed") != std::string::npos, ec.message());
    CHECK(pool.stats().connect_failed == 1);
    CHECK(pool.stats().created == 0);
    CHECK(pool.stats().open() == 0);
    CHECK_THROWS_AS(pool.acquire(server.ep), connpool::system_error);
  }
  SUBCASE("the wrong name") {
    auto ctx = client_context(f);
    connpool::tls_options t;
    t.server_name = "wrong.example";
    tls_pool pool(ctx, fast_options(), t);
    connpool::error_code ec;
    CHECK_FALSE(pool.acquire(server.ep, ec));
    CHECK_MESSAGE(ec.message().find("certificate verify failed") != std::string::npos, ec.message());
    CHECK(pool.stats().connect_failed == 1);
  }
  SUBCASE("verification off: the context decides (it verifies nothing by default)") {
    auto ctx = client_context(f, /*trust=*/false);
    connpool::tls_options t;
    t.verify = false;
    tls_pool pool(ctx, fast_options(), t);
    connpool::error_code ec;
    auto l = pool.acquire(server.ep, ec);
    REQUIRE_MESSAGE(!ec, ec.message());
    CHECK(get(l, "/", ec) == "hello\n");
    l.release();
  }
}

TEST_CASE("tls: a server that does not speak TLS fails the handshake within the connect deadline") {
  test::fd_guard fds;
  tls_files f;
  if (test::cannot_run(missing(f, "-"))) return;
  test::echo_server echo(test::loopback());  // echoes the ClientHello back: not a ServerHello
  auto ctx = client_context(f);
  tls_pool pool(ctx, fast_options());
  connpool::error_code ec;
  CHECK_FALSE(pool.acquire(echo.endpoint(), ec));
  CHECK(ec);
  CHECK(pool.stats().connect_failed == 1);
  CHECK(pool.stats().open() == 0);
}

TEST_CASE("tls (nginx): the server's idle timeout (close_notify, FIN) is answered at once, with no CLOSE_WAIT") {
  test::fd_guard fds;
  tls_files f;
  nginx_tls server(f, "1s");
  if (test::cannot_run(missing(f, server.exe))) return;
  auto ctx = client_context(f);
  tls_pool pool(ctx, fast_options());
  tls_pool::lease l = first_lease(pool, server.ep);
  REQUIRE(l);
  connpool::error_code ec;
  CHECK(get(l, "/", ec) == "hello\n");
  l.release();
  REQUIRE(pool.stats(server.ep).idle == 1);
  // nginx closes it after 1 s idle; the idle watch closes ours without any acquire.
  CHECK(eventually([&] { return pool.stats(server.ep).peer_closed == 1; }, 5000ms));
  CHECK(pool.stats(server.ep).open() == 0);
  CHECK(pool.stats(server.ep).unexpected_data == 0);
  CHECK(test::client_sockets(server.ep, connpool::diag::tcp_state::close_wait) == 0);
}

TEST_CASE("tls (nginx): async acquire, a setup step and a health check on the stream, a lease that outlives its pool") {
  test::fd_guard fds;
  tls_files f;
  nginx_tls server(f);
  if (test::cannot_run(missing(f, server.exe))) return;
  auto ctx = client_context(f);
  {
    tls_pool warm(ctx, fast_options());
    REQUIRE(first_lease(warm, server.ep));
  }
  net::io_context io;
  connpool::pool_options o = fast_options();
  o.validate_after_idle = 0ms;  // a check at every hand-out from idle
  tls_pool pool(io, ctx, o);
  std::atomic<int> setups{0}, checks{0};
  // Both run on the pool's executor; each does one request on the stream, asynchronously.
  auto ask = [](tls_pool::stream_type& s, std::atomic<int>& count, tls_pool::setup_done done) {
    auto buf = std::make_shared<std::string>("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    net::async_write(s, net::buffer(*buf), [&s, &count, buf, done](connpool::error_code ec, std::size_t) {
      if (ec) return done(ec);
      buf->clear();
      net::async_read_until(s, net::dynamic_buffer(*buf), "hello\n",
                            [&count, buf, done](connpool::error_code rec, std::size_t) {
                              if (!rec) ++count;
                              done(rec);
                            });
    });
  };
  pool.set_setup([&](tls_pool::stream_type& s, const net::ip::tcp::endpoint&, tls_pool::setup_done done) {
    ask(s, setups, std::move(done));
  });
  pool.set_health_check([&](tls_pool::stream_type& s, const net::ip::tcp::endpoint&, tls_pool::setup_done done) {
    ask(s, checks, std::move(done));
  });
  std::vector<std::string> bodies;
  std::function<void(int)> next = [&](int left) {
    pool.async_acquire(server.ep, [&, left](connpool::error_code ec, tls_pool::lease l) {
      REQUIRE_MESSAGE(!ec, ec.message());
      bodies.push_back(get(l, "/", ec));
      l.release();
      if (left > 1) next(left - 1);
    });
  };
  next(5);
  CHECK(run_until(io, [&] { return bodies.size() == 5; }));
  CHECK(bodies == std::vector<std::string>(5, "hello\n"));
  CHECK(setups == 1);
  CHECK(checks == 4);
  CHECK(pool.stats().created == 1);
  CHECK(pool.stats().validation_failed == 0);

  // A lease discarded with a read pending on its stream (nginx sends nothing unasked): the read
  // completes with an error, the session it resumes in is still there (ASan), no close_notify
  // races it, and the descriptor is closed.
  bool read_done = false;
  connpool::error_code read_ec;
  char buf[64];
  pool.async_acquire(server.ep, [&](connpool::error_code ec, tls_pool::lease l) {
    REQUIRE_MESSAGE(!ec, ec.message());
    l.stream().async_read_some(net::buffer(buf), [&](connpool::error_code rec, std::size_t) {
      read_done = true;
      read_ec = rec;
    });
    l.discard();
  });
  CHECK(run_until(io, [&] { return read_done; }));
  CHECK(read_ec);
  CHECK(pool.stats().discarded == 1);
  CHECK(pool.stats().open() == 0);

  // Released with a read still in flight: closed, never kept for the next lease (the read's
  // completion could still use the session).
  read_done = false;
  pool.async_acquire(server.ep, [&](connpool::error_code ec, tls_pool::lease l) {
    REQUIRE_MESSAGE(!ec, ec.message());
    l.stream().async_read_some(net::buffer(buf), [&](connpool::error_code rec, std::size_t) {
      read_done = true;
      read_ec = rec;
    });
    l.release();
  });
  CHECK(run_until(io, [&] { return read_done; }));
  CHECK(read_ec);
  CHECK(pool.stats().unexpected_data == 1);
  CHECK(pool.stats().idle == 0);

  // A default pool's lease outlives the pool: the session and its socket stay usable.
  auto owned = std::make_unique<tls_pool>(ctx, fast_options());
  tls_pool::lease l = owned->acquire(server.ep);
  owned.reset();
  connpool::error_code ec;
  CHECK(get(l, "/", ec) == "hello\n");
  l.release();
}

TEST_CASE("tls (openssl s_server): a KeyUpdate on an idle connection is answered; close_notify on a graceful close") {
  test::fd_guard fds;
  tls_files f;
  if (test::cannot_run(missing(f, "-"))) return;
  const unsigned short port = free_port();
  const net::ip::tcp::endpoint ep(net::ip::make_address("127.0.0.1"), port);
  // s_server serves one connection at a time: it shows what it reads, sends what it is told, and a
  // line "K" sends a KeyUpdate that asks for ours.
  child server({f.openssl, "s_server", "-accept", "127.0.0.1:" + std::to_string(port), "-cert", f.cert(), "-key",
                f.key(), "-tls1_3", "-num_tickets", "0"},
               /*pipes=*/true);
  REQUIRE(server.started());
  auto ctx = client_context(f, true, TLS1_3_VERSION);
  tls_pool pool(ctx, fast_options());
  tls_pool::lease l = first_lease(pool, ep);
  REQUIRE(l);
  REQUIRE(server.said("CIPHER is"));
  connpool::error_code ec;
  net::write(l.stream(), net::buffer(std::string("one\n")), ec);
  REQUIRE_FALSE(ec);
  CHECK(server.said("one"));
  const int fd = l.socket().native_handle();
  l.release();

  REQUIRE(server.tell("K\n"));
  pollfd p{fd, POLLIN, 0};
  REQUIRE(::poll(&p, 1, 5000) == 1);  // the KeyUpdate waits on the idle connection
  l = pool.acquire(ep, ec);
  REQUIRE_MESSAGE(!ec, ec.message());
  CHECK(l.reused());  // not taken for data: the probe let OpenSSL process it, and answer it
  // Both directions work with the new keys.
  net::write(l.stream(), net::buffer(std::string("two\n")), ec);
  REQUIRE_FALSE(ec);
  CHECK(server.said("two"));
  REQUIRE(server.tell("three\n"));
  std::string in;
  net::read_until(l.stream(), net::dynamic_buffer(in), "three\n", ec);
  CHECK_FALSE(ec);
  CHECK(pool.stats(ep).created == 1);
  CHECK(pool.stats(ep).unexpected_data == 0);

  // A graceful discard sends close_notify before the FIN: s_server reads it as the end ("DONE").
  l.discard();
  CHECK(server.said("DONE"));
}
