#!/usr/bin/env bash
# The whole GPU device session as ONE command, for a lent H100/H200 (no network; Python 3.12 with a CUDA torch
# and numpy, scipy, pillow, ... in its image; bench/gpu_image_packages.txt). Before it, here:
#   bash bench/gpu_wheelhouse.sh          # -> .whl/, the wheels the image lacks (rasterio, zarr, diffusers, ...)
# Then with the device tool: command "bash bench/gpu_session.sh", carry [".whl"], timeout_s 600.
#   bash bench/gpu_session.sh [--weights DIR] [--side N] [--cpu-dry-run] [OUT_DIR]
# Steps, each under its own timeout, all inside BUDGET seconds (default 510: the call's 600 s less start-up):
#   1. install .whl/*.whl with pip --no-index into a target folder (PYTHONPATH), check versions and imports
#   2. device info; bench/gpu_check.py: the bundled model on the device vs CPU, LR consistency, batch independence
#   3. bench/gpu_session.py e2e: one timed `geosr run --device cuda` on a synthetic 2048^2 4-band uint16 scene
#   4. bench/gpu.py: the shipped default path (bundled model, its recommended sampling, the engine's tiles, batch
#      16/64/128, bf16) and LDSR-S2's architecture in the same run; tiles/s and s per 10980^2 x4 S2 tile
#   5. bench/gpu_session.py train: `geosr train --device cuda --time-limit N`, only if >= 90 s are left
#   6. summary.md: the figures beside LDSR-S2's (../shared/reference/ldsr_s2_h200.md)
# Writes OUT_DIR (default $OUT, else out/gpu): session.log, check.json, e2e.json, bench.json, summary.md.
# --cpu-dry-run: the same steps on CPU, small (scene 192^2, bench --quick, a few seconds of training): proves
# the install and the scripts anywhere (bench/gpu_session_dryrun.sh runs it in a clean venv).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
DRY=0 WEIGHTS= SIDE= OUTDIR=
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-dry-run) DRY=1; shift ;;
    --weights) WEIGHTS=$(realpath "$2"); shift 2 ;;
    --side) SIDE=$2; shift 2 ;;
    -h|--help) sed -n 2,18p "$0"; exit 0 ;;
    -*) echo "gpu_session: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *) OUTDIR=$1; shift ;;
  esac
done
OUT=${OUTDIR:-${OUT:-out/gpu}}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
exec > >(tee "$OUT/session.log") 2>&1
PY=${PYTHON:-python3}
WHL=${GEOSR_WHEELS:-.whl}              # the wheelhouse (bench/gpu_wheelhouse.sh)
SITE=${GEOSR_SITE:-/tmp/geosr-site}    # where the wheels are installed
WORK=${GEOSR_WORK:-/tmp/geosr-session} # scenes, stores, training run (not under $OUT: 8 files come back)
BUDGET=${GEOSR_SESSION_BUDGET:-510}
if [ "$DRY" = 1 ]; then DEV=cpu; SIDE=${SIDE:-192}; else DEV=cuda; SIDE=${SIDE:-2048}; fi
WARGS=()
[ -n "$WEIGHTS" ] && WARGS=(--weights "$WEIGHTS")
export PYTHONUNBUFFERED=1
START=$SECONDS
FAILED=()

left() { echo $((BUDGET - (SECONDS - START))); }
# step NAME MAX_SECONDS CMD...: run CMD under timeout min(MAX, what is left); skip it when under 20 s are left
step() {
  local name=$1 max=$2 t rc s
  shift 2
  t=$(left)
  [ "$t" -gt "$max" ] && t=$max
  if [ "$t" -lt 20 ]; then
    echo "== $name: skipped (${t} s left of the ${BUDGET} s budget)"
    FAILED+=("$name (skipped)")
    return 0
  fi
  echo "== $name (at $((SECONDS - START)) s; timeout ${t} s)"
  s=$SECONDS
  timeout -k 10 "$t" "$@"
  rc=$?
  [ $rc -eq 124 ] && echo "== $name: TIMED OUT after ${t} s"
  echo "== $name: exit $rc in $((SECONDS - s)) s"
  [ $rc -ne 0 ] && FAILED+=("$name (exit $rc)")
  return $rc
}

echo "geosr GPU session $(date -u +%FT%TZ) on $(hostname 2>/dev/null): $(git -C "$REPO" log -1 --format='%h %s' 2>/dev/null | cut -c1-80)"
shopt -s nullglob
wheels=("$WHL"/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
  echo "gpu_session: no wheels in $WHL: run 'bash bench/gpu_wheelhouse.sh' where PyPI is reachable, and carry .whl" >&2
  exit 1
fi
if ! "$PY" -c "import lzma" 2>/dev/null; then
  echo "gpu_session: $PY has no lzma module, and the wheels are LZMA-repacked (bench/gpu_wheels.py): use a Python" \
       "built with lzma" >&2
  exit 1
fi
rm -rf "$SITE" && mkdir -p "$SITE" "$WORK"
if ! step install 120 "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}"; then
  echo "gpu_session: installing $WHL failed (pip's message above); built for another Python? ($("$PY" -V))" >&2
  exit 1
fi
export PYTHONPATH=$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}
step check-versions 60 "$PY" bench/gpu_wheels.py check --site "$SITE"  # reports; the imports below decide
if ! step imports 60 "$PY" -c "import geosr.lifecycle, geosr.local_executor, geosr.store.stac, geosr.diffusion.upsampler, antimeridian, shapely, rasterio, zarr, pyproj, diffusers, torch
print('imports ok: geosr', geosr.__version__, '| torch', torch.__version__, '| rasterio', rasterio.__version__,
      '| zarr', zarr.__version__, '| diffusers', diffusers.__version__)"; then
  echo "gpu_session: geosr's local path does not import (above); nothing else can run" >&2
  exit 1
fi
if [ "$DRY" = 0 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | head -3
fi
"$PY" -c "import torch; c = torch.cuda.is_available()
print('torch', torch.__version__, '| cuda', c, '|', torch.cuda.get_device_name(0) if c else 'cpu',
      '|', torch.get_num_threads(), 'CPU threads')"

CHECK=()
[ "$DRY" = 1 ] && CHECK=(--quick --device cpu)
step gpu-check 120 "$PY" bench/gpu_check.py "${WARGS[@]}" "${CHECK[@]}" --json "$OUT/check.json"

step e2e 180 "$PY" bench/gpu_session.py e2e --device "$DEV" --side "$SIDE" --work "$WORK" "${WARGS[@]}" \
  --json "$OUT/e2e.json"

BENCH=()
[ "$DRY" = 1 ] && BENCH=(--device cpu --quick --batch 1)
t=$(($(left) - 100))  # seconds of measuring; keep time for the training run and the summary
[ $t -gt 220 ] && t=220
[ $t -lt 30 ] && t=30
step bench $((t + 30)) "$PY" bench/gpu.py "${WARGS[@]}" "${BENCH[@]}" --time-budget "$t" --json "$OUT/bench.json"

if [ "$(left)" -ge 90 ]; then
  TL=$(($(left) - 60))
  [ $TL -gt 120 ] && TL=120
  TRAIN=()
  [ "$DRY" = 1 ] && { TRAIN=(--quick); TL=5; }
  step train $((TL + 50)) "$PY" bench/gpu_session.py train --device "$DEV" --time-limit "$TL" --work "$WORK" \
    --out "$WORK/train" "${TRAIN[@]}"
else
  echo "== train: skipped ($(left) s left; it needs 90)"
fi

"$PY" bench/gpu_session.py summary "$OUT"
echo "session: $((SECONDS - START)) s; files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "gpu_session: not all steps passed: ${FAILED[*]}"
  exit 1
fi
echo "gpu_session: all steps passed"
