"""Sensor operators in torch and the low-resolution consistency projection.

``degrade`` matches :func:`geosr.metrics.degrade` (block average, or Gaussian blur with scipy's
``reflect`` edges + decimation at footprint centres). ``project`` makes a high-res estimate reproduce
its low-res input under the operator:

* ``average``: a few back-projection iterations with a bicubic-spread correction (smooth), then one
  exact step ``x += nearest(lr - avg(x))``: after it, ``avg(x) == lr`` up to float rounding.
* ``gaussian``: iterative back-projection (Irani & Peleg) ``x += bicubic(lr - D(x))``; not exact, the
  residual shrinks geometrically with the number of iterations.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from ..errors import ConfigError

OPERATORS = ("average", "gaussian")


def upsample(x: torch.Tensor, scale: int, mode: str = "bicubic") -> torch.Tensor:
    if mode == "nearest":
        return x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return F.interpolate(x, scale_factor=scale, mode=mode, align_corners=False)


@lru_cache(maxsize=16)
def _gauss_kernel(sigma: float) -> tuple[float, ...]:
    radius = int(4.0 * sigma + 0.5)  # scipy's truncate=4.0
    k = [math.exp(-0.5 * (i / sigma) ** 2) for i in range(-radius, radius + 1)]
    s = sum(k)
    return tuple(v / s for v in k)


def _symmetric_index(n: int, pad: int, device) -> torch.Tensor:
    pos = torch.arange(-pad, n + pad, device=device)
    period = 2 * n
    m = torch.remainder(pos, period)
    return torch.where(m < n, m, period - 1 - m)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = torch.tensor(_gauss_kernel(float(sigma)), dtype=x.dtype, device=x.device)
    r = (k.numel() - 1) // 2
    c = x.shape[1]
    iy = _symmetric_index(x.shape[2], r, x.device)
    ix = _symmetric_index(x.shape[3], r, x.device)
    y = x.index_select(2, iy)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    y = y.index_select(3, ix)
    return F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def degrade(x: torch.Tensor, scale: int, operator: str = "average", sigma: float | None = None) -> torch.Tensor:
    """(B, C, sH, sW) -> (B, C, H, W) under the sensor operator."""
    if operator == "average":
        return F.avg_pool2d(x, scale)
    if operator == "gaussian":
        b = gaussian_blur(x, 0.5 * scale if sigma is None else sigma)
        k = scale // 2
        if scale % 2:
            return b[:, :, k::scale, k::scale]
        return 0.25 * (b[:, :, k - 1::scale, k - 1::scale] + b[:, :, k::scale, k - 1::scale]
                       + b[:, :, k - 1::scale, k::scale] + b[:, :, k::scale, k::scale])
    raise ConfigError(f"operator={operator!r}: choose one of {', '.join(OPERATORS)}")


def project(x: torch.Tensor, lowres: torch.Tensor, scale: int, operator: str = "average", iterations: int = 3,
            sigma: float | None = None) -> torch.Tensor:
    """Back-project ``x`` (B, C, sH, sW) onto the set of images whose degradation equals ``lowres``."""
    if operator not in OPERATORS:
        raise ConfigError(f"operator={operator!r}: choose one of {', '.join(OPERATORS)}")
    for _ in range(iterations):
        x = x + upsample(lowres - degrade(x, scale, operator, sigma), scale, "bicubic")
    if operator == "average":
        x = x + upsample(lowres - degrade(x, scale, operator), scale, "nearest")
    return x


def consistent_base(lowres: torch.Tensor, scale: int, mode: str = "bicubic", operator: str = "average",
                    iterations: int = 3) -> torch.Tensor:
    """The interpolated low-res image, back-projected so that it already reproduces the input; the model
    predicts the residual over it."""
    return project(upsample(lowres, scale, mode), lowres, scale, operator, iterations)


def project_blended(hr: "np.ndarray", lowres: "np.ndarray", scale: int, operator: str = "average") -> "np.ndarray":
    """Re-project a *blended* region (C, sH, sW) onto its low-res input (C, H, W), after overlapping tiles were
    mixed with weights that vary inside a low-res pixel's footprint (which breaks the tiles' exact
    consistency slightly). For the block-average operator this is one exact, purely local step (each
    low-res pixel's footprint on its own), so applying it per output block gives the same bytes whatever
    the block partition, as long as blocks are aligned to multiples of ``scale``. Other operators are not
    local: they are returned unchanged (their tiles were already back-projected)."""
    import numpy as np

    if operator != "average":
        return hr
    from ..metrics import degrade

    corr = (lowres.astype(np.float32) - degrade(hr.astype(np.float32, copy=False), scale)).astype(np.float32)
    out = hr.astype(np.float32, copy=True)
    view = out.reshape(out.shape[0], corr.shape[1], scale, corr.shape[2], scale)
    view += corr[:, :, None, :, None]  # broadcast each low-res correction over its footprint, in place
    return out


@lru_cache(maxsize=32)
def _area_matrix(n_in: int, num: int, den: int) -> tuple[tuple[float, ...], ...]:
    """(n_in*num/den, n_in) exact area-average weights from a grid of ``n_in`` cells to one ``den/num`` times
    coarser (each output cell averages the input cells it overlaps, by overlap length)."""
    n_out = n_in * num // den
    rows = []
    for i in range(n_out):
        a, b = i * den / num, (i + 1) * den / num  # the output cell in input-cell units
        row = [0.0] * n_in
        for k in range(int(math.floor(a)), min(n_in, int(math.ceil(b)))):
            row[k] = (min(b, k + 1) - max(a, k)) * num / den
        rows.append(tuple(row))
    return tuple(rows)


def area_resample(x: torch.Tensor, num: int, den: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H*num/den, W*num/den), ``num < den``: every output pixel the exact area average of
    the input it covers. Integrals are kept, so an image that reproduces a low-res input under the block
    average keeps reproducing it at the coarser output (for ``den/num`` = 2 it is the 2x2 block mean)."""
    h, w = x.shape[-2:]
    if (h * num) % den or (w * num) % den:
        raise ConfigError(f"area_resample: {h}x{w} is not divisible by {den}/{num}")
    my = torch.tensor(_area_matrix(h, num, den), dtype=x.dtype, device=x.device)
    mx = torch.tensor(_area_matrix(w, num, den), dtype=x.dtype, device=x.device)
    return torch.einsum("yh,bchw,xw->bcyx", my, x, mx)
