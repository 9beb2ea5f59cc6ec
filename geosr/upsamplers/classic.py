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
        self._cache: dict[tuple[int, int], tuple] = {}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "scale": self.scale, "kind": self.kind}

    def _matrices(self, h: int, w: int):
        import torch

        key = (h, w)
        m = self._cache.get(key)
        if m is None:
            my = torch.from_numpy(resample_matrix(h, self.scale, self.kind).astype(np.float32)).to(self.device)
            mx = torch.from_numpy(resample_matrix(w, self.scale, self.kind).T.astype(np.float32).copy()).to(self.device)
            m = self._cache[key] = (my, mx)
        return m

    def __call__(self, batch: TileBatch) -> np.ndarray:
        """Separable resampling as two small matrix products per tile (nearest: an exact repeat)."""
        import torch

        s = self.scale
        b, c, h, w = batch.pixels.shape
        out = np.empty((b, c, h * s, w * s), dtype=np.float32)
        with torch.inference_mode():
            if self.kind != "nearest":
                my, mx = self._matrices(h, w)
            for i in range(b):  # one fixed-shape computation per tile: independent of batch composition
                x = torch.from_numpy(np.ascontiguousarray(batch.pixels[i], dtype=np.float32)).to(self.device)
                if self.kind == "nearest":
                    y = x.repeat_interleave(s, dim=1).repeat_interleave(s, dim=2)
                elif self.device == "cpu":
                    torch.matmul(torch.matmul(my, x), mx, out=torch.from_numpy(out[i]))
                    continue
                else:
                    y = torch.matmul(torch.matmul(my, x), mx)
                out[i] = y.cpu().numpy()
        return check_output(batch, out, s)
