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

#if defined(CONNPOOL_USE_BOOST_ASIO)
#include <boost/asio/detail/config.hpp>  // BOOST_ASIO_HAS_CO_AWAIT
#include <boost/asio/version.hpp>
#include <boost/system/error_code.hpp>
#include <boost/system/system_error.hpp>
#include <boost/version.hpp>
#if BOOST_VERSION < 107400
#error "connpool needs Boost 1.74 or newer"
#endif
#define CONNPOOL_ASIO_VERSION BOOST_ASIO_VERSION
#if defined(BOOST_ASIO_HAS_CO_AWAIT)
#define CONNPOOL_HAS_CO_AWAIT 1
#endif
#else
#include <system_error>

#include <asio/detail/config.hpp>  // ASIO_HAS_CO_AWAIT
#include <asio/version.hpp>
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

// The names are documented in the #else branch, the one the API reference is generated from.
#if defined(CONNPOOL_USE_BOOST_ASIO)
namespace net = ::boost::asio;
using error_code = ::boost::system::error_code;
using system_error = ::boost::system::system_error;
#else
// The Asio connpool is built on: `::asio`, or `::boost::asio` with CONNPOOL_USE_BOOST_ASIO. Not a
// `///` comment: Doxygen does not document namespace aliases and would give it to error_code (the
// file comment above describes `net`).
namespace net = ::asio;
/// The error code type of the Asio in use: what connpool's completion handlers receive and its
/// non-throwing overloads fill in. `boost::system::error_code` with Boost.Asio (it converts to
/// `std::error_code`), else `std::error_code`.
using error_code = std::error_code;
/// What connpool's throwing overloads throw: `boost::system::system_error` with Boost.Asio, else
/// `std::system_error`.
using system_error = std::system_error;
#endif

}  // namespace connpool

#endif
