"""Multiscale overviews: which levels exist, how each is chunked, who writes it, and the 2x reduction.

Level ``l`` (1..L) is level ``l-1`` reduced 2x: each output pixel is the mean of the *valid* pixels of
its 2x2 cell of level ``l-1`` (stored values, so uint16 means are rounded integers); a cell with no
valid pixel is nodata. Odd sizes round up (the last row/column averages what it has). The reduction is
elementwise on stored values, so a level has the same values whether it was computed inside a block
or over the whole scene, for any block size.

Who writes a level: ``write_block`` writes level ``l`` too while the block's region at that level is
still whole level-``l`` write units (chunks, or shards when sharded) that no other block touches; the
level's chunk is ``min(chunk, block >> l)`` and these in-block levels stop when that chunk would fall
below ``min(chunk, 256)`` px. ``finalize`` computes the remaining (small) levels from the deepest
in-block level, window by window, without re-reading level 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from .encode import UINT16_NODATA
from .spec import OutputSpec

SMALLEST_CHUNK = 256  # in-block levels stop when their chunk would fall below min(chunk, this)
ROWS = 64  # output rows per pass of downsample2 (in cache)
TAIL_WINDOW = 1024  # finalize writes tail levels in windows of about this many px (bounded memory)


@dataclass(frozen=True)
class Level:
    """One resolution level of the store (0 is full resolution)."""

    index: int
    shape: tuple[int, int]  # (H, W) at this level
    chunk: tuple[int, int]  # (y, x) chunk of the level's array (one band per chunk)
    shard: tuple[int, int] | None  # (y, x) shard (all bands per shard), Zarr v3 only
    in_block: bool  # written by write_block (level 0 always)
    group: str  # Zarr group holding the level's arrays, "" for the root
    transform: tuple[float, ...]  # affine of this level

    @property
    def factor(self) -> int:
        return 1 << self.index

    def array_path(self, variable: str) -> str:
        return f"{self.group}/{variable}" if self.group else variable

    def region(self, spec: OutputSpec, y0: int, y1: int, x0: int, x1: int) -> tuple[slice, slice]:
        """Level-``index`` rows/cols covered by the level-0 rectangle [y0, y1) x [x0, x1) (y0, x0 on the
        level's grid)."""
        f = self.factor
        return slice(y0 // f, min(math.ceil(y1 / f), self.shape[0])), slice(x0 // f, min(math.ceil(x1 / f), self.shape[1]))


def level_group(index: int) -> str:
    return "" if index == 0 else f"overviews/{index}"


def level_transform(transform: tuple[float, ...], index: int) -> tuple[float, ...]:
    a, b, c, d, e, f = transform
    k = float(1 << index)
    return (a * k, b * k, c, d * k, e * k, f)


def plan_levels(spec: OutputSpec) -> tuple[Level, ...]:
    """Level 0 and the overview levels of ``spec``, with their chunking and writer (block or finalize)."""
    levels = [Level(0, (spec.height, spec.width), (spec.chunk, spec.chunk),
                    (spec.shard, spec.shard) if spec.shard else None, True, "", spec.transform)]
    floor = min(spec.chunk, SMALLEST_CHUNK)
    in_block = True
    tail_chunk = floor
    for k in range(1, spec.overview_levels + 1):
        shape = (math.ceil(spec.height / (1 << k)), math.ceil(spec.width / (1 << k)))
        shard = None
        if in_block:
            span = spec.block >> k  # a block's extent at level k
            c = min(spec.chunk, span)
            if spec.shard:
                s = min(spec.shard, span)
                shard = s if s > c and s % c == 0 else None
            unit = shard or c
            in_block = spec.block % (1 << k) == 0 and c >= floor and span % unit == 0
            if in_block:
                tail_chunk = c
                levels.append(Level(k, shape, (c, c), (shard, shard) if shard else None, True,
                                    level_group(k), level_transform(spec.transform, k)))
                continue
        chunk = (min(tail_chunk, shape[0]), min(tail_chunk, shape[1]))
        levels.append(Level(k, shape, chunk, None, False, level_group(k), level_transform(spec.transform, k)))
    return tuple(levels)


def downsample2(raw: np.ndarray, dtype: str, out: np.ndarray | None = None) -> np.ndarray:
    """(C, h, w) stored values -> (C, ceil(h/2), ceil(w/2)): mean of the valid pixels of each 2x2 cell.

    uint16: integer mean rounded half up (always within [1, 65535] when any pixel is valid), 0 when no
    pixel is valid. float32: mean in float64 cast to float32, NaN when no pixel is valid. The four
    terms are added in a fixed order, so the result does not depend on the array's extent or layout.
    Works one band and a strip of rows at a time, to bound scratch memory and stay in cache."""
    c, h, w = raw.shape
    h2, w2 = math.ceil(h / 2), math.ceil(w / 2)
    if out is None:
        out = np.empty((c, h2, w2), dtype=np.uint16 if dtype == "uint16" else np.float32)
    fill = UINT16_NODATA if dtype == "uint16" else np.nan
    for b in range(c):
        band = raw[b]
        if (h % 2) or (w % 2):
            padded = np.full((2 * h2, 2 * w2), fill, dtype=raw.dtype)
            padded[:h, :w] = band
            band = padded
        for y in range(0, h2, ROWS):
            strip = band[2 * y : 2 * y + 2 * ROWS]
            cells = (strip[0::2, 0::2], strip[0::2, 1::2], strip[1::2, 0::2], strip[1::2, 1::2])
            out[b, y : y + ROWS] = _mean_uint16(cells) if dtype == "uint16" else _mean_float(cells)
    return out


def _mean_uint16(cells: tuple[np.ndarray, ...]) -> np.ndarray:
    a, b, c, d = cells  # (0,0), (0,1), (1,0), (1,1) of each 2x2 cell, added in this fixed order
    total = a.astype(np.int32)
    total += b
    total += c
    total += d
    if a.all() and b.all() and c.all() and d.all():  # the common case: every pixel valid
        total += 2  # (2t + 4) // 8 == (t + 2) >> 2
        total >>= 2
        return total.astype(np.uint16)
    count = (a != UINT16_NODATA).astype(np.int32)
    count += b != UINT16_NODATA
    count += c != UINT16_NODATA
    count += d != UINT16_NODATA
    # integer division has no SIMD path; float64 division of these small integers floors exactly
    num = (2 * total + count).astype(np.float64)
    num /= np.maximum(2 * count, 1)
    return np.floor(num).astype(np.uint16)


def _mean_float(cells: tuple[np.ndarray, ...]) -> np.ndarray:
    total = np.zeros(cells[0].shape, dtype=np.float64)
    count = np.zeros(cells[0].shape, dtype=np.int32)
    for v in cells:
        ok = ~np.isnan(v)
        total += np.where(ok, v, 0.0)
        count += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan).astype(np.float32)


def block_pyramid(raw0: np.ndarray, levels: tuple[Level, ...], dtype: str,
                  buffer: Callable[[str, tuple[int, ...], str], np.ndarray] | None = None
                  ) -> Iterator[tuple[Level, np.ndarray]]:
    """Yield (level, stored values) for the in-block overview levels of a block whose level 0 is ``raw0``.
    ``buffer(name, shape, dtype)`` supplies each level's array (e.g. reused per thread,
    :func:`geosr.scratch.buffer`); a level's array is only valid until the generator moves on."""
    raw = raw0
    for lv in levels[1:]:
        if not lv.in_block:
            return
        c, h, w = raw.shape
        shape = (c, math.ceil(h / 2), math.ceil(w / 2))
        raw = downsample2(raw, dtype, out=buffer(f"overview{lv.index}", shape, dtype) if buffer else None)
        yield lv, raw


def tail_windows(level: Level) -> Iterator[tuple[slice, slice]]:
    """Chunk-aligned windows (rows, cols) covering ``level``, about ``TAIL_WINDOW`` px square."""
    cy, cx = level.chunk
    wy = cy * max(1, TAIL_WINDOW // cy)
    wx = cx * max(1, TAIL_WINDOW // cx)
    h, w = level.shape
    for y0 in range(0, h, wy):
        for x0 in range(0, w, wx):
            yield slice(y0, min(y0 + wy, h)), slice(x0, min(x0 + wx, w))


def build_tail(levels: tuple[Level, ...], dtype: str,
               read: Callable[[Level, slice, slice], np.ndarray],
               write: Callable[[Level, slice, slice, np.ndarray], None]) -> list[int]:
    """Compute every level not written by blocks from the level above it, window by window.

    ``read(level, rows, cols)`` returns stored values of a level's window; ``write`` stores them.
    Returns the indices of the levels it computed."""
    done = []
    for prev, lv in zip(levels, levels[1:]):
        if lv.in_block:
            continue
        ph, pw = prev.shape
        for rows, cols in tail_windows(lv):
            src = read(prev, slice(2 * rows.start, min(2 * rows.stop, ph)), slice(2 * cols.start, min(2 * cols.stop, pw)))
            write(lv, rows, cols, downsample2(src, dtype))
        done.append(lv.index)
    return done
