"""Project: a model that re-imposes low-resolution consistency (:class:`~geosr.upsamplers.ProjectsBlended`) gets
each blended block back, so the block reproduces its input exactly again (blending consistent tiles with
per-pixel weights is not exactly consistent). The projection is local to each low-res pixel, so blocks
aligned to the scale still give identical bytes; a block that is not aligned is left as blended."""

from __future__ import annotations

import numpy as np

from .grid import Block
from .upsamplers import ProjectsBlended, Upsampler


def project_block(upsampler: Upsampler | None, block: Block, scale: int, data: np.ndarray,
                  lowres: np.ndarray) -> np.ndarray:
    """``data`` (C, h, w), projected onto ``lowres`` (the block's own low-res footprint) when the model can."""
    if isinstance(upsampler, ProjectsBlended) and block.y0 % scale == 0 and block.x0 % scale == 0:
        return np.asarray(upsampler.project_blended(data, lowres), dtype=np.float32)
    return data
