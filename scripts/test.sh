#!/usr/bin/env bash
# Build connpool and run every test. Installs missing Debian packages first.
#   scripts/test.sh                 release build with warnings as errors (g++)
#   BUILD_DIR=... BUILD_TYPE=Debug CXX=clang++ CONNPOOL_SANITIZE=address,undefined scripts/test.sh
#   CONNPOOL_ASIO=boost builds against Boost.Asio (libboost-dev) instead of standalone Asio.
#   CMAKE_ARGS="-D..." adds CMake options; arguments go to ctest.
#   CONNPOOL_SOAK_SECONDS=N sets the chaos soak's length (default 30).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_packages g++ cmake ninja-build libasio-dev doctest-dev pkgconf
asio_args="-DCONNPOOL_USE_BOOST_ASIO=OFF"  # always given, so a build directory never keeps the last run's
if [ "${CONNPOOL_ASIO:-standalone}" = boost ]; then
  need_packages libboost-dev
  asio_args="-DCONNPOOL_USE_BOOST_ASIO=ON"
fi
# The fault suite (namespaces with nft rules, a real Redis); the examples (Redis, nginx; curl and
# promtool scrape metrics_server); the consumer test's Boost.Asio half.
want_packages nftables redis-server nginx libboost-dev libssl-dev openssl curl prometheus
build=${BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo} \
  ${CONNPOOL_SANITIZE:+-DCONNPOOL_SANITIZE=$CONNPOOL_SANITIZE} $asio_args ${CMAKE_ARGS:-} >/dev/null
cmake --build "$build" -j 2
ctest --test-dir "$build" --output-on-failure --timeout 900 "$@"
