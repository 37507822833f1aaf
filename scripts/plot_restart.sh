#!/usr/bin/env bash
# Turn the backend-restart benchmark's CSV (connpool_restart --csv) into a PNG chart: connect
# attempts and completed exchanges per 50 ms over time, one line per configuration, with the
# backend's kill and restart marked.
#   scripts/plot_restart.sh restart.csv chart.png
# Needs gnuplot (installed with apt-get when missing and possible).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
[ $# -eq 2 ] || { echo "usage: $0 RESTART.csv CHART.png" >&2; exit 2; }
need_packages gnuplot-nox
csv=$1
png=$2
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
configs=$(tail -n +2 "$csv" | cut -d, -f1 | awk '!seen[$0]++')
for c in $configs; do
  awk -F, -v c="$c" 'NR > 1 && $1 == c { print $2, ($3 > 0 ? $3 : 0.5), $4 }' "$csv" >"$data/$c.dat"
done
plots() {  # column, title
  local first=1 c
  for c in $configs; do
    [ $first = 1 ] || printf ', '
    printf "'%s' using 1:%s title '%s' with lines lw 2" "$data/$c.dat" "$1" "$c"
    first=0
  done
}
{
  echo "set terminal pngcairo noenhanced size 1400,900 font 'sans,10'"
  echo "set output '$png'"
  echo "set multiplot layout 2,1"
  echo "set grid"
  echo "set key top right"
  echo "set xlabel 'time, ms (backend killed at 1000, restarted at 3000)'"
  echo "set arrow from 1000, graph 0 to 1000, graph 1 nohead dt 2"
  echo "set arrow from 3000, graph 0 to 3000, graph 1 nohead dt 2"
  echo "set title 'connect attempts per 50 ms, 200 clients (log; 0 drawn at 0.5)'"
  echo "set logscale y"
  echo "set ylabel 'connects'"
  echo "plot $(plots 2)"
  echo "set title 'completed exchanges per 50 ms'"
  echo "unset logscale y"
  echo "set ylabel 'exchanges'"
  echo "plot $(plots 3)"
  echo "unset multiplot"
} | gnuplot
echo "chart: $png"
