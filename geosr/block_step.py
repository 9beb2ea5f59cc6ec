"""The per-block step that every executor runs after the read: super-resolve (tile stream, or a model's window
path) -> blend -> project -> stats -> write the block's chunks -> mark it done.

``geosr run`` runs it on a local thread pool, the Dask path on a GPU-tagged worker (where the model lives),
``geosr eval`` through an in-memory sink; it is the same function everywhere.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .blend import blend_tiles
from .plan import ScenePlan
from .project import project_block
from .rasters import RasterSink
from .retry import STORAGE, RetryPolicy, call_with_retry
from .scratch import buffer
from .stats import block_stats
from .tiles import BlockInput, ReadResult
from .upsample import BatchSize, block_tiles, window_upsample
from .upsamplers import Upsampler


def super_resolve_block(plan: ScenePlan, inp: BlockInput, upsampler: Upsampler, batch: BatchSize | None = None,
                        out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Upsample, blend and project one block: (data (C,h,w) float32, std (C,h,w) or None, valid (h,w)).

    A model with a window path upsamples the block's window at once (same bytes; it writes into ``out``
    when given: a reused per-thread buffer, :func:`geosr.scratch.buffer`); otherwise the block's tiles go
    through the tile stream (``batch``: the model's adaptive batch size) and are blended with the global
    weights in global tile order. With ``output.uncertainty_samples`` each tile is (mean, std) of that many
    samples: the std is blended with the same weights and not projected."""
    cfg = plan.config
    seed, samples, ramp, s = cfg.model.seed, cfg.output.uncertainty_samples, cfg.tiling.ramp, plan.grid.scale
    valid = inp.output_valid()
    if not samples:
        data = window_upsample(upsampler, inp, ramp, out)
        if data is not None:
            return data, None, valid
    stream = block_tiles(upsampler, inp, seed, samples, batch)
    blended = blend_tiles(plan.grid, inp.block, inp.keys, inp.skip, inp.bands, stream, 2 if samples else 1, ramp)
    data = project_block(upsampler, inp.block, s, blended[0], inp.lowres)
    if not samples:
        return data, None, valid
    std = blended[1]
    np.maximum(std, 0.0, out=std)  # a convex blend of non-negative values; clip float rounding below 0
    return data, std, valid


def model_step(plan: ScenePlan, read: ReadResult, upsampler: Upsampler, sink: RasterSink,
               batch: BatchSize | None = None, policy: RetryPolicy = STORAGE) -> dict[str, Any]:
    """Super-resolve one block, write its chunks and mark it done (storage calls retried); returns its stats."""
    t0 = time.perf_counter()
    inp = read.inp
    data, std, valid = super_resolve_block(plan, inp, upsampler, batch,
                                           out=buffer("block", (inp.bands, *inp.block.shape), np.float32))
    model_s = time.perf_counter() - t0
    stats = block_stats(plan, inp, data, valid, std)
    what = f"block {inp.block.key} of {plan.output_uri}"
    call_with_retry(lambda: sink.write_block(inp.block, data, valid, std=std), policy, f"writing {what}")
    stats["seconds"] = round(read.seconds + time.perf_counter() - t0, 4)
    stats["model_seconds"] = round(model_s, 4)
    call_with_retry(lambda: sink.mark_done(inp.block, stats), policy, f"marking {what} done")
    return stats
