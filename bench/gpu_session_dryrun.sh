#!/usr/bin/env bash
# Proof of the GPU session's install and scripts on a machine without a GPU (no device needed):
#   1. bench/gpu_wheelhouse.sh builds the same wheel set for this machine's Python (--python-version);
#   2. a clean venv stands in for the device image: torch (CPU), huggingface-hub and safetensors at the image's
#      versions, and the other image packages this path uses (bench/gpu_wheels.py image-side), from the index;
#   3. bench/gpu_session.sh --cpu-dry-run installs the wheelhouse into it with pip --no-index, checks versions
#      and imports, and runs every step on CPU, small (gpu_check, geosr run end to end, gpu.py, geosr train);
#   4. the device's own wheelhouse (.whl, cp312) in a clean CPython 3.12 venv without torch: pip --no-index,
#      then `geosr run --model bicubic` (the whole I/O path: rasterio, zarr, pyproj, pystac, pydantic).
#   bash bench/gpu_session_dryrun.sh [OUT_DIR]      # default out/gpu-dryrun; PYBIN=python3.x to choose Python
# The device's Python is 3.12; this machine's local index has a CPU torch only for 3.11 (PyPI's 3.12 torch is the
# multi-GB CUDA build), so steps 1-3 use 3.11 and a 3.11 wheelhouse: the same pins, another Python tag.
set -euo pipefail
cd "$(dirname "$0")/.."
PYBIN=${PYBIN:-$HOME/.pyenv/versions/3.11.7/bin/python}
PYV=$("$PYBIN" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
D=${GEOSR_DRYRUN_DIR:-/tmp/geosr-dryrun}
OUT=${1:-out/gpu-dryrun}
rm -rf "$D"
mkdir -p "$D" "$OUT"
t0=$SECONDS
echo "== 1. wheelhouse for CPython $PYV"
bash bench/gpu_wheelhouse.sh --python-version "$PYV" --dest "$D/whl"
echo "== 2. clean venv standing in for the device image ($("$PYBIN" -V))"
"$PYBIN" -m venv "$D/venv"
mapfile -t IMAGE < <(python3 bench/gpu_wheels.py image-side "$D/whl" | grep -v -x -E 'torch|huggingface-hub|safetensors')
# torch==2.13.0 resolves to this machine's local CPU wheel; hub and safetensors: the versions the image holds
if ! "$D/venv/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0 huggingface-hub==1.33.0 \
    safetensors==0.8.0 "${IMAGE[@]}" > "$D/pip-image.log" 2>&1; then
  grep -v "^WARNING: Location" "$D/pip-image.log" >&2
  echo "gpu_session_dryrun: could not install the image stand-in (above)" >&2
  exit 1
fi
"$D/venv/bin/python" -m pip list --disable-pip-version-check 2>/dev/null | grep -i -E \
  "^(rasterio|zarr|diffusers|pyproj|pydantic|numcodecs|pystac) " && { echo "the stand-in image already has a wheel's package" >&2; exit 1; }
echo "image stand-in: $("$D/venv/bin/python" -m pip list --disable-pip-version-check 2>/dev/null | tail -n +3 | wc -l) distributions, none of the wheelhouse's"
echo "== 3. bench/gpu_session.sh --cpu-dry-run (install with --no-index, then every step on CPU)"
PYTHON="$D/venv/bin/python" GEOSR_WHEELS="$D/whl" GEOSR_SITE="$D/site" GEOSR_WORK="$D/work" \
  bash bench/gpu_session.sh --cpu-dry-run "$OUT"
PY312=${PY312:-$HOME/.pyenv/versions/3.12.1/bin/python}
if [ -x "$PY312" ]; then
  echo "== 4. .whl (cp312, for the device) in a clean $("$PY312" -V) venv without torch: --no-index, geosr run --model bicubic"
  bash bench/gpu_wheelhouse.sh > "$D/wheelhouse-312.log" || { cat "$D/wheelhouse-312.log"; exit 1; }
  tail -1 "$D/wheelhouse-312.log"
  "$PY312" -m venv "$D/venv312"
  mapfile -t IMAGE312 < <(python3 bench/gpu_wheels.py image-side .whl | grep -v -x -E 'torch|huggingface-hub|safetensors')
  "$D/venv312/bin/python" -m pip install -q --disable-pip-version-check huggingface-hub==1.33.0 safetensors==0.8.0 \
    "${IMAGE312[@]}" > "$D/pip-image-312.log" 2>&1 || { cat "$D/pip-image-312.log"; exit 1; }
  s=$SECONDS
  "$D/venv312/bin/python" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target "$D/site312" .whl/*.whl
  echo "installed .whl with --no-index in $((SECONDS - s)) s"
  PYTHONPATH="$D/site312:$PWD" "$D/venv312/bin/python" -m geosr run "$D/work/scene-192.tif" "$D/work/bicubic-312.zarr" \
    --model bicubic --device cpu --no-progress
fi
echo "dry run: $((SECONDS - t0)) s in all; the session's log: $OUT/session.log"
