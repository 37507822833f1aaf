#!/usr/bin/env bash
# Turn the pool-vs-short benchmark's JSON into a PNG chart: requests/s and p99 latency by client
# count, one line per mode, one row per payload size.
#   scripts/plot.sh results.json chart.png [WHAT]
# WHAT names the transport in the titles (default "loopback"; the TLS benchmark's: "TLS 1.3, loopback").
# Needs gnuplot and python3 (installed with apt-get when missing and possible).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
[ $# -eq 2 ] || [ $# -eq 3 ] || { echo "usage: $0 RESULTS.json CHART.png [WHAT]" >&2; exit 2; }
need_packages gnuplot-nox python3
json=$1
png=$2
what=${3:-loopback}
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT

# One data file per payload: a row per client count, columns req/s and p99 per mode.
python3 - "$json" "$data" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))["results"]
modes = ["short", "short_rst", "pool", "dedicated"]
payloads = sorted({r["payload"] for r in results if r["mode"] in modes})
for p in payloads:
    rows = [r for r in results if r["payload"] == p and r["mode"] in modes]
    clients = []
    for r in rows:
        if r["clients"] not in clients:
            clients.append(r["clients"])
    with open(f"{sys.argv[2]}/{p}.dat", "w") as f:
        f.write("clients " + " ".join(f"{m}_rps {m}_p99" for m in modes) + "\n")
        for c in clients:
            by = {r["mode"]: r for r in rows if r["clients"] == c}
            label = c[:-1] + " coroutines" if c.endswith("c") else c + (" thread" if c == "1" else " threads")
            f.write('"' + label + '" ' + " ".join(f'{by[m]["rps"]} {by[m]["p99_us"]}' for m in modes) + "\n")
with open(f"{sys.argv[2]}/payloads", "w") as f:
    f.write(" ".join(str(p) for p in payloads))
PY

payloads=$(cat "$data/payloads")
rows=$(wc -w <<<"$payloads")
{
  echo "set terminal pngcairo noenhanced size 1400,$((420 * rows)) font 'sans,10'"
  echo "set output '$png'"
  echo "set multiplot layout $rows,2"
  echo "set style data linespoints"
  echo "set key top left"
  echo "set grid ytics"
  echo "set xtics rotate by -20"
  for p in $payloads; do
    f="$data/$p.dat"
    echo "set title 'requests/s, $p B request/response over $what (higher is better)'"
    echo "set ylabel 'requests/s'"
    echo "unset logscale y"
    echo "plot '$f' using 2:xtic(stringcolumn(1)) title 'short' lw 2, '' using 4 title 'short_rst' lw 2, '' using 6 title 'pool' lw 3, '' using 8 title 'dedicated' lw 2 dt 2"
    echo "set title 'p99 latency, $p B (lower is better)'"
    echo "set ylabel 'p99 latency, us (log)'"
    echo "set logscale y"
    echo "plot '$f' using 3:xtic(stringcolumn(1)) title 'short' lw 2, '' using 5 title 'short_rst' lw 2, '' using 7 title 'pool' lw 3, '' using 9 title 'dedicated' lw 2 dt 2"
  done
  echo "unset multiplot"
} | gnuplot
echo "chart: $png"
