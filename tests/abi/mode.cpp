// Compiled twice into one program: once for standalone Asio, once with CONNPOOL_USE_BOOST_ASIO
// (MODE_NAME names the function each copy defines). See main.cpp.
#include <connpool/connpool.hpp>

#include <string>

std::string MODE_NAME() {
  connpool::error_code ec = connpool::error::acquire_timeout;
  connpool::pool_options bad;
  bad.connect_timeout = std::chrono::milliseconds(-1);
  const connpool::error_code invalid = bad.validate();
  return std::string(ec.category().name()) + "|" + ec.message() + "|" +
         (ec == connpool::error::acquire_timeout ? "equal" : "different") + "|" + invalid.message();
}
