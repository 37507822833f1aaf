#!/usr/bin/env bash
# Turn one or two JSON files of the scale benchmark (connpool_scale --json) into a PNG chart, one
# panel per row of issue 10's table: us per acquire+release cycle against waiting async clients and
# against waiting threads, endpoint B's cost against waiters on endpoint A, acquire cost and RSS
# before and after endpoint churn, and a retire pass's lock hold against idle connections.
#   scripts/plot_scale.sh CHART.png SCALE.json [SCALE2.json]
#   scripts/plot_scale.sh --names after,before CHART.png after/scale.json before/scale.json
# With two files, the first is drawn in full lines, the second dashed; their names in the keys come
# from --names (by default "after" and "before"; one file: "this run"). A panel whose table is in
# neither file (connpool_scale --only ...) says so. Compare the shapes and the ratios (each file's
# are within one run); absolute figures move between runs on a shared machine.
# Needs gnuplot and python3 (installed with apt-get when missing and possible).
set -euo pipefail
here=$PWD  # relative paths on the command line are the caller's
cd "$(dirname "$0")/.."
. scripts/deps.sh
usage() {
  echo "usage: $0 [--names NAME1,NAME2] CHART.png SCALE.json [SCALE2.json]" >&2
  exit 2
}
names=
if [ "${1:-}" = --names ]; then
  [ $# -ge 2 ] || usage
  names=$2
  shift 2
fi
[ $# -eq 2 ] || [ $# -eq 3 ] || usage
need_packages gnuplot-nox python3
paths=()
for f in "$@"; do
  case $f in /*) paths+=("$f") ;; *) paths+=("$here/$f") ;; esac
done
set -- "${paths[@]}"
png=$1
shift
for f in "$@"; do [ -r "$f" ] || { echo "$0: cannot read $f" >&2; exit 2; }; done
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT

# Data files (one per table and file) and the gnuplot script, which depends on what the files hold.
python3 - "$data" "$png" "$names" "$@" <<'PY'
import json, math, os, sys

data, png, names, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
runs = [json.load(open(f)) for f in files]
labels = [n.strip() for n in names.split(",")] if names else ["after", "before"] if len(files) == 2 else ["this run"]
if len(labels) != len(files):
    sys.exit(f"plot_scale.sh: --names gives {len(labels)} names for {len(files)} files")

def q(s):  # a gnuplot string; \n breaks a line
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

def num(x):  # a data file field; ? is missing
    return "?" if x is None or (isinstance(x, float) and math.isnan(x)) else repr(x)

def table(run, name):
    return run.get("tables", {}).get(name) or []

def target(run, prefix, what=""):  # ": 1.17x (target <= 1.5x) PASS" for a key entry, from the run's targets
    for t in run.get("targets", []):
        if t["name"].startswith(prefix) and t.get("measured") is None:
            return f": not measured ({t['note']})" if t.get("note") else ""
        if t["name"].startswith(prefix):
            unit = t["unit"].strip()
            unit = unit if unit == "x" else " " + unit
            shown = lambda v: f"{v:.2f}".rstrip("0").rstrip(".") if abs(v) < 100 else f"{v:.0f}"
            bound = "<=" if t.get("upper_bound", True) else ">="
            return f": {what}{shown(t['measured'])}{unit} (target {bound} {shown(t['limit'])}{unit}) {t['verdict']}"
    return ""

def write(path, rows):
    with open(os.path.join(data, path), "w") as f:
        for r in rows:
            f.write(" ".join(r) + "\n")
    return os.path.join(data, path)

# Line styles: file 1 full and blue, file 2 dashed and orange; the controls thin and grey.
colors = ["#1f5fbf", "#e07000"]
def style(i, lw=3):
    return f"lw {lw if i == 0 else lw - 1} lc rgb '{colors[i]}' dt {1 if i == 0 else 2} pt {7 if i == 0 else 5} ps 1.1"

g = []
meta = []
for lab, run in zip(labels, runs):
    m = run.get("meta", {})
    meta.append(f"{lab}: {m.get('cores', '?')} cores, {'quick' if m.get('quick') else 'full'} run, "
                f"{m.get('seconds', '?')} s, endpoint_grace {'yes' if m.get('has_endpoint_grace') else 'no'}")
heading = "\n".join(["connpool scale benchmark: the cost of one call against unrelated state (issue 10); "
                     "lower is better everywhere"] + meta)
g += [f"set terminal pngcairo noenhanced size 1500,1500 font 'sans,10'",
      f"set output {q(png)}",
      "set datafile missing '?'",
      "set grid xtics ytics mxtics mytics lc rgb '#dddddd'",
      "set key top left box opaque samplen 3",
      f"set multiplot layout 3,2 title {q(heading)} font 'sans,12'"]

def empty_panel(title, why):
    return ["unset logscale", "unset xtics", "unset ytics", "unset border", "unset grid", "unset key",
            "set xlabel ''", "set ylabel ''",
            f"set title {q(title)}", f"set label 1 {q(why)} at graph 0.5, graph 0.5 center",
            "plot [0:1] [0:1] NaN notitle", "unset label 1", "set border", "set xtics", "set ytics",
            "set grid xtics ytics mxtics mytics", "set key"]

def log_axes(xlabel, ylabel):
    return ["unset xtics", "set xtics nomirror", "set logscale xy", "set format x '%g'", "set format y '%g'",
            f"set xlabel {q(xlabel)}", f"set ylabel {q(ylabel)}", "set style data linespoints"]

def headroom(files, cols, keys, extra=()):
    """A log y range over the given columns of the data files (and the `extra` values), with room
    above the data for `keys` lines of key, so that the key hides no point."""
    vals = list(extra)
    for f in files:
        for line in open(f):
            fields = line.split()
            for c in cols:
                if c <= len(fields) and fields[c - 1] != "?":
                    try:
                        v = float(fields[c - 1])
                    except ValueError:
                        continue
                    if v > 0:
                        vals.append(v)
    if not vals:
        return "set yrange [*:*]"
    lo, hi = math.log10(min(vals) / 1.5), math.log10(max(vals) * 1.5)
    if hi - lo < 0.7:  # a narrow range: widen it around the data, so that there are tics to read
        mid = (hi + lo) / 2
        lo, hi = mid - 0.35, mid + 0.35
    top = lo + (hi - lo) / max(0.3, 1 - 0.075 * keys - 0.05)
    return f"set yrange [{10 ** lo:.3g}:{10 ** top:.3g}]; " + log_tics(10 ** lo, 10 ** top)

def log_tics(lo, hi):
    """Labelled y tics at 1, 2 and 5 times the powers of ten within [lo, hi], or at the powers of
    ten alone where those would be too many: a log axis narrower than a decade still has labels."""
    for steps in ((1, 2, 5), (1, 3), (1,)):
        tics = [m * 10 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
                for m in steps if lo <= m * 10 ** e <= hi]
        if len(tics) <= 9:
            break
    def label(t):  # 20000 -> 20k, 1000000 -> 1M
        return f"{t / 1e6:g}M" if t >= 1e6 else f"{t / 1e3:g}k" if t >= 1e4 else f"{t:g}"
    return "set ytics (" + ", ".join(f'"{label(t)}" {t:g}' for t in tics) + ")"

class lines:
    """A panel of lines on a log y axis: series added from data rows, drawn with room for the key."""
    def __init__(self):
        self.plots, self.files = [], []

    def add(self, name, rows, how):  # how: the plot clause after the file name; returns the file, if any
        if not rows:
            return None
        f = write(name, rows)
        self.files.append(f)
        self.plots.append(f"{q(f)} {how}")
        return f

    def draw(self, title, setup, cols, extra=(), also=()):
        # cols: the data columns of the y values; extra: y values to include; also: more plot clauses
        if not self.plots:
            return empty_panel(title, "not in these files")
        plots = self.plots + list(also)
        return ([f"set title {q(title)}"] + setup +
                [headroom(self.files, cols, len(plots), extra), "plot " + ", ".join(plots),
                 "set xrange [*:*]", "set yrange [*:*]", "set ytics autofreq"])

# 1. waiters_async: us per cycle (median, min-max over rounds) against N.
p = lines()
for i, (lab, run) in enumerate(zip(labels, runs)):
    p.add(f"async{i}.dat", [[num(r["clients"]), num(r["us_per_cycle"]), num(r["min_us"]), num(r["max_us"])]
                            for r in table(run, "waiters_async")],
          f"using 1:2:3:4 with yerrorlines {style(i)} title {q(lab + target(run, 'waiters_async:'))}")
g += p.draw("waiters_async: us per acquire+release, 4 connections, N async clients on one thread "
            "(bars: min-max of rounds)",
            log_axes("async clients (all but 4 waiting; log)", "us per cycle (median of rounds; log)"), [2, 3, 4])

# 2. waiters_threads: us per cycle against N threads; the O(1) FIFO control of the first file that has it.
p, control = lines(), []
for i, (lab, run) in enumerate(zip(labels, runs)):
    f = p.add(f"threads{i}.dat", [[num(r["threads"]), num(r["us_per_cycle"]), num(r.get("control_us"))]
                                  for r in table(run, "waiters_threads")],
              f"using 1:2 {style(i)} title {q(lab + target(run, 'waiters_threads:'))}")
    if f and not control:
        control = [f"{q(f)} using 1:3 lw 1.5 lc rgb '#888888' dt 3 pt 1 "
                   f"title {q('O(1) FIFO hand-off, the platform floor (' + lab + ')')}"]
g += p.draw("waiters_threads: us per acquire+release, 4 connections, N threads (sync acquire)",
            log_axes("threads (all but 4 waiting; log)", "us per cycle (median; log)"), [2, 3], also=control)

# 3. other_endpoint: B's ns per pair against W waiters on A. W = 0 has no place on a log axis: the
# x axis is the list of W values, evenly spaced.
ws = sorted({r["waiters_on_a"] for run in runs for r in table(run, "other_endpoint")})
p = lines()
for i, (lab, run) in enumerate(zip(labels, runs)):
    p.add(f"other{i}.dat", [[num(ws.index(r["waiters_on_a"])), f'"{r["waiters_on_a"]:,}"', num(r["b_ns"])]
                            for r in table(run, "other_endpoint")],
          f"using 1:3:xtic(2) {style(i)} title {q(lab + target(run, 'other_endpoint:'))}")
g += p.draw("other_endpoint: ns per acquire+release of endpoint B (idle connection) against W waiters on endpoint A",
            ["unset logscale", "set logscale y", "set format y '%g'", f"set xrange [-0.3:{len(ws) - 0.7}]",
             "set xtics nomirror", "set xlabel 'async acquires parked on endpoint A (at its limit)'",
             "set ylabel 'ns per pair on B (median of rounds; log)'", "set style data linespoints"], [3])

# 4 and 5. churn: acquire cost and RSS by phase, a group of bars per phase, a bar per file, the value above it.
def bars(title, ylabel, phases, logy, fmt, prefix):
    # phases: (label, function of the churn table's rows -> value or None)
    cols = []
    for i, (lab, run) in enumerate(zip(labels, runs)):
        rows = {r["phase"]: r for r in table(run, "churn")}
        cols.append([get(rows) for _, get in phases] if rows else None)
    have = [i for i, c in enumerate(cols) if c is not None]
    if not have:
        return empty_panel(title, "not in these files")
    rows = []
    for p, (plabel, _) in enumerate(phases):
        rows.append([f'"{plabel}"'] + [num(cols[i][p]) for i in have])
    f = write(f"{prefix}.dat", rows)
    n, width = len(have), 0.8 / len(have)
    vals = [v for i in have for v in cols[i] if v is not None]
    top = max(vals) if vals else 1
    tics = ", ".join(f"{q(plabel)} {p}" for p, (plabel, _) in enumerate(phases))
    out = [f"set title {q(title)}", "unset logscale", f"set xtics nomirror ({tics})", "set xlabel ''",
           f"set ylabel {q(ylabel)}", "set style fill solid 0.85 border -1", "set boxwidth %g" % width,
           f"set xrange [-0.6:{len(phases) - 0.4}]", "set format y '%g'"]
    if logy:
        low = min(vals) if vals else 1
        out += ["set logscale y", f"set yrange [{low / 3:g}:{top * 8:g}]", log_tics(low / 3, top * 8)]
    else:
        out += [f"set yrange [0:{top * 1.25:g}]"]
    plots = []
    for k, i in enumerate(have):
        dx = (k - (n - 1) / 2) * width
        lab = labels[i] + target(runs[i], prefix_target[prefix])
        plots.append(f"{q(f)} using ($0+{dx:g}):{k + 2} with boxes lc rgb '{colors[i]}' title {q(lab)}")
        plots.append(f"{q(f)} using ($0+{dx:g}):{k + 2}:(sprintf({q(fmt)}, ${k + 2})) with labels offset 0,0.8 "
                     f"font 'sans,9' notitle")
    return out + ["plot " + ", ".join(plots), "set xrange [*:*]", "set yrange [*:*]", "set style fill empty",
                  "set xtics autofreq", "set ytics autofreq"]

prefix_target = {"churn_acquire": "churn: acquire", "churn_rss": "churn: RSS"}
g += bars("churn: us per acquire+release at max_total = 1 (evicts and connects), before and after endpoint churn",
          "us per acquire (median; log)",
          [("before churn", lambda r: r.get("before", {}).get("acquire_us")),
           ("after churn", lambda r: r.get("after", {}).get("acquire_us"))], True, "%.1f", "churn_acquire")
g += bars("churn: RSS before, right after the churn, after the grace period, after malloc_trim",
          "RSS, MiB",
          [("before", lambda r: r.get("before", {}).get("rss_mib")),
           ("right after", lambda r: r.get("churned", {}).get("rss_mib")),
           ("after", lambda r: r.get("after", {}).get("rss_mib")),
           ("after malloc_trim", lambda r: r.get("after", {}).get("rss_trimmed_mib"))], False, "%.1f", "churn_rss")

# 6. retire pass: the lock hold against idle connections. Indirect (every build): how long a thread
# calling stats() waits across a pass; its floor is a futex wake-up. Direct (builds with the books):
# the pass itself, timed inside.
p = lines()
for i, (lab, run) in enumerate(zip(labels, runs)):
    p.add(f"retire{i}.dat", [[num(r["idle_k"]), num(r["observer_median_us"])]
                             for r in table(run, "retire_pass") if r["idle_k"] > 0],
          f"using 1:2 {style(i)} "
          f"title {q(lab + ', indirect' + target(run, 'retire_pass: lock hold, indirect', 'excess over K=0 '))}")
    p.add(f"books{i}.dat", [[num(r["idle_k"]), num(r["median_us"])] for r in table(run, "retire_books") if r["idle_k"] > 0],
          f"using 1:2 lw 2 lc rgb '{colors[i]}' dt {1 if i == 0 else 2} pt 6 ps 1.3 "
          f"title {q(lab + ', direct (the pass alone)' + target(run, 'retire_pass: lock hold, direct'))}")
g += p.draw("retire pass: lock hold against K idle connections (indirect: a stats() call waiting across a pass)",
            log_axes("idle connections K (log)", "us (median of passes; log)"), [2], extra=[50],
            also=["50 with lines lw 1 lc rgb '#aa0000' dt 4 title 'target: 50 us'"])

g += ["unset multiplot"]
with open(os.path.join(data, "chart.gp"), "w") as f:
    f.write("\n".join(g) + "\n")
PY

gnuplot "$data/chart.gp"
echo "chart: $png"
