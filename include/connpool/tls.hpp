#ifndef CONNPOOL_TLS_HPP
#define CONNPOOL_TLS_HPP

/// \file
/// TLS over pooled TCP connections: tls_pool. The only connpool header that needs OpenSSL (link
/// OpenSSL::SSL); nothing else changes for users who do not include it.

#include <memory>
#include <string>
#include <type_traits>
#include <utility>

#include "connpool/detail/asio.hpp"

#if defined(CONNPOOL_USE_BOOST_ASIO)
#include <boost/asio/ssl.hpp>
#else
#include <asio/ssl.hpp>
#endif
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "connpool/basic_pool.hpp"
#include "connpool/detail/tls_session.hpp"

namespace connpool {
CONNPOOL_ABI_BEGIN

/// How a tls_pool sets up the TLS session of each new connection.
struct tls_options {
  /// Verify the server's certificate: its chain against the context's trust store (load it with
  /// `ssl::context::set_default_verify_paths()` or `load_verify_file()`), and its name: a named
  /// backend's host name, else server_name, else the endpoint's IP address. On by default; false
  /// leaves verification to the context's own settings.
  bool verify = true;
  /// For acquires by endpoint: the name sent as SNI and verified. Empty (the default): no SNI, and
  /// the certificate must name the endpoint's IP address. Acquires by name (connpool::host) always
  /// use the host's name, for both.
  std::string server_name;
};

/// A pool of TLS connections over pooled TCP connections: a basic_pool of TCP connections whose
/// setup step is the TLS handshake, and whose lease gives a `ssl::stream` over the pooled socket.
/// The stream (its session, keys and buffers) lives with the connection, across leases.
///
/// Every guarantee of the TCP pool holds, and the probe understands TLS: bytes waiting on an idle
/// connection are read through the session without blocking, so that records that are not data (a
/// TLS 1.3 NewSessionTicket, a KeyUpdate, which the session answers) leave the connection healthy,
/// a close_notify or EOF closes it (peer_closed), and application data closes it
/// (unexpected_data). A session that has decrypted data left unread when released closes too
/// (unexpected_data). A graceful close (retire_close, discard(), close()) sends close_notify
/// before the FIN, without waiting: if the socket's send buffer is full (a leased connection
/// discarded mid-transfer), the close_notify is dropped and the FIN goes alone. It is not sent
/// after a setup step or health check that failed or was stopped, nor while an operation on the
/// lease's stream is still in flight.
///
/// As Asio requires of any `ssl::stream`, end a lease (release, discard, destruction) only when no
/// operation on its stream is in flight: cancel it (`socket().cancel()`) and let it complete first.
/// The pool guards the common mistake: a lease released with an operation in flight is closed,
/// not kept (counted unexpected_data), and on a pool built on your executor a pending read that
/// the close aborts still finds its session (each operation on the socket holds it); but an
/// operation that completed successfully before the close and goes on (a record half read, a
/// partial write) would use the closed connection's socket object.
///
/// The probe that processes waiting records runs, for the idle watch, under the pool's lock: an
/// OpenSSL callback on your context (info, new session ticket) must not call into the pool.
///
/// The handshake runs as the setup step, bounded by the connect deadline (connect_timeout, or
/// acquire_timeout if nearer); a failed handshake (a certificate that does not verify, a server
/// that does not speak TLS) is the acquire's error, with OpenSSL's reason in its message, and is
/// counted connect_failed. set_setup() adds a step after the handshake (AUTH over TLS),
/// set_health_check() a check, both on the stream.
///
/// The `ssl::context` must outlive the pool. Thread safety as for basic_pool.
template <class Executor = net::any_io_executor>
class basic_tls_pool {
  using tcp_pool_type = basic_pool<net::ip::tcp, Executor>;
  using state_type = typename tcp_pool_type::state_type;

 public:
  /// The type of the executor the pool's background work runs on.
  using executor_type = Executor;
  /// What acquire() takes.
  using endpoint_type = net::ip::tcp::endpoint;
  /// The pooled TCP socket under the stream.
  using socket_type = typename tcp_pool_type::socket_type;
  /// The stream a lease gives.
  using stream_type = net::ssl::stream<tls_socket<socket_type>>;

  class lease;

  /// A pool with its own thread, as basic_pool(options). Throws system_error for bad options.
  explicit basic_tls_pool(net::ssl::context& ctx, pool_options options = {}, tls_options tls = {})
      : pool_(std::move(options)), ctx_(ctx), tls_(std::move(tls)) {
    init();
  }
  /// A pool whose background work and sockets run on `ex`, as basic_pool(ex, options).
  basic_tls_pool(const Executor& ex, net::ssl::context& ctx, pool_options options = {}, tls_options tls = {})
      : pool_(ex, std::move(options)), ctx_(ctx), tls_(std::move(tls)) {
    init();
  }
  /// A pool whose background work and sockets run on `c`, as basic_pool(c, options).
  template <class ExecutionContext,
            class = std::enable_if_t<std::is_convertible_v<ExecutionContext&, net::execution_context&>>>
  basic_tls_pool(ExecutionContext& c, net::ssl::context& ctx, pool_options options = {}, tls_options tls = {})
      : basic_tls_pool(Executor(c.get_executor()), ctx, std::move(options), std::move(tls)) {}

  /// As basic_pool::acquire(ep): a TLS connection to `ep`, handshaken. `site` as there.
  lease acquire(const endpoint_type& ep, const acquire_site& site = acquire_site::current()) {
    return lease(pool_.acquire(ep, site));
  }
  /// As above, reporting errors in `ec`.
  lease acquire(const endpoint_type& ep, error_code& ec, const acquire_site& site = acquire_site::current()) {
    return lease(pool_.acquire(ep, ec, site));
  }
  /// As basic_pool::try_acquire(ep).
  lease try_acquire(const endpoint_type& ep, const acquire_site& site = acquire_site::current()) {
    return lease(pool_.try_acquire(ep, site));
  }
  /// As basic_pool::async_acquire(ep, token). Completion signature: void(error_code, lease).
  template <class Token>
  auto async_acquire(const endpoint_type& ep, Token&& token, const acquire_site& site = acquire_site::current()) {
    return net::async_initiate<Token, void(error_code, lease)>(initiate{pool_.state_}, token, ep, site);
  }

  /// As basic_pool::acquire(h): SNI and verification use `h.name`.
  lease acquire(const host& h, const acquire_site& site = acquire_site::current()) { return lease(pool_.acquire(h, site)); }
  /// As above, reporting errors in `ec`.
  lease acquire(const host& h, error_code& ec, const acquire_site& site = acquire_site::current()) {
    return lease(pool_.acquire(h, ec, site));
  }
  /// As basic_pool::try_acquire(h).
  lease try_acquire(const host& h, const acquire_site& site = acquire_site::current()) {
    return lease(pool_.try_acquire(h, site));
  }
  /// As basic_pool::async_acquire(h, token).
  template <class Token>
  auto async_acquire(const host& h, Token&& token, const acquire_site& site = acquire_site::current()) {
    return net::async_initiate<Token, void(error_code, lease)>(initiate_named{pool_.state_}, token, h, site);
  }

  /// Totals across endpoints.
  pool_stats stats() const { return pool_.stats(); }
  /// One endpoint.
  pool_stats stats(const endpoint_type& ep) const { return pool_.stats(ep); }
  /// One named backend.
  pool_stats stats(const host& h) const { return pool_.stats(h); }
  /// As basic_pool::snapshot().
  using stats_snapshot = typename tcp_pool_type::stats_snapshot;
  /// As basic_pool::snapshot(): per-endpoint stats, for metrics (connpool/metrics.hpp).
  stats_snapshot snapshot() const { return pool_.snapshot(); }
  /// As basic_pool::last_connect_error().
  error_code last_connect_error(const endpoint_type& ep) const { return pool_.last_connect_error(ep); }
  /// As basic_pool::close(): idle connections close (with close_notify, if retire_close is graceful).
  void close() { pool_.close(); }
  /// As basic_pool::prewarm(): connected and handshaken ahead of traffic.
  std::size_t prewarm(const endpoint_type& ep, std::size_t n) { return pool_.prewarm(ep, n); }
  /// As above, reporting errors in `ec`.
  std::size_t prewarm(const endpoint_type& ep, std::size_t n, error_code& ec) { return pool_.prewarm(ep, n, ec); }
  /// As basic_pool::prewarm(h, n).
  std::size_t prewarm(const host& h, std::size_t n) { return pool_.prewarm(h, n); }
  /// As above, reporting errors in `ec`.
  std::size_t prewarm(const host& h, std::size_t n, error_code& ec) { return pool_.prewarm(h, n, ec); }
  /// As basic_pool::async_prewarm().
  template <class Token>
  auto async_prewarm(const endpoint_type& ep, std::size_t n, Token&& token) {
    return pool_.async_prewarm(ep, n, std::forward<Token>(token));
  }
  /// As basic_pool::async_prewarm(), for a named backend.
  template <class Token>
  auto async_prewarm(const host& h, std::size_t n, Token&& token) {
    return pool_.async_prewarm(h, n, std::forward<Token>(token));
  }
  /// As basic_pool::drain(): connections cut at the deadline get no close_notify (their leases
  /// may be writing).
  std::size_t drain(std::chrono::steady_clock::time_point deadline) { return pool_.drain(deadline); }
  /// As basic_pool::drain(), with the deadline `timeout` from now.
  std::size_t drain(std::chrono::steady_clock::duration timeout) { return pool_.drain(timeout); }
  /// As basic_pool::async_drain().
  template <class Token>
  auto async_drain(std::chrono::steady_clock::time_point deadline, Token&& token) {
    return pool_.async_drain(deadline, std::forward<Token>(token));
  }
  /// As basic_pool::async_drain(), with the deadline `timeout` from now.
  template <class Token>
  auto async_drain(std::chrono::steady_clock::duration timeout, Token&& token) {
    return pool_.async_drain(timeout, std::forward<Token>(token));
  }
  /// The executor the pool's background work runs on.
  executor_type get_executor() const { return pool_.get_executor(); }
  /// The options the pool was constructed with.
  const pool_options& options() const noexcept { return pool_.options(); }
  /// The TLS options the pool was constructed with.
  const tls_options& tls() const noexcept { return tls_; }
  /// As basic_pool::set_resolver().
  void set_resolver(typename tcp_pool_type::resolver r) { pool_.set_resolver(std::move(r)); }
  /// An event (connpool/events.hpp): connect_succeeded includes the handshake.
  using event = typename tcp_pool_type::event;
  /// As basic_pool::listener.
  using listener = typename tcp_pool_type::listener;
  /// As basic_pool::set_listener().
  void set_listener(typename tcp_pool_type::listener l) { pool_.set_listener(std::move(l)); }

  /// Completion of a setup step or health check.
  using setup_done = std::function<void(error_code)>;
  /// A setup step or health check on the TLS stream: `step(stream, endpoint, done)`.
  using setup_step = std::function<void(stream_type&, const endpoint_type&, setup_done)>;

  /// Run `step` after the handshake of every new connection, as basic_pool::set_setup() runs its
  /// step (on the pool's executor, asynchronously, bounded by the same connect deadline as the
  /// handshake). Null: the handshake alone.
  void set_setup(setup_step step) { pool_.state_->set_setup(handshake_then(std::move(step))); }

  /// As basic_pool::set_health_check(), with the check on the TLS stream.
  void set_health_check(setup_step check) {
    if (!check) return pool_.state_->set_health_check(nullptr);
    pool_.state_->set_health_check([c = std::move(check)](socket_type& s, const endpoint_type& ep,
                                                          detail::connection_ext* x, setup_done done) {
      auto& t = static_cast<session&>(*x);
      t.bind(s);
      c(t.stream, ep, std::move(done));
    });
  }

 private:
  using session = detail::tls_session<socket_type>;
  using inner_lease = typename tcp_pool_type::lease;
  using step_fn = typename state_type::setup_step;
  // The TCP pool's asynchronous acquires, completing with a TLS lease.
  using initiate = typename tcp_pool_type::template initiate_acquire<lease>;
  using initiate_named = typename tcp_pool_type::template initiate_acquire_named<lease>;

  void init() {
    pool_.state_->set_ext_factory([ctx = &ctx_](socket_type& s, const std::shared_ptr<net::io_context>& keep,
                                                const std::string& name) {
      return session::make(s, *ctx, keep, name);
    });
    pool_.state_->set_setup(handshake_then(nullptr));
  }

  /// The handshake (SNI and verification first), then `then` if any.
  step_fn handshake_then(setup_step then) const {
    return [then = std::move(then), verify = tls_.verify, server_name = tls_.server_name](
               socket_type& s, const endpoint_type& ep, detail::connection_ext* x, setup_done done) {
      auto& t = static_cast<session&>(*x);
      t.bind(s);
      const error_code ec = t.prepare(t.name.empty() ? server_name : t.name, ep, verify);
      if (ec) return done(ec);
      // `ep` is the race's own copy, which `done` keeps alive, as for any step.
      t.stream.async_handshake(net::ssl::stream_base::client,
                               [&t, &ep, then, done = std::move(done)](error_code hec) mutable {
                                 if (hec || !then) return done(hec);
                                 setup_done d = done;  // kept, in case `then` throws
                                 try {
                                   then(t.stream, ep, std::move(done));
                                 } catch (...) {
                                   d(error::setup_failed);
                                 }
                               });
    };
  }

  tcp_pool_type pool_;
  net::ssl::context& ctx_;
  const tls_options tls_;
};

/// The right to use one TLS connection until release(), discard() or destruction, as
/// basic_pool::lease. Move-only.
template <class Executor>
class basic_tls_pool<Executor>::lease {
 public:
  /// An empty lease.
  lease() noexcept = default;
  /// Takes the connection `other` holds.
  lease(lease&& other) noexcept : inner_(std::move(other.inner_)), session_(std::exchange(other.session_, nullptr)) {}
  /// Discards the connection this lease holds, if any, then takes the one `other` holds.
  lease& operator=(lease&& other) noexcept {
    if (this != &other) {
      inner_ = std::move(other.inner_);
      session_ = std::exchange(other.session_, nullptr);
    }
    return *this;
  }
  /// Not copyable.
  lease(const lease&) = delete;
  /// Not copyable.
  lease& operator=(const lease&) = delete;
  /// As basic_pool::lease::~lease(): neither released nor discarded, the connection is closed
  /// (gracefully: close_notify, then FIN), counted discarded.
  ~lease() = default;

  /// The TLS stream over the connection. Precondition: not empty (else std::logic_error).
  stream_type& stream() {
    if (!session_) throw std::logic_error("connpool: stream() on an empty lease");
    return session_->stream;
  }
  /// `&stream()`.
  stream_type* operator->() { return &stream(); }
  /// The TCP socket under the stream (for socket options; read and write through stream()).
  socket_type& socket() { return inner_.socket(); }
  /// True while the lease holds a connection.
  explicit operator bool() const noexcept { return static_cast<bool>(inner_); }
  /// True if the connection was taken from idle rather than freshly connected.
  bool reused() const noexcept { return inner_.reused(); }
  /// The endpoint this connection was made to.
  endpoint_type endpoint() const { return inner_.endpoint(); }

  /// The exchange is complete: hand the connection back for reuse, as basic_pool::lease::release().
  /// Decrypted data left unread closes it (unexpected_data), and so does a session shut down
  /// (peer_closed).
  void release() noexcept {
    session_ = nullptr;
    inner_.release();
  }
  /// Close the connection now (graceful: close_notify, then FIN) and never reuse it.
  void discard(close_mode mode = close_mode::graceful) noexcept {
    session_ = nullptr;
    inner_.discard(mode);
  }

 private:
  friend class basic_tls_pool;
  friend tcp_pool_type;
  explicit lease(inner_lease&& l) noexcept : inner_(std::move(l)) {
    if (inner_) {
      session_ = static_cast<session*>(inner_.conn_->ext.get());
      session_->bind(inner_.conn_->socket);
    }
  }
  lease(state_type* s, typename state_type::connection* c, bool reused) noexcept : lease(inner_lease(s, c, reused)) {}

  inner_lease inner_;
  session* session_ = nullptr;
};

/// A TLS pool on any_io_executor.
using tls_pool = basic_tls_pool<>;

CONNPOOL_ABI_END
}  // namespace connpool

#endif
