"""The model on a Dask worker: loaded once per worker (a Dask worker plugin holds the cache), with the batch
size it can afford (halved on a CUDA out-of-memory error, :class:`geosr.upsample.BatchSize`) and the open
outputs of the scenes it works on."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any, Callable

from ..errors import ModelError
from ..upsample import BatchSize, free_cuda_memory, is_cuda_oom
from ..upsamplers import Upsampler
from ..upsamplers.recipe import ModelRecipe

log = logging.getLogger(__name__)

PLUGIN_NAME = "geosr-models"


class ModelCache:
    """Loaded models of one worker process (LRU, ``max_models``), the batch size each one can afford, and
    open outputs; thread-safe. Counters say how often a model was loaded and called (observability, and
    tests check that a model is loaded once per worker)."""

    def __init__(self, max_models: int = 2, max_outputs: int = 8) -> None:
        self.max_models = max(1, max_models)
        self.max_outputs = max(1, max_outputs)
        self._models: OrderedDict[tuple[Any, ...], Upsampler] = OrderedDict()
        self._batches: dict[tuple[Any, ...], BatchSize] = {}
        self._outputs: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0
        self.blocks = 0

    def model(self, recipe: ModelRecipe) -> Upsampler:
        with self._lock:
            up = self._models.get(recipe.key)
            if up is not None:
                self._models.move_to_end(recipe.key)
                return up
            while len(self._models) >= self.max_models:
                old, _ = self._models.popitem(last=False)
                log.info("unloading model %s to make room", old[0])
                free_cuda_memory()
            log.info("loading model %s (scale %d, %d bands, device %s)", recipe.name, recipe.scale, recipe.bands,
                     recipe.device)
            try:
                up = recipe.build()
            except ModelError:
                raise
            except Exception as e:
                if is_cuda_oom(e):
                    raise ModelError(f"model {recipe.name} does not fit in GPU memory ({e}); use a smaller model "
                                     "or a GPU with more memory") from e
                raise
            self._models[recipe.key] = up
            self.loads += 1
            return up

    def batch(self, recipe: ModelRecipe) -> BatchSize:
        """The adaptive batch size of ``recipe``'s model on this worker (kept across blocks and scenes)."""
        with self._lock:
            b = self._batches.get(recipe.key)
            if b is None:
                b = self._batches[recipe.key] = BatchSize(recipe.batch_size)
            return b

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

    @property
    def oom_halvings(self) -> int:
        with self._lock:
            return sum(b.halvings for b in self._batches.values())

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"models": [k[0] for k in self._models], "loads": self.loads, "blocks": self.blocks,
                    "oom_halvings": self.oom_halvings,
                    "batch_caps": {k[0]: b.size for k, b in self._batches.items() if b.halvings}}

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
            self._outputs.clear()
        free_cuda_memory()


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
    cache = getattr(worker.plugins.get(PLUGIN_NAME), "cache", None)
    return cache if isinstance(cache, ModelCache) else _PROCESS_CACHE
