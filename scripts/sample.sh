#!/usr/bin/env bash
# Set up (setup.sh sample: only what the sample needs) and run the main job on the bundled sample scene: the super_resolve_scene
# Prefect flow on its embedded defaults (Prefect's ephemeral server, a local Dask cluster with one
# GPU-tagged worker, local disk), with the bundled latent-diffusion model.
# Writes out/sample.zarr, out/sample.stac-item.json and the quicklook out/sample.quicklook.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh sample
mkdir -p out
export PREFECT_HOME="${PREFECT_HOME:-$PWD/out/.prefect}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-90}"
SAMPLE="$(.venv/bin/python -c 'from geosr.io.sample import sample_path; print(sample_path())')"
exec .venv/bin/geosr flows run-scene "$SAMPLE" out/sample.zarr --config configs/sample.yaml "$@"
