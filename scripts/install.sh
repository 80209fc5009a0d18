#!/usr/bin/env bash
# Install vaebm_fast into the active Python environment (a fresh virtual environment is best).
#
#   bash scripts/install.sh          the package and its native extension
#   bash scripts/install.sh --test   ... plus the test dependencies
#
# Why a script and not a bare `pip install .`: the C++/CUDA extension must be compiled against
# the torch it will run with, so it is built without pip's build isolation (which would fetch a
# different torch into a throwaway environment). And torch itself: an existing torch (say, a
# CUDA build) is kept; where there is none we install the CPU build 2.13.0, not the multi-GB
# CUDA wheel a plain `torch` requirement would pull.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extras=""
case "${1:-}" in
  --test) extras="[test]" ;;
  "") ;;
  *) echo "usage: bash scripts/install.sh [--test]" >&2; exit 2 ;;
esac

if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
  "$PYTHON" -m pip install "torch==2.13.0"
fi
"$PYTHON" -m pip install setuptools wheel ninja
# Editable, so the compiled vaebm_fast/_C*.so sits beside the sources the tests import.
"$PYTHON" -m pip install --no-build-isolation -e ".${extras}"
"$PYTHON" -c "import vaebm_fast._native as n; s = n.status(); print('vaebm_fast native extension:', 'loaded' if s.loaded else 'NOT loaded: ' + str(s.reason))"
