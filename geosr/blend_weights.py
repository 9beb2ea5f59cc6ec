"""Blending weights: global, separable, pure functions of the tile grid.

Each tile's weight along an axis is a ramp over the part it shares with each neighbour (flat 1
elsewhere); the weights of all tiles covering an output pixel are divided by their sum, so they form
an exact partition of unity up to float rounding. Everything depends only on the grid (never on the
block that asks), and profiles are computed over whole tiles, so every block sees bit-identical weights.

Ramps:
* ``cosine`` (Hann): ``sin^2(pi/2 * t)``; two complementary ramps sum to one.
* ``linear``: ``t``.
* ``uniform``: no ramp (plain averaging of the overlaps; a baseline, not for production).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .errors import ConfigError
from .grid import TileGrid

RAMPS = ("cosine", "linear", "uniform")


def ramp(length: int, kind: str) -> np.ndarray:
    """Rising ramp of ``length`` samples at pixel centres, strictly inside (0, 1]. float64."""
    if kind not in RAMPS:
        raise ConfigError(f"ramp={kind!r}: choose one of {', '.join(RAMPS)}")
    t = (np.arange(length, dtype=np.float64) + 0.5) / max(length, 1)
    if kind == "cosine":
        return np.sin(0.5 * np.pi * t) ** 2
    if kind == "linear":
        return t
    return np.ones(length, dtype=np.float64)


@lru_cache(maxsize=256)
def tile_profile(length: int, lo: int, hi: int, kind: str) -> np.ndarray:
    """Un-normalised 1-D weight of one tile: ramps up over ``lo`` samples, down over ``hi``. Read-only."""
    w = np.ones(length, dtype=np.float64)
    if lo:
        w[:lo] *= ramp(lo, kind)
    if hi:
        w[length - hi :] *= ramp(hi, kind)[::-1]
    w.setflags(write=False)
    return w


def _axis_profiles(origins: tuple[int, ...], tile: int, scale: int, n: int, kind: str) -> tuple[np.ndarray, ...]:
    """Normalised float32 profiles (one per tile, each ``tile * scale`` long) for one axis."""
    length = tile * scale
    starts = [o * scale for o in origins]
    total = np.zeros(max(n * scale, length), dtype=np.float64)
    raw = []
    for k, s in enumerate(starts):
        lo = (starts[k - 1] + length - s) if k > 0 else 0
        hi = (s + length - starts[k + 1]) if k + 1 < len(starts) else 0
        p = tile_profile(length, lo, hi, kind)
        raw.append(p)
        total[s : s + length] += p  # fixed order: tile index
    out = []
    for s, p in zip(starts, raw):
        q = (p / total[s : s + length]).astype(np.float32)
        q.setflags(write=False)
        out.append(q)
    return tuple(out)


@lru_cache(maxsize=32)
def axis_weights(grid: TileGrid, axis: int, kind: str = "cosine") -> tuple[np.ndarray, ...]:
    """Normalised 1-D weights for every tile along ``axis`` (0 = y, 1 = x) of ``grid``."""
    if axis == 0:
        return _axis_profiles(grid.y_origins, grid.tile, grid.scale, grid.height, kind)
    return _axis_profiles(grid.x_origins, grid.tile, grid.scale, grid.width, kind)


def tile_weight(grid: TileGrid, ky: int, kx: int, kind: str = "cosine") -> np.ndarray:
    """2-D normalised weight (out_tile x out_tile, float32) of tile (ky, kx)."""
    return np.outer(axis_weights(grid, 0, kind)[ky], axis_weights(grid, 1, kind)[kx])
