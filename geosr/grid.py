"""The scene's global tile grid and the output block grid, as pure functions of geometry.

Edge policy (the whole of it; ``tests/test_grid.py`` checks each clause):

* Tiles are ``tile`` low-res pixels square and step by ``stride = tile - overlap`` from the
  scene's top-left corner, along each axis independently.
* The number of tiles along an axis of ``n`` pixels is ``1 + ceil((n - tile) / stride)`` when
  ``n > tile``, so the grid always covers the scene.
* The *last* tile is shifted back so that it ends flush with the scene border (``origin = n - tile``):
  no tile reads outside the scene, and the last overlap is at least ``overlap`` (it can be larger,
  because ``n - tile`` need not be a multiple of the stride).
* A scene smaller than one tile along an axis gets exactly one tile at origin 0; the pixels it needs
  beyond the border are the scene mirrored about its edge (``symmetric`` reflection, repeated as
  often as needed), and the output beyond the scene is discarded.
* Blocks are rectangles of whole output chunks: ``block`` output pixels square, aligned to 0, the last
  one clipped to the output size. Every output chunk belongs to exactly one block.
* A block computes every tile whose output footprint intersects it (tiles straddling a block edge
  are computed by both neighbours), so it never reads or locks another block's output.

Nothing here touches pixels or files; everything is hashable and immutable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .errors import ConfigError


def axis_origins(n: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Low-res origins of the tiles covering an axis of ``n`` pixels (see the module's edge policy)."""
    if n < 1:
        raise ConfigError(f"scene axis has {n} pixels; it must have at least 1")
    if tile < 1 or overlap < 0 or overlap >= tile:
        raise ConfigError(f"tile={tile}, overlap={overlap}: need tile >= 1 and 0 <= overlap < tile")
    if n <= tile:
        return (0,)
    stride = tile - overlap
    count = 1 + math.ceil((n - tile) / stride)
    return tuple(k * stride for k in range(count - 1)) + (n - tile,)


def mirror_indices(start: int, stop: int, n: int) -> np.ndarray:
    """Indices into ``[0, n)`` for global positions ``start..stop-1`` with symmetric reflection.

    Position -1 maps to 0, n maps to n-1 (the edge pixel repeats once, as ``np.pad(mode="symmetric")``);
    the reflection repeats for positions further out, so any window maps into the scene.
    """
    pos = np.arange(start, stop, dtype=np.int64)
    period = 2 * n
    m = np.mod(pos, period)
    return np.where(m < n, m, period - 1 - m)


@dataclass(frozen=True)
class TileGrid:
    """The global low-res tile grid of a scene of ``height`` x ``width`` pixels upscaled by ``scale``."""

    height: int
    width: int
    tile: int
    overlap: int
    scale: int

    def __post_init__(self) -> None:
        if self.scale < 1:
            raise ConfigError(f"scale={self.scale}: must be a positive integer")
        if self.height < 1 or self.width < 1:
            raise ConfigError(f"scene is {self.height} x {self.width} pixels; it must be at least 1 x 1")
        # validates tile/overlap
        axis_origins(1, self.tile, self.overlap)

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @cached_property
    def y_origins(self) -> tuple[int, ...]:
        return axis_origins(self.height, self.tile, self.overlap)

    @cached_property
    def x_origins(self) -> tuple[int, ...]:
        return axis_origins(self.width, self.tile, self.overlap)

    @property
    def shape(self) -> tuple[int, int]:
        """Number of tiles along (y, x)."""
        return len(self.y_origins), len(self.x_origins)

    @property
    def n_tiles(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def out_shape(self) -> tuple[int, int]:
        return self.height * self.scale, self.width * self.scale

    @property
    def out_tile(self) -> int:
        return self.tile * self.scale

    def tile_index(self, ky: int, kx: int) -> int:
        """Global, fixed order of tiles (row-major); blending sums in this order."""
        return ky * self.shape[1] + kx

    def origin(self, ky: int, kx: int) -> tuple[int, int]:
        """Low-res (row, col) of tile (ky, kx)'s top-left pixel."""
        return self.y_origins[ky], self.x_origins[kx]

    def tiles_touching(self, out_y: tuple[int, int], out_x: tuple[int, int]) -> list[tuple[int, int]]:
        """Tiles (ky, kx) whose output footprint intersects the output rectangle, in global order."""
        ky = _touching(self.y_origins, self.out_tile, self.scale, *out_y)
        kx = _touching(self.x_origins, self.out_tile, self.scale, *out_x)
        return [(a, b) for a in ky for b in kx]


def _touching(origins: tuple[int, ...], out_tile: int, scale: int, lo: int, hi: int) -> range:
    starts = np.asarray(origins, dtype=np.int64) * scale
    # tile k covers [starts[k], starts[k] + out_tile); intersects [lo, hi) iff start < hi and end > lo
    first = int(np.searchsorted(starts + out_tile, lo, side="right"))
    last = int(np.searchsorted(starts, hi, side="left"))
    return range(first, last)


@dataclass(frozen=True)
class Block:
    """One unit of work: an output rectangle of whole chunks, written once by one worker."""

    by: int
    bx: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def key(self) -> str:
        return f"{self.by}_{self.bx}"

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0


@dataclass(frozen=True)
class BlockGrid:
    """Output blocks aligned to output chunks."""

    grid: TileGrid
    block: int
    chunk: int

    def __post_init__(self) -> None:
        if self.chunk < 1:
            raise ConfigError(f"chunk={self.chunk}: must be a positive number of output pixels")
        if self.block < self.chunk or self.block % self.chunk:
            raise ConfigError(
                f"block={self.block} must be a positive multiple of chunk={self.chunk} "
                "so that every output chunk is written by exactly one block"
            )

    @property
    def shape(self) -> tuple[int, int]:
        h, w = self.grid.out_shape
        return math.ceil(h / self.block), math.ceil(w / self.block)

    def __len__(self) -> int:
        ny, nx = self.shape
        return ny * nx

    def get(self, by: int, bx: int) -> Block:
        h, w = self.grid.out_shape
        ny, nx = self.shape
        if not (0 <= by < ny and 0 <= bx < nx):
            raise IndexError(f"block ({by}, {bx}) outside the {ny} x {nx} block grid")
        y0, x0 = by * self.block, bx * self.block
        return Block(by, bx, y0, min(y0 + self.block, h), x0, min(x0 + self.block, w))

    def __iter__(self):
        ny, nx = self.shape
        for by in range(ny):
            for bx in range(nx):
                yield self.get(by, bx)

    def tiles(self, block: Block) -> list[tuple[int, int]]:
        return self.grid.tiles_touching((block.y0, block.y1), (block.x0, block.x1))

    def read_window(self, block: Block) -> tuple[tuple[int, int], tuple[int, int]]:
        """Low-res ((row0, row1), (col0, col1)) inside the scene that holds every pixel the block's tiles need."""
        tiles = self.tiles(block)
        g = self.grid
        rows = [g.y_origins[ky] for ky, _ in tiles]
        cols = [g.x_origins[kx] for _, kx in tiles]
        r0, r1 = min(rows), min(max(rows) + g.tile, g.height)
        c0, c1 = min(cols), min(max(cols) + g.tile, g.width)
        return (r0, r1), (c0, c1)
