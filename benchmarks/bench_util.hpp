// Small helpers shared by the benchmarks: order statistics, the process's CPU time, context
// switches, resident memory and descriptor limit, a tiny argument parser, JSON and CSV text (objects,
// arrays, lines, files), and a report (tables printed as text, and written as JSON and CSV).
// Header-only, no dependency beyond the standard library and POSIX; C++14 is enough (watch_cost.cpp,
// which does not link connpool, builds with the compiler's default standard).
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
#include <type_traits>
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

/// Which of n sorted samples s[0] .. s[n-1] stands for the p-th quantile.
enum class rank {
  nearest,  ///< s[ceil(p n) - 1]: the smallest with at least p of the samples at or below it
  above,    ///< s[floor(p n)]: the smallest with more than p of them at or below it; for p = 0.5 and
            ///< an even n, the upper of the two middle samples (pool_vs_short's and eviction's rule)
};

/// The p-th quantile (p in [0, 1]) of the samples (NaNs dropped) by `r`, as a double; 0 for an empty
/// sample. Any arithmetic element type: latencies can stay 32-bit integers until here.
template <class T>
double percentile(std::vector<T> v, double p, rank r = rank::nearest) {
  static_assert(std::is_arithmetic<T>::value, "samples are numbers");
  auto nan = [](T x) { return std::isnan(static_cast<double>(x)); };
  v.erase(std::remove_if(v.begin(), v.end(), nan), v.end());
  if (v.empty()) return 0;
  const double x = p * static_cast<double>(v.size());
  std::size_t i = 0;
  if (r == rank::nearest) {
    const double c = std::ceil(x);
    i = c < 1 ? 0 : static_cast<std::size_t>(c) - 1;
  } else {
    i = x < 0 ? 0 : static_cast<std::size_t>(x);
  }
  i = std::min(v.size() - 1, i);
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(i), v.end());
  return static_cast<double>(v[i]);
}

inline double max_of(std::vector<double> v) {
  v = finite(std::move(v));
  return v.empty() ? 0 : *std::max_element(v.begin(), v.end());
}
inline double min_of(std::vector<double> v) {
  v = finite(std::move(v));
  return v.empty() ? 0 : *std::min_element(v.begin(), v.end());
}

/// A duration as a double: seconds, microseconds, nanoseconds.
inline double seconds(clock_type::duration d) { return std::chrono::duration<double>(d).count(); }
inline double us(clock_type::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }
inline double ns(clock_type::duration d) { return std::chrono::duration<double, std::nano>(d).count(); }

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

/// The soft limit on open descriptors (RLIMIT_NOFILE).
inline unsigned long long descriptor_limit() {
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  return static_cast<unsigned long long>(rl.rlim_cur);
}

/// Raises the soft limit on open descriptors to the hard limit; returns the soft limit now in force.
inline unsigned long long raise_descriptor_limit() {
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &rl);
  return descriptor_limit();
}

// ------------------------------------------------------------------------------------- arguments

/// --json FILE, --csv FILE and --help (or -h), always; besides, the `--name value` options and the
/// switches (`--quick`) a benchmark declares. Anything else is an error (listed in `errors`, to
/// which a benchmark adds its own checks before calling stop_code()). An option given twice: the
/// last one counts.
struct args {
  std::string json, csv;
  bool help = false;
  std::map<std::string, std::string> values;  // the declared options given, with their values
  std::vector<std::string> switches;          // the declared switches given
  std::vector<std::string> errors;

  bool has(const std::string& key) const {
    return values.count(key) != 0 || std::find(switches.begin(), switches.end(), key) != switches.end();
  }
  std::string get(const std::string& key, const std::string& fallback) const {
    auto it = values.find(key);
    return it == values.end() ? fallback : it->second;
  }
  double number(const std::string& key, double fallback) const {
    auto it = values.find(key);
    return it == values.end() ? fallback : std::atof(it->second.c_str());
  }
  /// A comma-separated list, empty entries dropped.
  std::vector<std::string> strings(const std::string& key, std::vector<std::string> fallback = {}) const {
    auto it = values.find(key);
    return it == values.end() ? fallback : split(it->second);
  }
  std::vector<long> list(const std::string& key, std::vector<long> fallback) const {
    auto it = values.find(key);
    if (it == values.end()) return fallback;
    std::vector<long> out;
    for (const auto& s : split(it->second)) out.push_back(std::atol(s.c_str()));
    return out;
  }
  /// Whether --only (where declared) names `name`, or is absent.
  bool selected(const std::string& name) const {
    const auto only = strings("--only");
    return only.empty() || std::find(only.begin(), only.end(), name) != only.end();
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

/// `value_options`: the options that take a value, with their leading dashes ("--sizes");
/// `switches`: those that take none ("--quick").
inline args parse_args(int argc, char** argv, const std::vector<std::string>& value_options = {},
                       const std::vector<std::string>& switches = {}) {
  args a;
  auto declared = [](const std::vector<std::string>& names, const std::string& s) {
    return std::find(names.begin(), names.end(), s) != names.end();
  };
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    auto value = [&](std::string& out) {  // false, and `out` as it was, where none follows
      if (i + 1 < argc) {
        out = argv[++i];
        return true;
      }
      a.errors.push_back(s + " needs a value");
      return false;
    };
    if (s == "--json") {
      value(a.json);
    } else if (s == "--csv") {
      value(a.csv);
    } else if (s == "--help" || s == "-h") {
      a.help = true;
    } else if (declared(value_options, s)) {
      std::string v;
      if (value(v)) a.values[s] = v;
    } else if (declared(switches, s)) {
      if (!a.has(s)) a.switches.push_back(s);
    } else {
      a.errors.push_back("unknown argument " + s);
    }
  }
  return a;
}

/// For main(), after parse_args() and the benchmark's own checks: -1 to go on; else, after printing
/// the errors (stderr) and the usage (`print_usage()`, stdout), the exit code: 0 after --help alone,
/// 2 after an error.
template <class PrintUsage>
int stop_code(const args& a, PrintUsage print_usage) {
  if (a.errors.empty() && !a.help) return -1;
  for (const auto& e : a.errors) std::fprintf(stderr, "%s\n", e.c_str());
  print_usage();
  return a.errors.empty() ? 0 : 2;
}

// --------------------------------------------------------------------------- JSON and CSV text

/// One cell, field or item: a number (printed with `precision` decimals; NaN prints "-" and writes
/// null in JSON, nothing in CSV), a string or a boolean.
struct value {
  std::string text;
  double number = 0;
  bool numeric = false, boolean = false;
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
  value(bool b) : text(b ? "true" : "false"), boolean(true) {}

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
    return boolean ? text : quote(text);
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

/// A JSON object, its fields in the order added, written on one line or one field a line.
class json_object {
 public:
  json_object& add(std::string key, const value& v) { return raw(std::move(key), v.json()); }
  /// A field whose value is JSON text already (an array, an object).
  json_object& raw(std::string key, std::string json) {
    fields_.emplace_back(std::move(key), std::move(json));
    return *this;
  }
  bool empty() const { return fields_.empty(); }

  /// {"a": 1, "b": "x"}
  std::string line() const { return join("{", ", ", "}"); }
  /// One field a line at `indent`, the closing brace two spaces less: for the top level, "  ".
  std::string lines(const std::string& indent = "  ") const {
    return empty() ? "{}" : join("{\n" + indent, ",\n" + indent, "\n" + outdent(indent) + "}");
  }

  static std::string outdent(const std::string& indent) {
    return indent.substr(0, indent.size() < 2 ? 0 : indent.size() - 2);
  }

 private:
  std::string join(const std::string& open, const std::string& sep, const std::string& close) const {
    std::string o = open;
    for (std::size_t i = 0; i < fields_.size(); ++i)
      o += (i ? sep : std::string()) + value::quote(fields_[i].first) + ": " + fields_[i].second;
    return o + close;
  }
  std::vector<std::pair<std::string, std::string>> fields_;  // key, JSON text of the value
};

/// [1, 2, 3]
inline std::string json_array(const std::vector<value>& items) {
  std::string o = "[";
  for (std::size_t i = 0; i < items.size(); ++i) o += (i ? ", " : "") + items[i].json();
  return o + "]";
}

/// One item (JSON text already, such as json_object::line()) a line at `indent`, the closing bracket
/// two spaces less; [] when empty.
inline std::string json_array_lines(const std::vector<std::string>& items, const std::string& indent) {
  if (items.empty()) return "[]";
  std::string o = "[";
  for (std::size_t i = 0; i < items.size(); ++i) o += (i ? ",\n" : "\n") + indent + items[i];
  return o + "\n" + json_object::outdent(indent) + "]";
}

/// A CSV field, quoted where it holds a comma, a quote or a line break.
inline std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string o = "\"";
  for (char c : s) o += c == '"' ? std::string("\"\"") : std::string(1, c);
  return o + "\"";
}

/// One CSV line, its end included: numbers with their precision, a missing number empty.
inline std::string csv_line(const std::vector<value>& cells) {
  std::string o;
  for (std::size_t i = 0; i < cells.size(); ++i)
    o += (i ? "," : "") + csv_field(cells[i].missing() ? std::string() : cells[i].str());
  return o + "\n";
}

/// Writes `text` to the file `path` (an empty path: nothing). False, saying so on stderr, if it
/// could not.
inline bool write_file(const std::string& path, const std::string& text) {
  if (path.empty()) return true;
  std::ofstream f(path);
  f << text;
  f.close();
  if (!f) std::fprintf(stderr, "could not write %s\n", path.c_str());
  return static_cast<bool>(f);
}

/// For main(), at the end: the JSON and CSV text to the files --json and --csv named (where they
/// did). False if one could not be written.
inline bool write_outputs(const args& a, const std::string& json, const std::string& csv) {
  const bool json_ok = write_file(a.json, json), csv_ok = write_file(a.csv, csv);
  return json_ok && csv_ok;
}

// ---------------------------------------------------------------------------------------- report

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

  /// {"meta": {...}, "tables": {id: [row, ...], ...}, "targets": [...]}, a row an object keyed by
  /// its table's columns.
  std::string json() const {
    json_object meta, tables;
    for (const auto& m : meta_) meta.add(m.first, m.second);
    for (const table& tb : tables_) {
      std::vector<std::string> rows;
      for (const auto& r : tb.rows) {
        json_object o;
        for (std::size_t c = 0; c < tb.columns.size(); ++c) o.add(tb.columns[c], r[c]);
        rows.push_back(o.line());
      }
      tables.raw(tb.id, json_array_lines(rows, "      "));
    }
    std::vector<std::string> targets;
    for (const target& g : targets_)
      targets.push_back(json_object()
                            .add("name", g.name)
                            .add("measured", value(g.measured, 4))
                            .add("limit", value(g.limit, 4))
                            .add("unit", g.unit)
                            .add("upper_bound", g.upper)
                            .add("verdict", g.verdict())
                            .add("note", g.comment)
                            .line());
    return json_object()
               .raw("meta", meta.line())
               .raw("tables", tables.lines("    "))
               .raw("targets", json_array_lines(targets, "    "))
               .lines() +
           "\n";
  }

  /// Long format, one measured cell per line: table,row,column,value (row: the first cell of the row).
  std::string csv() const {
    std::string o = "table,row,column,value\n";
    for (const auto& m : meta_) o += csv_line({"meta", "", m.first, m.second});
    for (const auto& tb : tables_)
      for (const auto& r : tb.rows)
        for (std::size_t c = 1; c < tb.columns.size(); ++c)
          o += csv_line({tb.id, r[0].str(), tb.columns[c], r[c]});
    for (const auto& g : targets_)
      o += csv_line({"targets", g.name, "measured", value(g.measured, 4)}) +
           csv_line({"targets", g.name, "verdict", g.verdict()});
    return o;
  }

 private:
  std::vector<std::pair<std::string, value>> meta_;
  std::vector<table> tables_;
  std::vector<target> targets_;
};

}  // namespace bench

#endif
