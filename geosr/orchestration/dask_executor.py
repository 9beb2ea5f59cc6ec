"""The Dask executor: a scene's blocks spread over a cluster's workers by role (the lifecycle is
:func:`geosr.lifecycle.run_scene`, the same as ``geosr run``'s).

For every missing block two tasks are submitted: :func:`read_task` (restricted, loosely, to the CPU workers)
and :func:`model_task` (``resources={"GPU": 1}``), which receives the read's future, so the low-res input
moves from a CPU worker to a GPU worker and nothing else does. They run the lifecycle's read step
(:func:`geosr.tiles.read_step`) and model step (:func:`geosr.block_step.model_step`). At most
``gpu_slots * (1 + prefetch)`` blocks are in flight: while a GPU works on one block, the reads of the next
``prefetch`` blocks per GPU run on the CPU workers, so the GPU always has input waiting, and memory stays
bounded however large the scene is.

A worker that dies mid-block loses nothing but that block, which Dask runs again elsewhere; a run that
dies leaves a store whose missing blocks the next run computes.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from ..block_step import model_step
from ..executor import ModelInfo
from ..grid import Block
from ..io.storage import StorageEnv
from ..plan import ScenePlan
from ..rasters import RasterSink, RasterSource
from ..retry import STORAGE, RetryPolicy, call_with_retry
from ..store import ZarrOutput
from ..tiles import ReadResult, read_step
from ..upsamplers import UpsamplesWindows, require_sampling
from ..upsamplers.recipe import ModelRecipe
from .cluster import GPU, WorkerRoles, wait_for_gpu_workers, worker_roles
from .errors import ClusterError
from .model_cache import ModelPlugin, model_cache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterRunOptions:
    prefetch: int = 2  # blocks read ahead per GPU slot, beyond the one on the GPU
    gpu_wait_s: float = 300.0  # how long to wait for a GPU-tagged worker to join
    roles_refresh_s: float = 10.0  # how often the CPU/GPU worker lists are refreshed


# -- the tasks (module level: workers import them instead of unpickling code) -------------------------------------
def read_task(plan: ScenePlan, block: Block, source: RasterSource, policy: RetryPolicy) -> ReadResult:
    """On a CPU worker: read the block's low-res window and cut its tiles."""
    return read_step(plan, block, source, policy)


def describe_task(recipe: ModelRecipe, uncertainty_samples: int = 0) -> tuple[dict[str, Any], bool]:
    """On a GPU worker: load the model (warming the worker's cache); its description (plan hash, provenance)
    and whether it has a window path. Raises :class:`~geosr.errors.ConfigError` when ``uncertainty_samples``
    asks for samples the model cannot draw, before the store is created."""
    upsampler = model_cache().model(recipe)
    require_sampling(upsampler, uncertainty_samples)
    return upsampler.describe(), isinstance(upsampler, UpsamplesWindows)


def model_task(plan: ScenePlan, read: ReadResult, env: StorageEnv, run_token: str,
               policy: RetryPolicy) -> dict[str, Any]:
    """On a GPU worker: the model step (super-resolve, blend, project, write, mark done) with this worker's
    cached model and adaptive batch size; returns the block's stats. Upsampled tiles never leave the worker."""
    cache = model_cache()
    recipe = ModelRecipe.from_config(plan.config, plan.bands)
    upsampler = cache.model(recipe)
    output = cache.output((plan.output_uri, plan.plan_hash, run_token),
                          lambda: call_with_retry(lambda: ZarrOutput.open(plan.output_uri, env, plan.plan_hash),
                                                  policy, f"opening {plan.output_uri}"))
    stats = model_step(plan, read, upsampler, output, cache.batch(recipe), policy)
    cache.count_block()
    return stats


def worker_cache_stats(dask_worker: Any) -> dict[str, Any]:
    """A worker's model-cache counters: ``client.run(worker_cache_stats)`` -> {address: stats}."""
    from .model_cache import PLUGIN_NAME

    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    cache = getattr(plugin, "cache", None)
    return cache.stats() if cache is not None else {}


# -- the executor -------------------------------------------------------------------------------------------------
class _Roles:
    """Worker roles, refreshed every ``every`` seconds (workers come and go)."""

    def __init__(self, client: Any, first: WorkerRoles, every: float) -> None:
        self.client, self.roles, self.every, self.at = client, first, every, time.monotonic()

    def cpu(self) -> list[str]:
        if time.monotonic() - self.at > self.every:
            self.roles, self.at = worker_roles(self.client), time.monotonic()
        return list(self.roles.cpu)


class DaskExecutor:
    """Blocks on the cluster behind ``client``: reads on CPU workers, the model step on GPU-tagged workers."""

    def __init__(self, client: Any, env: StorageEnv, options: ClusterRunOptions = ClusterRunOptions()) -> None:
        self.client = client
        self.env = env
        self.options = options
        self.roles: WorkerRoles | None = None
        self.workers_used: tuple[str, ...] = ()

    def load_model(self, recipe: ModelRecipe, samples: int) -> ModelInfo:
        self.roles = wait_for_gpu_workers(self.client, self.options.gpu_wait_s)
        self.workers_used = self.roles.gpu
        self.client.register_plugin(ModelPlugin())
        description, window = self.client.submit(describe_task, recipe, samples, resources={GPU: 1}, pure=False,
                                                 key=f"geosr-describe-{uuid.uuid4().hex[:12]}").result()
        return ModelInfo(description, window)

    def run_blocks(self, plan: ScenePlan, source: RasterSource, output: RasterSink, todo: list[Block],
                   on_block: Callable[[dict[str, Any]], None], policy: RetryPolicy = STORAGE) -> None:
        """The workers open the store themselves (``plan.output_uri``, checked against ``plan.plan_hash``, once per
        worker and run): ``output`` only says it exists."""
        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        assert self.roles is not None, "load_model() first"
        client = self.client
        token = uuid.uuid4().hex[:10]
        tag = plan.plan_hash[:10]
        window = max(1, self.roles.gpu_slots) * (1 + max(0, self.options.prefetch))
        pending = iter(todo)
        inflight: dict[Any, tuple[Block, Any]] = {}
        ac = as_completed(loop=client.loop)
        current = _Roles(client, self.roles, self.options.roles_refresh_s)
        log.info("%s: %d block(s) on %d GPU worker(s)", plan.output_uri, len(todo), len(self.roles.gpu))

        def submit_next() -> None:
            b = next(pending, None)
            if b is None:
                return
            cpu = current.cpu()
            rf = client.submit(read_task, plan, b, source, policy, key=f"geosr-read-{tag}-{b.key}-{token}",
                               workers=cpu or None, allow_other_workers=bool(cpu), pure=False)
            mf = client.submit(model_task, plan, rf, self.env, token, policy,
                               key=f"geosr-model-{tag}-{b.key}-{token}", resources={GPU: 1}, pure=False)
            inflight[mf] = (b, rf)
            ac.add(mf)

        try:
            for _ in range(window):
                submit_next()
            for fut in ac:
                block, _read = inflight.pop(fut)
                try:
                    stats = fut.result()
                except KilledWorker as e:
                    raise ClusterError(f"block {block.key} of {plan.output_uri} killed its worker repeatedly ({e}); "
                                       "check the workers' logs (memory, GPU) and rerun to resume") from e
                on_block(stats)
                submit_next()
        except BaseException:
            client.cancel([f for f in inflight] + [rf for _, rf in inflight.values()])
            raise
