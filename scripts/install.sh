#!/usr/bin/env bash
# Installs everything hcformer needs into a virtualenv (default .venv, override with VENV=...).
#
# Idempotent: each step checks whether its work is already done, so a second run only
# prints "ok" lines. A torch / detectron2 already importable from that Python is kept
# (GPU users: create the venv with your own CUDA torch and official detectron2 first).
#
#   bash scripts/install.sh           install, or print "up to date" and change nothing
#   bash scripts/install.sh --check   change nothing; exit 0 if up to date, 1 if not
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.14.1}"
TORCHVISION_VERSION="${TORCHVISION_VERSION:-0.29.1}"
# the oldest torch hcformer runs on, as pyproject.toml says (tests/test_install.py checks both agree)
MIN_TORCH="2.6"
STAMP="$VENV/.hcformer-installed"

step() { printf '[install %s] %s\n' "$1" "$2"; }

# A stamp keyed on the dependency list makes the no-op case instant. The globs are sorted
# bytewise (LC_COLLATE=C), so the hash does not depend on the user's locale.
deps_hash="$(LC_COLLATE=C; cat "$ROOT/pyproject.toml" "$ROOT"/scripts/install* "$ROOT"/scripts/constraints* | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$deps_hash" ]]; then
  step 0/5 "environment $VENV is up to date"
  exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
  step 0/5 "environment $VENV needs an install (not installed, or the dependency files changed)"
  exit 1
fi

start=$(date +%s)
step 1/5 "virtualenv $VENV"
if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON_BIN" -m venv "$VENV"
fi
PY="$VENV/bin/python"
python_version="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
python_minor="${python_version#3.}"  # hcformer runs on Python 3 only
PIP=("$PY" -m pip install --disable-pip-version-check --progress-bar off)
# A download that breaks in transit (a reset connection, a wheel that fails its index hash, as
# one CI run saw) fails pip; the second try downloads afresh, past pip's cache (PIP_NO_CACHE_DIR
# reaches the pip that a script runs too).
retry_once() {
  "$@" || { step retry "failed; trying once more without pip's cache"; PIP_NO_CACHE_DIR=1 "$@"; }
}
pip_install() { retry_once "${PIP[@]}" "$@"; }

has() { "$PY" -c "import $1" >/dev/null 2>&1; }

# A user's own detectron2 (official v0.6 or main, with compiled ops) is kept as it is;
# otherwise v0.6 is installed from its sdist as pure Python, and that path pins the
# releases v0.6 predates (numpy 1.24, Pillow 10, ...).
CONSTRAINTS=()
if has detectron2 && ! "$PY" -c "from detectron2 import _C; _C.HCFORMER_PLACEHOLDER" >/dev/null 2>&1; then
  OWN_DETECTRON2=1
else
  OWN_DETECTRON2=0
  CONSTRAINTS=(-c "$ROOT/scripts/constraints-detectron2-v0.6.txt")
fi
# pyproject.toml's requires-python, and on the v0.6 path the Pythons with a numpy < 2 wheel;
# said before pip downloads gigabytes and fails on a build from source
if (( python_minor < 11 )); then
  step 1/5 "Python $python_version in $VENV: hcformer needs Python >= 3.11 (tested: 3.11, 3.12)" >&2
  exit 1
fi
if [[ $OWN_DETECTRON2 == 0 ]] && (( python_minor > 12 )); then
  step 1/5 "Python $python_version in $VENV: the pure-Python detectron2 v0.6 that this script installs runs with numpy < 2, which has no release for Python $python_version; use Python 3.11 or 3.12 (a new environment: PYTHON=python3.12 VENV=.venv312 make test), or a VENV that already has your own detectron2 build" >&2
  exit 1
fi

step 2/5 "torch + torchvision"
if has torch && has torchvision; then
  # pip would replace an older torch with the registry's (a CUDA build of several GB, maybe
  # not the user's CUDA): say so instead
  if ! "$PY" -c "import sys, torch; sys.exit(tuple(map(int, torch.__version__.split('.')[:2])) < tuple(map(int, '$MIN_TORCH'.split('.'))))"; then
    step 2/5 "torch $("$PY" -c 'import torch; print(torch.__version__)') in $VENV is older than $MIN_TORCH, the oldest hcformer runs on; install torch >= $MIN_TORCH with its torchvision there (your CUDA build), or choose another VENV" >&2
    exit 1
  fi
  step 2/5 "keeping $("$PY" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)')"
else
  pip_install "${CONSTRAINTS[@]}" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi

step 3/5 "detectron2"
if [[ $OWN_DETECTRON2 == 1 ]]; then
  step 3/5 "keeping detectron2 $("$PY" -c 'import detectron2; print(detectron2.__version__)')"
elif has detectron2; then
  step 3/5 "detectron2 v0.6 (pure Python) already installed"
  "$PY" "$ROOT/scripts/install_detectron2_pure_python.py" --refresh
else
  pip_install "${CONSTRAINTS[@]}" numpy Pillow setuptools wheel
  retry_once "$PY" "$ROOT/scripts/install_detectron2_pure_python.py" "${CONSTRAINTS[@]}"
fi

step 4/5 "hcformer and its dependencies (pyproject.toml)"
# opencv-python-headless and the contrib build both install cv2/: keep only the contrib one
if "$PY" -m pip show -q opencv-python-headless >/dev/null 2>&1 \
    && ! "$PY" -m pip show -q opencv-contrib-python-headless >/dev/null 2>&1; then
  "$PY" -m pip uninstall -y -q opencv-python-headless
fi
pip_install "${CONSTRAINTS[@]}" -e "$ROOT[test]"
# panopticapi-lite's metadata asks for scikit-image and platformdirs, which its code never
# imports, so it is installed without its dependencies.
if ! has panopticapi; then
  pip_install --no-deps "panopticapi-lite==0.2.0"
fi

step 5/5 "check"
"$PY" -c "import torch, torchvision, detectron2, hcformer, panopticapi, pycocotools; print('torch', torch.__version__, '| torchvision', torchvision.__version__, '| detectron2', detectron2.__version__)"
echo "$deps_hash" > "$STAMP"
step done "in $(( $(date +%s) - start )) s; environment: $VENV ($(du -sh "$VENV" | cut -f1))"
