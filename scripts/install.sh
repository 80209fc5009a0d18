#!/usr/bin/env bash
# Install vaebm_fast into the active Python environment (a fresh virtual environment is best).
#
#   bash scripts/install.sh          the package, its native extension and the [cli] and [eval]
#                                    extras (matplotlib, scikit-learn: the demos' plots and the
#                                    digits; torchmetrics: the digits demo's FID)
#   bash scripts/install.sh --test   ... plus the test dependencies
#
# What it adds to a bare `pip install .`: torch itself (an existing torch, say a CUDA build, is
# kept; where there is none we install the CPU build 2.13.0, not the multi-GB CUDA wheel a
# plain `torch` requirement would pull), and the extension compiled now, at install time,
# without pip's build isolation (a plain `pip install .` compiles it on first use instead), as
# an editable install so the compiled vaebm_fast/_C*.so sits beside the sources the tests use.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extras="[cli,eval]"
case "${1:-}" in
  --test) extras="[cli,eval,test]" ;;
  "") ;;
  *) echo "usage: bash scripts/install.sh [--test]" >&2; exit 2 ;;
esac

if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
  "$PYTHON" -m pip install "torch==2.13.0"
fi
"$PYTHON" -m pip install setuptools wheel ninja
"$PYTHON" -m pip install --no-build-isolation -e ".${extras}"
"$PYTHON" -c "import vaebm_fast._native as n; s = n.status(); print('vaebm_fast native extension:', 'loaded' if s.loaded else 'NOT loaded: ' + str(s.reason))"
