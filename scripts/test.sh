#!/usr/bin/env bash
# Build connpool and run every test. Installs missing Debian packages first.
#   scripts/test.sh                 release build with warnings as errors (g++)
#   BUILD_DIR=... BUILD_TYPE=Debug CXX=clang++ CONNPOOL_SANITIZE=address,undefined scripts/test.sh
#   CMAKE_ARGS="-D..." adds CMake options; arguments go to ctest.
#   CONNPOOL_SOAK_SECONDS=N sets the chaos soak's length (default 30).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_packages g++ cmake ninja-build libasio-dev doctest-dev
want_packages nftables redis-server  # the fault suite: namespaces with nft rules; a real Redis
build=${BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo} \
  ${CONNPOOL_SANITIZE:+-DCONNPOOL_SANITIZE=$CONNPOOL_SANITIZE} ${CMAKE_ARGS:-} >/dev/null
cmake --build "$build" -j 2
ctest --test-dir "$build" --output-on-failure --timeout 900 "$@"
