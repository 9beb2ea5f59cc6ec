# syntax=docker/dockerfile:1.7
#
# geosr GPU worker: a Dask worker that runs the super-resolution model on one NVIDIA GPU.
#
#   docker build -f infra/docker/gpu.Dockerfile -t geosr-gpu:0.1.0 \
#       --build-arg CUDA_VERSION=13.0.2 --build-arg TORCH_VERSION=2.13.0 --build-arg TORCH_CUDA=cu130 .
#
# Build context: the repository root (infra/docker/gpu.Dockerfile.dockerignore keeps it small).
# Layers, from least to most often changed: CUDA base -> Python -> torch (CUDA build) -> pinned
# dependencies (requirements/gpu.txt) -> geosr itself -> configs, weights, entrypoint.
#
# Model weights: the bundled model ships inside the geosr package; more checkpoints are baked in from
# MODELS_DIR (a directory inside the build context, default: only a README) to /opt/geosr/models/NAME,
# and/or fetched from object storage at container start into /var/lib/geosr/weights/NAME when
# GEOSR_WEIGHTS_URI=s3://bucket/.../NAME is set (see entrypoint.sh). Point the run config at it:
# model.params.weights=/opt/geosr/models/NAME or /var/lib/geosr/weights/NAME.
#
# The CUDA base only has to provide the driver-facing bits: the torch wheel brings its own CUDA
# libraries (cuBLAS, cuDNN, ...) as pip packages. CUDA_FLAVOR=base keeps the image ~3 GB smaller than
# "runtime"/"cudnn-runtime"; use those flavours only for extensions that link the system CUDA libs.
# TORCH_CUDA must match CUDA_VERSION's major.minor (cu130 <-> 13.0.x, cu128 <-> 12.8.x); the host driver
# must support CUDA_VERSION (nvidia-smi's "CUDA Version" >= it).

ARG CUDA_VERSION=13.0.2
ARG CUDA_FLAVOR=base
ARG UBUNTU_VERSION=24.04
ARG UV_VERSION=0.13.8

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

# ---------------------------------------------------------------- build: Python + venv, no compilers
FROM nvidia/cuda:${CUDA_VERSION}-${CUDA_FLAVOR}-ubuntu${UBUNTU_VERSION} AS build
ARG PYTHON_VERSION=3.11.14
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu130
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_CUDA}
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    VIRTUAL_ENV=/opt/venv
RUN uv python install "${PYTHON_VERSION}" && uv venv --python "${PYTHON_VERSION}" /opt/venv
# torch first (the largest, least often changed layer); shared deps are held to the pinned versions.
COPY requirements/cpu.txt requirements/gpu.txt /tmp/req/
RUN uv pip install --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
        --index-strategy unsafe-best-match --constraint /tmp/req/cpu.txt "torch==${TORCH_VERSION}+${TORCH_CUDA}"
# Separate layer on purpose: torch changes far less often than the rest of the pins.
# hadolint ignore=DL3059
RUN uv pip install --requirement /tmp/req/gpu.txt
# geosr itself, without re-resolving anything (every dependency is pinned above).
COPY pyproject.toml README.md /src/
COPY geosr /src/geosr
RUN uv pip install --no-deps /src && uv pip check

# ---------------------------------------------------------------- runtime
FROM nvidia/cuda:${CUDA_VERSION}-${CUDA_FLAVOR}-ubuntu${UBUNTU_VERSION} AS runtime
ARG MODELS_DIR=infra/docker/models
LABEL org.opencontainers.image.title="geosr-gpu-worker" \
      org.opencontainers.image.description="geosr Dask worker with a CUDA build of torch" \
      org.opencontainers.image.source="https://example.invalid/geosr" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 geosr && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin geosr \
    && mkdir -p /var/lib/geosr/weights /var/lib/geosr/dask && chown -R 10001:10001 /var/lib/geosr
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
COPY geosr/configs /opt/geosr/configs
# Deployment definitions, for `prefect deploy` from /opt/geosr (the flows are in the installed geosr.flows).
COPY prefect.yaml /opt/geosr/prefect.yaml
COPY ${MODELS_DIR}/ /opt/geosr/models/
COPY --chmod=0755 infra/docker/entrypoint.sh /opt/geosr/bin/entrypoint.sh
COPY --chmod=0644 infra/docker/fetch_weights.py /opt/geosr/bin/fetch_weights.py
ENV PATH=/opt/venv/bin:$PATH \
    MALLOC_ARENA_MAX=2 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/opt/geosr \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    GEOSR_CONFIG_DIR=/opt/geosr/configs \
    GEOSR_MODEL_DIR=/opt/geosr/models \
    GEOSR_WEIGHTS_DIR=/var/lib/geosr/weights \
    DASK_TEMPORARY_DIRECTORY=/var/lib/geosr/dask \
    DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=false \
    PREFECT_HOME=/var/lib/geosr/prefect
USER 10001:10001
WORKDIR /opt/geosr
ENTRYPOINT ["/opt/venv/bin/dumb-init", "--", "/opt/geosr/bin/entrypoint.sh"]
# One worker per GPU, one thread: the model step is batched on the device, not threaded.
CMD ["dask", "worker", "--nthreads", "1", "--resources", "GPU=1", "--no-dashboard"]
