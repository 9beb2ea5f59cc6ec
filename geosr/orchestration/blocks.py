"""The functions Dask runs for a block. Module-level, so workers import them instead of unpickling code.

* :func:`read_task` runs on CPU workers: read the block's low-res window and cut its tiles.
* :func:`model_task` runs on a GPU-tagged worker: upsample (batched, OOM-adaptive), blend, encode,
  write the block's chunks, mark it done. Upsampled tiles never leave the worker: only the low-res
  ``BlockInput`` travels, and only the block's small stats come back.
* :func:`describe_task` loads the model on a GPU worker (warming its cache) and returns its description,
  which goes into the plan hash exactly as :func:`geosr.engine.run_scene` puts it there; it also refuses
  ``output.uncertainty_samples`` for a model that cannot draw samples, before the store is created.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..engine import BlockInput, ScenePlan, block_stats, read_block, super_resolve_block
from ..grid import Block
from ..io.source import RasterSource
from ..io.storage import StorageEnv
from ..store import ZarrOutput
from ..upsamplers import require_sampling
from .gpu import ModelSpec, model_cache, upsample_adaptive
from .retry import RetryPolicy, call_with_retry


@dataclass(frozen=True)
class ReadResult:
    inp: BlockInput
    seconds: float


def read_task(plan: ScenePlan, block: Block, source: RasterSource, policy: RetryPolicy) -> ReadResult:
    t0 = time.perf_counter()
    inp = call_with_retry(lambda: read_block(plan, block, source), policy,
                          f"reading block {block.key} of {plan.input_uri}")
    return ReadResult(inp, time.perf_counter() - t0)


def describe_task(spec: ModelSpec, uncertainty_samples: int = 0) -> dict[str, Any]:
    """The model's description (plan hash, provenance). Raises :class:`~geosr.errors.ConfigError` when
    ``uncertainty_samples`` asks for samples the model cannot draw."""
    upsampler = model_cache().model(spec)
    require_sampling(upsampler, uncertainty_samples)
    return upsampler.describe()


def model_task(plan: ScenePlan, read: ReadResult, env: StorageEnv, run_token: str,
               policy: RetryPolicy) -> dict[str, Any]:
    """Upsample, blend, write and mark one block done on this (GPU) worker; returns the block's stats."""
    t0 = time.perf_counter()
    inp = read.inp
    bands = len(plan.meta.band_indexes)
    spec = ModelSpec.from_config(plan.config, bands)
    cache = model_cache()
    upsampler = cache.model(spec)
    samples = plan.config.output.uncertainty_samples
    require_sampling(upsampler, samples)
    # the engine's one upsample-and-blend step (same code as `geosr run`); the tiles, when needed, come from the
    # batched, OOM-adaptive stream of this worker's model cache
    data, std, valid = super_resolve_block(plan, inp, upsampler, tiles=lambda: upsample_adaptive(
        upsampler, inp.pixels, inp.origins, plan.config.model.seed, cache, spec, samples))
    model_s = time.perf_counter() - t0
    stats = block_stats(plan, inp, data, valid, std)
    output = cache.output((plan.output_uri, plan.plan_hash, run_token),
                          lambda: call_with_retry(lambda: ZarrOutput.open(plan.output_uri, env, plan.plan_hash),
                                                  policy, f"opening {plan.output_uri}"))
    what = f"block {inp.block.key} of {plan.output_uri}"
    call_with_retry(lambda: output.write_block(inp.block, data, valid, std=std), policy, f"writing {what}")
    stats["seconds"] = round(read.seconds + time.perf_counter() - t0, 4)
    stats["model_seconds"] = round(model_s, 4)
    call_with_retry(lambda: output.mark_done(inp.block, stats), policy, f"marking {what} done")
    cache.count_block()
    return stats


def worker_cache_stats(dask_worker: Any) -> dict[str, Any]:
    """A worker's model-cache counters: ``client.run(worker_cache_stats)`` -> {address: stats}."""
    from .gpu import PLUGIN_NAME

    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    cache = getattr(plugin, "cache", None)
    return cache.stats() if cache is not None else {}
