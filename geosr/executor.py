"""The contract between the lifecycle (:mod:`geosr.lifecycle`) and what runs a scene's blocks: an :class:`Executor`
loads the model where the blocks run and runs the per-block steps. Two exist: :class:`geosr.local_executor.LocalExecutor`
(a thread pool of this process) and :class:`geosr.orchestration.dask_executor.DaskExecutor` (a Dask cluster)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from .grid import Block
from .plan import ScenePlan
from .rasters import RasterSink, RasterSource
from .retry import RetryPolicy
from .upsamplers.recipe import ModelRecipe


@dataclass(frozen=True)
class ModelInfo:
    """What the lifecycle learns from loading the model where the blocks run."""

    description: dict[str, Any]  # ``describe()``: part of the plan hash and the provenance
    window_path: bool = False  # the model upsamples whole windows (the read step need not cut tiles)


class Executor(Protocol):
    """Where a scene's blocks run."""

    def load_model(self, recipe: ModelRecipe, samples: int) -> ModelInfo:
        """Build (or find) the model where the blocks run; refuse ``samples`` when it cannot draw them."""
        ...

    def run_blocks(self, plan: ScenePlan, source: RasterSource, output: RasterSink, todo: list[Block],
                   on_block: Callable[[dict[str, Any]], None], policy: RetryPolicy) -> None:
        """Read, super-resolve, write and mark done every block of ``todo`` (the per-block steps of
        :mod:`geosr.tiles` and :mod:`geosr.block_step`); call ``on_block(stats)`` as each one is done."""
        ...
