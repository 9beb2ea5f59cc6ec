"""The model on a GPU worker: loaded once per worker (a Dask worker plugin holds the cache), batched per
call, and an out-of-memory error halves the batch and retries instead of failing the block.

Halving the batch never changes the output: every upsampler computes each tile independently of the
other tiles in its batch (the engine's partition invariance), so a block's bytes do not depend on the
batch size it was computed with.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from ..config import RunConfig
from ..errors import ModelError
from ..upsamplers import TileBatch, Upsampler, build_upsampler
from ..upsamplers.base import check_samples

log = logging.getLogger(__name__)

PLUGIN_NAME = "geosr-models"


@dataclass(frozen=True)
class ModelSpec:
    """What identifies a loaded model (the batch size is not part of it: it adapts at run time)."""

    name: str
    params_json: str
    scale: int
    device: str
    seed: int
    bands: int
    batch_size: int

    @classmethod
    def from_config(cls, cfg: RunConfig, bands: int) -> ModelSpec:
        m = cfg.model
        return cls(m.name, json.dumps(m.params, sort_keys=True, default=str), cfg.tiling.scale, m.device,
                   m.seed, bands, m.batch_size)

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.name, self.params_json, self.scale, self.device, self.seed, self.bands)

    def build(self) -> Upsampler:
        return build_upsampler(self.name, scale=self.scale, batch_size=self.batch_size, device=self.device,
                               bands=self.bands, seed=self.seed, params=json.loads(self.params_json))


def is_cuda_oom(exc: BaseException) -> bool:
    """A CUDA out-of-memory error (``torch.cuda.OutOfMemoryError`` or the older RuntimeError text),
    also when a model wrapped it (e.g. in a ModelError): the whole cause chain is looked at."""
    try:
        import torch

        oom = getattr(torch.cuda, "OutOfMemoryError", None)
    except ImportError:  # pragma: no cover
        oom = None
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in seen and len(seen) < 8:
        seen.append(e)
        if oom is not None and isinstance(e, oom):
            return True
        text = str(e).lower()
        if isinstance(e, RuntimeError) and "out of memory" in text and ("cuda" in text or "cublas" in text):
            return True
        e = e.__cause__ or e.__context__
    return False


def _free_cuda_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


class ModelCache:
    """Loaded models of one worker process (LRU, ``max_models``), the batch size each one can afford,
    and open outputs; thread-safe. Counters say how often a model was loaded and called (observability,
    and tests check that a model is loaded once per worker)."""

    def __init__(self, max_models: int = 2, max_outputs: int = 8) -> None:
        self.max_models = max(1, max_models)
        self.max_outputs = max(1, max_outputs)
        self._models: OrderedDict[tuple[Any, ...], Upsampler] = OrderedDict()
        self._caps: dict[tuple[Any, ...], int] = {}
        self._outputs: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0
        self.blocks = 0
        self.oom_halvings = 0

    def model(self, spec: ModelSpec) -> Upsampler:
        with self._lock:
            up = self._models.get(spec.key)
            if up is not None:
                self._models.move_to_end(spec.key)
                return up
            while len(self._models) >= self.max_models:
                old, _ = self._models.popitem(last=False)
                log.info("unloading model %s to make room", old[0])
                _free_cuda_memory()
            log.info("loading model %s (scale %d, %d bands, device %s)", spec.name, spec.scale, spec.bands, spec.device)
            try:
                up = spec.build()
            except ModelError:
                raise
            except Exception as e:
                if is_cuda_oom(e):
                    raise ModelError(f"model {spec.name} does not fit in GPU memory ({e}); use a smaller model "
                                     "or a GPU with more memory") from e
                raise
            self._models[spec.key] = up
            self.loads += 1
            return up

    def batch_size(self, spec: ModelSpec) -> int:
        with self._lock:
            return max(1, min(spec.batch_size, self._caps.get(spec.key, spec.batch_size)))

    def halve(self, spec: ModelSpec, failed: int) -> int:
        """Record that ``failed`` tiles did not fit; returns the new batch size (at least 1)."""
        with self._lock:
            new = max(1, failed // 2)
            self._caps[spec.key] = min(new, self._caps.get(spec.key, new))
            self.oom_halvings += 1
            return self._caps[spec.key]

    def output(self, key: tuple[Any, ...], opener: Callable[[], Any]) -> Any:
        """The open output for ``key`` (opened once per worker and run)."""
        with self._lock:
            out = self._outputs.get(key)
            if out is None:
                out = opener()
                self._outputs[key] = out
                while len(self._outputs) > self.max_outputs:
                    self._outputs.popitem(last=False)
            else:
                self._outputs.move_to_end(key)
            return out

    def count_block(self) -> None:
        with self._lock:
            self.blocks += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"models": [k[0] for k in self._models], "loads": self.loads, "blocks": self.blocks,
                    "oom_halvings": self.oom_halvings,
                    "batch_caps": {k[0]: v for k, v in self._caps.items()}}

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
            self._outputs.clear()
        _free_cuda_memory()


try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover - distributed is a dependency
    WorkerPlugin = object  # type: ignore[misc,assignment]


class ModelPlugin(WorkerPlugin):
    """Dask worker plugin holding the worker's :class:`ModelCache`. Register it once per cluster with
    ``client.register_plugin(ModelPlugin())``; it is idempotent, so a second registration (another scene,
    another flow run) keeps the loaded models."""

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self, max_models: int = 2) -> None:
        self.max_models = max_models
        self.cache: ModelCache | None = None
        self.worker_name: str | None = None
        self.gpu = False

    def setup(self, worker: Any) -> None:
        self.cache = ModelCache(self.max_models)
        self.worker_name = str(worker.name)
        self.gpu = float(worker.state.total_resources.get("GPU", 0)) >= 1

    def teardown(self, worker: Any) -> None:
        if self.cache is not None:
            self.cache.clear()


_PROCESS_CACHE = ModelCache()


def model_cache() -> ModelCache:
    """The cache of the Dask worker running this task (its plugin's), or this process's own cache."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return _PROCESS_CACHE
    plugin = worker.plugins.get(PLUGIN_NAME)
    if plugin is None or getattr(plugin, "cache", None) is None:
        return _PROCESS_CACHE
    return plugin.cache


def upsample_adaptive(upsampler: Upsampler, pixels: np.ndarray, origins: np.ndarray, seed: int,
                      cache: ModelCache, spec: ModelSpec, samples: int = 0) -> Iterator[Any]:
    """Yield upsampled tiles in order, ``cache.batch_size(spec)`` tiles per model call. A CUDA
    out-of-memory error halves the batch (for this and every later block on this worker) and retries the
    same tiles; out of memory with a single tile is a :class:`ModelError`.

    With ``samples`` (``output.uncertainty_samples``, >= 2) every call is
    ``upsampler.sample_with_std(batch, samples)`` and each item is a (mean, std) pair of tiles, as
    :func:`geosr.engine.upsample_tiles_with_std` yields them."""
    n = pixels.shape[0]
    i = 0
    while i < n:
        bs = cache.batch_size(spec)
        batch = TileBatch(pixels[i : i + bs], origins[i : i + bs], seed=seed)
        oom: BaseException | None = None
        try:
            if samples:
                mean, std = upsampler.sample_with_std(batch, samples)  # type: ignore[attr-defined]
                check_samples(batch, mean, std, upsampler.scale)
                out: Any = zip(mean, std)
            else:
                out = upsampler(batch)
        except Exception as e:
            if not is_cuda_oom(e):
                raise
            oom = e
        if oom is not None:
            if len(batch) <= 1:
                raise ModelError(f"model {spec.name} runs out of GPU memory on a single tile ({oom}); use a smaller "
                                 "tiling.tile or a GPU with more memory")
            new = cache.halve(spec, len(batch))
            log.warning("CUDA out of memory with %d tiles per batch; retrying with %d", len(batch), new)
            del oom
            _free_cuda_memory()
            continue
        i += len(batch)
        yield from out
