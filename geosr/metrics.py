"""Quality measures used by tests, benchmarks, provenance and ``geosr eval``.

* :func:`seam_metric` — mean squared gradient across tile boundaries over the mean squared gradient
  elsewhere. 1.0 means boundaries are statistically invisible; bicubic sits at about 1.0.
* :func:`degrade` / :func:`lr_consistency` — the sensor operator (block average, or Gaussian blur +
  decimation) and how well a super-resolved image reproduces its low-res input under it
  (reflectance L1 and spectral angle, as opensr-test measures consistency).
* :func:`psnr`, :func:`ssim` — against high-res truth.

All take numpy arrays ``(C, H, W)`` (or ``(H, W)``) of reflectance and an optional ``(H, W)`` valid mask.
Per-block accumulators (:class:`SeamAccumulator`, :class:`ConsistencyAccumulator`) let a scene's metric be
summed block by block without holding the scene.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage


def _chw(img: np.ndarray) -> np.ndarray:
    """(C, H, W) view of ``img``; floats stay as they are (no full-size float64 copy of a block)."""
    img = np.asarray(img)
    if not np.issubdtype(img.dtype, np.floating):
        img = img.astype(np.float64)
    return img[None] if img.ndim == 2 else img


def tile_boundaries(origins: Sequence[int], tile: int, scale: int, n: int) -> list[int]:
    """Output positions where a tile starts or ends strictly inside an axis of ``n`` low-res pixels."""
    edges = set()
    for o in origins:
        for e in (o * scale, (o + tile) * scale):
            if 0 < e < n * scale:
                edges.add(e)
    return sorted(edges)


@dataclass
class SeamAccumulator:
    """Sums squared differences between neighbouring pixels across boundary lines and elsewhere.

    A boundary at position ``b`` (along y or x) is the step between pixel ``b-1`` and ``b``."""

    seam_sum: float = 0.0
    seam_n: int = 0
    inner_sum: float = 0.0
    inner_n: int = 0

    def add(self, img: np.ndarray, bounds_y: Iterable[int], bounds_x: Iterable[int],
            valid: np.ndarray | None = None, y0: int = 0, x0: int = 0, strip: int = 512,
            period: int = 1, band_mean: bool = False) -> None:
        """Add one image region whose top-left output pixel is (y0, x0); boundaries are global.
        ``band_mean``: ``img`` is (C, H, W) and its mean over bands is what is measured (taken strip by
        strip, the same values as ``img.mean(axis=0)`` without a full-size copy).

        ``period``: compare boundary lines only with inner lines of the same phase (global position a
        multiple of ``period``). Pass the upscaling factor: tile boundaries fall between low-res pixels,
        and an upsampler's gradients there differ from those inside a low-res pixel even without seams.
        Works in row strips so memory stays bounded for large blocks."""
        a = np.asarray(img)
        a = a[None] if a.ndim == 2 else a
        by, bx = list(bounds_y), list(bounds_x)
        h = a.shape[1]
        part = (lambda r0, r1: a[:, r0:r1].mean(axis=0)[None]) if band_mean else (lambda r0, r1: a[:, r0:r1])
        for s in range(0, h, strip):
            e = min(s + strip, h)
            lo = max(s - 1, 0)  # row pairs (lo, lo+1) .. (e-2, e-1): each pair counted once
            rows = part(lo, e)
            self._axis(rows[:, s - lo :], None if valid is None else valid[s:e], 2, bx, x0, period)
            if e - lo > 1:
                self._axis(rows, None if valid is None else valid[lo:e], 1, by, y0 + lo, period)

    def _axis(self, a: np.ndarray, valid: np.ndarray | None, axis: int, bounds: list[int], off: int,
              period: int) -> None:
        n = a.shape[axis] - 1  # neighbour pairs (i, i+1) along the axis; the pair's line is at i+1
        pairs = np.flatnonzero((np.arange(n) + off + 1) % period == 0)  # only in-phase lines are compared
        if pairs.size == 0:
            return
        d = ((np.take(a, pairs + 1, axis=axis).astype(np.float32, copy=False)
              - np.take(a, pairs, axis=axis)) ** 2).sum(axis=0)
        is_seam = np.isin(pairs, np.asarray(bounds, dtype=np.int64) - off - 1)
        if valid is None or valid.all():  # the common case: per-line sums, no masks
            per_line = d.sum(axis=2 - axis, dtype=np.float64)  # one sum per compared line
            across = d.shape[2 - axis]  # pixels along each line
            self.seam_sum += float(per_line[is_seam].sum())
            self.seam_n += int(is_seam.sum()) * across
            self.inner_sum += float(per_line[~is_seam].sum())
            self.inner_n += int((~is_seam).sum()) * across
            return
        vax = axis - 1
        v = np.take(valid, pairs + 1, axis=vax) & np.take(valid, pairs, axis=vax)
        line = is_seam[:, None] if axis == 1 else is_seam[None, :]
        seam_mask, inner_mask = line & v, ~line & v
        self.seam_sum += float(d[seam_mask].sum(dtype=np.float64))
        self.seam_n += int(seam_mask.sum())
        self.inner_sum += float(d[inner_mask].sum(dtype=np.float64))
        self.inner_n += int(inner_mask.sum())

    def merge(self, other: "SeamAccumulator") -> "SeamAccumulator":
        return SeamAccumulator(self.seam_sum + other.seam_sum, self.seam_n + other.seam_n,
                               self.inner_sum + other.inner_sum, self.inner_n + other.inner_n)

    def value(self) -> float:
        if self.seam_n == 0 or self.inner_n == 0 or self.inner_sum == 0:
            return float("nan")
        return (self.seam_sum / self.seam_n) / (self.inner_sum / self.inner_n)


def seam_metric(img: np.ndarray, bounds_y: Iterable[int], bounds_x: Iterable[int],
                valid: np.ndarray | None = None, period: int = 1) -> float:
    """Gradient energy across tile boundaries over gradient energy inside tiles at the same phase
    (``period`` = upscaling factor; see :meth:`SeamAccumulator.add`). 1.0 = invisible."""
    acc = SeamAccumulator()
    acc.add(img, list(bounds_y), list(bounds_x), valid, period=period)
    return acc.value()


def degrade(img: np.ndarray, scale: int, operator: str = "average", sigma: float | None = None) -> np.ndarray:
    """Sensor operator: ``average`` (block mean) or ``gaussian`` (blur, sigma default 0.5*scale, then decimate
    at block centres). Input (C, sH, sW) -> (C, H, W)."""
    a = _chw(img)
    c, h, w = a.shape
    if h % scale or w % scale:
        raise ValueError(f"image {h}x{w} is not a multiple of scale {scale}")
    if operator == "average":
        acc = np.float32 if a.dtype == np.float32 else np.float64  # float32 blocks: no float64 copy
        out = np.empty((c, h // scale, w // scale), dtype=acc)
        step = 32  # low-res rows per pass: the scratch stays in cache
        for y in range(0, h // scale, step):
            strip = a[:, y * scale : (y + step) * scale]
            rows: np.ndarray = strip[:, 0::scale].astype(acc)  # whole rows first: contiguous adds
            for k in range(1, scale):
                rows += strip[:, k::scale]
            dst = out[:, y : y + step]
            np.copyto(dst, rows[:, :, 0::scale])  # then strided adds on the 1/scale-size sum
            for k in range(1, scale):
                dst += rows[:, :, k::scale]
        out /= acc(scale * scale)
        return out
    if operator == "gaussian":
        s = 0.5 * scale if sigma is None else sigma
        blurred = ndimage.gaussian_filter(a, sigma=(0, s, s), mode="reflect")
        # sample at the centre of each low-res footprint (average of the 2x2 central pixels for even scales)
        k = scale // 2
        if scale % 2:
            return blurred[:, k::scale, k::scale]
        return 0.25 * (blurred[:, k - 1::scale, k - 1::scale] + blurred[:, k::scale, k - 1::scale]
                       + blurred[:, k - 1::scale, k::scale] + blurred[:, k::scale, k::scale])
    raise ValueError(f"operator={operator!r}: choose average or gaussian")


@dataclass
class ConsistencyAccumulator:
    """Per-pixel L1 (mean over bands) and spectral angle (radians) between degraded output and input."""

    l1_sum: float = 0.0
    angle_sum: float = 0.0
    n: int = 0

    def add(self, degraded: np.ndarray, lowres: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Works in strips of rows, so its float64 scratch stays small (and in cache)."""
        dd, xx = _chw(degraded), _chw(lowres)
        step = 128
        for y in range(0, dd.shape[1], step):
            d = dd[:, y : y + step].astype(np.float64)
            x = xx[:, y : y + step].astype(np.float64)
            l1 = np.abs(d - x).mean(axis=0)
            dot = (d * x).sum(axis=0)
            norm = np.sqrt((d * d).sum(axis=0) * (x * x).sum(axis=0))
            cos = np.where(norm > 0, dot / np.where(norm > 0, norm, 1.0), 1.0)
            ang = np.arccos(np.clip(cos, -1.0, 1.0))
            if valid is None:
                self.l1_sum += float(l1.sum())
                self.angle_sum += float(ang.sum())
                self.n += int(l1.size)
            else:
                m = valid[y : y + step]
                self.l1_sum += float(l1[m].sum())
                self.angle_sum += float(ang[m].sum())
                self.n += int(m.sum())

    def merge(self, other: "ConsistencyAccumulator") -> "ConsistencyAccumulator":
        return ConsistencyAccumulator(self.l1_sum + other.l1_sum, self.angle_sum + other.angle_sum, self.n + other.n)

    def value(self) -> dict[str, float]:
        if self.n == 0:
            return {"lr_l1": float("nan"), "lr_spectral_angle_deg": float("nan")}
        return {"lr_l1": self.l1_sum / self.n, "lr_spectral_angle_deg": float(np.degrees(self.angle_sum / self.n))}


def lr_consistency(sr: np.ndarray, lowres: np.ndarray, scale: int, operator: str = "average",
                   valid: np.ndarray | None = None) -> dict[str, float]:
    acc = ConsistencyAccumulator()
    acc.add(degrade(sr, scale, operator), lowres, valid)
    return acc.value()


def psnr(pred: np.ndarray, truth: np.ndarray, data_range: float = 1.0, valid: np.ndarray | None = None) -> float:
    p, t = _chw(pred).astype(np.float64), _chw(truth).astype(np.float64)
    err = (p - t) ** 2
    mse = float(err[:, valid].mean()) if valid is not None else float(err.mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(data_range**2 / mse)


def ssim(pred: np.ndarray, truth: np.ndarray, data_range: float = 1.0, sigma: float = 1.5) -> float:
    """Mean SSIM over bands (Wang et al. 2004, Gaussian window sigma 1.5, K1=0.01, K2=0.03)."""
    p, t = _chw(pred).astype(np.float64), _chw(truth).astype(np.float64)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for a, b in zip(p, t):
        f = lambda z: ndimage.gaussian_filter(z, sigma, truncate=3.5)  # noqa: E731
        mu_a, mu_b = f(a), f(b)
        saa = f(a * a) - mu_a**2
        sbb = f(b * b) - mu_b**2
        sab = f(a * b) - mu_a * mu_b
        num = (2 * mu_a * mu_b + c1) * (2 * sab + c2)
        den = (mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2)
        m = num / den
        pad = int(3.5 * sigma + 0.5)
        vals.append(float(m[pad:-pad, pad:-pad].mean()) if min(m.shape) > 2 * pad else float(m.mean()))
    return float(np.mean(vals))
