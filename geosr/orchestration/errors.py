"""Typed errors of the orchestration layer (each also inherits the builtin a caller would catch)."""

from __future__ import annotations

from ..errors import ConfigError, GeosrError, InputError


class ClusterError(GeosrError, RuntimeError):
    """The Dask cluster cannot run the scene (no GPU-tagged worker, scheduler unreachable, workers keep dying)."""


class DiscoveryError(InputError):
    """A scene source (prefix, STAC API, ItemCollection) cannot be listed or searched as given."""


class GpuLimitError(ConfigError):
    """The Prefect global concurrency limit that guards the GPUs does not exist or cannot be used."""
