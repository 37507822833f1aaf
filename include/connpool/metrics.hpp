#ifndef CONNPOOL_METRICS_HPP
#define CONNPOOL_METRICS_HPP

/// \file
/// A pool's gauges, counters and latency histograms in the Prometheus text exposition format
/// (version 0.0.4), for a `/metrics` endpoint. No dependency beyond the pool.
///
/// \code
/// connpool::pool_metrics metrics({{"pool", "cache"}});
/// pool.set_listener(metrics.listener());      // feeds the histograms; or call observe() from yours
/// std::string body = metrics.text(pool);      // serve it with Content-Type text/plain; version=0.0.4
/// \endcode
///
/// Every series carries the constant labels given, and, per endpoint, `endpoint` ("10.0.0.7:6379",
/// "[::1]:443", a Unix socket's path) or, for a named backend, `backend` ("cache.internal:6379").
/// The counters of endpoints the pool forgot (endpoint_grace) are kept in one series with
/// `endpoint="(forgotten)"`, so that a sum over the label is the pool's total and never goes down.
///
/// | metric | type | labels | from |
/// |---|---|---|---|
/// | `connpool_connections` | gauge | `state`: idle, leased, connecting | pool_stats |
/// | `connpool_waiting_acquires` | gauge | | pool_stats::waiting |
/// | `connpool_connections_created_total` | counter | | pool_stats::created |
/// | `connpool_connections_reused_total` | counter | | pool_stats::reused |
/// | `connpool_leases_released_total` | counter | | pool_stats::released |
/// | `connpool_connect_failures_total` | counter | | pool_stats::connect_failed |
/// | `connpool_acquire_timeouts_total` | counter | | pool_stats::acquire_timeouts |
/// | `connpool_acquires_rejected_total` | counter | `reason`: too_many_waiters, endpoint_unavailable | pool_stats |
/// | `connpool_connections_closed_total` | counter | `reason`: each close_reason | pool_stats |
/// | `connpool_leases_overdue` | gauge | | pool_stats::held_long (with lease_warn_after) |
/// | `connpool_leases_held_long_total` | counter | | pool_stats::leases_held_long |
/// | `connpool_peer_idle_timeout_seconds` | gauge | | pool_stats::peer_idle_timeout (endpoints that have one) |
/// | `connpool_run_retries_total` | counter | `result`: retried, refused | pool_stats::retries, retries_refused |
/// | `connpool_acquire_seconds` | histogram | | the listener: acquired, its duration |
/// | `connpool_connect_seconds` | histogram | | the listener: connect_succeeded, its duration |
///
/// The histograms are per pool (not per endpoint), with fixed buckets, and count only what the
/// listener saw: without a listener they stay empty and cost nothing.

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "connpool/connpool.hpp"
#include "connpool/detail/stats.hpp"
#include "connpool/events.hpp"

namespace connpool {
CONNPOOL_ABI_BEGIN

/// A histogram with fixed upper bounds, in seconds; safe to observe from any thread (relaxed
/// atomics: a scrape may see an observation in the count before the sum).
template <std::size_t N>
class fixed_histogram {
 public:
  /// `bounds`: increasing upper bounds, in seconds (the +Inf bucket is implicit).
  explicit constexpr fixed_histogram(const std::array<double, N>& bounds) noexcept : bounds_(bounds) {}

  /// Count one observation of `d`.
  void observe(std::chrono::nanoseconds d) noexcept {
    const double s = std::chrono::duration<double>(d).count();
    std::size_t i = 0;
    while (i < N && s > bounds_[i]) ++i;
    counts_[i].fetch_add(1, std::memory_order_relaxed);
    sum_ns_.fetch_add(static_cast<std::uint64_t>(d.count() > 0 ? d.count() : 0), std::memory_order_relaxed);
  }

  /// The upper bounds, in seconds.
  const std::array<double, N>& bounds() const noexcept { return bounds_; }
  /// Observations in bucket `i` alone (not cumulative); `i == N` is the +Inf bucket.
  std::uint64_t bucket(std::size_t i) const noexcept { return counts_[i].load(std::memory_order_relaxed); }
  /// The sum of the observations, in seconds.
  double sum() const noexcept { return static_cast<double>(sum_ns_.load(std::memory_order_relaxed)) / 1e9; }

 private:
  std::array<double, N> bounds_;
  std::array<std::atomic<std::uint64_t>, N + 1> counts_{};
  std::atomic<std::uint64_t> sum_ns_{0};
};

/// Prometheus metrics of one pool (of type `Pool`: tcp_pool, local_pool, a basic_pool of your
/// executor). Copies share the histograms; the object may outlive the pool and be called from any
/// thread.
template <class Pool>
class basic_pool_metrics {
 public:
  using pool_type = Pool;               ///< the pool type
  using event = typename Pool::event;  ///< what its listener is told
  /// Label name and value, added to every series (e.g. {"pool", "cache"}).
  using label = std::pair<std::string, std::string>;

  /// Bucket bounds of connpool_acquire_seconds: 50 us to 10 s.
  static constexpr std::array<double, 16> acquire_buckets{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                                          0.005,   0.01,   0.025,   0.05,   0.1,   0.25,
                                                          0.5,     1,      2.5,     10};
  /// Bucket bounds of connpool_connect_seconds: 100 us to 10 s.
  static constexpr std::array<double, 14> connect_buckets{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                                          0.025,  0.05,    0.1,    0.25,  0.5,    1,     10};

  basic_pool_metrics() : h_(std::make_shared<histograms>()) {}
  /// With `labels` on every series: `pool_metrics m({{"pool", "cache"}, {"zone", "a"}});`
  basic_pool_metrics(std::initializer_list<label> labels)
      : h_(std::make_shared<histograms>()), labels_(labels) {}
  /// With `labels` on every series.
  explicit basic_pool_metrics(std::vector<label> labels)
      : h_(std::make_shared<histograms>()), labels_(std::move(labels)) {}

  /// Feed the histograms from one event (call it from your own listener).
  void observe(const event& ev) const noexcept { h_->observe(ev); }

  /// A listener that feeds the histograms, for Pool::set_listener() (it keeps them alive).
  typename Pool::listener listener() const {
    return [h = h_](const event& ev) { h->observe(ev); };
  }

  /// Append the text exposition of `pool`'s metrics to `out`.
  void write(std::string& out, const Pool& pool) const {
    const auto snap = pool.snapshot();
    std::vector<std::pair<std::string, const pool_stats*>> rows;  // label text, stats
    rows.reserve(snap.endpoints.size() + 1);
    for (const auto& e : snap.endpoints) {
      std::string l = prefix();
      if (e.backend)
        l += "backend=\"" + escape(e.backend->name + ":" + e.backend->service) + "\"";
      else
        l += "endpoint=\"" + escape(to_text(e.endpoint)) + "\"";
      rows.emplace_back(std::move(l), &e.stats);
    }
    rows.emplace_back(prefix() + "endpoint=\"(forgotten)\"", &snap.forgotten);

    auto family = [&](const char* name, const char* type, const char* help) {
      out += "# HELP ";
      out += name;
      out += ' ';
      out += help;
      out += "\n# TYPE ";
      out += name;
      out += ' ';
      out += type;
      out += '\n';
    };
    auto sample = [&](const char* name, const std::string& labels, std::uint64_t v) {
      out += name;
      out += '{';
      out += labels;
      out += "} ";
      out += std::to_string(v);
      out += '\n';
    };
    auto each = [&](const char* name, auto field) {
      for (const auto& r : rows) sample(name, r.first, static_cast<std::uint64_t>(field(*r.second)));
    };

    family("connpool_connections", "gauge", "Connections of the pool, by state.");
    for (const auto& r : rows) {
      sample("connpool_connections", r.first + ",state=\"idle\"", r.second->idle);
      sample("connpool_connections", r.first + ",state=\"leased\"", r.second->leased);
      sample("connpool_connections", r.first + ",state=\"connecting\"", r.second->connecting);
    }
    family("connpool_waiting_acquires", "gauge", "Acquires waiting for a connection or a connect slot.");
    each("connpool_waiting_acquires", [](const pool_stats& s) { return s.waiting; });
    family("connpool_connections_created_total", "counter", "Connections opened (connected and set up).");
    each("connpool_connections_created_total", [](const pool_stats& s) { return s.created; });
    family("connpool_connections_reused_total", "counter", "Acquires served by an idle connection that passed its probe.");
    each("connpool_connections_reused_total", [](const pool_stats& s) { return s.reused; });
    family("connpool_leases_released_total", "counter", "Leases given back with release().");
    each("connpool_leases_released_total", [](const pool_stats& s) { return s.released; });
    family("connpool_connect_failures_total", "counter", "Connection attempts that failed (timeouts included).");
    each("connpool_connect_failures_total", [](const pool_stats& s) { return s.connect_failed; });
    family("connpool_acquire_timeouts_total", "counter", "Acquires that failed with acquire_timeout.");
    each("connpool_acquire_timeouts_total", [](const pool_stats& s) { return s.acquire_timeouts; });
    family("connpool_acquires_rejected_total", "counter", "Acquires refused at once, by reason.");
    for (const auto& r : rows) {
      sample("connpool_acquires_rejected_total", r.first + ",reason=\"too_many_waiters\"", r.second->waiters_rejected);
      sample("connpool_acquires_rejected_total", r.first + ",reason=\"endpoint_unavailable\"", r.second->backoff_rejected);
    }
    family("connpool_connections_closed_total", "counter", "Connections the pool closed, by reason.");
    for (const auto& r : rows) {
      pool_stats copy = *r.second;  // detail::counter() names a field of a mutable one
      for (int i = 0; i <= static_cast<int>(close_reason::learned_idle_timeout); ++i) {
        const auto why = static_cast<close_reason>(i);
        sample("connpool_connections_closed_total", r.first + ",reason=\"" + to_string(why) + "\"",
               detail::counter(copy, why));
      }
    }
    family("connpool_leases_overdue", "gauge", "Leases out for lease_warn_after or longer, now.");
    each("connpool_leases_overdue", [](const pool_stats& s) { return s.held_long; });
    family("connpool_leases_held_long_total", "counter", "Leases reported held for lease_warn_after or longer.");
    each("connpool_leases_held_long_total", [](const pool_stats& s) { return s.leases_held_long; });
    family("connpool_run_retries_total", "counter", "run() exchanges that failed where a retry is safe, by result.");
    for (const auto& r : rows) {
      sample("connpool_run_retries_total", r.first + ",result=\"retried\"", r.second->retries);
      sample("connpool_run_retries_total", r.first + ",result=\"refused\"", r.second->retries_refused);
    }
    family("connpool_peer_idle_timeout_seconds", "gauge",
           "The peer's idle timeout learned (learn_idle_timeout); endpoints with none are left out.");
    for (const auto& r : rows) {
      if (r.second->peer_idle_timeout.count() <= 0) continue;
      out += "connpool_peer_idle_timeout_seconds{" + r.first + "} ";
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.3f", std::chrono::duration<double>(r.second->peer_idle_timeout).count());
      out += buf;
      out += '\n';
    }
    histogram_text(out, "connpool_acquire_seconds", "Time to acquire a connection (successful acquires seen by the listener).",
                   h_->acquire);
    histogram_text(out, "connpool_connect_seconds", "Time to connect and set up a connection (successes seen by the listener).",
                   h_->connect);
  }

  /// The text exposition of `pool`'s metrics.
  std::string text(const Pool& pool) const {
    std::string out;
    write(out, pool);
    return out;
  }

  /// The media type to serve it with.
  static constexpr const char* content_type() noexcept { return "text/plain; version=0.0.4; charset=utf-8"; }

  /// A label value with backslash, double quote and line feed escaped, as the format requires.
  static std::string escape(const std::string& v) {
    std::string o;
    o.reserve(v.size());
    for (char c : v) {
      if (c == '\\') o += "\\\\";
      else if (c == '"') o += "\\\"";
      else if (c == '\n') o += "\\n";
      else o += c;
    }
    return o;
  }

 private:
  struct histograms {
    fixed_histogram<16> acquire{acquire_buckets};
    fixed_histogram<14> connect{connect_buckets};
    void observe(const event& ev) noexcept {
      if (ev.kind == event_kind::acquired) acquire.observe(ev.duration);
      else if (ev.kind == event_kind::connect_succeeded) connect.observe(ev.duration);
    }
  };

  std::string prefix() const {
    std::string l;
    for (const auto& kv : labels_) l += kv.first + "=\"" + escape(kv.second) + "\",";
    return l;
  }

  template <class Endpoint>
  static std::string to_text(const Endpoint& ep) {
    if constexpr (std::is_same_v<Endpoint, net::ip::tcp::endpoint>) {
      const std::string a = ep.address().to_string();
      return (ep.address().is_v6() ? "[" + a + "]" : a) + ":" + std::to_string(ep.port());
    } else {
      return ep.path();
    }
  }

  static std::string number(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.9g", v);
    return buf;
  }

  template <std::size_t N>
  void histogram_text(std::string& out, const char* name, const char* help, const fixed_histogram<N>& h) const {
    out += "# HELP ";
    out += name;
    out += ' ';
    out += help;
    out += "\n# TYPE ";
    out += name;
    out += " histogram\n";
    const std::string p = prefix();
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i <= N; ++i) {
      cumulative += h.bucket(i);
      out += name;
      out += "_bucket{" + p + "le=\"" + (i < N ? number(h.bounds()[i]) : std::string("+Inf")) + "\"} ";
      out += std::to_string(cumulative);
      out += '\n';
    }
    const std::string lbl = p.empty() ? std::string() : "{" + p.substr(0, p.size() - 1) + "}";
    out += name;
    out += "_sum" + lbl + " " + number(h.sum()) + "\n";
    out += name;
    out += "_count" + lbl + " " + std::to_string(cumulative) + "\n";
  }

  std::shared_ptr<histograms> h_;
  std::vector<label> labels_;
};

/// Metrics of a connpool::tcp_pool.
using pool_metrics = basic_pool_metrics<tcp_pool>;

CONNPOOL_ABI_END
}  // namespace connpool

#endif
