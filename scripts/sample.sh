#!/usr/bin/env bash
# Set up (see setup.sh) and run the main job on the bundled sample scene:
# writes out/sample.zarr (+ out/sample.stac-item.json) and the quicklook out/sample.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p out
exec .venv/bin/geosr run "$(.venv/bin/python -c 'from geosr.io.sample import sample_path; print(sample_path())')" \
  out/sample.zarr --preview out/sample.png "$@"
