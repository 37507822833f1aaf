# Sourced by the other scripts: install what connpool's build needs, if missing (Debian/Ubuntu).
# Usage: need_packages pkg...   (package names are Debian's)
need_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "connpool: missing packages: ${missing[*]}; install them (or their equivalents) and re-run." >&2
    return 1
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "connpool: missing packages: ${missing[*]}; run as root or install them: apt-get install ${missing[*]}" >&2
      return 1
    fi
  fi
  echo "connpool: installing ${missing[*]}" >&2
  $sudo apt-get update -qq >&2 || true
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2 || {
    echo "connpool: could not install: ${missing[*]}" >&2
    return 1
  }
}
