// Small helpers shared by the benchmarks: order statistics, the process's CPU time, context
// switches and resident memory, a tiny argument parser, and a report (tables printed as text, and
// written as JSON and CSV). Header-only, no dependency beyond the C++17 standard library and POSIX.
#ifndef CONNPOOL_BENCH_UTIL_HPP
#define CONNPOOL_BENCH_UTIL_HPP

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace bench {

using clock_type = std::chrono::steady_clock;

// ------------------------------------------------------------------------------ order statistics

/// Drops NaNs (a measurement that produced nothing), which sorting cannot order.
inline std::vector<double> finite(std::vector<double> v) {
  v.erase(std::remove_if(v.begin(), v.end(), [](double x) { return std::isnan(x); }), v.end());
  return v;
}

/// The median of the non-NaN values; 0 for an empty sample.
inline double median(std::vector<double> v) {
  v = finite(std::move(v));
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/// The p-th quantile (p in [0, 1]) of the non-NaN values, by nearest rank; 0 for an empty sample.
inline double percentile(std::vector<double> v, double p) {
  v = finite(std::move(v));
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double rank = std::ceil(p * static_cast<double>(v.size()));
  const std::size_t i = rank < 1 ? 0 : static_cast<std::size_t>(rank) - 1;
  return v[std::min(v.size() - 1, i)];
}

inline double max_of(std::vector<double> v) {
  v = finite(std::move(v));
  return v.empty() ? 0 : *std::max_element(v.begin(), v.end());
}
inline double min_of(std::vector<double> v) {
  v = finite(std::move(v));
  return v.empty() ? 0 : *std::min_element(v.begin(), v.end());
}

/// Seconds (as a double) between two time points.
inline double seconds(clock_type::duration d) { return std::chrono::duration<double>(d).count(); }

// ------------------------------------------------------------------------- the process's resources

/// CPU time and context switches of the whole process so far (getrusage).
struct usage {
  double user_ms = 0, system_ms = 0;
  long voluntary_switches = 0, involuntary_switches = 0;

  static usage now() {
    rusage r{};
    ::getrusage(RUSAGE_SELF, &r);
    usage u;
    u.user_ms = static_cast<double>(r.ru_utime.tv_sec) * 1e3 + static_cast<double>(r.ru_utime.tv_usec) / 1e3;
    u.system_ms = static_cast<double>(r.ru_stime.tv_sec) * 1e3 + static_cast<double>(r.ru_stime.tv_usec) / 1e3;
    u.voluntary_switches = r.ru_nvcsw;
    u.involuntary_switches = r.ru_nivcsw;
    return u;
  }
  double cpu_ms() const { return user_ms + system_ms; }
  long switches() const { return voluntary_switches + involuntary_switches; }
  usage operator-(const usage& o) const {
    usage d;
    d.user_ms = user_ms - o.user_ms;
    d.system_ms = system_ms - o.system_ms;
    d.voluntary_switches = voluntary_switches - o.voluntary_switches;
    d.involuntary_switches = involuntary_switches - o.involuntary_switches;
    return d;
  }
};

/// Current resident set size in bytes (/proc/self/statm); -1 where it cannot be read.
inline long long rss_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return -1;
  long long size = 0, resident = -1;
  if (std::fscanf(f, "%lld %lld", &size, &resident) != 2) resident = -1;
  std::fclose(f);
  return resident < 0 ? -1 : resident * static_cast<long long>(::sysconf(_SC_PAGESIZE));
}

/// Peak resident set size in bytes so far (getrusage maxrss).
inline long long max_rss_bytes() {
  rusage r{};
  ::getrusage(RUSAGE_SELF, &r);
  return static_cast<long long>(r.ru_maxrss) * 1024;
}

inline double mib(long long bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }

// ------------------------------------------------------------------------------------- arguments

/// --json FILE, --csv FILE, --quick, --only a,b,c, --help; plus the `--name value` options a
/// benchmark declares. Anything else is an error (listed in `errors`).
struct args {
  std::string json, csv;
  bool quick = false, help = false;
  std::vector<std::string> only;  // empty: everything
  std::map<std::string, std::string> values;
  std::vector<std::string> errors;

  bool selected(const std::string& name) const {
    return only.empty() || std::find(only.begin(), only.end(), name) != only.end();
  }
  bool has(const std::string& key) const { return values.count(key) != 0; }
  std::string get(const std::string& key, const std::string& fallback) const {
    auto it = values.find(key);
    return it == values.end() ? fallback : it->second;
  }
  double number(const std::string& key, double fallback) const {
    auto it = values.find(key);
    return it == values.end() ? fallback : std::atof(it->second.c_str());
  }
  std::vector<long> list(const std::string& key, std::vector<long> fallback) const {
    auto it = values.find(key);
    if (it == values.end()) return fallback;
    std::vector<long> out;
    for (const auto& s : split(it->second)) out.push_back(std::atol(s.c_str()));
    return out;
  }

  static std::vector<std::string> split(const std::string& s, char sep = ',') {
    std::vector<std::string> out;
    std::string cur;
    for (char c : s) {
      if (c == sep) {
        if (!cur.empty()) out.push_back(cur);
        cur.clear();
      } else {
        cur += c;
      }
    }
    if (!cur.empty()) out.push_back(cur);
    return out;
  }
};

/// `value_options`: the extra options that take a value, with their leading dashes ("--sizes").
inline args parse_args(int argc, char** argv, const std::vector<std::string>& value_options = {}) {
  args a;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    auto value = [&](std::string& out) {
      if (i + 1 < argc) {
        out = argv[++i];
      } else {
        a.errors.push_back(s + " needs a value");
      }
    };
    if (s == "--json") {
      value(a.json);
    } else if (s == "--csv") {
      value(a.csv);
    } else if (s == "--quick") {
      a.quick = true;
    } else if (s == "--help" || s == "-h") {
      a.help = true;
    } else if (s == "--only") {
      std::string v;
      value(v);
      for (auto& x : args::split(v)) a.only.push_back(x);
    } else if (std::find(value_options.begin(), value_options.end(), s) != value_options.end()) {
      value(a.values[s]);
    } else {
      a.errors.push_back("unknown argument " + s);
    }
  }
  return a;
}

// ---------------------------------------------------------------------------------------- report

/// One table cell: a number (printed with `precision` decimals; NaN prints "-" and writes null) or
/// a string.
struct value {
  std::string text;
  double number = 0;
  bool numeric = false;
  int precision = 1;

  value() = default;
  value(const char* s) : text(s) {}  // NOLINT: implicit on purpose, for brace lists of cells
  value(std::string s) : text(std::move(s)) {}
  value(double v, int prec = 1) : number(v), numeric(true), precision(prec) {}
  value(int v) : number(v), numeric(true), precision(0) {}
  value(unsigned v) : number(v), numeric(true), precision(0) {}
  value(long v) : number(static_cast<double>(v)), numeric(true), precision(0) {}
  value(long long v) : number(static_cast<double>(v)), numeric(true), precision(0) {}
  value(unsigned long v) : number(static_cast<double>(v)), numeric(true), precision(0) {}
  value(unsigned long long v) : number(static_cast<double>(v)), numeric(true), precision(0) {}
  value(bool b) : text(b ? "true" : "false") {}

  bool missing() const { return numeric && !std::isfinite(number); }
  std::string str() const {
    if (!numeric) return text;
    if (missing()) return "-";
    char b[64];
    std::snprintf(b, sizeof b, "%.*f", precision, number);
    return b;
  }
  std::string json() const {
    if (numeric) return missing() ? "null" : str();
    if (text == "true" || text == "false") return text;
    return quote(text);
  }
  static std::string quote(const std::string& s) {
    std::string o = "\"";
    for (char c : s) {
      switch (c) {
        case '"': o += "\\\""; break;
        case '\\': o += "\\\\"; break;
        case '\n': o += "\\n"; break;
        case '\t': o += "\\t"; break;
        default:
          if (static_cast<unsigned char>(c) < 0x20) {
            char b[8];
            std::snprintf(b, sizeof b, "\\u%04x", c);
            o += b;
          } else {
            o += c;
          }
      }
    }
    return o + "\"";
  }
};

inline constexpr double na() { return std::numeric_limits<double>::quiet_NaN(); }

/// A table: an id (JSON key, CSV first column), a title, column names (which should be
/// identifier-like: they are the JSON keys), and rows of cells.
struct table {
  std::string id, title;
  std::vector<std::string> columns;
  std::vector<std::vector<value>> rows;
  std::vector<std::string> notes;  // printed under the table

  table(std::string i, std::string t, std::vector<std::string> cols)
      : id(std::move(i)), title(std::move(t)), columns(std::move(cols)) {}

  void add(std::vector<value> row) {
    row.resize(columns.size());
    rows.push_back(std::move(row));
  }

  /// Aligned text: first column left-aligned, the others right-aligned.
  void print(std::FILE* out = stdout) const {
    std::vector<std::size_t> w(columns.size());
    for (std::size_t c = 0; c < columns.size(); ++c) {
      w[c] = columns[c].size();
      for (const auto& r : rows) w[c] = std::max(w[c], r[c].str().size());
    }
    std::fprintf(out, "%s\n", title.c_str());
    auto line = [&](auto cell) {
      std::string s = " ";
      for (std::size_t c = 0; c < columns.size(); ++c) {
        const std::string v = cell(c);
        const std::string pad(w[c] - std::min(w[c], v.size()), ' ');
        s += "  " + (c == 0 ? v + pad : pad + v);
      }
      std::fprintf(out, "%s\n", s.c_str());
    };
    line([&](std::size_t c) { return columns[c]; });
    for (const auto& r : rows) line([&](std::size_t c) { return r[c].str(); });
    for (const auto& n : notes) std::fprintf(out, "  %s\n", n.c_str());
    std::fprintf(out, "\n");
    std::fflush(out);
  }
};

/// A target of the benchmark: a measured value against a limit. Printed PASS or MISS, never
/// asserted.
struct target {
  std::string name;
  double measured = na();
  double limit = 0;
  std::string unit;     // "x", "MiB", "us"...
  bool upper = true;    // measured must be <= limit (else >=)
  std::string comment;  // for instance why it was not measured

  bool measured_ok() const { return std::isfinite(measured); }
  bool pass() const { return measured_ok() && (upper ? measured <= limit : measured >= limit); }
  std::string verdict() const { return !measured_ok() ? "n/a" : pass() ? "PASS" : "MISS"; }
};

class report {
 public:
  void meta(const std::string& key, value v) { meta_.emplace_back(key, std::move(v)); }
  table& add(table t) {
    tables_.push_back(std::move(t));
    return tables_.back();
  }
  void add_target(target t) { targets_.push_back(std::move(t)); }
  const std::vector<target>& targets() const { return targets_; }

  void print_targets(std::FILE* out = stdout) const {
    table t("targets", "targets (ratios within this run; printed, never asserted)",
            {"target", "measured", "limit", "verdict", "note"});
    for (const auto& g : targets_)
      t.add({g.name, g.measured_ok() ? value(g.measured, 2).str() + g.unit : std::string("-"), std::string(g.upper ? "<= " : ">= ") + value(g.limit, 2).str() + g.unit,
             g.verdict(), g.comment});
    t.print(out);
  }

  std::string json() const {
    std::string o = "{\n  \"meta\": {";
    for (std::size_t i = 0; i < meta_.size(); ++i)
      o += std::string(i ? ", " : "") + value::quote(meta_[i].first) + ": " + meta_[i].second.json();
    o += "},\n  \"tables\": {";
    for (std::size_t t = 0; t < tables_.size(); ++t) {
      const table& tb = tables_[t];
      o += std::string(t ? "," : "") + "\n    " + value::quote(tb.id) + ": [";
      for (std::size_t r = 0; r < tb.rows.size(); ++r) {
        o += std::string(r ? "," : "") + "\n      {";
        for (std::size_t c = 0; c < tb.columns.size(); ++c)
          o += std::string(c ? ", " : "") + value::quote(tb.columns[c]) + ": " + tb.rows[r][c].json();
        o += "}";
      }
      o += tb.rows.empty() ? "]" : "\n    ]";
    }
    o += "\n  },\n  \"targets\": [";
    for (std::size_t i = 0; i < targets_.size(); ++i) {
      const target& g = targets_[i];
      o += std::string(i ? "," : "") + "\n    {\"name\": " + value::quote(g.name) +
           ", \"measured\": " + value(g.measured, 4).json() + ", \"limit\": " + value(g.limit, 4).json() +
           ", \"unit\": " + value::quote(g.unit) + ", \"upper_bound\": " + (g.upper ? "true" : "false") +
           ", \"verdict\": " + value::quote(g.verdict()) + ", \"note\": " + value::quote(g.comment) + "}";
    }
    o += targets_.empty() ? "]\n}\n" : "\n  ]\n}\n";
    return o;
  }

  /// Long format, one measured cell per line: table,row,column,value (row: the first cell of the row).
  std::string csv() const {
    auto field = [](const std::string& s) {
      if (s.find_first_of(",\"\n") == std::string::npos) return s;
      std::string o = "\"";
      for (char c : s) o += c == '"' ? std::string("\"\"") : std::string(1, c);
      return o + "\"";
    };
    std::string o = "table,row,column,value\n";
    for (const auto& [k, v] : meta_) o += "meta,," + field(k) + "," + field(v.missing() ? "" : v.str()) + "\n";
    for (const auto& tb : tables_)
      for (const auto& r : tb.rows)
        for (std::size_t c = 1; c < tb.columns.size(); ++c)
          o += field(tb.id) + "," + field(r[0].str()) + "," + field(tb.columns[c]) + "," +
               field(r[c].missing() ? "" : r[c].str()) + "\n";
    for (const auto& g : targets_)
      o += "targets," + field(g.name) + ",measured," + (g.measured_ok() ? value(g.measured, 4).str() : "") +
           "\ntargets," + field(g.name) + ",verdict," + g.verdict() + "\n";
    return o;
  }

  /// Writes where asked (empty path: nothing). False if a file could not be written.
  bool write(const std::string& json_path, const std::string& csv_path) const {
    bool ok = true;
    if (!json_path.empty()) ok = static_cast<bool>(std::ofstream(json_path) << json()) && ok;
    if (!csv_path.empty()) ok = static_cast<bool>(std::ofstream(csv_path) << csv()) && ok;
    return ok;
  }

 private:
  std::vector<std::pair<std::string, value>> meta_;
  std::vector<table> tables_;
  std::vector<target> targets_;
};

}  // namespace bench

#endif
