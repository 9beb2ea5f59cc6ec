#!/usr/bin/env bash
# Create .venv (if needed) and install geosr with pinned dependencies. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch is pinned to the CPU wheel in requirements/constraints.txt; an unpinned torch would pull CUDA.
.venv/bin/python -m pip install -q --disable-pip-version-check -c requirements/constraints.txt -e ".[model,flows,test]"
# Test-only: ESA OpenSR's LDSR-S2 architecture, to prove geosr loads its checkpoints. Without --no-deps it
# would pull pytorch-lightning, scikit-image and matplotlib that the test does not use.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -c requirements/constraints.txt \
  opensr-model==1.0.8 einops
