"""Read and tile: a block's low-res window, read once, and the tiles cut from it on the scene's global grid
(nodata filled per tile) -- the steps of the data's path before the model, shared by every executor."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage

from .grid import Block, TileGrid, mirror_indices
from .plan import ScenePlan
from .rasters import RasterSource
from .retry import STORAGE, RetryPolicy, call_with_retry


@dataclass(frozen=True)
class BlockInput:
    """What a block needs from the input: the low-res window its tiles cover, read once.

    The tiles (nodata filled per tile) are cut from the window when first asked for (``pixels``,
    ``origins``, ``skip``), so a model that does not need them (the classic kernels' window path,
    :mod:`geosr.upsamplers.window_path`) never pays for them; :func:`read_block` cuts them at once for other models.
    Picklable (what was cut travels with it)."""

    block: Block
    keys: tuple[tuple[int, int], ...]  # (ky, kx) of each tile touching the block, global order
    grid: TileGrid
    window: np.ndarray  # (C, wh, ww) float32 reflectance of the read window
    window_valid: np.ndarray  # (wh, ww) bool
    window_origin: tuple[int, int]  # scene (row, col) of the window's top-left pixel

    @cached_property
    def _tiles(self) -> tuple[np.ndarray, np.ndarray, tuple[bool, ...]]:
        g = self.grid
        r0, c0 = self.window_origin
        tiles, origins, skip = [], [], []
        for ky, kx in self.keys:
            oy, ox = g.origin(ky, kx)
            ri = mirror_indices(oy, oy + g.tile, g.height) - r0
            ci = mirror_indices(ox, ox + g.tile, g.width) - c0
            v = self.window_valid[np.ix_(ri, ci)]
            if not v.any():
                skip.append(True)
                continue
            skip.append(False)
            tiles.append(fill_nodata(self.window[:, ri][:, :, ci], v))
            origins.append((oy, ox))
        bands = self.window.shape[0]
        pixels = (np.stack(tiles).astype(np.float32, copy=False) if tiles
                  else np.zeros((0, bands, g.tile, g.tile), np.float32))
        return pixels, np.asarray(origins, dtype=np.int64).reshape(-1, 2), tuple(skip)

    @property
    def pixels(self) -> np.ndarray:
        """(N, C, T, T) float32 tiles; tiles with no valid pixel are excluded (see ``skip``)."""
        return self._tiles[0]

    @property
    def origins(self) -> np.ndarray:
        """(N, 2) int64 low-res origin of each tile in ``pixels``."""
        return self._tiles[1]

    @property
    def skip(self) -> tuple[bool, ...]:
        """Per key: True when the tile has no valid pixel (its output is nodata anyway)."""
        return self._tiles[2]

    @property
    def tiles_skipped(self) -> int:
        """How many of ``keys`` have no valid pixel (without cutting the tiles when the window is all valid)."""
        if "_tiles" not in self.__dict__ and self.window_valid.all():
            return 0
        return int(sum(self.skip))

    def _own(self) -> tuple[slice, slice]:
        s, b = self.grid.scale, self.block
        r0, c0 = self.window_origin
        return (slice(b.y0 // s - r0, math.ceil(b.y1 / s) - r0), slice(b.x0 // s - c0, math.ceil(b.x1 / s) - c0))

    @property
    def lowres(self) -> np.ndarray:
        """(C, h, w) the block's own low-res footprint, for consistency metrics."""
        rows, cols = self._own()
        return self.window[:, rows, cols]

    @property
    def lowres_valid(self) -> np.ndarray:
        rows, cols = self._own()
        return self.window_valid[rows, cols]

    @property
    def bands(self) -> int:
        return int(self.window.shape[0])

    def output_valid(self) -> np.ndarray:
        """The block's (h, w) valid mask at output resolution: each low-res pixel's validity, repeated."""
        s, b = self.grid.scale, self.block
        oy, ox = (b.y0 // s) * s, (b.x0 // s) * s
        up = self.lowres_valid.repeat(s, axis=0).repeat(s, axis=1)
        return up[b.y0 - oy : b.y1 - oy, b.x0 - ox : b.x1 - ox]


def fill_nodata(tile: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Replace invalid pixels by their nearest valid neighbour, so nodata never leaks into valid pixels
    through the upsampler's support. A pure function of the tile (partition invariant)."""
    if valid.all():
        return tile
    idx = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return tile[:, idx[0], idx[1]]


def read_block(plan: ScenePlan, block: Block, source: RasterSource) -> BlockInput:
    """Read the block's low-res window once. Its tiles are cut at once unless the model has a window path
    (``plan.tiles_on_read``), so an orchestrator's read step does that work."""
    bg = plan.blocks
    (r0, r1), (c0, c1) = bg.read_window(block)
    data, valid = source.read((r0, r1), (c0, c1))
    inp = BlockInput(block, tuple(bg.tiles(block)), plan.grid, data.astype(np.float32, copy=False), valid, (r0, c0))
    if plan.tiles_on_read:
        inp.pixels  # noqa: B018  (cut the tiles now)
    return inp


@dataclass(frozen=True)
class ReadResult:
    """A block's input and how long reading it took (what the read step hands to the model step)."""

    inp: BlockInput
    seconds: float


def read_step(plan: ScenePlan, block: Block, source: RasterSource, policy: RetryPolicy = STORAGE) -> ReadResult:
    """The read step of every executor: :func:`read_block`, retried on transient storage failures."""
    t0 = time.perf_counter()
    inp = call_with_retry(lambda: read_block(plan, block, source), policy,
                          f"reading block {block.key} of {plan.input_uri}")
    return ReadResult(inp, time.perf_counter() - t0)
