#!/usr/bin/env bash
# Set up (see setup.sh) and run the tests.
#   bash scripts/test.sh           the fast tier: no server, a few minutes (markers: not servers, not heavy)
#   bash scripts/test.sh --full    every test: they start their own SeaweedFS (S3), Prefect and Dask on 127.0.0.1
# Extra arguments go to pytest (e.g. --runslow, -k s3).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PREFECT_HOME="${PREFECT_HOME:-$(mktemp -d)}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=90
if [ "${1:-}" = "--full" ]; then
  shift
  exec .venv/bin/python -m pytest -q "$@"
fi
exec .venv/bin/python -m pytest -q -m "not servers and not heavy" "$@"
