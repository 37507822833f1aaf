# Sourced by the other scripts: install what connpool's build needs, if missing (Debian/Ubuntu).
#   need_packages pkg...   required: install them, or fail saying what is missing
#   want_packages pkg...   optional (tests that need them skip with the reason): install them if we can
# Package names are Debian's.
_missing_packages() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || echo "$p"
  done
}

_install_packages() {
  local sudo=""
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "connpool: no apt-get here; install these (or their equivalents): $*" >&2
    return 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      echo "connpool: not root and no password-less sudo; install them with: sudo apt-get install $*" >&2
      return 1
    fi
  fi
  echo "connpool: installing $*" >&2
  $sudo apt-get update -qq >&2 || true
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >&2
}

need_packages() {
  local missing
  missing=$(_missing_packages "$@")
  [ -z "$missing" ] && return 0
  # shellcheck disable=SC2086
  _install_packages $missing || {
    echo "connpool: missing required packages: $missing" >&2
    return 1
  }
}

want_packages() {
  local missing
  missing=$(_missing_packages "$@")
  [ -z "$missing" ] && return 0
  # shellcheck disable=SC2086
  _install_packages $missing ||
    echo "connpool: optional packages not installed: $missing (the tests that need them will say SKIPPED)" >&2
  return 0
}
