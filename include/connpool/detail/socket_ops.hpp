#ifndef CONNPOOL_DETAIL_SOCKET_OPS_HPP
#define CONNPOOL_DETAIL_SOCKET_OPS_HPP

// The one seam between connpool and the operating system. Everything Linux-only lives here, behind
// `watch_supported`; other POSIX systems compile the rest and keep the probe before every hand-out.

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <system_error>
#include <type_traits>

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/epoll.h>
#endif

#include "connpool/detail/asio.hpp"

#include "connpool/detail/clock.hpp"
#include "connpool/detail/stats.hpp"
#include "connpool/pool_options.hpp"

namespace connpool {
CONNPOOL_ABI_BEGIN
namespace detail {

/// One syscall: recv(1, MSG_PEEK | MSG_DONTWAIT). Healthy means exactly "would block".
/// A pending socket error is consumed by the peek, which is fine: the connection is closed anyway.
inline probe_result probe(int fd) noexcept {
  char byte;
  for (;;) {
    ssize_t n = ::recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0) return probe_result::unexpected_data;
    if (n == 0) return probe_result::peer_closed;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return probe_result::healthy;
    return probe_result::peer_reset;
  }
}

/// What TCP_INFO tells of a connection, for run(): its TCP state and the segments with data it has
/// received since it was made (tcpi_data_segs_in, Linux 4.6 on: a FIN or an ACK alone does not
/// count, unlike in tcpi_bytes_received, which counts the FIN).
struct tcp_look {
  std::uint8_t state = 0;
  std::uint32_t data_segs_in = 0;
  /// The peer closed or reset the connection (CLOSE_WAIT, LAST_ACK, or CLOSE after a reset), not we.
  bool peer_ended() const noexcept {
#if defined(__linux__)
    return state == TCP_CLOSE_WAIT || state == TCP_LAST_ACK || state == TCP_CLOSE;
#else
    return false;  // (look_tcp() tells nothing there)
#endif
  }
};

/// TCP_INFO of `fd` in `out`; false where the kernel does not tell (not TCP, another system, an
/// older kernel). glibc's struct tcp_info stops short of tcpi_data_segs_in: it is read at its offset
/// in the kernel's (uapi) struct (152, after 8 fields of 8 bits, 24 of 32, 4 of 64 and 4 of 32), to
/// which fields are only ever appended.
inline bool look_tcp(int fd, tcp_look& out) noexcept {
#if defined(__linux__)
  constexpr socklen_t at = 152;
  alignas(8) unsigned char info[256] = {};
  socklen_t len = sizeof info;
  if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, info, &len) != 0 || len < at + 4) return false;
  out.state = info[0];
  std::memcpy(&out.data_segs_in, info + at, sizeof out.data_segs_in);
  return true;
#else
  (void)fd;
  (void)out;
  return false;
#endif
}

/// Whether `ec`, the error of an exchange on a reused connection, says the peer had closed it as
/// the request went out: end of stream, a reset, a broken pipe.
inline bool stale_error(const error_code& ec) noexcept {
  return ec == net::error::eof || ec == net::error::connection_reset || ec == net::error::broken_pipe;
}

/// An OS error as Asio reports it (its own system category), so that callers compare it the way
/// they compare the errors of their own reads and writes: `ec == net::error::connection_refused`.
inline error_code os_error(int e) noexcept { return {e, net::error::get_system_category()}; }

/// Open `s` for `p`, close-on-exec from the start: a child the service spawns must not inherit a
/// pooled connection (it would hold it in CLOSE_WAIT after the pool closed its copy, and an
/// abortive close would no longer send an RST).
template <class Socket>
error_code open_socket(Socket& s, const typename Socket::protocol_type& p) noexcept {
#if defined(SOCK_CLOEXEC)
  const int fd = ::socket(p.family(), p.type() | SOCK_CLOEXEC, p.protocol());
  if (fd < 0) return os_error(errno);
#else
  const int fd = ::socket(p.family(), p.type(), p.protocol());
  if (fd < 0) return os_error(errno);
  if (::fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) {
    const int e = errno;
    ::close(fd);
    return os_error(e);
  }
#endif
  error_code ec;
  s.assign(p, fd, ec);
  if (ec) ::close(fd);  // never adopted: ours to close, once
  return ec;
}

/// Apply the pool's TCP options to an open, unconnected socket. Unix sockets get none.
template <class Socket>
error_code apply_socket_options(Socket& s, const pool_options& o) {
  error_code ec;
  using protocol = typename Socket::protocol_type;
  if constexpr (std::is_same_v<protocol, net::ip::tcp>) {
    const int fd = s.native_handle();
    auto set = [&](int level, int name, int value) {
      if (!ec && ::setsockopt(fd, level, name, &value, sizeof value) != 0)
        ec = os_error(errno);
    };
    if (o.tcp_nodelay) set(IPPROTO_TCP, TCP_NODELAY, 1);
    if (o.keepalive_idle.count() > 0) {
      set(SOL_SOCKET, SO_KEEPALIVE, 1);
#if defined(TCP_KEEPIDLE)
      set(IPPROTO_TCP, TCP_KEEPIDLE, static_cast<int>(o.keepalive_idle.count()));
#endif
#if defined(TCP_KEEPINTVL)
      if (o.keepalive_interval.count() > 0)
        set(IPPROTO_TCP, TCP_KEEPINTVL, static_cast<int>(o.keepalive_interval.count()));
#endif
#if defined(TCP_KEEPCNT)
      if (o.keepalive_count > 0) set(IPPROTO_TCP, TCP_KEEPCNT, static_cast<int>(o.keepalive_count));
#endif
    }
#if defined(TCP_USER_TIMEOUT)
    if (o.user_timeout.count() > 0)
      set(IPPROTO_TCP, TCP_USER_TIMEOUT, static_cast<int>(o.user_timeout.count()));
#endif
  } else {
    (void)s;
    (void)o;
  }
  return ec;
}

/// Close a socket once. `peer_gone`: the peer already closed or reset it, so no shutdown or RST of
/// ours is forced. Every close but an abortive one first clears any SO_LINGER the user set on a
/// lease, so that close() never blocks the thread that retires it. Errors are ignored: the
/// descriptor is released either way.
template <class Socket>
void close_socket(Socket& s, close_mode mode, bool peer_gone) noexcept {
  if (!s.is_open()) return;
  error_code ignored;
  if (mode == close_mode::abortive && !peer_gone) {
    s.set_option(net::socket_base::linger(true, 0), ignored);
  } else {
    if (!peer_gone) s.shutdown(net::socket_base::shutdown_send, ignored);
    s.set_option(net::socket_base::linger(false, 0), ignored);
  }
  s.close(ignored);
}

/// End the connection on `fd` without closing the descriptor, which a lease still holds (drain()'s
/// deadline). Graceful: shutdown(both), a FIN; the holder's reads see EOF, its writes fail.
/// Abortive, on TCP: connect(AF_UNSPEC), on which Linux sends an RST and drops the connection at
/// once (no TIME_WAIT; the holder's calls fail); other protocols shut down as for graceful. A
/// blocked read or write on another thread returns. Errors are ignored (a peer gone already).
inline void cut(int fd, close_mode mode, bool tcp) noexcept {
  if (mode == close_mode::abortive && tcp) {
    sockaddr unspec{};
    unspec.sa_family = AF_UNSPEC;
    if (::connect(fd, &unspec, sizeof unspec) == 0) return;
  }
  ::shutdown(fd, SHUT_RDWR);
}

/// Connect a non-blocking socket, waiting until it is connected or `deadline` passes. Returns the
/// connect's own error (the kernel's ETIMEDOUT included); if the deadline passed first, sets
/// `deadline_passed` and returns net::error::timed_out. (Asio's synchronous connect waits without
/// limit even on a non-blocking socket.) A Unix stream connect whose listener's backlog is full
/// fails with EAGAIN instead of waiting: it is tried again, backing off from 1 to 50 ms, until the
/// deadline, as a TCP connect to a full backlog waits.
inline error_code connect_with_deadline(int fd, const sockaddr* addr, socklen_t len,
                                             std::chrono::steady_clock::time_point deadline,
                                             bool& deadline_passed) {
  deadline_passed = false;
  for (std::chrono::milliseconds backoff{1};; backoff = std::min<std::chrono::milliseconds>(2 * backoff, std::chrono::milliseconds(50))) {
    if (::connect(fd, addr, len) == 0) return {};
    if (errno == EINPROGRESS || errno == EINTR) break;
    if (errno != EAGAIN || addr->sa_family != AF_UNIX) return os_error(errno);
    auto pause = backoff;
    if (deadline != never) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        deadline_passed = true;
        return net::error::timed_out;
      }
      pause = std::min(pause, left);
    }
    ::poll(nullptr, 0, static_cast<int>(pause.count()));
  }
  for (;;) {
    int timeout_ms = -1;
    if (deadline != std::chrono::steady_clock::time_point::max()) {
      auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        deadline_passed = true;
        return net::error::timed_out;
      }
      timeout_ms = left.count() > 1000000 ? 1000000 : static_cast<int>(left.count());
    }
    pollfd p{fd, POLLOUT, 0};
    int n = ::poll(&p, 1, timeout_ms);
    if (n < 0) {
      if (errno == EINTR) continue;
      return os_error(errno);
    }
    if (n == 0) continue;  // re-check the deadline
    int err = 0;
    socklen_t len = sizeof err;
    if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return os_error(errno);
    if (err != 0) return os_error(err);
    return {};
  }
}

/// What the idle watch reports for a connection: its id, and whether the peer reset it (else it
/// sent a FIN).
struct watch_event {
  std::uint64_t id;
  bool reset;
};

#if defined(__linux__)
inline constexpr bool watch_supported = true;

/// An epoll set of idle-watch registrations. Sockets are added once, when connected, with
/// EPOLLRDHUP | EPOLLET and nothing else: a response arriving on a leased connection wakes no one,
/// while a FIN fires EPOLLRDHUP and a RST fires EPOLLHUP/EPOLLERR (always reported). Closing the
/// socket removes it from the set.
class watch_set {
 public:
  watch_set() noexcept : fd_(::epoll_create1(EPOLL_CLOEXEC)) {}
  ~watch_set() {
    if (fd_ >= 0) ::close(fd_);
  }
  watch_set(const watch_set&) = delete;
  watch_set& operator=(const watch_set&) = delete;

  int native_handle() const noexcept { return fd_; }
  bool add(int fd, std::uint64_t id) noexcept {
    if (fd_ < 0) return false;
    epoll_event ev{};
    ev.events = EPOLLRDHUP | EPOLLET;
    ev.data.u64 = id;
    return ::epoll_ctl(fd_, EPOLL_CTL_ADD, fd, &ev) == 0;
  }
  /// Non-blocking: up to `max` sockets that saw a FIN, RST or error. Returns the count.
  int poll(watch_event* out, int max) noexcept {
    if (fd_ < 0) return 0;
    epoll_event evs[64];
    if (max > 64) max = 64;
    int n;
    do {
      n = ::epoll_wait(fd_, evs, max, 0);
    } while (n < 0 && errno == EINTR);
    for (int i = 0; i < n; ++i) out[i] = {evs[i].data.u64, (evs[i].events & EPOLLERR) != 0};
    return n < 0 ? 0 : n;
  }

 private:
  int fd_;
};
#else
inline constexpr bool watch_supported = false;

/// Elsewhere no idle watch: the probe before hand-out and on release still guards every lease.
class watch_set {
 public:
  int native_handle() const noexcept { return -1; }
  bool add(int, std::uint64_t) noexcept { return false; }
  int poll(watch_event*, int) noexcept { return 0; }
};
#endif

}  // namespace detail
CONNPOOL_ABI_END
}  // namespace connpool

#endif
