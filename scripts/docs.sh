#!/usr/bin/env bash
# Build the API reference from the public headers' comments with Doxygen (docs/Doxyfile).
# Installs doxygen first if it is missing. Fails on any Doxygen warning (an undocumented public
# name, a broken reference): the warnings are printed, and nothing is left to look at but them.
#   scripts/docs.sh                     HTML into build/docs/html
#   DOCS_DIR=... scripts/docs.sh        HTML into $DOCS_DIR/html
#   CONNPOOL_VERSION=... sets the version shown (default: CMakeLists.txt's project VERSION).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_packages doxygen
out=${DOCS_DIR:-build/docs}
CONNPOOL_VERSION=${CONNPOOL_VERSION:-$(sed -n 's/^project(connpool VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)}
export CONNPOOL_VERSION
mkdir -p "$out"
# Settings given after the Doxyfile on standard input override it.
{ cat docs/Doxyfile; printf 'OUTPUT_DIRECTORY = "%s"\n' "$out"; } | doxygen -
echo "API reference: $out/html/index.html"
