"""Non-learned upsamplers (nearest, bilinear, bicubic, lanczos) behind the Upsampler interface: numpy on
CPU, torch on CUDA. bilinear/bicubic (Keys, a=-0.5)/lanczos (3 lobes) are separable polyphase filters with
mirrored tile edges.

Every output sample is the same elementwise float32 arithmetic on its taps, whatever window it is computed
in (:func:`.kernels.upsample_window`): a tile's output never depends on which other tiles share its batch (the
engine's partition invariance), and a whole block window gives a tile's bits wherever the tile's taps are
its own (the window path, :mod:`.window_path`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import __version__
from ..errors import ConfigError
from ..grid import mirror_indices
from . import window_path
from .base import TileBatch, check_output, resolve_device
from .kernels import KINDS, pad_width, polyphase, upsample_window


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

    def upsample_block_window(self, grid: Any, block: Any, window: np.ndarray, window_valid: np.ndarray,
                              window_origin: tuple[int, int], ramp: str,
                              out: np.ndarray | None = None) -> np.ndarray | None:
        """The window path (:class:`~geosr.upsamplers.UpsamplesWindows`, :mod:`.window_path`): on CPU, a block
        whose window allows it is upsampled as one window, with the tiled path's bytes; None otherwise."""
        if self.device != "cpu" or not window_path.applies(grid, window, window_valid):
            return None
        return window_path.upsample_block(grid, block, window, window_origin, self.kind, ramp, out=out)

    def _resample_axis_torch(self, x, axis: int, out, torch) -> None:
        """CUDA: :func:`resample_padded`'s multiply-adds, in the same order, with torch; edges mirrored."""
        s = self.scale
        support, phases = polyphase(s, self.kind)
        axis = axis % x.ndim
        n = x.shape[axis]
        idx = mirror_indices(-support, n + support, n)
        padded = x.index_select(axis, torch.from_numpy(idx).to(x.device))
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
                else:
                    acc.add_(tap, alpha=w)
            view[lead + (slice(None), p)] = acc

    def __call__(self, batch: TileBatch) -> np.ndarray:
        """Separable polyphase resampling per tile (nearest: an exact repeat). CPU: numpy
        (:func:`upsample_window`, single-threaded: no intra-op contention between block workers); CUDA: torch."""
        s = self.scale
        b, c, h, w = batch.pixels.shape
        out = np.empty((b, c, h * s, w * s), dtype=np.float32)
        if self.device == "cpu":
            pad = pad_width(self.kind)
            ri, ci = mirror_indices(-pad, h + pad, h), mirror_indices(-pad, w + pad, w)
            for i in range(b):  # tile by tile: the working set stays in cache
                x = np.asarray(batch.pixels[i], dtype=np.float32)
                out[i] = upsample_window(x, ri, ci, s, self.kind)
            return check_output(batch, out, s)
        import torch

        with torch.inference_mode():
            for i in range(b):
                t: Any = torch.from_numpy(np.ascontiguousarray(batch.pixels[i], dtype=np.float32)).to(self.device)
                if self.kind == "nearest":
                    y = t.repeat_interleave(s, dim=1).repeat_interleave(s, dim=2)
                else:
                    cols = torch.empty((c, h, w * s), dtype=torch.float32, device=t.device)
                    self._resample_axis_torch(t, -1, cols, torch)
                    y = torch.empty((c, h * s, w * s), dtype=torch.float32, device=t.device)
                    self._resample_axis_torch(cols, -2, y, torch)
                out[i] = y.cpu().numpy()
        return check_output(batch, out, s)
