#!/usr/bin/env bash
# Installs what the opt-in browser tests need (`make test-browser`, tests marked "browser"):
#
# - Chromium from the Debian packages (apt-get; needs root, as in CI's containers), run headless;
# - websocket-client from PyPI into the project's virtualenv: the tests drive Chromium through
#   its DevTools protocol, which is JSON over one websocket, so no WebDriver is needed.
#
# Idempotent: a step whose work is done prints "ok" and changes nothing. The regular suite
# (`make test`) never calls this script and skips the browser tests when Chromium is absent.
# (Not named install*: scripts/install.sh hashes scripts/install* to decide when to reinstall.)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
step() { printf '[setup-browser %s] %s\n' "$1" "$2"; }
start=$(date +%s)

step 1/2 "chromium (Debian package)"
if command -v chromium >/dev/null 2>&1; then
  step 1/2 "ok: $(chromium --version 2>/dev/null)"
else
  if [[ $(id -u) -ne 0 ]]; then
    SUDO=(sudo)  # a developer's machine; CI's containers run as root
  else
    SUDO=()
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq
  # only what Chromium depends on: no recommended extras (fonts, desktop integration)
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium >/dev/null
  step 1/2 "installed $(chromium --version 2>/dev/null)"
fi

step 2/2 "websocket-client (PyPI) in $VENV"
if [[ ! -x "$PY" ]]; then
  echo "no virtualenv at $VENV: run 'make install' first" >&2
  exit 1
fi
if "$PY" -c "import websocket" >/dev/null 2>&1; then
  step 2/2 "ok: websocket-client $("$PY" -c 'import importlib.metadata as m; print(m.version("websocket-client"))')"
else
  "$PY" -m pip install --disable-pip-version-check --progress-bar off -q "websocket-client>=1.6"
  step 2/2 "installed websocket-client"
fi
step done "in $(( $(date +%s) - start )) s"
