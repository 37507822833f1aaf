// All of Asio for the tests, benchmarks and test servers: standalone Asio, or Boost.Asio when
// CONNPOOL_USE_BOOST_ASIO is defined (connpool/net.hpp). Spell it `net::`.
#pragma once

#include <utility>  // Boost 1.74's awaitable.hpp uses std::exchange without including it

#include <connpool/net.hpp>

#if defined(CONNPOOL_USE_BOOST_ASIO)
#include <boost/asio.hpp>
#else
#include <asio.hpp>
#endif

namespace net = connpool::net;
