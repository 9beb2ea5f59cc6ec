"""Non-learned upsamplers (nearest, bilinear, bicubic, lanczos) behind the Upsampler interface, in torch
so they run on CPU or CUDA like the learned models. bilinear/bicubic (Keys, a=-0.5)/lanczos (3 lobes) are
separable interpolation matrices with mirrored tile edges.

Each tile is processed on its own fixed-shape computation, so a tile's output never depends on which
other tiles share its batch (the engine's partition invariance relies on this).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from .. import __version__
from ..grid import mirror_indices
from ..errors import ConfigError
from .base import TileBatch, check_output, resolve_device

KINDS = ("nearest", "bilinear", "bicubic", "lanczos")


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys cubic convolution kernel (a = -0.5: the 'bicubic' of GDAL, Pillow and OpenCV)."""
    x = np.abs(x)
    return np.where(x <= 1, (a + 2) * x**3 - (a + 3) * x**2 + 1,
                    np.where(x < 2, a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a, 0.0))


def _lanczos3(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < 3, np.sinc(x) * np.sinc(x / 3), 0.0)


def _triangle(x: np.ndarray) -> np.ndarray:
    return np.clip(1 - np.abs(x), 0, None)


KERNELS = {"bilinear": (_triangle, 1), "bicubic": (_cubic, 2), "lanczos": (_lanczos3, 3)}


@lru_cache(maxsize=64)
def resample_matrix(n: int, scale: int, kind: str) -> np.ndarray:
    """(n*scale, n) float64 interpolation matrix for ``kind`` (bilinear, bicubic, lanczos):
    pixel-centre aligned, symmetric (mirrored) edges, rows normalised to sum to one. Read-only."""
    kernel, support = KERNELS[kind]
    out = np.arange(n * scale, dtype=np.float64)
    centre = (out + 0.5) / scale - 0.5  # position in input pixel coordinates
    left = np.floor(centre).astype(np.int64) - support + 1
    idx = left[:, None] + np.arange(2 * support, dtype=np.int64)[None, :]
    w = kernel(centre[:, None] - idx)
    w /= w.sum(axis=1, keepdims=True)
    period = 2 * n
    m = np.mod(idx, period)
    src = np.where(m < n, m, period - 1 - m)
    mat = np.zeros((n * scale, n), dtype=np.float64)
    np.add.at(mat, (np.repeat(np.arange(n * scale), 2 * support), src.ravel()), w.ravel())
    mat.setflags(write=False)
    return mat


@lru_cache(maxsize=64)
def polyphase(scale: int, kind: str) -> tuple[int, tuple[tuple[int, tuple[float, ...]], ...]]:
    """Per output phase ``p`` (output pixel ``i*scale + p``): the first input tap relative to ``i`` and the
    normalised tap weights. Away from the edges every row of :func:`resample_matrix` is one of these;
    with the input mirrored by ``support`` pixels the edges are the same too. Returns (support, phases)."""
    kernel, support = KERNELS[kind]
    phases = []
    for p in range(scale):
        centre = (p + 0.5) / scale - 0.5
        first = int(np.floor(centre)) - support + 1
        taps = first + np.arange(2 * support)
        w = kernel(centre - taps)
        w = w / w.sum()
        phases.append((first, tuple(float(v) for v in w)))
    return support, tuple(phases)


def lanczos_matrix(n: int, scale: int) -> np.ndarray:
    return resample_matrix(n, scale, "lanczos")


class ClassicUpsampler:
    """``kind`` in nearest / bilinear / bicubic / lanczos (Lanczos-3)."""

    version = __version__

    def __init__(self, kind: str = "bicubic", scale: int = 4, batch_size: int = 16, device: str = "auto",
                 bands: int | None = None, **params: Any) -> None:
        if kind not in KINDS:
            raise ConfigError(f"model.name={kind!r}: classic upsamplers are {', '.join(KINDS)}")
        if params:
            raise ConfigError(f"model.params {sorted(params)} are not used by {kind}; remove them")
        self.kind = kind
        self.name = kind
        self.scale = int(scale)
        self.bands = bands
        self.batch_size = int(batch_size)
        self.device = resolve_device(device)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "scale": self.scale, "kind": self.kind}

    def _resample_axis(self, x, axis: int, out, xp) -> None:
        """Polyphase 1-D resampling of ``x`` (..., H, W) along ``axis`` (-2 = rows, -1 = cols) into ``out``
        (that axis ``scale`` times longer): ``2*support`` multiply-adds per output sample. Only
        elementwise IEEE operations (no reductions, no fused multiply-add), so a tile's result is the same
        bits whatever else shares its batch. ``xp`` is numpy (CPU: single-threaded, no intra-op thread
        contention between block workers) or torch (CUDA)."""
        s = self.scale
        support, phases = polyphase(s, self.kind)
        axis = axis % x.ndim
        n = x.shape[axis]
        idx = mirror_indices(-support, n + support, n)
        if xp is np:
            padded = np.take(x, idx, axis=axis)
        else:
            padded = x.index_select(axis, xp.from_numpy(idx).to(x.device))
        shape = list(x.shape)
        shape.insert(axis + 1, s)  # phase p of sample i is output sample i*s + p
        view = out.reshape(shape)
        lead = (slice(None),) * axis
        for p, (first, weights) in enumerate(phases):
            acc = None
            for k, w in enumerate(weights):
                start = first + k + support
                tap = padded[lead + (slice(start, start + n),)]
                if acc is None:
                    acc = tap * np.float32(w)
                elif xp is np:
                    acc += tap * np.float32(w)
                else:
                    acc.add_(tap, alpha=w)
            view[lead + (slice(None), p)] = acc

    def __call__(self, batch: TileBatch) -> np.ndarray:
        """Separable polyphase resampling per tile (nearest: an exact repeat). CPU: numpy; CUDA: torch."""
        s = self.scale
        b, c, h, w = batch.pixels.shape
        out = np.empty((b, c, h * s, w * s), dtype=np.float32)
        if self.device == "cpu":
            cols = np.empty((c, h, w * s), dtype=np.float32)
            for i in range(b):  # tile by tile: the working set stays in cache (about 2x faster)
                x = np.ascontiguousarray(batch.pixels[i], dtype=np.float32)
                if self.kind == "nearest":
                    out[i] = x.repeat(s, axis=1).repeat(s, axis=2)
                    continue
                # columns first on the small input, then rows: the big pass writes whole rows
                self._resample_axis(x, -1, cols, np)
                self._resample_axis(cols, -2, out[i], np)
            return check_output(batch, out, s)
        import torch

        with torch.inference_mode():
            for i in range(b):
                x = torch.from_numpy(np.ascontiguousarray(batch.pixels[i], dtype=np.float32)).to(self.device)
                if self.kind == "nearest":
                    y = x.repeat_interleave(s, dim=1).repeat_interleave(s, dim=2)
                else:
                    cols = torch.empty((c, h, w * s), dtype=torch.float32, device=x.device)
                    self._resample_axis(x, -1, cols, torch)
                    y = torch.empty((c, h * s, w * s), dtype=torch.float32, device=x.device)
                    self._resample_axis(cols, -2, y, torch)
                out[i] = y.cpu().numpy()
        return check_output(batch, out, s)
