"""The classic kernels as pure functions: nearest, bilinear, bicubic (Keys, a=-0.5) and lanczos (3 lobes) as
separable polyphase filters with mirrored edges, in float32 elementwise arithmetic, so an output sample is the same
bits in any window holding its taps (what the window path, :mod:`.window_path`, and the tiles agree on)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

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


def margins(scale: int, kind: str) -> tuple[int, int]:
    """(before, after): how many input samples before and after sample ``i`` an output sample of ``i``
    reads, over all phases (0, 0 for nearest). An output sample is the same bits in any window that holds
    those input samples un-mirrored."""
    if kind == "nearest":
        return 0, 0
    support, phases = polyphase(scale, kind)
    return max(-first for first, _ in phases), max(first + 2 * support - 1 for first, _ in phases)


def resample_padded(padded: np.ndarray, axis: int, n: int, scale: int, kind: str, out: np.ndarray) -> None:
    """Polyphase 1-D resampling along ``axis`` of ``padded`` (that axis: ``n`` samples plus ``support``
    already-padded samples on each side) into ``out`` (that axis ``n * scale`` long).

    Output sample ``i*scale + p`` is ``sum_k w_pk * padded[i + first_p + k + support]``: a product, then
    additions in tap order; only elementwise IEEE float32 operations (no reductions, no fused multiply-add),
    so a sample is the same bits whatever window or batch it is computed in -- a tile, a sub-rectangle of a
    tile (:func:`upsample_window`) or a whole block window all agree wherever their inputs agree."""
    support, phases = polyphase(scale, kind)
    shape = list(padded.shape)
    shape[axis] = n
    lead = (slice(None),) * axis
    view = out.view()
    view.shape = shape[: axis + 1] + [scale] + shape[axis + 1 :]  # raises rather than copy (``out`` may be a view)
    # the scratch takes the taps' memory layout, so a transposed (tall and narrow) window is walked along
    # its long axis (see upsample_window)
    acc = np.empty_like(padded[lead + (slice(0, n),)], dtype=np.float32)
    tmp = np.empty_like(acc)
    for p, (first, weights) in enumerate(phases):
        for k, w in enumerate(weights):
            start = first + k + support
            tap = padded[lead + (slice(start, start + n),)]
            if k == 0:
                np.multiply(tap, np.float32(w), out=acc)
            else:
                np.multiply(tap, np.float32(w), out=tmp)
                acc += tmp
        view[lead + (slice(None), p)] = acc


def pad_width(kind: str) -> int:
    """Samples of padding each side that :func:`upsample_window` expects (the kernel's support)."""
    return 0 if kind == "nearest" else KERNELS[kind][1]


def upsample_window(src: np.ndarray, rows: np.ndarray, cols: np.ndarray, scale: int, kind: str,
                    out: np.ndarray | None = None) -> np.ndarray:
    """Upsample the samples of ``src`` (C, H, W) float32 picked by the index arrays ``rows`` and ``cols``
    (each ``n + 2 * pad_width(kind)`` long: the samples plus their padding, mirrored or real) -> (C,
    n_rows * scale, n_cols * scale) float32, into ``out`` if given. Columns first, then rows, as every
    tile is upsampled on CPU, so an output sample is the same bits in any window whose picked samples
    around it are the same."""
    pad = pad_width(kind)
    ny, nx = rows.size - 2 * pad, cols.size - 2 * pad
    if cols.size < rows.size:  # gather along the shorter list first: copy only what is used
        x = np.take(np.take(src, cols, axis=2), rows, axis=1)
    else:
        x = np.take(np.take(src, rows, axis=1), cols, axis=2)
    c = x.shape[0]
    # A tall, narrow window (a strip along a tile's side) is stored transposed, so numpy's inner loops run
    # along its long side; the arithmetic is elementwise, so the layout never changes a bit of the result.
    tall = cols.size * 4 < rows.size

    def empty(h: int, w: int) -> np.ndarray:
        return np.empty((c, w, h), dtype=np.float32).transpose(0, 2, 1) if tall else np.empty((c, h, w), np.float32)

    if tall:
        x = np.ascontiguousarray(x.transpose(0, 2, 1)).transpose(0, 2, 1)
    if out is None:
        out = empty(ny * scale, nx * scale)
    if kind == "nearest":
        out[...] = x.repeat(scale, axis=1).repeat(scale, axis=2)
        return out
    mid = empty(rows.size, nx * scale)
    resample_padded(x, 2, nx, scale, kind, mid)
    resample_padded(mid, 1, ny, scale, kind, out)
    return out
