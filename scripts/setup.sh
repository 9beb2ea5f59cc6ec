#!/usr/bin/env bash
# Create .venv (if needed) and install geosr with pinned dependencies (requirements/constraints.txt). Idempotent.
#
#   bash scripts/setup.sh          # everything the tests need (extras model, flows, test, opensr)
#   bash scripts/setup.sh sample   # only what the sample run needs (extras model, flows)
#
# GEOSR_TORCH_INDEX_URL: the package index torch is installed from, e.g. the CPU-only build on Linux:
#   GEOSR_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup.sh
# Unset, torch comes from your default index (PyPI: the CUDA build on Linux, the CPU build on macOS and Windows).
# The pin torch==2.13.0 matches both, since PEP 440 ignores the local label in 2.13.0+cpu.
# Everything installs from the public index (scripts/check-public-install.sh proves that the pins resolve there).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
profile=${1:-test}
case "$profile" in
  test|sample) ;;
  *) echo "usage: bash scripts/setup.sh [test|sample]" >&2; exit 2 ;;
esac
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check -c requirements/constraints.txt)
if [ -n "${GEOSR_TORCH_INDEX_URL:-}" ]; then
  "${PIP[@]}" --index-url "$GEOSR_TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple torch
fi
if [ "$profile" = test ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -c requirements/constraints.txt -e ".[model,flows,test,opensr]"
  # opensr-model: ESA OpenSR's LDSR-S2 architecture, to prove geosr loads its checkpoints and samples like it.
  # opensr-test and satalign: the metrics of geosr/metrics_opensr.py. All three declare heavy requirements
  # (opensr-model: the pytorch-lightning training stack; opensr-test: LPIPS and CLIP networks, torchvision,
  # kornia; satalign: OpenCV's GUI build) that the code geosr uses never imports, so they come without them;
  # what they do import is in the test and opensr extras.
  "${PIP[@]}" --no-deps opensr-model==1.0.8 opensr-test==1.3.3 satalign==0.1.12
else
  .venv/bin/python -m pip install -q --disable-pip-version-check -c requirements/constraints.txt -e ".[model,flows]"
fi
