#!/usr/bin/env bash
# One prepared GPU session (for a lent H100/H200, ~15 min budget): install, check, measure, train briefly.
#   bash bench/gpu_session.sh [OUT_DIR]
# 1. venv with geosr and a CUDA torch (the device image's torch if it has one; else pip's default CUDA wheel),
# 2. bench/gpu_check.py: the bundled model on CUDA vs CPU, LR consistency, same values twice, batch-size independence,
# 3. bench/gpu.py on the shipped model and the production architecture, LDSR-S2's architecture as baseline,
#    printing tiles/s and seconds per 10980^2 x4 Sentinel-2 tile (compare ../shared/reference/ldsr_s2_h200.md),
# 4. a time-limited CUDA training run of the shipped model config (resumable; copy OUT_DIR/train back).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-out/gpu}}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
[ -x .venv-gpu/bin/python ] || "$PY" -m venv --system-site-packages .venv-gpu
if ! .venv-gpu/bin/python -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  .venv-gpu/bin/python -m pip install -q "torch>=2.3,<3"
fi
.venv-gpu/bin/python -m pip install -q -e ".[model]" 2>&1 | tail -2
.venv-gpu/bin/python -c "import torch; print('cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))" | tee "$OUT/device.txt"
.venv-gpu/bin/python bench/gpu_check.py 2>&1 | tail -1 | tee "$OUT/check.json" || true
timeout 300 .venv-gpu/bin/python bench/gpu.py --json "$OUT/bench-shipped.json" --time-budget 240 | tee "$OUT/bench-shipped.txt"
timeout 200 .venv-gpu/bin/python bench/gpu.py --config configs/model-production.yaml --batch 64 --steps 2 \
  --no-baseline --json "$OUT/bench-production.json" --time-budget 150 | tee "$OUT/bench-production.txt" || true
if [ -n "${GEOSR_CORPUS:-}" ]; then
  .venv-gpu/bin/geosr train --config configs/model-rgbn-x4.yaml --manifest "$GEOSR_CORPUS" --out "$OUT/train-run" \
    --device cuda --batch 64 --time-limit "${TRAIN_SECONDS:-180}" 2>&1 | tail -20 | tee "$OUT/train.txt" || true
fi
