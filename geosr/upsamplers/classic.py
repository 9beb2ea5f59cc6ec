"""Non-learned upsamplers (nearest, bilinear, bicubic, lanczos) behind the Upsampler interface, in torch
so they run on CPU or CUDA like the learned models.

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


@lru_cache(maxsize=64)
def lanczos_matrix(n: int, scale: int, a: int = 3) -> np.ndarray:
    """(n*scale, n) float64 Lanczos-``a`` resampling matrix, pixel-centre aligned, symmetric edges,
    rows normalised to sum to one."""
    out = np.arange(n * scale, dtype=np.float64)
    centre = (out + 0.5) / scale - 0.5  # position in input pixel coordinates
    support = a
    left = np.floor(centre).astype(np.int64) - support + 1
    taps = np.arange(2 * support, dtype=np.int64)
    idx = left[:, None] + taps[None, :]
    x = centre[:, None] - idx
    w = np.sinc(x) * np.sinc(x / a)
    w[np.abs(x) >= a] = 0.0
    w /= w.sum(axis=1, keepdims=True)
    period = 2 * n
    m = np.mod(idx, period)
    src = np.where(m < n, m, period - 1 - m)
    mat = np.zeros((n * scale, n), dtype=np.float64)
    np.add.at(mat, (np.repeat(np.arange(n * scale), 2 * support), src.ravel()), w.ravel())
    return mat


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

    def __call__(self, batch: TileBatch) -> np.ndarray:
        import torch

        s = self.scale
        b, c, h, w = batch.pixels.shape
        out = np.empty((b, c, h * s, w * s), dtype=np.float32)
        with torch.inference_mode():
            if self.kind == "lanczos":
                my = torch.from_numpy(lanczos_matrix(h, s).astype(np.float32)).to(self.device)
                mx = torch.from_numpy(lanczos_matrix(w, s).astype(np.float32).T.copy()).to(self.device)
            for i in range(b):
                x = torch.from_numpy(np.ascontiguousarray(batch.pixels[i : i + 1], dtype=np.float32)).to(self.device)
                if self.kind == "nearest":
                    y = x.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)
                elif self.kind == "lanczos":
                    y = torch.matmul(torch.matmul(my, x), mx)
                else:
                    y = torch.nn.functional.interpolate(x, scale_factor=s, mode=self.kind, align_corners=False)
                out[i] = y[0].float().cpu().numpy()
        return check_output(batch, out, s)
