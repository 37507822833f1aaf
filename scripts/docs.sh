#!/usr/bin/env bash
# Build the API reference from the public headers' comments with Doxygen (docs/Doxyfile).
# Installs doxygen first if it is missing. Exits non-zero on any Doxygen warning (an undocumented
# public name, a broken reference); the warnings are printed, and the pages are still written.
#   scripts/docs.sh                     HTML into build/docs/html (git-ignored)
#   DOCS_DIR=... scripts/docs.sh        HTML into $DOCS_DIR/html
#   CONNPOOL_VERSION=... sets the version shown (default: include/connpool/version.hpp's).
set -euo pipefail
out=${DOCS_DIR:+$(realpath -m -- "$DOCS_DIR")}  # relative to where it is run from
cd "$(dirname "$0")/.."
out=${out:-build/docs}
. scripts/deps.sh
need_packages doxygen
CONNPOOL_VERSION=${CONNPOOL_VERSION:-$(sed -n 's/^#define CONNPOOL_VERSION_STRING "\(.*\)"/\1/p' include/connpool/version.hpp)}
export CONNPOOL_VERSION
mkdir -p "$out"
# Settings given after the Doxyfile on standard input override it.
{ cat docs/Doxyfile; printf 'OUTPUT_DIRECTORY = "%s"\n' "$out"; } | doxygen -
echo "API reference: $(realpath -- "$out/html/index.html")"
