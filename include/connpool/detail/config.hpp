#ifndef CONNPOOL_DETAIL_CONFIG_HPP
#define CONNPOOL_DETAIL_CONFIG_HPP

// What follows from CONNPOOL_USE_BOOST_ASIO without including any Asio (the books include this,
// and must stay free of Asio): the error types, and the ABI namespace.
//
// Every connpool entity lives in an inline namespace (CONNPOOL_ABI_BEGIN/END) whose name differs
// between the two builds. A program that mixes them (one library built for Boost.Asio, another for standalone
// Asio) then links two distinct sets of symbols instead of silently merging inline functions
// whose definitions differ (error_code has a different layout in the two builds).

#if defined(CONNPOOL_USE_BOOST_ASIO)
#include <boost/system/error_code.hpp>
#include <boost/system/system_error.hpp>
#define CONNPOOL_ABI_BEGIN inline namespace abi_v1_boost_asio {
#else
#include <system_error>
#define CONNPOOL_ABI_BEGIN inline namespace abi_v1_asio {
#endif

namespace connpool {

// The names are documented in the #else branch, the one the API reference is generated from.
#if defined(CONNPOOL_USE_BOOST_ASIO)
using error_code = ::boost::system::error_code;
using system_error = ::boost::system::system_error;
#else
/// The error code type of the Asio in use: what connpool's completion handlers receive and its
/// non-throwing overloads fill in. `boost::system::error_code` with Boost.Asio (it converts to
/// `std::error_code`), else `std::error_code`.
using error_code = std::error_code;
/// What connpool's throwing overloads throw: `boost::system::system_error` with Boost.Asio, else
/// `std::system_error`.
using system_error = std::system_error;
#endif

}  // namespace connpool

#define CONNPOOL_ABI_END }

#endif
