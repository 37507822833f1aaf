#ifndef CONNPOOL_NET_HPP
#define CONNPOOL_NET_HPP

/// \file
/// Which Asio connpool is built on, and the names that follow from it.
///
/// By default connpool uses standalone Asio (`<asio/...>`, namespace `asio`). Define
/// `CONNPOOL_USE_BOOST_ASIO` (the CMake option of the same name does it for you) before including
/// any connpool header, in every translation unit, to build the same headers against Boost.Asio
/// (`<boost/asio/...>`, namespace `boost::asio`) instead. Boost 1.74 is the oldest supported.
///
/// Code that should build both ways can spell Asio `connpool::net` (a namespace alias: `asio`, or
/// `boost::asio` with CONNPOOL_USE_BOOST_ASIO) and use `connpool::error_code`.
///
/// The API reference shows the standalone-Asio build; with CONNPOOL_USE_BOOST_ASIO the same names
/// refer to Boost's types, as each one's description says.

/// \def CONNPOOL_ASIO_VERSION
/// The version of the Asio in use, as ASIO_VERSION / BOOST_ASIO_VERSION spell it (1.18.0 = 101800).

/// \def CONNPOOL_HAS_CO_AWAIT
/// Defined to 1 where the compiler and Asio support C++20 coroutines (asio::awaitable); else
/// undefined.

#include "connpool/detail/config.hpp"

#if defined(CONNPOOL_USE_BOOST_ASIO)
#include <boost/asio/detail/config.hpp>  // BOOST_ASIO_HAS_CO_AWAIT
#include <boost/asio/version.hpp>
#include <boost/version.hpp>
#if BOOST_VERSION < 107400
#error "connpool needs Boost 1.74 or newer"
#endif
#define CONNPOOL_ASIO_VERSION BOOST_ASIO_VERSION
#if defined(BOOST_ASIO_HAS_CO_AWAIT)
#define CONNPOOL_HAS_CO_AWAIT 1
#endif
#else
#include <asio/detail/config.hpp>  // ASIO_HAS_CO_AWAIT
#include <asio/version.hpp>
#if ASIO_VERSION < 101800
#error "connpool needs standalone Asio 1.18 or newer"
#endif
#define CONNPOOL_ASIO_VERSION ASIO_VERSION
#if defined(ASIO_HAS_CO_AWAIT)
#define CONNPOOL_HAS_CO_AWAIT 1
#endif
#endif

/// Defined to 1 where Asio has per-operation cancellation (cancellation slots: Asio 1.19, Boost
/// 1.77 and newer); else undefined. Without it, async_acquire() cannot be cancelled by its
/// completion token.
#if CONNPOOL_ASIO_VERSION >= 101900
#define CONNPOOL_HAS_CANCELLATION_SLOTS 1
#endif

#if defined(CONNPOOL_USE_BOOST_ASIO)
namespace boost::asio {}
#else
namespace asio {}
#endif

namespace connpool {

#if defined(CONNPOOL_USE_BOOST_ASIO)
namespace net = ::boost::asio;
#else
// The Asio connpool is built on: `::asio`, or `::boost::asio` with CONNPOOL_USE_BOOST_ASIO. Not a
// `///` comment: Doxygen does not document namespace aliases (the file comment above describes
// `net`). connpool::error_code and connpool::system_error come from connpool/detail/config.hpp.
namespace net = ::asio;
#endif

}  // namespace connpool

#endif
