# syntax=docker/dockerfile:1.7
#
# geosr flow runner, Dask scheduler and CPU workers (no GPU): the same code as the GPU worker, with a
# CPU build of torch. Prefect flow-run pods (Kubernetes work pool), `geosr flows serve`, the Dask
# scheduler and the CPU worker group all use this image.
#
#   docker build -f infra/docker/cpu.Dockerfile -t geosr-cpu:0.1.0 --build-arg TORCH_VERSION=2.13.0 .
#
# Build context: the repository root (infra/docker/cpu.Dockerfile.dockerignore keeps it small).
# Layers: Python base -> torch (CPU build) -> pinned dependencies -> geosr (with its flows) -> configs + entrypoint.

ARG PYTHON_VERSION=3.11.14
ARG DEBIAN_RELEASE=bookworm
ARG UV_VERSION=0.13.8

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

# ---------------------------------------------------------------- build
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    VIRTUAL_ENV=/opt/venv
RUN uv venv --python /usr/local/bin/python3 /opt/venv
COPY requirements/cpu.txt /tmp/req/
RUN uv pip install --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
        --index-strategy unsafe-best-match --constraint /tmp/req/cpu.txt "torch==${TORCH_VERSION}+cpu"
# Separate layer on purpose: torch changes far less often than the rest of the pins.
# hadolint ignore=DL3059
RUN uv pip install --requirement /tmp/req/cpu.txt
COPY pyproject.toml README.md /src/
COPY geosr /src/geosr
RUN uv pip install --no-deps /src && uv pip check

# ---------------------------------------------------------------- runtime
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS runtime
LABEL org.opencontainers.image.title="geosr-cpu" \
      org.opencontainers.image.description="geosr flow runner, Dask scheduler and CPU workers" \
      org.opencontainers.image.source="https://example.invalid/geosr" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 geosr && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin geosr \
    && mkdir -p /var/lib/geosr/weights /var/lib/geosr/dask && chown -R 10001:10001 /var/lib/geosr
COPY --from=build /opt/venv /opt/venv
COPY geosr/configs /opt/geosr/configs
# Deployment definitions, for `prefect deploy` from /opt/geosr (the flows are in the installed geosr.flows).
COPY prefect.yaml /opt/geosr/prefect.yaml
COPY --chmod=0755 infra/docker/entrypoint.sh /opt/geosr/bin/entrypoint.sh
COPY --chmod=0644 infra/docker/fetch_weights.py /opt/geosr/bin/fetch_weights.py
ENV PATH=/opt/venv/bin:$PATH \
    MALLOC_ARENA_MAX=2 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/opt/geosr \
    GEOSR_CONFIG_DIR=/opt/geosr/configs \
    GEOSR_WEIGHTS_DIR=/var/lib/geosr/weights \
    DASK_TEMPORARY_DIRECTORY=/var/lib/geosr/dask \
    DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=false \
    PREFECT_HOME=/var/lib/geosr/prefect
USER 10001:10001
WORKDIR /opt/geosr
ENTRYPOINT ["/opt/venv/bin/dumb-init", "--", "/opt/geosr/bin/entrypoint.sh"]
CMD ["geosr", "--help"]
