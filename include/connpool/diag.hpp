#ifndef CONNPOOL_DIAG_HPP
#define CONNPOOL_DIAG_HPP

/// Socket census: the process's own TCP sockets by state, and the kernel's sockets that no
/// descriptor owns any more (TIME_WAIT, orphaned FIN_WAIT/LAST_ACK) towards an endpoint.
/// For tests, benchmarks and health endpoints. Linux only; elsewhere every call reports ENOSYS
/// ("function not implemented", in Asio's system category) in its `ec` instead of a count it
/// cannot know.

#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <system_error>

#include "connpool/detail/asio.hpp"

#if defined(__linux__)
#include <cstdio>
#include <cstring>
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>
#endif

namespace connpool {
CONNPOOL_ABI_BEGIN
namespace diag {

/// TCP states, numbered as the Linux kernel numbers them.
enum class tcp_state {
  established = 1,  ///< open: data can flow both ways
  syn_sent,         ///< connecting: our SYN is sent, the peer's SYN-ACK has not come
  syn_recv,         ///< a peer's SYN came to a listener and was answered; its final ACK has not come
  fin_wait1,        ///< we closed first: our FIN is sent and not yet acknowledged
  fin_wait2,        ///< we closed first: our FIN is acknowledged, the peer's FIN has not come
  time_wait,        ///< we closed first and both FINs are acknowledged: lingers 60 s on Linux
  close,            ///< not connected (Linux's TCP_CLOSE)
  close_wait,       ///< the peer closed (its FIN came) and we have not: lasts until we close
  last_ack,         ///< the peer closed first, then we did: our FIN is not yet acknowledged
  listen,           ///< a listening socket
  closing           ///< both sides closed at once: our FIN is not yet acknowledged
};

/// A short name ("ESTABLISHED", "CLOSE_WAIT", ...), or "?" for a value outside the enumeration.
inline const char* to_string(tcp_state s) noexcept {
  static const char* const names[] = {"?", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2",
                                      "TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING"};
  const int i = static_cast<int>(s);
  return i >= 1 && i <= 11 ? names[i] : names[0];
}

/// The process's descriptors and its TCP sockets by state.
struct socket_census {
  std::size_t descriptors = 0;  ///< every open descriptor of the process
  std::size_t tcp_sockets = 0;  ///< TCP sockets among them (after the remote filter, if any)
  std::array<std::size_t, 12> states{};  ///< indexed by tcp_state (index 0 unused)

  /// The number of TCP sockets in state `s` (`states[s]`).
  std::size_t operator[](tcp_state s) const noexcept { return states[static_cast<std::size_t>(s)]; }
};

/// Walk /proc/self/fd; count TCP sockets by TCP_INFO state. With `remote`, only sockets whose peer
/// address is `remote` (port 0 matches any port). If /proc/self/fd cannot be read, sets `ec` to
/// the error and returns all zeros.
socket_census census(const std::optional<net::ip::tcp::endpoint>& remote, error_code& ec);

/// Every TCP socket of the process: census(std::nullopt, ec).
inline socket_census census(error_code& ec) { return census(std::nullopt, ec); }

/// Sockets in `state` towards `remote` (port 0: any port) in the kernel's table
/// (/proc/self/net/tcp and tcp6), owned by no descriptor: TIME_WAIT, and orphans after close().
/// Counts the process's network namespace, not only this process. Sets `ec` to ENOSYS if neither
/// table can be read.
std::size_t kernel_sockets(tcp_state state, const net::ip::tcp::endpoint& remote, error_code& ec);

// ------------------------------------------------------------------------------------------

#if defined(__linux__)
namespace detail {
inline bool same_peer(const sockaddr_storage& ss, const net::ip::tcp::endpoint& want) {
  net::ip::tcp::endpoint ep;
  if (ss.ss_family == AF_INET) {
    std::memcpy(ep.data(), &ss, sizeof(sockaddr_in));
  } else if (ss.ss_family == AF_INET6) {
    std::memcpy(ep.data(), &ss, sizeof(sockaddr_in6));
  } else {
    return false;
  }
  return ep.address() == want.address() && (want.port() == 0 || ep.port() == want.port());
}

// /proc/net/tcp prints addresses as the raw 32-bit words in host order, in hex.
inline bool parse_proc_addr(const char* hex, bool v6, net::ip::tcp::endpoint& out) {
  const char* colon = std::strchr(hex, ':');
  if (!colon) return false;
  unsigned port = 0;
  if (std::sscanf(colon + 1, "%x", &port) != 1) return false;
  if (!v6) {
    unsigned word = 0;
    if (std::sscanf(hex, "%8x", &word) != 1) return false;
    net::ip::address_v4::bytes_type b;
    std::memcpy(b.data(), &word, 4);
    out = net::ip::tcp::endpoint(net::ip::address_v4(b), static_cast<unsigned short>(port));
  } else {
    net::ip::address_v6::bytes_type b;
    for (std::size_t i = 0; i < 4; ++i) {
      unsigned word = 0;
      char part[9] = {};
      std::memcpy(part, hex + 8 * i, 8);
      if (std::sscanf(part, "%8x", &word) != 1) return false;
      std::memcpy(b.data() + 4 * i, &word, 4);
    }
    net::ip::address_v6 a(b);
    out = net::ip::tcp::endpoint(a.is_v4_mapped() ? net::ip::address(net::ip::make_address_v4(net::ip::v4_mapped, a))
                                                   : net::ip::address(a),
                                  static_cast<unsigned short>(port));
  }
  return true;
}
}  // namespace detail

inline socket_census census(const std::optional<net::ip::tcp::endpoint>& remote, error_code& ec) {
  ec.clear();
  socket_census c;
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) {
    ec.assign(errno, net::error::get_system_category());
    return c;
  }
  const int self = ::dirfd(d);
  // glibc's manual marks readdir MT-Unsafe only for a stream that threads share (race:dirstream);
  // this one is ours alone.
  while (dirent* e = ::readdir(d)) {  // NOLINT(concurrency-mt-unsafe)
    if (e->d_name[0] == '.') continue;
    const int fd = std::atoi(e->d_name);
    if (fd == self) continue;
    ++c.descriptors;
    int proto = 0;
    socklen_t len = sizeof proto;
    if (::getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len) != 0 || proto != IPPROTO_TCP) continue;
    if (remote) {
      sockaddr_storage ss{};
      socklen_t sl = sizeof ss;
      if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &sl) != 0 || !detail::same_peer(ss, *remote)) continue;
    }
    tcp_info info{};
    len = sizeof info;
    if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) continue;
    ++c.tcp_sockets;
    if (info.tcpi_state < c.states.size()) ++c.states[info.tcpi_state];
  }
  ::closedir(d);
  return c;
}

inline std::size_t kernel_sockets(tcp_state state, const net::ip::tcp::endpoint& remote, error_code& ec) {
  ec.clear();
  std::size_t n = 0;
  bool any = false;
  for (const char* path : {"/proc/self/net/tcp", "/proc/self/net/tcp6"}) {
    std::FILE* f = std::fopen(path, "r");
    if (!f) continue;
    any = true;
    const bool v6 = std::strstr(path, "tcp6") != nullptr;
    char line[512];
    if (!std::fgets(line, sizeof line, f)) {  // header
      std::fclose(f);
      continue;
    }
    while (std::fgets(line, sizeof line, f)) {
      char local[64], rem[64];
      unsigned st = 0;
      unsigned long inode = 0;
      // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
      if (std::sscanf(line, "%*s %63s %63s %x %*s %*s %*s %*s %*s %lu", local, rem, &st, &inode) != 4) continue;
      if (st != static_cast<unsigned>(state) || inode != 0) continue;
      net::ip::tcp::endpoint peer;
      if (!detail::parse_proc_addr(rem, v6, peer)) continue;
      if (peer.address() == remote.address() && (remote.port() == 0 || peer.port() == remote.port())) ++n;
    }
    std::fclose(f);
  }
  if (!any) ec = error_code(ENOSYS, net::error::get_system_category());
  return n;
}
#else
inline socket_census census(const std::optional<net::ip::tcp::endpoint>&, error_code& ec) {
  ec = error_code(ENOSYS, net::error::get_system_category());
  return {};
}
inline std::size_t kernel_sockets(tcp_state, const net::ip::tcp::endpoint&, error_code& ec) {
  ec = error_code(ENOSYS, net::error::get_system_category());
  return 0;
}
#endif

}  // namespace diag
CONNPOOL_ABI_END
}  // namespace connpool

#endif
