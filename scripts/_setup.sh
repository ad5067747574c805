# Shared by scripts/serve and scripts/test: find Python >= 3.11, create .venv, install the given extras.
# Usage: source scripts/_setup.sh; setup_venv EXTRAS   (EXTRAS like "cpu,tracing" or "cpu,convert,dev,mlflow,tracing")
# apt-get runs only as root on Debian/Ubuntu, and only for what is missing: setup_venv installs python3-venv and
# python3.N-venv (venv_packages) when `python3 -m venv` fails; scripts/test also installs prometheus and
# redis-server when they are not on PATH. INFERENCE_SERVER_NO_APT=1 skips every apt-get (it says what is missing).
set -euo pipefail

find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "error: Python >= 3.11 is needed (set PYTHON=/path/to/python3.11+)" >&2
  return 1
}

apt_install() {  # only as root on Debian/Ubuntu, unless INFERENCE_SERVER_NO_APT=1; otherwise say what is missing
  if [ "${INFERENCE_SERVER_NO_APT:-0}" = 1 ]; then
    echo "note: not installing (INFERENCE_SERVER_NO_APT=1): $*" >&2
    return 1
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "error: please install: $*" >&2
    return 1
  fi
}

venv_packages() {  # the Debian packages that give PYTHON its venv module: python3-venv and python3.N-venv
  echo "python3-venv" "$("$1" -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}-venv")')"
}

quiet() {  # run a command, showing its output only when it fails
  local log status=0
  log=$(mktemp)
  "$@" >"$log" 2>&1 || status=$?
  [ "$status" = 0 ] || grep -v "is ignored" "$log" >&2 || true
  rm -f "$log"
  return "$status"
}

setup_venv() {
  local extras="$1" python
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  if [ ! -x .venv/bin/python ]; then
    python=$(find_python)
    if ! "$python" -m venv .venv >/dev/null 2>&1; then
      # Debian and Ubuntu ship venv/ensurepip separately.
      rm -rf .venv
      # shellcheck disable=SC2046  # two package names, split on purpose
      apt_install $(venv_packages "$python")
      "$python" -m venv .venv
    fi
  fi
  # Reinstall only when pyproject.toml changed since the last install.
  local stamp=".venv/.installed-$extras"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "installing inference_server[$extras] into .venv ..." >&2
    quiet .venv/bin/python -m pip install -e ".[$extras]"
    touch "$stamp"
  fi
}
