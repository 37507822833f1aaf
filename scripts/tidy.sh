#!/usr/bin/env bash
# clang-tidy on connpool's headers with the committed .clang-tidy (warnings are errors): every
# public header on its own, and the tests that instantiate the templates, against standalone Asio
# and against Boost.Asio. Installs clang-tidy if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_packages clang clang-tidy cmake ninja-build libasio-dev libboost-dev doctest-dev libssl-dev
# Findings are reported in connpool's headers only (not in the tests' own code).
filter=$(find include/connpool -name '*.hpp' | sort | sed 's/.*/{"name":"&"}/' | paste -sd, -)
status=0
for asio in standalone boost; do
  build=${TIDY_DIR:-build-tidy}-$asio
  flag=OFF
  [ "$asio" = boost ] && flag=ON
  cmake -S . -B "$build" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
    -DCONNPOOL_USE_BOOST_ASIO=$flag -DCONNPOOL_BUILD_BENCHMARKS=OFF -DCONNPOOL_BUILD_EXAMPLES=OFF >/dev/null
  echo "== clang-tidy, $asio Asio =="
  # The header check's sources are made at configure time; the tests instantiate the templates.
  # (clang-tidy counts the warnings it suppressed in system headers on stderr: not findings.)
  clang-tidy --quiet --config-file=.clang-tidy --line-filter="[$filter]" -p "$build" "$build"/tests/headers/*.cpp \
    tests/pool_test.cpp tests/async_test.cpp tests/books_test.cpp tests/tls/tls_test.cpp 2> >(grep -v ' warnings generated\.$' >&2) ||
    status=1
done
[ $status = 0 ] && echo "clang-tidy: no findings"
exit $status
