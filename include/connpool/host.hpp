#ifndef CONNPOOL_HOST_HPP
#define CONNPOOL_HOST_HPP

#include <string>
#include <utility>

#include "connpool/detail/config.hpp"

namespace connpool {
CONNPOOL_ABI_BEGIN

/// A backend by name: a host name (or an address in text) and a service name or port, resolved
/// by the pool (see basic_pool::acquire(const host&) and basic_pool::set_resolver()). Two hosts
/// are the same backend when both strings are equal.
struct host {
  /// `name` and a port number.
  host(std::string name, unsigned short port) : name(std::move(name)), service(std::to_string(port)) {}
  /// `name` and a service name or port in text ("6379", "https").
  host(std::string name, std::string service) : name(std::move(name)), service(std::move(service)) {}
  /// `name` and a port in text.
  host(std::string name, const char* service) : name(std::move(name)), service(service) {}

  std::string name;     ///< what the resolver looks up, e.g. "cache.internal"
  std::string service;  ///< the port, e.g. "6379"

  /// Equal names and services.
  friend bool operator==(const host& a, const host& b) { return a.name == b.name && a.service == b.service; }
  /// Not equal.
  friend bool operator!=(const host& a, const host& b) { return !(a == b); }
};

CONNPOOL_ABI_END
}  // namespace connpool

#endif
