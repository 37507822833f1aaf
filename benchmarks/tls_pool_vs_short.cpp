// Pool vs short connections over TLS: request/response over loopback against a TLS echo server (one
// Asio thread, in a child process), modes interleaved in rounds within one run:
//   short      connect, TLS handshake (certificate verified, as the pool does), one exchange, close
//              with a FIN (no close_notify, as many HTTP/1.1 clients do; the client keeps TIME_WAIT)
//   short_rst  the same, closed with SO_LINGER {1,0}: RST, no TIME_WAIT
//   pool       connpool::tls_pool: acquire, exchange, release
//   dedicated  one TLS connection per client for the whole run: the upper bound for a pool
// Clients: N threads doing synchronous I/O. The certificate (EC P-256, self-signed for 127.0.0.1) is
// made in-process with OpenSSL; the clients trust it and verify the address, TLS 1.3 by default.
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "connpool/tls.hpp"

#include "bench_util.hpp"
#include "servers/server_process.hpp"

namespace {

using bench::clock_type;
using namespace std::chrono_literals;

enum mode { short_fin, short_rst, pooled, dedicated, mode_count };
const char* const mode_names[] = {"short", "short_rst", "pool", "dedicated"};

/// A self-signed certificate for 127.0.0.1 and its key, as PEM.
struct credentials {
  std::string cert, key;
};

credentials make_credentials() {
  credentials out;
  EVP_PKEY* pkey = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
  X509* x = X509_new();
  if (!pkey || !x) throw std::runtime_error("OpenSSL: cannot make a key");
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  X509_set_pubkey(x, pkey);
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("127.0.0.1"), -1, -1, 0);
  X509_set_issuer_name(x, name);
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, x, x, nullptr, nullptr, 0);
  X509_EXTENSION* san = X509V3_EXT_conf_nid(nullptr, &v3, NID_subject_alt_name, "IP:127.0.0.1");
  if (!san || X509_add_ext(x, san, -1) != 1 || X509_sign(x, pkey, EVP_sha256()) == 0)
    throw std::runtime_error("OpenSSL: cannot sign the certificate");
  X509_EXTENSION_free(san);
  auto pem = [](auto write) {
    BIO* b = BIO_new(BIO_s_mem());
    write(b);
    char* p = nullptr;
    const long n = BIO_get_mem_data(b, &p);
    std::string s(p, static_cast<std::size_t>(n));
    BIO_free(b);
    return s;
  };
  out.cert = pem([&](BIO* b) { PEM_write_bio_X509(b, x); });
  out.key = pem([&](BIO* b) { PEM_write_bio_PrivateKey(b, pkey, nullptr, nullptr, 0, nullptr, nullptr); });
  X509_free(x);
  EVP_PKEY_free(pkey);
  return out;
}

/// The TLS echo server: one Asio thread in a child process.
class tls_echo_server : public test::server_process {
 public:
  explicit tls_echo_server(const credentials& c)
      : server_process(test::fresh_loopback_ports(1), [c](const test::child_io& io) { serve(io, c); }) {}

 private:
  using stream = net::ssl::stream<net::ip::tcp::socket>;
  struct session : std::enable_shared_from_this<session> {
    session(net::ip::tcp::socket s, net::ssl::context& ctx) : tls(std::move(s), ctx) {}
    stream tls;
    char buf[16384];
    void start() {
      tls.async_handshake(net::ssl::stream_base::server, [self = shared_from_this()](connpool::error_code ec) {
        if (!ec) self->read();
      });
    }
    void read() {
      tls.async_read_some(net::buffer(buf), [self = shared_from_this()](connpool::error_code ec, std::size_t n) {
        if (ec) return;  // close_notify, EOF or reset: the socket closes when the last handler goes
        net::async_write(self->tls, net::buffer(self->buf, n), [self](connpool::error_code wec, std::size_t) {
          if (!wec) self->read();
        });
      });
    }
  };
  static void accept(net::ip::tcp::acceptor& a, net::ssl::context& ctx) {
    a.async_accept([&a, &ctx](connpool::error_code ec, net::ip::tcp::socket s) {
      if (!ec) {
        connpool::error_code ignored;
        s.set_option(net::ip::tcp::no_delay(true), ignored);
        std::make_shared<session>(std::move(s), ctx)->start();
      }
      accept(a, ctx);
    });
  }
  static void serve(const test::child_io& io, const credentials& c) {
    net::io_context ctx(1);
    net::ssl::context tls(net::ssl::context::tls_server);
    tls.use_certificate_chain(net::buffer(c.cert));
    tls.use_private_key(net::buffer(c.key), net::ssl::context::pem);
    net::ip::tcp::acceptor a(ctx, io.endpoints[0].protocol(), io.listeners[0]);
    accept(a, tls);
    net::posix::stream_descriptor stop(ctx, io.control);
    char ch;
    stop.async_read_some(net::buffer(&ch, 1), [&](connpool::error_code, std::size_t) { ctx.stop(); });
    ctx.run();
  }
};

/// One mode's totals in a cell, over its rounds.
struct totals {
  std::size_t requests = 0, errors = 0;
  double seconds = 0;
  std::vector<double> latency_us;
  std::size_t connects = 0;
};

/// One exchange of `payload` bytes on `s`: write, read it back. False on an error.
template <class Stream>
bool exchange(Stream& s, std::string& out, std::string& in) {
  connpool::error_code ec;
  net::write(s, net::buffer(out), ec);
  if (!ec) net::read(s, net::buffer(in), ec);
  return !ec;
}

using tcp = net::ip::tcp;
using plain_stream = net::ssl::stream<tcp::socket>;

/// A verified TLS connection to `ep` (throws on failure).
std::unique_ptr<plain_stream> connect_tls(net::io_context& io, net::ssl::context& ctx, const tcp::endpoint& ep) {
  auto s = std::make_unique<plain_stream>(io, ctx);
  s->lowest_layer().connect(ep);
  s->lowest_layer().set_option(tcp::no_delay(true));
  s->set_verify_mode(net::ssl::verify_peer);
  X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s->native_handle()), "127.0.0.1");
  s->handshake(net::ssl::stream_base::client);
  return s;
}

struct config {
  std::vector<long> payloads{64, 4096};
  std::vector<long> clients{1, 2, 8};
  double seconds = 1.0;  // per cell and mode, split across rounds
  int rounds = 6;
  int tls_version = TLS1_3_VERSION;
};

/// Run `m` with `n` client threads for `slice`, adding to `t`.
void run_slice(mode m, long n, std::size_t payload, double slice, const tcp::endpoint& ep, net::ssl::context& ctx,
               connpool::tls_pool& pool, std::vector<std::unique_ptr<plain_stream>>& held, net::io_context& io,
               totals& t) {
  std::atomic<std::size_t> requests{0}, errors{0}, connects{0};
  std::vector<std::vector<double>> lat(static_cast<std::size_t>(n));
  const auto start = clock_type::now();
  const auto end = start + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(slice));
  std::vector<std::thread> threads;
  for (long i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      std::string out(payload, 'x'), in(payload, '\0');
      auto& mine = lat[static_cast<std::size_t>(i)];
      while (clock_type::now() < end) {
        const auto t0 = clock_type::now();
        bool ok = false;
        try {
          if (m == pooled) {
            connpool::error_code ec;
            auto l = pool.acquire(ep, ec);
            if (l && exchange(l.stream(), out, in)) {
              l.release();
              ok = true;
            }
          } else if (m == dedicated) {
            auto& s = held[static_cast<std::size_t>(i)];
            ok = exchange(*s, out, in);
          } else {
            auto s = connect_tls(io, ctx, ep);
            ++connects;
            ok = exchange(*s, out, in);
            connpool::error_code ignored;
            if (m == short_rst) s->lowest_layer().set_option(net::socket_base::linger(true, 0), ignored);
            s->lowest_layer().close(ignored);
          }
        } catch (const std::exception&) {
          ok = false;
        }
        const auto t1 = clock_type::now();
        if (ok) {
          ++requests;
          mine.push_back(bench::us(t1 - t0));
        } else {
          ++errors;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  t.seconds += bench::seconds(clock_type::now() - start);
  t.requests += requests;
  t.errors += errors;
  t.connects += connects;
  for (auto& v : lat) t.latency_us.insert(t.latency_us.end(), v.begin(), v.end());
}

}  // namespace

int main(int argc, char** argv) {
  bench::args a = bench::parse_args(argc, argv, {"--payloads", "--clients", "--seconds", "--rounds", "--tls"});
  config cfg;
  cfg.payloads = a.list("--payloads", cfg.payloads);
  cfg.clients = a.list("--clients", cfg.clients);
  cfg.seconds = a.number("--seconds", cfg.seconds);
  cfg.rounds = static_cast<int>(a.number("--rounds", cfg.rounds));
  const std::string version = a.get("--tls", "1.3");
  if (version == "1.2") cfg.tls_version = TLS1_2_VERSION;
  else if (version != "1.3") a.errors.push_back("--tls takes 1.2 or 1.3");
  if (cfg.rounds < 1 || cfg.seconds <= 0) a.errors.push_back("--rounds and --seconds must be positive");
  const int stop = bench::stop_code(a, [] {
    std::printf(
        "usage: connpool_tls_bench [--payloads 64,4096] [--clients 1,2,8] [--seconds 1.0] [--rounds 6]\n"
        "                          [--tls 1.3|1.2] [--json out.json] [--csv out.csv]\n");
  });
  if (stop >= 0) return stop;

  const credentials creds = make_credentials();
  tls_echo_server server(creds);
  const tcp::endpoint ep = server.endpoint(0);
  net::ssl::context ctx(net::ssl::context::tls_client);
  ctx.add_certificate_authority(net::buffer(creds.cert));
  SSL_CTX_set_min_proto_version(ctx.native_handle(), cfg.tls_version);
  SSL_CTX_set_max_proto_version(ctx.native_handle(), cfg.tls_version);
  net::io_context io;  // the short and dedicated modes' sockets (synchronous I/O only)

  std::printf("pool vs short connections over TLS %s, loopback, TLS echo server (one Asio thread, own process)\n",
              version.c_str());
  std::printf("%.1f s per mode and cell in %d interleaved rounds\n\n", cfg.seconds, cfg.rounds);
  bench::table tab("results", "requests/s and latency per mode",
                   {"payload", "clients", "mode", "req_per_s", "p50_us", "p99_us", "handshakes", "errors"});
  bench::table ratios("ratios", "ratios within this run", {"payload", "clients", "pool_vs_short", "pool_vs_dedicated"});
  std::vector<std::string> results;
  std::string csv = "payload,clients,mode,rps,p50_us,p99_us,handshakes,errors\n";
  for (long payload : cfg.payloads) {
    for (long n : cfg.clients) {
      std::vector<totals> t(mode_count);
      connpool::pool_options o;
      o.max_per_endpoint = static_cast<std::size_t>(std::max<long>(n, 1));
      connpool::tls_pool pool(ctx, o);
      std::vector<std::unique_ptr<plain_stream>> held;
      for (long i = 0; i < n; ++i) held.push_back(connect_tls(io, ctx, ep));
      for (int r = 0; r < cfg.rounds; ++r) {
        for (int k = 0; k < mode_count; ++k) {
          const mode m = static_cast<mode>((k + r) % mode_count);  // rotated each round
          run_slice(m, n, static_cast<std::size_t>(payload), cfg.seconds / cfg.rounds, ep, ctx, pool, held, io, t[m]);
        }
      }
      t[pooled].connects = pool.stats(ep).created;
      t[dedicated].connects = static_cast<std::size_t>(n);
      double rps[mode_count];
      for (int m = 0; m < mode_count; ++m) {
        rps[m] = t[m].seconds > 0 ? static_cast<double>(t[m].requests) / t[m].seconds : 0;
        const double p50 = bench::percentile(t[m].latency_us, 0.50), p99 = bench::percentile(t[m].latency_us, 0.99);
        tab.add({payload, std::to_string(n), mode_names[m], bench::value(rps[m], 0), bench::value(p50, 1),
                 bench::value(p99, 1), t[m].connects, t[m].errors});
        csv += bench::csv_line({payload, std::to_string(n), mode_names[m], bench::value(rps[m], 1),
                                bench::value(p50, 2), bench::value(p99, 2), t[m].connects, t[m].errors});
        bench::json_object j;
        j.add("payload", payload)
            .add("clients", std::to_string(n))
            .add("mode", mode_names[m])
            .add("rps", bench::value(rps[m], 1))
            .add("p50_us", bench::value(p50, 2))
            .add("p99_us", bench::value(p99, 2))
            .add("handshakes", t[m].connects)
            .add("errors", t[m].errors);
        results.push_back(j.line());
      }
      ratios.add({payload, std::to_string(n), bench::value(rps[pooled] / rps[short_fin], 2),
                  bench::value(rps[pooled] / rps[dedicated], 2)});
    }
  }
  tab.print();
  ratios.print();
  bench::json_object top;
  top.add("tls", version).raw("results", bench::json_array_lines(results, "    "));
  return bench::write_outputs(a, top.lines() + "\n", csv) ? 0 : 1;
}
