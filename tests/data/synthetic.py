"""Tiny generated GeoTIFF fixtures: realistic-ish reflectance imagery and deliberately broken files.

Everything is deterministic for a given ``seed``. Imagery is a land-cover map (water, vegetation,
soil, built-up) made of smooth thresholded noise, each class with its own spectral signature, plus
multi-scale texture: it has edges and fine detail, like real scenes, and values in reflectance
range (0.005..0.7), encoded as DN = reflectance*10000 (uint16/int16), *255 (uint8) or as is (float32).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import ndimage

NodataLayout = Literal["corner", "stripe", "random", "all"]
Pattern = Literal["smooth", "ramp"]

#: reflectance signature per class, for (blue, green, red, nir); more bands interpolate.
_SIGNATURES = np.array(
    [
        [0.060, 0.050, 0.030, 0.015],  # water
        [0.030, 0.070, 0.040, 0.450],  # vegetation
        [0.090, 0.130, 0.180, 0.260],  # bare soil
        [0.140, 0.150, 0.160, 0.200],  # built-up
    ],
    dtype=np.float64,
)

_ENCODE_SCALE = {"uint8": 255.0, "uint16": 10000.0, "int16": 10000.0, "float32": 1.0, "float64": 1.0}


def default_transform(crs: str | None, *, res: float | None = None):
    """A plausible north-up transform for ``crs`` (metres for projected CRSs, degrees for geographic)."""
    from affine import Affine
    from rasterio.crs import CRS

    def north_up(west: float, north: float, size: float) -> Affine:
        return Affine(size, 0.0, west, 0.0, -size, north)

    if crs is not None and CRS.from_user_input(crs).is_geographic:
        return north_up(14.0, 46.0, res or 1e-4)
    if crs is not None and CRS.from_user_input(crs).to_epsg() == 3857:
        return north_up(1_558_000.0, 5_780_000.0, res or 10.0)
    return north_up(399_960.0, 5_000_040.0, res or 10.0)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def synthetic_reflectance(height: int, width: int, bands: int, seed: int = 0) -> np.ndarray:
    """(bands, height, width) float64 reflectance in [0.005, 0.7] with land-cover edges and texture."""
    rng = np.random.default_rng(seed)
    shape = (height, width)
    scale = max(4.0, min(height, width) / 8.0)
    a, b = _smooth_noise(rng, shape, scale), _smooth_noise(rng, shape, scale * 0.7)
    classes = np.where(a < -0.6, 0, np.where(b > 0.3, 2, np.where(a > 0.9, 3, 1)))
    wavelengths = np.linspace(0, 3, bands) if bands > 1 else np.array([2.0])
    signature = np.stack([np.interp(wavelengths, np.arange(4), s) for s in _SIGNATURES])  # (4 classes, bands)
    texture = 0.6 * _smooth_noise(rng, shape, 1.2) + 0.4 * _smooth_noise(rng, shape, 4.0)
    gradient = np.linspace(0.9, 1.1, width)[None, :] * np.linspace(1.05, 0.95, height)[:, None]
    out = np.empty((bands, height, width), dtype=np.float64)
    for k in range(bands):
        base = signature[classes, k]
        out[k] = base * gradient * (1.0 + 0.12 * texture) + 0.004 * rng.standard_normal(shape)
    return np.clip(out, 0.005, 0.7)


def nodata_layout_mask(
    layout: NodataLayout | None, *, bands: int, height: int, width: int, seed: int = 0
) -> np.ndarray:
    """(bands, height, width) bool, True where ``make_geotiff`` writes nodata for ``layout``.

    ``corner``: a triangle in the top-left corner (all bands); ``stripe``: rows 40%..50% (all bands);
    ``random``: ~5% of pixels, each in one randomly chosen band; ``all``: everything.
    """
    out = np.zeros((bands, height, width), dtype=bool)
    if layout is None:
        return out
    rows, cols = np.mgrid[0:height, 0:width]
    if layout == "corner":
        out[:] = (rows + cols) < max(1, min(height, width) // 3)
    elif layout == "stripe":
        r0 = int(height * 0.4)
        out[:, r0 : max(r0 + 1, int(height * 0.5)), :] = True
    elif layout == "random":
        rng = np.random.default_rng(seed + 7919)
        hit = rng.random((height, width)) < 0.05
        which = rng.integers(0, bands, size=(height, width))
        for k in range(bands):
            out[k] = hit & (which == k)
    elif layout == "all":
        out[:] = True
    else:
        raise ValueError(f"nodata_layout={layout!r}: use None, 'corner', 'stripe', 'random' or 'all'")
    return out


def synthetic_dn(
    *, height: int, width: int, bands: int, dtype: str, seed: int = 0, pattern: Pattern = "smooth"
) -> np.ndarray:
    """The pixel values ``make_geotiff`` writes before nodata is applied."""
    dt = np.dtype(dtype)
    if pattern == "ramp":
        rows, cols = np.mgrid[0:height, 0:width]
        top = 250 if dt == np.uint8 else 30000
        ramp = np.stack([(rows * width + cols + 1000 * k) % top + 1 for k in range(bands)])
        return (ramp / 10000.0).astype(dt) if dt.kind == "f" else ramp.astype(dt)
    if pattern != "smooth":
        raise ValueError(f"pattern={pattern!r}: use 'smooth' or 'ramp'")
    refl = synthetic_reflectance(height, width, bands, seed)
    if dt.kind == "f":
        return refl.astype(dt)
    return np.round(refl * _ENCODE_SCALE.get(dt.name, 10000.0)).astype(dt)


def make_geotiff(
    path: str | Path,
    *,
    height: int,
    width: int,
    bands: int = 4,
    dtype: str = "uint16",
    crs: str | None = "EPSG:32633",
    transform=None,
    nodata: float | None = None,
    nodata_layout: NodataLayout | None = None,
    band_descriptions: Sequence[str | None] | None = None,
    tags: Mapping[str, str] | None = None,
    tiled: bool = True,
    blocksize: int = 256,
    seed: int = 0,
    pattern: Pattern = "smooth",
    band_tags: Sequence[Mapping[str, str]] | None = None,
    mask: Literal["internal", "alpha"] | None = None,
    compress: str | None = "deflate",
    interleave: Literal["pixel", "band"] = "pixel",
) -> Path:
    """Write a synthetic GeoTIFF and return its path.

    ``nodata_layout`` marks pixels invalid (see :func:`nodata_layout_mask`): written as ``nodata``
    (required then) or, with ``mask="internal"``/``"alpha"``, as an internal mask / alpha band (the
    union over bands). Valid pixels never equal ``nodata``. ``crs=None`` writes no CRS.
    """
    import rasterio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if nodata_layout is not None and nodata is None and mask is None:
        raise ValueError("nodata_layout needs a nodata value or mask='internal'/'alpha'")
    data = synthetic_dn(height=height, width=width, bands=bands, dtype=dtype, seed=seed, pattern=pattern)
    invalid = nodata_layout_mask(nodata_layout, bands=bands, height=height, width=width, seed=seed)
    if nodata is not None:
        nd = data.dtype.type(nodata)
        if not np.isnan(nd):
            data[data == nd] = nd + 1 if nd < np.asarray(data).max() else nd - 1
        if mask is None:
            data[invalid] = nd
    if transform is None:
        transform = default_transform(crs)
    count = bands + (1 if mask == "alpha" else 0)
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": dtype,
        "transform": transform,
        "interleave": interleave,
        # GDAL would otherwise call a 4th uint8 band alpha (RGBA): here bands are data unless mask="alpha"
        "photometric": "MINISBLACK",
    }
    if crs is not None:
        profile["crs"] = crs
    if nodata is not None:
        profile["nodata"] = nodata
    if compress:
        profile["compress"] = compress
    if tiled:
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    else:
        profile.update(tiled=False, blockysize=min(blocksize, height))
    union = invalid.any(axis=0)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data, indexes=list(range(1, bands + 1)))
            if mask == "alpha":
                from rasterio.enums import ColorInterp

                top = np.iinfo(np.dtype(dtype)).max if np.dtype(dtype).kind in "ui" else 1
                dst.write(np.where(union, 0, top).astype(dtype), indexes=count)
                ci = [ColorInterp.gray] + [ColorInterp.undefined] * (bands - 1) + [ColorInterp.alpha]
                dst.colorinterp = ci
            elif mask == "internal":
                dst.write_mask(np.where(union, 0, 255).astype("uint8"))
            for i, desc in enumerate(band_descriptions or (), start=1):
                if desc is not None:
                    dst.set_band_description(i, desc)
            if tags:
                dst.update_tags(**tags)
            for i, bt in enumerate(band_tags or (), start=1):
                if bt:
                    dst.update_tags(i, **bt)
    return path


def make_ungeoreferenced_tiff(path: str | Path, *, height: int = 64, width: int = 64) -> Path:
    """A valid TIFF with neither CRS nor geotransform (e.g. a plain scanned image)."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    path = Path(path)
    data = synthetic_dn(height=height, width=width, bands=3, dtype="uint16")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=3, dtype="uint16") as dst:
            dst.write(data)
    return path


def truncate_file(path: str | Path, *, fraction: float | None = None, keep_bytes: int | None = None) -> Path:
    """Cut ``path`` in place to ``fraction`` of its size (or to ``keep_bytes``), like an interrupted copy."""
    path = Path(path)
    raw = path.read_bytes()
    n = keep_bytes if keep_bytes is not None else int(len(raw) * (fraction if fraction is not None else 0.6))
    path.write_bytes(raw[:n])
    return path


def make_truncated_geotiff(path: str | Path, *, fraction: float = 0.6, **kwargs) -> Path:
    """A GeoTIFF whose header is intact (it opens) but whose image data stops early (reads fail)."""
    kwargs.setdefault("height", 512)
    kwargs.setdefault("width", 512)
    kwargs.setdefault("blocksize", 128)
    make_geotiff(path, **kwargs)
    return truncate_file(path, fraction=fraction)


def make_corrupt_block_geotiff(path: str | Path, *, block: tuple[int, int] = (1, 1), **kwargs) -> Path:
    """A full-length GeoTIFF with garbage in one tile (``block`` = (col, row) in blocks).

    The first and last tiles are intact, so it opens and passes header checks; reading the
    damaged tile fails in the decompressor.
    """
    import rasterio

    kwargs.setdefault("height", 512)
    kwargs.setdefault("width", 512)
    kwargs.setdefault("blocksize", 128)
    make_geotiff(path, **kwargs)
    bx, by = block
    with rasterio.open(path) as ds:
        offset = int(ds.get_tag_item(f"BLOCK_OFFSET_{bx}_{by}", "TIFF", bidx=1))
        size = int(ds.get_tag_item(f"BLOCK_SIZE_{bx}_{by}", "TIFF", bidx=1))
    raw = bytearray(Path(path).read_bytes())
    raw[offset : offset + size] = np.random.default_rng(1234).integers(0, 256, size, dtype=np.uint8).tobytes()
    Path(path).write_bytes(bytes(raw))
    return Path(path)


def write_not_a_raster(path: str | Path, text: str = "this is not a GeoTIFF\n") -> Path:
    """A file with a raster-looking name and text content."""
    path = Path(path)
    path.write_text(text)
    return path
