#!/usr/bin/env bash
# Build connpool's pool-vs-short benchmark (Release) and run it against a loopback echo server it
# starts itself. Installs missing Debian packages first. Arguments go to the benchmark, e.g.
#   scripts/bench.sh --threads 1,8 --seconds 4 --json results.json
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_packages g++ cmake ninja-build libasio-dev
build=${BUILD_DIR:-build-release}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCONNPOOL_BUILD_TESTS=OFF \
  -DCONNPOOL_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$build" -j 2 --target connpool_bench
if [ $# -eq 0 ]; then set -- --threads 1,2,8 --seconds 2; fi
exec "$build/benchmarks/connpool_bench" "$@"
