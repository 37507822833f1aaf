#ifndef CONNPOOL_CONNPOOL_HPP
#define CONNPOOL_CONNPOOL_HPP

/// connpool: a TCP (and Unix stream) connection pool with lifecycle guarantees, on standalone Asio
/// or Boost.Asio (connpool/net.hpp).

#include "connpool/detail/asio.hpp"

#include "connpool/basic_pool.hpp"
#include "connpool/error.hpp"
#include "connpool/pool_options.hpp"
#include "connpool/version.hpp"

namespace connpool {
CONNPOOL_ABI_BEGIN

/// A pool of TCP connections.
using tcp_pool = basic_pool<net::ip::tcp>;

/// A pool of Unix stream socket connections.
using local_pool = basic_pool<net::local::stream_protocol>;

CONNPOOL_ABI_END
}  // namespace connpool

#endif
