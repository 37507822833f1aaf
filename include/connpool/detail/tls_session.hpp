#ifndef CONNPOOL_DETAIL_TLS_SESSION_HPP
#define CONNPOOL_DETAIL_TLS_SESSION_HPP

// A pooled connection's TLS session (connpool/tls.hpp): the ssl::stream that lives with the
// connection across leases, and what the pool asks of it (connection_ext): the probe's view of
// bytes waiting, and close_notify on a graceful close. Include connpool/tls.hpp, not this.

#include <sys/socket.h>

#include <cerrno>
#include <memory>
#include <string>
#include <utility>

#include "connpool/detail/pool_state.hpp"

namespace connpool {
CONNPOOL_ABI_BEGIN
namespace detail {
template <class Socket>
struct tls_session;
}  // namespace detail

/// The next layer of a pooled TLS stream: the pool's TCP socket. The pool moves a connection's
/// descriptor between socket objects (its own, and the one its setup step and health check run on,
/// on the pool's executor), and points this at the one that holds it: at the lease's socket during
/// a lease. Reads and writes go to that socket; the stream's executor is that socket's.
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
    if (probe_fd_ < 0) return s_->read_some(b, ec);
    const net::mutable_buffer m = *net::buffer_sequence_begin(b);
    const ssize_t n = ::recv(probe_fd_, m.data(), m.size(), MSG_DONTWAIT);
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
    if (probe_fd_ < 0) return s_->write_some(b, ec);
    const net::const_buffer c = *net::buffer_sequence_begin(b);
    const ssize_t n = ::send(probe_fd_, c.data(), c.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    return result(n, ec, false);
  }
  /// As the socket's write_some; throws system_error.
  template <class ConstBuffers>
  std::size_t write_some(const ConstBuffers& b) {
    return s_->write_some(b);
  }
  /// As the socket's async_read_some.
  template <class MutableBuffers, class Token>
  auto async_read_some(const MutableBuffers& b, Token&& token) {
    return s_->async_read_some(b, std::forward<Token>(token));
  }
  /// As the socket's async_write_some.
  template <class ConstBuffers, class Token>
  auto async_write_some(const ConstBuffers& b, Token&& token) {
    return s_->async_write_some(b, std::forward<Token>(token));
  }

 private:
  template <class>
  friend struct detail::tls_session;

  static std::size_t result(ssize_t n, error_code& ec, bool reading) noexcept {
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
    } else {
      ec = error_code(errno, net::error::get_system_category());
    }
    return 0;
  }

  Socket* s_;
  int probe_fd_ = -1;  // while the pool probes or closes: this descriptor, without blocking
};

namespace detail {

/// A connection's TLS session.
template <class Socket>
struct tls_session final : connection_ext {
  tls_session(Socket& s, net::ssl::context& ctx, std::shared_ptr<net::io_context> context, std::string host)
      : keep(std::move(context)), stream(s, ctx), name(std::move(host)) {}

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
      const std::string ip = verify_name.empty() ? ep.address().to_string() : verify_name;
      if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), ip.c_str()) != 1) return error::setup_failed;
    }
    return {};
  }

  probe_result refine(int fd, probe_result raw) noexcept override {
    if (raw != probe_result::healthy && raw != probe_result::unexpected_data) return raw;
    SSL* ssl = stream.native_handle();
    if (SSL_get_shutdown(ssl) != 0) return probe_result::peer_closed;  // a session that ended
    if (raw == probe_result::healthy && SSL_has_pending(ssl) == 0 && BIO_ctrl_pending(SSL_get_rbio(ssl)) == 0)
      return probe_result::healthy;
    // Bytes waiting, on the socket or in the session: let OpenSSL process them, without blocking.
    unsigned char byte;
    error_code ec;
    std::size_t n = 0;
    stream.next_layer().probe_fd_ = fd;
    try {
      n = stream.read_some(net::buffer(&byte, 1), ec);
    } catch (...) {
      ec = net::error::no_memory;
    }
    stream.next_layer().probe_fd_ = -1;
    if (n > 0) return probe_result::unexpected_data;  // application data: a desync
    if (ec == net::error::would_block || ec == net::error::try_again) return probe_result::healthy;  // records only
    if (ec == net::error::eof || ec == net::ssl::error::stream_truncated) return probe_result::peer_closed;
    if (ec == net::error::connection_reset) return probe_result::peer_reset;
    return probe_result::unexpected_data;  // a broken record: unusable
  }

  void goodbye(int fd) noexcept override {
    SSL* ssl = stream.native_handle();
    if (SSL_is_init_finished(ssl) == 0 || SSL_get_shutdown(ssl) != 0) return;
    stream.next_layer().probe_fd_ = fd;
    error_code ignored;
    try {
      stream.shutdown(ignored);  // writes close_notify; does not wait for the peer's
    } catch (...) {
    }
    stream.next_layer().probe_fd_ = -1;
  }

  std::shared_ptr<net::io_context> keep;  // first: the context the stream's timers live on, if the pool's
  net::ssl::stream<tls_socket<Socket>> stream;
  const std::string name;  // a named backend's host name, else empty
};

}  // namespace detail
CONNPOOL_ABI_END
}  // namespace connpool

#endif
