"""The local executor: a scene's blocks on a thread pool of this process (``geosr run``, ``geosr eval``).

Per block: the read step (:func:`geosr.tiles.read_step`) then the model step
(:func:`geosr.block_step.model_step`), exactly what the Dask executor runs on its CPU and GPU workers. At
most ``workers`` blocks are in flight, so memory stays bounded whatever the scene's size; the first failure
cancels what has not started and is raised.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable

from .block_step import model_step
from .executor import ModelInfo
from .grid import Block
from .plan import ScenePlan
from .rasters import RasterSink, RasterSource
from .retry import RetryPolicy
from .tiles import read_step
from .upsample import BatchSize
from .upsamplers import Upsampler, UpsamplesWindows, require_sampling
from .upsamplers.recipe import ModelRecipe


class LocalExecutor:
    """Blocks on ``workers`` threads (0: one per CPU); the model is built in this process, or ``upsampler``."""

    def __init__(self, workers: int = 0, upsampler: Upsampler | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.upsampler = upsampler
        self.batch: BatchSize | None = None
        self.workers_used: tuple[str, ...] = ("local",)

    def load_model(self, recipe: ModelRecipe | None, samples: int) -> ModelInfo:
        """Build ``recipe`` in this process (or take the ``upsampler`` given at construction)."""
        if self.upsampler is None:
            if recipe is None:
                raise ValueError("no model: give a recipe or an upsampler")
            self.upsampler = recipe.build()
        require_sampling(self.upsampler, samples)
        self.batch = BatchSize(self.upsampler.batch_size)
        return ModelInfo(self.upsampler.describe(), isinstance(self.upsampler, UpsamplesWindows))

    def run_blocks(self, plan: ScenePlan, source: RasterSource, output: RasterSink, todo: list[Block],
                   on_block: Callable[[dict[str, Any]], None], policy: RetryPolicy) -> None:
        up = self.upsampler
        assert up is not None, "load_model() first"

        def step(b: Block) -> dict[str, Any]:
            return model_step(plan, read_step(plan, b, source, policy), up, output, self.batch, policy)

        run_blocks(todo, step, self.workers, on_block)


def run_blocks(blocks: list[Block], fn: Callable[[Block], Any], workers: int,
               on_done: Callable[[Any], None] | None = None) -> None:
    """Run ``fn`` over blocks on a thread pool, at most ``workers`` in flight (bounded memory), calling
    ``on_done(result)`` as each finishes. The first failure cancels what has not started and is re-raised."""
    if workers <= 1:
        for b in blocks:
            r = fn(b)
            if on_done:
                on_done(r)
        return
    it = iter(blocks)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="geosr-block") as pool:
        pending: set[Future] = set()
        for b in it:
            pending.add(pool.submit(fn, b))
            if len(pending) >= workers:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                exc = f.exception()
                if exc is not None:
                    for p in pending:
                        p.cancel()
                    raise exc
                if on_done:
                    on_done(f.result())
                nxt = next(it, None)
                if nxt is not None:
                    pending.add(pool.submit(fn, nxt))
