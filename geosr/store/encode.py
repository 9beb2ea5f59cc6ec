"""Pixel encoding (reflectance <-> stored values) and the Zarr codecs of a spec.

``uint16``: stored = round(reflectance * 10000) clipped to [1, 65535]; 0 is nodata, so no valid pixel
ever becomes nodata (reflectance <= 0 is stored as 1, i.e. 0.0001). The arrays carry CF
``scale_factor = 0.0001`` and ``add_offset = 0``: xarray decodes them to float reflectance with NaN
nodata, while GDAL reads the raw integers and reports the scale/offset (``ds.scales``).

``float32``: stored = reflectance, NaN is nodata.

Everything here is elementwise, so encoding a block or the whole scene gives the same bytes.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import numpy as np

SCALE = 10000  # uint16 stores reflectance * SCALE
UINT16_NODATA = 0


def nodata(dtype: str) -> float | int:
    return UINT16_NODATA if dtype == "uint16" else float("nan")


ROWS = 64  # rows per pass: the float scratch of a strip stays in cache


def encode(data: np.ndarray, valid: np.ndarray, dtype: str, out: np.ndarray | None = None) -> np.ndarray:
    """(C, h, w) float reflectance + (h, w) valid mask -> stored values of ``dtype`` (into ``out`` if given).

    Pixels that are not valid, or not finite, become nodata. Works in strips of rows, so the scratch
    stays in cache and the mask work is skipped where a strip is all valid and finite."""
    if data.ndim != 3 or valid.shape != data.shape[1:]:
        raise ValueError(f"data must be (C, h, w) with a (h, w) valid mask; got {data.shape} and {valid.shape}")
    if out is None:
        out = np.empty(data.shape, dtype=dtype)
    c, h, w = data.shape
    scratch = np.empty((min(ROWS, h), w), dtype=np.float32)
    fill = UINT16_NODATA if dtype == "uint16" else np.nan
    for y0 in range(0, h, ROWS):
        y1 = min(y0 + ROWS, h)
        ok = valid[y0:y1]
        all_valid = bool(ok.all())
        for i in range(c):  # one band at a time, in place: bounded scratch memory
            band, dst = data[i, y0:y1], out[i, y0:y1]
            finite = bool(np.isfinite(band).all())
            if dtype == "uint16":
                # float32 arithmetic is exact enough here: |x * 1e4| < 2^24
                s = scratch[: y1 - y0]
                np.multiply(band, np.float32(SCALE), out=s, casting="unsafe")
                np.rint(s, out=s)
                np.clip(s, 1, 65535, out=s)
                if not finite:
                    s[~np.isfinite(s)] = UINT16_NODATA  # (no undefined float -> int casts)
                np.copyto(dst, s, casting="unsafe")
            else:
                np.copyto(dst, band, casting="unsafe")
            if not (all_valid and finite):
                dst[~ok | ~np.isfinite(band)] = fill
    return out


def decode(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values -> float32 reflectance with NaN for nodata."""
    if dtype == "uint16":
        out = raw.astype(np.float32) / np.float32(SCALE)
        out[raw == UINT16_NODATA] = np.nan
        return out
    return raw.astype(np.float32, copy=False)


def valid_mask(raw: np.ndarray, dtype: str) -> np.ndarray:
    return raw != UINT16_NODATA if dtype == "uint16" else ~np.isnan(raw)


def variable_attrs(dtype: str, zarr_format: int) -> dict[str, Any]:
    """CF attributes of a data array for ``dtype`` (scale/offset for uint16, units, v3 _FillValue)."""
    attrs: dict[str, Any] = {"units": "1", "long_name": "surface reflectance"}
    if dtype == "uint16":
        attrs.update(scale_factor=1.0 / SCALE, add_offset=0.0)
    if zarr_format == 3:
        # Zarr v3's fill_value is only the value of unwritten chunks; xarray reads the CF mask value from
        # the _FillValue attribute, floats as base64 of little-endian float64 (xarray's FillValueCoder).
        attrs["_FillValue"] = UINT16_NODATA if dtype == "uint16" else _b64_float(float("nan"))
    return attrs


def std_attrs(dtype: str, zarr_format: int, variable: str, samples: int) -> dict[str, Any]:
    """CF/geosr attributes of the per-pixel standard deviation variable (``<variable>_std``): encoded like
    ``variable`` (same dtype, scale, nodata), described for people and tools."""
    attrs = variable_attrs(dtype, zarr_format)
    attrs["long_name"] = f"standard deviation of surface reflectance over {samples} model samples"
    floor = " (uint16: a std under 0.00005 is stored as 1, since 0 is nodata)" if dtype == "uint16" else ""
    attrs["description"] = (
        f"Per-pixel spread of the super-resolution model: the standard deviation (ddof=0) of {samples} "
        f"independent stochastic samples of each tile, whose mean is '{variable}'. Across tile overlaps the "
        "per-tile std is blended with the same weights as the data (sum_k w_k std_k): exact where one tile "
        "covers a pixel, elsewhere an approximation of the blended sample's std that never falls below it. "
        f"It is the spread of one sample; the standard error of the {samples}-sample mean is std/sqrt({samples}). "
        f"Nodata wherever '{variable}' is nodata{floor}. Level 0 only: no overviews."
    )
    attrs["geosr:uncertainty"] = {
        "of": variable,
        "samples": int(samples),
        "statistic": "standard deviation, ddof=0",
        "blend": "weighted mean of per-tile std with the data's blending weights",
        "overviews": "none (level 0 only)",
    }
    return attrs


def _b64_float(v: float) -> str:
    return base64.standard_b64encode(struct.pack("<d", v)).decode()


def compressors(compressor: str, level: int, zarr_format: int, itemsize: int) -> Any:
    """The ``compressors`` argument of ``zarr.create_array`` for the spec's compressor (None: uncompressed).

    blosc uses its zstd codec with byte shuffle (helps uint16/float32 planes); its level is clamped to 0..9."""
    if compressor == "none":
        return None
    if zarr_format == 2:
        import numcodecs

        if compressor == "zstd":
            return numcodecs.Zstd(level=level)
        return numcodecs.Blosc(cname="zstd", clevel=min(level, 9), shuffle=numcodecs.Blosc.SHUFFLE)
    from zarr.codecs import BloscCodec, ZstdCodec

    if compressor == "zstd":
        return ZstdCodec(level=level)
    return BloscCodec(cname="zstd", clevel=min(level, 9), shuffle="shuffle", typesize=itemsize)
