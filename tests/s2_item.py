"""A small synthetic Sentinel-2 L2A scene as Earth Search publishes it: one COG per band (10 m: blue, green, red,
nir; 20 m: rededge1, scl), a JP2 twin of red that must not be picked, and a STAC Item with ``eo:bands``,
``raster:bands`` (nodata 0, scale 0.0001, offset -0.1), ``s2:processing_baseline``, the projection extension,
platform/constellation/instruments. Used by the STAC Item input tests (local files, and the same files served by
SeaweedFS over s3:// and plain HTTP)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

EPSG = 32632
ORIGIN = (499980.0, 5300040.0)  # UL corner of an MGRS 32T tile
SIZE = 160  # 10 m pixels per side (a multiple of 2: the 20 m bands have SIZE // 2)
BANDS_10M = {"blue": ("B02", 0.490), "green": ("B03", 0.560), "red": ("B04", 0.665), "nir": ("B08", 0.842)}
BANDS_20M = {"rededge1": ("B05", 0.704)}


def dn_pattern(name: str, size: int) -> np.ndarray:
    """Smooth, band-specific uint16 DNs (with the +1000 baseline offset), 0 (nodata) in the first 3 columns."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    k = sum(map(ord, name)) % 7 + 1
    refl = 0.05 + 0.04 * k / 7 + 0.03 * np.sin(xx / (4.0 + k)) * np.cos(yy / 6.0) + 0.0004 * (xx + yy)
    dn = np.round(refl * 10000 + 1000).astype(np.uint16)
    dn[:, :3 * size // SIZE] = 0
    return dn


def scl_pattern(size: int) -> np.ndarray:
    """Scene classification at 20 m: vegetation (4) with a cloud block (9) and a shadow block (3)."""
    scl = np.full((size, size), 4, dtype=np.uint8)
    scl[10:20, 30:45] = 9
    scl[50:60, 5:15] = 3
    return scl


def write_cog(path: Path, data: np.ndarray, res: float, crs_epsg: int = EPSG, nodata: float | None = 0) -> None:
    import rasterio
    from rasterio.transform import from_origin

    profile = dict(driver="COG", width=data.shape[1], height=data.shape[0], count=1, dtype=data.dtype.name,
                   crs=f"EPSG:{crs_epsg}", transform=from_origin(ORIGIN[0], ORIGIN[1], res, res), nodata=nodata,
                   blocksize=64, compress="deflate")
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data, 1)


def _asset(key: str, band: str, wl: float | None, res: float, href: str, data_type: str = "uint16",
           reflectance: bool = True) -> dict:
    size = SIZE if res == 10 else SIZE // 2
    rb = {"nodata": 0, "data_type": data_type, "spatial_resolution": res}
    if reflectance:
        rb.update(bits_per_sample=15, scale=0.0001, offset=-0.1)
    eo = {"name": band, "common_name": key} if wl else {"name": band}
    if wl:
        eo["center_wavelength"] = wl
    return {
        "href": href, "type": "image/tiff; application=geotiff; profile=cloud-optimized",
        "title": f"{band} - {res:g}m", "eo:bands": [eo], "raster:bands": [rb],
        "proj:shape": [size, size], "proj:transform": [res, 0.0, ORIGIN[0], 0.0, -res, ORIGIN[1]],
        "roles": ["data"] if reflectance else ["data", "reflectance"][:1],
    }


def item_dict(hrefs: dict[str, str], item_id: str = "S2B_32TMT_20240611_0_L2A") -> dict:
    """The Item with each asset's href from ``hrefs`` (asset key -> href)."""
    from pyproj import Transformer

    t = Transformer.from_crs(EPSG, 4326, always_xy=True)
    x0, y1 = ORIGIN
    x1, y0 = x0 + SIZE * 10, y1 - SIZE * 10
    ring = [list(t.transform(x, y)) for x, y in ((x0, y1), (x1, y1), (x1, y0), (x0, y0), (x0, y1))]
    assets = {}
    for key, (band, wl) in {**BANDS_10M}.items():
        assets[key] = _asset(key, band, wl, 10, hrefs[key])
    for key, (band, wl) in BANDS_20M.items():
        assets[key] = _asset(key, band, wl, 20, hrefs[key])
    assets["scl"] = _asset("scl", "SCL", None, 20, hrefs["scl"], "uint8", reflectance=False)
    assets["red-jp2"] = {**copy.deepcopy(assets["red"]), "href": hrefs["red"][:-4] + ".jp2", "type": "image/jp2"}
    assets["thumbnail"] = {"href": "thumb.jpg", "type": "image/jpeg", "roles": ["thumbnail"]}
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id,
        "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
                            "https://stac-extensions.github.io/raster/v1.1.0/schema.json"],
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": [min(p[0] for p in ring), min(p[1] for p in ring), max(p[0] for p in ring), max(p[1] for p in ring)],
        "properties": {
            "datetime": "2024-06-11T10:36:29.024000Z", "platform": "sentinel-2b", "constellation": "sentinel-2",
            "instruments": ["msi"], "eo:cloud_cover": 4.2, "proj:epsg": EPSG, "mgrs:utm_zone": 32,
            "s2:processing_baseline": "05.10", "s2:product_type": "S2MSI2A", "earthsearch:boa_offset_applied": False,
        },
        "links": [], "assets": assets, "collection": "sentinel-2-l2a",
    }


def write_scene(root: Path, *, item_name: str = "item.json", relative: bool = True, **overrides) -> Path:
    """COGs and the Item under ``root``; hrefs relative to the Item (or absolute paths). Returns the Item path.
    ``overrides`` replace a band's array (``red=..``) or CRS (``red_epsg=32633``)."""
    root.mkdir(parents=True, exist_ok=True)
    hrefs = {}
    for key in list(BANDS_10M) + list(BANDS_20M) + ["scl"]:
        res = 10 if key in BANDS_10M else 20
        size = SIZE if res == 10 else SIZE // 2
        data = overrides.get(key)
        if data is None:
            data = scl_pattern(size) if key == "scl" else dn_pattern(key, size)
        path = root / "cogs" / f"{key.upper() if key != 'scl' else 'SCL'}.tif"
        path.parent.mkdir(exist_ok=True)
        write_cog(path, data, res, overrides.get(f"{key}_epsg", EPSG))
        hrefs[key] = f"cogs/{path.name}" if relative else str(path)
    item = root / item_name
    item.write_text(json.dumps(item_dict(hrefs), indent=1))
    return item
