#!/bin/sh
# geosr container entrypoint (runs under dumb-init, as the unprivileged geosr user).
#
# If GEOSR_WEIGHTS_URI is set (e.g. s3://models/ldsr-s2), the checkpoint directory is fetched once into
# GEOSR_WEIGHTS_DIR (default /var/lib/geosr/weights; mount an emptyDir or a node-local volume there) and
# GEOSR_WEIGHTS_PATH points at it; otherwise the weights baked into /opt/geosr/models are used.
# A failed fetch stops the container (non-zero exit): the pod restarts instead of running without a model.
set -eu

if [ -n "${GEOSR_WEIGHTS_URI:-}" ]; then
    GEOSR_WEIGHTS_PATH="$(python "${GEOSR_FETCH_WEIGHTS:-/opt/geosr/bin/fetch_weights.py}" \
        "$GEOSR_WEIGHTS_URI" "${GEOSR_WEIGHTS_DIR:-/var/lib/geosr/weights}")"
    export GEOSR_WEIGHTS_PATH
    echo "geosr: model weights at $GEOSR_WEIGHTS_PATH" >&2
fi

exec "$@"
