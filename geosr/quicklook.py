"""Quicklook PNG: the input (nearest-upsampled) and the super-resolved output side by side, with one
percentile stretch computed on the input and applied to both so they compare honestly."""

from __future__ import annotations

from typing import Any

import numpy as np

from .config import RunConfig
from .errors import OutputError
from .io.source import open_source
from .io.storage import StorageEnv

RGB_NAMES = (("red", "b04", "b4"), ("green", "b03", "b3"), ("blue", "b02", "b2"))


def rgb_indices(names: tuple[str, ...]) -> list[int]:
    """Indices of the red, green, blue bands by name when recognisable, else the first three (or one)."""
    low = [n.lower() for n in names]
    found = []
    for aliases in RGB_NAMES:
        hit = next((i for i, n in enumerate(low) if n in aliases), None)
        if hit is None:
            break
        found.append(hit)
    if len(found) == 3:
        return found
    return [0, 1, 2] if len(names) >= 3 else [0, 0, 0]


def stretch(img: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(3, H, W) float -> (H, W, 3) uint8 with per-band [lo, hi] mapped to [0, 255]."""
    scaled = (img - lo[:, None, None]) / np.maximum(hi - lo, 1e-12)[:, None, None]
    return (np.clip(np.nan_to_num(scaled), 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)


def centre_window(h: int, w: int, size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    ch, cw = min(h, size), min(w, size)
    r0, c0 = (h - ch) // 2, (w - cw) // 2
    return (r0, r0 + ch), (c0, c0 + cw)


def read_output(store_uri: str, variable: str, env: StorageEnv, rows: tuple[int, int],
                cols: tuple[int, int]) -> np.ndarray:
    """Output reflectance (C, h, w) float32 (NaN where nodata) for an output-pixel window."""
    import xarray as xr

    fs = env.filesystem(store_uri)
    store = fs.get_mapper(str(store_uri).split("://", 1)[-1]) if "://" in str(store_uri) else str(store_uri)
    ds = xr.open_zarr(store, consolidated=None, mask_and_scale=True)
    da = ds[variable].isel(y=slice(*rows), x=slice(*cols))
    arr = da.values.astype(np.float32)
    if np.issubdtype(ds[variable].encoding.get("dtype", np.float32), np.integer) and "scale_factor" not in ds[variable].encoding:
        arr = arr / 10000.0
    return arr


def run_parameters(store_uri: str, env: StorageEnv) -> dict | None:
    """The run configuration recorded in a finalized store's provenance, if any."""
    import zarr

    from .store.backend import StoreLocation
    from .store.provenance import ATTR

    loc = StoreLocation(store_uri, env)
    require_store(loc)
    root = zarr.open_group(loc.zarr_store(read_only=True), mode="r")
    record: Any = root.attrs.get(ATTR) or {}
    return (record.get("provenance") or {}).get("parameters")


def make_quicklook(input_uri: str, store_uri: str, png_path: str, cfg: RunConfig, env: StorageEnv,
                 crop: int = 256, percentiles: tuple[float, float] = (2.0, 98.0)) -> str:
    """Write ``png_path``: left the input window (``crop`` low-res px, centred), right the output there."""
    from PIL import Image

    from .store.backend import StoreLocation, storage_errors

    require_store(StoreLocation(store_uri, env))
    src = open_source(input_uri, cfg.input, env)
    m = src.meta
    s = cfg.tiling.scale
    rows, cols = centre_window(m.height, m.width, crop)
    data, valid = src.read(rows, cols)
    idx = rgb_indices(tuple(m.band_names))
    lr = data[idx]
    sr = read_output(store_uri, cfg.output.variable, env, (rows[0] * s, rows[1] * s), (cols[0] * s, cols[1] * s))[idx]
    vals = lr[:, valid] if valid.any() else lr.reshape(3, -1)
    lo = np.percentile(vals, percentiles[0], axis=1)
    hi = np.percentile(vals, percentiles[1], axis=1)
    left = stretch(lr.repeat(s, axis=1).repeat(s, axis=2), lo, hi)
    right = stretch(sr, lo, hi)
    gap = np.full((left.shape[0], 8, 3), 255, np.uint8)
    with storage_errors(png_path, "write the quicklook"):
        try:
            Image.fromarray(np.concatenate([left, gap, right], axis=1)).save(png_path)
        except FileNotFoundError:
            raise OutputError(f"cannot write the quicklook {png_path}: its folder does not exist; create it or "
                              "choose another path") from None
    return png_path


def require_store(loc: Any) -> None:
    """Raise a one-line :class:`OutputError` unless a geosr store is at ``loc``."""
    from .store.ledger import Ledger

    if Ledger(loc).read_plan() is None:
        raise OutputError(f"{loc.uri} is not a geosr output store (no .geosr/plan.json); check the path, or create "
                          "it with geosr run")
