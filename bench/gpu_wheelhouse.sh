#!/usr/bin/env bash
# Build .whl/, the wheels that the lent GPU machine (no network, Python 3.12, torch and friends in its image)
# needs beyond its image to run bench/gpu_session.sh: bench/gpu_wheels.py lists them and says why. Versions come
# from requirements/constraints.txt; CPython 3.12 manylinux x86-64 wheels from PyPI; each repacked with LZMA
# (the same files, ~25% smaller). Fails when wheelhouse + working tree exceed the limit (the device tool
# carries 64 MiB in all; 62 by default leaves room).
#   bash bench/gpu_wheelhouse.sh                                   # -> .whl/ (git-ignored), for the device
#   bash bench/gpu_wheelhouse.sh --python-version 3.11 --dest DIR  # the same set for another Python (dry run)
# Then, with the device tool: carry [".whl"], command "bash bench/gpu_session.sh" (docs/model.md, "GPU session").
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=3.12
DEST=.whl
LIMIT=62
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) PYV=$2; shift 2 ;;
    --dest) DEST=$2; shift 2 ;;
    --limit-mib) LIMIT=$2; shift 2 ;;
    -h|--help) sed -n 2,9p "$0"; exit 0 ;;
    *) echo "gpu_wheelhouse: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
CACHE=.cache/wheelhouse-py$PYV   # downloads as PyPI serves them (git-ignored); DEST gets repacked copies
mkdir -p "$CACHE"
mapfile -t PINS < <("$PY" bench/gpu_wheels.py pins)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
echo "downloading ${#PINS[@]} wheels for CPython $PYV manylinux x86-64 into $CACHE"
# PIP_CONFIG_FILE=/dev/null: public PyPI as it is (this machine's pip config adds a local mirror and constraints)
if ! PIP_CONFIG_FILE=/dev/null "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$PYV" --implementation cp "${PLATFORMS[@]}" -d "$CACHE" "${PINS[@]}"; then
  echo "gpu_wheelhouse: pip could not download the pinned wheels above (network to PyPI? a pin without a" \
       "cp${PYV/./} manylinux x86-64 wheel? check requirements/constraints.txt)" >&2
  exit 1
fi
"$PY" bench/gpu_wheels.py collect "$CACHE" "$DEST"
ls -l "$DEST" | awk 'NR > 1 {printf "  %8.1f KiB  %s\n", $5 / 1024, $9}'
"$PY" bench/gpu_wheels.py size "$DEST" --limit-mib "$LIMIT"
