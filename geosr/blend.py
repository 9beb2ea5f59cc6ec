"""Blend upsampled tiles into one output block, in the grid's fixed tile order.

For every output pixel ``p`` the block computes ``ref(p) + sum_k w_k(p) * (tile_k(p) - ref(p))`` where
``ref`` is the first tile (in global tile order) that covers ``p`` and the ``w_k`` are the global
normalised weights. Mathematically this is ``sum_k w_k * tile_k``; written this way, tiles that agree
give back exactly their common value (an exact nearest-neighbour upsampler gives exactly the
nearest-neighbour image), and because every block adds the same tiles with the same weights in the
same order, the bytes do not depend on how the scene was cut into blocks.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from .blend_weights import axis_weights
from .grid import Block, TileGrid


class BlockBlender:
    """Accumulates the tiles that touch ``block``; call :meth:`add` in global tile order."""

    def __init__(self, grid: TileGrid, block: Block, bands: int, ramp: str = "cosine") -> None:
        self.grid = grid
        self.block = block
        self.ramp = ramp
        h, w = block.shape
        # Not zero-filled: every pixel is written once when its first tile arrives (ref = tile, acc = 0).
        self._ref = np.empty((bands, h, w), dtype=np.float32)
        self._acc = np.empty((bands, h, w), dtype=np.float32)
        self._covered = np.zeros((h, w), dtype=bool)
        self._last = -1
        self._wy = axis_weights(grid, 0, ramp)
        self._wx = axis_weights(grid, 1, ramp)

    def _slices(self, ky: int, kx: int) -> tuple[slice, slice, slice, slice] | None:
        g, b = self.grid, self.block
        oy, ox = (o * g.scale for o in g.origin(ky, kx))
        n = g.out_tile
        y0, y1 = max(oy, b.y0), min(oy + n, b.y1)
        x0, x1 = max(ox, b.x0), min(ox + n, b.x1)
        if y0 >= y1 or x0 >= x1:
            return None
        return (
            slice(y0 - b.y0, y1 - b.y0),
            slice(x0 - b.x0, x1 - b.x0),
            slice(y0 - oy, y1 - oy),
            slice(x0 - ox, x1 - ox),
        )

    def needs(self, ky: int, kx: int) -> tuple[slice, slice] | None:
        """The tile-local output (rows, cols) of tile (ky, kx) that fall in the block, or None."""
        sl = self._slices(ky, kx)
        return None if sl is None else sl[2:]

    def add(self, ky: int, kx: int, tile: np.ndarray, origin: tuple[int, int] = (0, 0)) -> None:
        """Blend one upsampled tile into the block: ``tile`` is the whole tile ``(bands, out_tile,
        out_tile)`` float32, or any part of it holding :meth:`needs` whose top-left pixel is the tile's
        output pixel ``origin``."""
        idx = self.grid.tile_index(ky, kx)
        if idx <= self._last:
            raise ValueError(f"tiles must be added in increasing global order; got {idx} after {self._last}")
        self._last = idx
        sl = self._slices(ky, kx)
        if sl is None:
            return
        by, bx, ty, tx = sl
        oy, ox = origin
        t = tile[:, ty.start - oy : ty.stop - oy, tx.start - ox : tx.stop - ox]
        if t.dtype != np.float32:
            t = t.astype(np.float32)
        covered = self._covered[by, bx]
        ref = self._ref[:, by, bx]
        acc = self._acc[:, by, bx]
        wy, wx = self._wy[ky][ty], self._wx[kx][tx]
        # Pixels no earlier tile covered take this tile as their reference and get nothing added
        # (t - ref == 0 there), so the weighted difference is only computed where earlier tiles were.
        # In global (row-major) order that is a band of full rows on top plus a rectangle on the left;
        # found from the mask itself, so any grid layout stays exact.
        full_rows = covered.all(axis=1)
        r = int(np.argmin(full_rows)) if not full_rows.all() else covered.shape[0]
        cols = np.flatnonzero(covered[r:].any(axis=0))
        c = int(cols[-1]) + 1 if cols.size else 0
        if r < covered.shape[0]:
            rest = covered[r:, :c]
            new_left = ~rest
            if new_left.any():
                ref[:, r:, :c][:, new_left] = t[:, r:, :c][:, new_left]
                acc[:, r:, :c][:, new_left] = 0.0
                rest[new_left] = True
            ref[:, r:, c:] = t[:, r:, c:]
            acc[:, r:, c:] = 0.0
            covered[r:, c:] = True
        for rows, cs in ((slice(0, r), slice(None)), (slice(r, None), slice(0, c))):
            rr, cc = ref[:, rows, cs], t[:, rows, cs]
            if rr.size == 0:
                continue
            diff = np.subtract(cc, rr)
            diff *= np.multiply.outer(wy[rows], wx[cs])
            acc[:, rows, cs] += diff

    def result(self) -> np.ndarray:
        """The blended block ``(bands, h, w)`` float32. Raises if a pixel was never covered."""
        if not self._covered.all():
            raise RuntimeError(
                f"block {self.block.key}: {int((~self._covered).sum())} pixels not covered by any tile; "
                "the block's tile list is incomplete"
            )
        out = self._ref
        out += self._acc
        self._acc = None  # type: ignore[assignment]  # the blender is spent
        return out


def blend_tiles(grid: TileGrid, block: Block, keys: Sequence[tuple[int, int]], skip: Sequence[bool], bands: int,
                outputs: Iterable[Any], streams: int = 1, ramp: str = "cosine") -> list[np.ndarray]:
    """Blend a block's upsampled tiles (the one blend path of geosr): ``streams`` parallel tile streams with the
    same global weights, in global tile order. ``outputs`` yields one tile per computed key (``streams == 1``)
    or a tuple of ``streams`` tiles (e.g. a sample mean and std); keys with ``skip`` (no valid pixel) blend
    zeros, which only ever reach nodata pixels. Returns one (bands, h, w) float32 array per stream."""
    blenders = [BlockBlender(grid, block, bands, ramp) for _ in range(streams)]
    it = iter(outputs)
    zero = None
    for (ky, kx), skipped in zip(keys, skip):
        if skipped:
            if zero is None:
                zero = np.zeros((bands, grid.out_tile, grid.out_tile), np.float32)
            tiles: tuple[np.ndarray, ...] = (zero,) * streams
        else:
            item = next(it)
            tiles = (item,) if streams == 1 else tuple(item)
        for blender, tile in zip(blenders, tiles, strict=True):
            blender.add(ky, kx, tile)
    return [b.result() for b in blenders]
