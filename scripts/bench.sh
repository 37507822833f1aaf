#!/usr/bin/env bash
# Build connpool's benchmarks (Release) and run them against loopback servers they start themselves.
# Installs missing Debian packages first. Results (tables as printed, JSON, CSV, charts) go to
# $RESULTS (default build-release/results).
#   scripts/bench.sh                  the headline: pool vs short connections vs dedicated (about 1.5 min),
#                                     then the same over TLS 1.3 (connpool_tls_bench, about 40 s; charted in
#                                     tls_pool_vs_short.png)
#   scripts/bench.sh all              also the pool's own cost, eviction at scale, the idle-watch costs,
#                                     and the cost against unrelated state (waiters, endpoints, churn, idle; about 2 min;
#                                     charted in scale.png; scripts/plot_scale.sh draws it against another run's scale.json),
#                                     and a backend restart under 200 clients with and without the overload options
#                                     (connpool_restart, about 75 s; charted in restart.png), and the stale keep-alive
#                                     race against redis-server, nginx and memcached with learn_idle_timeout off and on
#                                     (connpool_idle_race, about 5 min)
#   scripts/bench.sh -- ARGS...       the headline with its own arguments, e.g. -- --clients 1,8 --seconds 4
#                                     (with all, too: scripts/bench.sh all -- ARGS...)
# The headline runs against the Asio echo server; with all, also against a thread-per-connection
# echo server (--server both: pool, dedicated and probed in 0.2 s slices, and the switches of
# connection between threads; about 30 s more). -- --server threads runs that part alone.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_packages g++ cmake ninja-build libasio-dev
want_packages gnuplot-nox python3  # the charts only
want_packages libssl-dev            # the TLS benchmark only
if [ "${1:-}" = all ]; then want_packages redis-server nginx memcached; fi  # connpool_idle_race's servers
build=${BUILD_DIR:-build-release}
results=${RESULTS:-$build/results}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCONNPOOL_BUILD_TESTS=OFF \
  -DCONNPOOL_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$build" -j 2 --target connpool_bench connpool_pool_cost connpool_eviction connpool_watch_cost \
  connpool_scale connpool_restart connpool_idle_race
tls_bench=""
if cmake --build "$build" --target help | grep -q '^connpool_tls_bench:'; then  # OpenSSL was found
  cmake --build "$build" -j 2 --target connpool_tls_bench
  tls_bench="$build/benchmarks/connpool_tls_bench"
fi
mkdir -p "$results"
mode=headline
if [ "${1:-}" = all ]; then mode=all; shift; fi
if [ "${1:-}" = -- ]; then shift; fi
echo "machine: $(nproc) cores, $(uname -sr), $(${CXX:-c++} --version | head -1)" | tee "$results/machine.txt"
server=()
if [ "$mode" = all ]; then server=(--server both); fi  # arguments after -- come later and win
"$build/benchmarks/connpool_bench" ${server[@]+"${server[@]}"} --json "$results/pool_vs_short.json" \
  --csv "$results/pool_vs_short.csv" "$@" | tee "$results/pool_vs_short.txt"
# The chart is of the Asio server's part; --server threads leaves it empty.
if command -v gnuplot >/dev/null && command -v python3 >/dev/null &&
  python3 -c 'import json, sys; sys.exit(not json.load(open(sys.argv[1]))["results"])' "$results/pool_vs_short.json"; then
  bash scripts/plot.sh "$results/pool_vs_short.json" "$results/pool_vs_short.png"
fi
# The same over TLS (its own arguments: the defaults), unless the headline ran with arguments of its own.
if [ -n "$tls_bench" ] && [ $# -eq 0 ]; then
  echo
  "$tls_bench" --json "$results/tls_pool_vs_short.json" --csv "$results/tls_pool_vs_short.csv" |
    tee "$results/tls_pool_vs_short.txt"
  if command -v gnuplot >/dev/null && command -v python3 >/dev/null; then
    bash scripts/plot.sh "$results/tls_pool_vs_short.json" "$results/tls_pool_vs_short.png" "TLS 1.3, loopback"
  fi
fi
if [ "$mode" = all ]; then
  echo
  "$build/benchmarks/connpool_pool_cost" --json "$results/pool_cost.json" --csv "$results/pool_cost.csv" | tee "$results/pool_cost.txt"
  echo
  "$build/benchmarks/connpool_eviction" --json "$results/eviction.json" --csv "$results/eviction.csv" | tee "$results/eviction.txt"
  echo
  "$build/benchmarks/connpool_watch_cost" | tee "$results/watch_cost.txt"
  echo
  "$build/benchmarks/connpool_scale" --json "$results/scale.json" --csv "$results/scale.csv" | tee "$results/scale.txt"
  if command -v gnuplot >/dev/null && command -v python3 >/dev/null; then
    bash scripts/plot_scale.sh "$results/scale.png" "$results/scale.json"
  fi
  echo
  "$build/benchmarks/connpool_restart" --json "$results/restart.json" --csv "$results/restart.csv" | tee "$results/restart.txt"
  if command -v gnuplot >/dev/null; then
    bash scripts/plot_restart.sh "$results/restart.csv" "$results/restart.png"
  fi
  echo
  "$build/benchmarks/connpool_idle_race" --json "$results/idle_race.json" --csv "$results/idle_race.csv" |
    tee "$results/idle_race.txt"
fi
echo "results in $results"
