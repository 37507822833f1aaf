#ifndef CONNPOOL_DETAIL_TLS_SESSION_HPP
#define CONNPOOL_DETAIL_TLS_SESSION_HPP

// A pooled connection's TLS session (connpool/tls.hpp): the ssl::stream that lives with the
// connection across leases, and what the pool asks of it (connection_ext): the probe's view of
// bytes waiting, and close_notify on a graceful close. Include connpool/tls.hpp, not this.

#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <memory>
#include <string>
#include <utility>

#include "connpool/detail/pool_state.hpp"

#if defined(CONNPOOL_USE_BOOST_ASIO) && __has_include(<boost/asio/associator.hpp>)
#include <boost/asio/associator.hpp>
#define CONNPOOL_HAS_ASSOCIATOR 1
#elif !defined(CONNPOOL_USE_BOOST_ASIO) && __has_include(<asio/associator.hpp>)
#include <asio/associator.hpp>
#define CONNPOOL_HAS_ASSOCIATOR 1
#endif

namespace connpool {
CONNPOOL_ABI_BEGIN
namespace detail {
template <class Socket>
struct tls_session;

/// A handler of an operation on a pooled TLS connection's socket that keeps the connection's
/// session alive until it has run: the TLS layer's operation (its io_op) touches the session's
/// buffers when it resumes, even after the lease ended and the pool closed the connection (an
/// operation cancelled by discard()). Counts the operations in flight (tls_session::goodbye()).
/// Every association of the wrapped handler (executor, allocator, cancellation slot) is its own.
template <class Handler>
struct kept_handler {
  Handler handler;
  std::shared_ptr<connection_ext> keep;
  std::atomic<int>* in_flight;

  kept_handler(Handler h, std::shared_ptr<connection_ext> k, std::atomic<int>* n)
      : handler(std::move(h)), keep(std::move(k)), in_flight(n) {
    if (in_flight) in_flight->fetch_add(1, std::memory_order_relaxed);
  }
  kept_handler(kept_handler&& o) noexcept
      : handler(std::move(o.handler)), keep(std::move(o.keep)), in_flight(std::exchange(o.in_flight, nullptr)) {}
  kept_handler(const kept_handler&) = delete;
  kept_handler& operator=(const kept_handler&) = delete;
  kept_handler& operator=(kept_handler&&) = delete;
  ~kept_handler() { done(); }

  template <class... Args>
  void operator()(Args&&... args) {
    auto keep_until_return = std::move(keep);  // the handler may resume the TLS operation
    done();
    std::move(handler)(std::forward<Args>(args)...);
  }

 private:
  void done() noexcept {
    if (in_flight) std::exchange(in_flight, nullptr)->fetch_sub(1, std::memory_order_release);
  }
};
}  // namespace detail

/// The next layer of a pooled TLS stream: the pool's TCP socket. The pool moves a connection's
/// descriptor between socket objects (its own, and the one its setup step and health check run on,
/// on the pool's executor), and points this at the one that holds it: at the lease's socket during
/// a lease. Reads and writes go to that socket, and the stream's get_executor() is that socket's.
/// (The stream's two internal timers, which it waits on only when a read and a write run at once
/// and one of them must wait for the other, keep the executor of the connection's own socket: in a
/// setup step or a health check, run one operation at a time on the stream.)
template <class Socket>
class tls_socket {
 public:
  /// The pooled socket's type.
  using lowest_layer_type = Socket;
  /// Its executor type.
  using executor_type = typename Socket::executor_type;

  /// Over `s`.
  explicit tls_socket(Socket& s) noexcept : s_(&s) {}

  /// The socket's executor.
  executor_type get_executor() noexcept { return s_->get_executor(); }
  /// The socket.
  lowest_layer_type& lowest_layer() noexcept { return *s_; }
  /// The socket.
  const lowest_layer_type& lowest_layer() const noexcept { return *s_; }

  /// As the socket's read_some.
  template <class MutableBuffers>
  std::size_t read_some(const MutableBuffers& b, error_code& ec) {
    if (!probing_) return s_->read_some(b, ec);
    const net::mutable_buffer m = *net::buffer_sequence_begin(b);
    ssize_t n;
    do n = ::recv(probe_fd_, m.data(), m.size(), MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    return result(n, ec, true);
  }
  /// As the socket's read_some; throws system_error.
  template <class MutableBuffers>
  std::size_t read_some(const MutableBuffers& b) {
    return s_->read_some(b);
  }
  /// As the socket's write_some.
  template <class ConstBuffers>
  std::size_t write_some(const ConstBuffers& b, error_code& ec) {
    if (!probing_) return s_->write_some(b, ec);
    const net::const_buffer c = *net::buffer_sequence_begin(b);
    ssize_t n;
    do n = ::send(probe_fd_, c.data(), c.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return result(n, ec, false);
  }
  /// As the socket's write_some; throws system_error.
  template <class ConstBuffers>
  std::size_t write_some(const ConstBuffers& b) {
    return s_->write_some(b);
  }
  /// As the socket's async_read_some, with a completion handler (what the TLS stream passes).
  template <class MutableBuffers, class Handler>
  void async_read_some(const MutableBuffers& b, Handler&& handler) {
    s_->async_read_some(b, kept(std::forward<Handler>(handler)));
  }
  /// As the socket's async_write_some, with a completion handler (what the TLS stream passes).
  template <class ConstBuffers, class Handler>
  void async_write_some(const ConstBuffers& b, Handler&& handler) {
    s_->async_write_some(b, kept(std::forward<Handler>(handler)));
  }

 private:
  template <class>
  friend struct detail::tls_session;

  /// On a pool whose sockets live on a context nobody runs (a default pool), an operation never
  /// completes: it is neither kept nor counted (holding the session would hold that context).
  template <class Handler>
  detail::kept_handler<std::decay_t<Handler>> kept(Handler&& h) {
    std::shared_ptr<detail::connection_ext> keep = keep_ops_ ? owner_.lock() : nullptr;
    std::atomic<int>* n = keep ? &in_flight_ : nullptr;
    return {std::forward<Handler>(h), std::move(keep), n};
  }

  /// A non-blocking recv or send of the probe's: its result, EINTR retried by the caller. A send
  /// that would block marks the session unusable: the bytes it could not send (a KeyUpdate's
  /// answer) were already taken out of the session.
  std::size_t result(ssize_t n, error_code& ec, bool reading) noexcept {
    if (n > 0) {
      ec.clear();
      return static_cast<std::size_t>(n);
    }
    if (n == 0 && reading) {
      ec = net::error::eof;
    } else if (n == 0) {
      ec.clear();
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      ec = net::error::would_block;
      if (!reading) write_blocked_ = true;
    } else {
      ec = error_code(errno, net::error::get_system_category());
    }
    return 0;
  }

  Socket* s_;
  bool probing_ = false;  // while the pool probes or closes: probe_fd_, without blocking
  bool write_blocked_ = false;
  int probe_fd_ = -1;
  std::weak_ptr<detail::connection_ext> owner_;  // the session: kept alive by operations in flight
  bool keep_ops_ = false;                        // operations here can complete (see kept())
  std::atomic<int> in_flight_{0};
};

namespace detail {

/// A connection's TLS session.
template <class Socket>
struct tls_session final : connection_ext {
  tls_session(Socket& s, net::ssl::context& ctx, std::shared_ptr<net::io_context> context, std::string host)
      : keep(std::move(context)), stream(s, ctx), name(std::move(host)) {}

  /// Made by make_shared: its operations in flight keep it alive.
  static std::shared_ptr<tls_session> make(Socket& s, net::ssl::context& ctx,
                                           const std::shared_ptr<net::io_context>& context, const std::string& host) {
    auto t = std::make_shared<tls_session>(s, ctx, context, host);
    t->stream.next_layer().owner_ = t;
    t->stream.next_layer().keep_ops_ = context == nullptr;  // the sockets are on your executor
    return t;
  }

  /// Reads and writes go to `s`, which holds the connection's descriptor now.
  void bind(Socket& s) noexcept { stream.next_layer().s_ = &s; }

  /// Before the handshake: SNI (a host name, never an address) and verification of `verify_name`,
  /// or of the endpoint's address if it is empty.
  error_code prepare(const std::string& verify_name, const net::ip::tcp::endpoint& ep, bool verify) {
    SSL* ssl = stream.native_handle();
    error_code ec;
    net::ip::make_address(verify_name, ec);
    const bool is_address = !ec || verify_name.empty();
    if (!is_address && SSL_set_tlsext_host_name(ssl, verify_name.c_str()) != 1) return error::setup_failed;
    if (!verify) return {};
    ec.clear();
    stream.set_verify_mode(net::ssl::verify_peer, ec);
    if (ec) return ec;
    if (!is_address) {
      if (SSL_set1_host(ssl, verify_name.c_str()) != 1) return error::setup_failed;
    } else {
      std::string ip = verify_name.empty() ? ep.address().to_string() : verify_name;
      ip = ip.substr(0, ip.find('%'));  // an IPv6 scope is no part of a certificate's address
      if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), ip.c_str()) != 1) return error::setup_failed;
    }
    return {};
  }

  probe_result refine(int fd, probe_result raw) noexcept override {
    if (raw != probe_result::healthy && raw != probe_result::unexpected_data) return raw;
    auto& next = stream.next_layer();
    // A lease that ended with an operation in flight: its completion may still use the session.
    if (next.in_flight_.load(std::memory_order_acquire) != 0) return probe_result::unexpected_data;
    SSL* ssl = stream.native_handle();
    if (SSL_get_shutdown(ssl) != 0) return probe_result::peer_closed;  // a session that ended
    if (raw == probe_result::healthy && SSL_has_pending(ssl) == 0 && BIO_ctrl_pending(SSL_get_rbio(ssl)) == 0)
      return probe_result::healthy;
    // Bytes waiting, on the socket or in the session: let OpenSSL process them, without blocking.
    unsigned char byte;
    error_code ec;
    std::size_t n = 0;
    next.probing_ = true;
    next.probe_fd_ = fd;
    try {
      n = stream.read_some(net::buffer(&byte, 1), ec);
    } catch (...) {
      ec = net::error::no_memory;
    }
    next.probing_ = false;
    if (next.write_blocked_) return probe_result::unexpected_data;  // an answer lost: out of step
    if (n > 0) return probe_result::unexpected_data;  // application data: a desync
    if (ec == net::error::would_block) return probe_result::healthy;  // records only
    if (ec == net::error::eof || ec == net::ssl::error::stream_truncated) return probe_result::peer_closed;
    if (ec == net::error::broken_pipe) return probe_result::peer_closed;
    if (ec.category() == net::error::get_system_category()) return probe_result::peer_reset;
    return probe_result::unexpected_data;  // a broken record or a fatal alert: unusable
  }

  void goodbye(int fd) noexcept override {
    SSL* ssl = stream.native_handle();
    auto& next = stream.next_layer();
    // Not after a step or check that was stopped mid-way, nor with an operation of the lease's in
    // flight (it may be using the session's buffers on another thread): a FIN alone then.
    if (!clean || next.in_flight_.load(std::memory_order_acquire) != 0) return;
    if (SSL_is_init_finished(ssl) == 0 || SSL_get_shutdown(ssl) != 0) return;
    next.probing_ = true;
    next.probe_fd_ = fd;
    error_code ignored;
    try {
      stream.shutdown(ignored);  // writes close_notify; does not wait for the peer's
    } catch (...) {
    }
    next.probing_ = false;
  }

  std::shared_ptr<net::io_context> keep;  // first: the context the stream's timers live on, if the pool's
  net::ssl::stream<tls_socket<Socket>> stream;
  const std::string name;  // a named backend's host name, else empty
};

}  // namespace detail
CONNPOOL_ABI_END
}  // namespace connpool

// kept_handler carries every association of the handler it wraps.
#if defined(CONNPOOL_USE_BOOST_ASIO)
namespace boost {
namespace asio {
#else
namespace asio {
#endif
#if defined(CONNPOOL_HAS_ASSOCIATOR)
template <template <typename, typename> class Associator, class Handler, class DefaultCandidate>
struct associator<Associator, connpool::detail::kept_handler<Handler>, DefaultCandidate>
    : Associator<Handler, DefaultCandidate> {
  static typename Associator<Handler, DefaultCandidate>::type get(const connpool::detail::kept_handler<Handler>& h,
                                                                  const DefaultCandidate& c = DefaultCandidate()) noexcept {
    return Associator<Handler, DefaultCandidate>::get(h.handler, c);
  }
};
#else
#if defined(CONNPOOL_HAS_CANCELLATION_SLOTS)
template <class Handler, class Slot>
struct associated_cancellation_slot<connpool::detail::kept_handler<Handler>, Slot> {
  using type = typename associated_cancellation_slot<Handler, Slot>::type;
  static type get(const connpool::detail::kept_handler<Handler>& h, const Slot& s = Slot()) noexcept {
    return associated_cancellation_slot<Handler, Slot>::get(h.handler, s);
  }
};
#endif
template <class Handler, class Executor>
struct associated_executor<connpool::detail::kept_handler<Handler>, Executor> {
  using type = typename associated_executor<Handler, Executor>::type;
  static type get(const connpool::detail::kept_handler<Handler>& h, const Executor& ex = Executor()) noexcept {
    return associated_executor<Handler, Executor>::get(h.handler, ex);
  }
};
template <class Handler, class Allocator>
struct associated_allocator<connpool::detail::kept_handler<Handler>, Allocator> {
  using type = typename associated_allocator<Handler, Allocator>::type;
  static type get(const connpool::detail::kept_handler<Handler>& h, const Allocator& a = Allocator()) noexcept {
    return associated_allocator<Handler, Allocator>::get(h.handler, a);
  }
};
#endif
#if defined(CONNPOOL_USE_BOOST_ASIO)
}  // namespace asio
}  // namespace boost
#else
}  // namespace asio
#endif

#endif
