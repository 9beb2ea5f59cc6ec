"""Georeferencing metadata of a level: CF grid mapping, x/y pixel-centre coordinates, GeoZarr attributes.

Three audiences read the same facts:

* CF / xarray / rioxarray: the data variable's ``grid_mapping = "spatial_ref"`` names a scalar
  ``spatial_ref`` variable holding pyproj's CF attributes plus ``crs_wkt``, ``spatial_ref`` and a
  GDAL-style ``GeoTransform`` string; 1-D ``x``/``y`` hold pixel centres.
* GDAL (3.9+ reads the CF ``grid_mapping``; 3.4-3.8 only GDAL's own ``_CRS`` attribute, which is
  written too): the geotransform comes from the regularly spaced ``x``/``y`` indexing variables.
* GeoZarr conventions (``zarr_conventions`` registry): ``proj:code``/``proj:wkt2`` and
  ``spatial:dimensions``/``spatial:transform``/``spatial:shape``/``spatial:bbox`` on the group and the
  data variable, ``multiscales`` on the root group.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

# Convention metadata objects of the published v0.1 tags of the zarr-conventions registry (the draft-era
# refs/tags/v1 URLs were never published); readers identify a convention by its uuid.
CONVENTION_PROJ = {
    "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f",
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/proj/refs/tags/v0.1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/proj/blob/v0.1/README.md",
    "name": "proj",
    "description": "Coordinate reference system information for geospatial data",
}
CONVENTION_SPATIAL = {
    "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4",
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v0.1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/spatial/blob/v0.1/README.md",
    "name": "spatial",
    "description": "Spatial coordinate information",
}
CONVENTION_MULTISCALES = {
    "uuid": "d35379db-88df-4056-af3a-620245f8e347",
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/multiscales/refs/tags/v0.1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/multiscales/blob/v0.1/README.md",
    "name": "multiscales",
    "description": "Multiscale layout of zarr datasets",
}
GRID_MAPPING = "spatial_ref"


@lru_cache(maxsize=16)
def _crs(wkt: str):
    from pyproj import CRS

    return CRS.from_wkt(wkt)


def crs_code(wkt: str) -> str | None:
    """``"EPSG:32633"``-style code when the CRS has one (matched at high confidence), else None."""
    auth = _crs(wkt).to_authority(min_confidence=90)
    return f"{auth[0]}:{auth[1]}" if auth else None


def epsg(wkt: str) -> int | None:
    code = crs_code(wkt)
    return int(code.split(":")[1]) if code and code.startswith("EPSG:") else None


def crs_wkt2(wkt: str) -> str:
    return _crs(wkt).to_wkt()


def crs_name(wkt: str) -> str:
    return _crs(wkt).name


def crs_units(wkt: str) -> str | None:
    """Unit of the CRS's first axis (e.g. "metre", "degree")."""
    axes = _crs(wkt).axis_info
    return axes[0].unit_name if axes else None


def gdal_geotransform(transform: tuple[float, ...]) -> str:
    """rasterio (a, b, c, d, e, f) -> GDAL's "c a b f d e" string (``GeoTransform`` attribute)."""
    a, b, c, d, e, f = transform
    return " ".join(repr(float(v)) for v in (c, a, b, f, d, e))


def pixel_centres(transform: tuple[float, ...], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """1-D float64 (x, y) of pixel centres of a north-up grid."""
    a, _, c, _, e, f = transform
    x = c + a * (np.arange(width, dtype=np.float64) + 0.5)
    y = f + e * (np.arange(height, dtype=np.float64) + 0.5)
    return x, y


def bbox(transform: tuple[float, ...], height: int, width: int) -> list[float]:
    a, _, c, _, e, f = transform
    xs, ys = (c, c + a * width), (f, f + e * height)
    return [min(xs), min(ys), max(xs), max(ys)]


def grid_mapping_attrs(wkt: str, transform: tuple[float, ...]) -> dict[str, Any]:
    """Attributes of the scalar ``spatial_ref`` variable (CF grid mapping, as rioxarray writes it)."""
    crs = _crs(wkt)
    attrs = {k: _jsonable(v) for k, v in crs.to_cf().items()}
    attrs["crs_wkt"] = crs.to_wkt()
    attrs["spatial_ref"] = crs.to_wkt()
    attrs["GeoTransform"] = gdal_geotransform(transform)
    return attrs


def coordinate_attrs(wkt: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """CF attributes of the ``x`` and ``y`` coordinates (standard_name, units, axis) for the CRS."""
    crs = _crs(wkt)
    x: dict[str, Any] = {}
    y: dict[str, Any] = {}
    for axis in crs.cs_to_cf():
        if axis.get("axis") == "X":
            x = dict(axis)
        elif axis.get("axis") == "Y":
            y = dict(axis)
    if crs.is_geographic:
        x.setdefault("standard_name", "longitude")
        y.setdefault("standard_name", "latitude")
    x.setdefault("standard_name", "projection_x_coordinate")
    y.setdefault("standard_name", "projection_y_coordinate")
    x.update(axis="X", long_name=x.get("long_name", "x coordinate of pixel centre"))
    y.update(axis="Y", long_name=y.get("long_name", "y coordinate of pixel centre"))
    return {k: _jsonable(v) for k, v in x.items()}, {k: _jsonable(v) for k, v in y.items()}


def geozarr_attrs(wkt: str, transform: tuple[float, ...], height: int, width: int,
                  dims: tuple[str, str] = ("y", "x")) -> dict[str, Any]:
    """``proj:`` and ``spatial:`` convention attributes (with their ``zarr_conventions`` entries);
    ``dims`` names the (y, x) dimensions."""
    attrs: dict[str, Any] = {"zarr_conventions": [CONVENTION_PROJ, CONVENTION_SPATIAL]}
    code = crs_code(wkt)
    if code:
        attrs["proj:code"] = code
    attrs["proj:wkt2"] = crs_wkt2(wkt)
    attrs.update({
        "spatial:dimensions": list(dims),
        "spatial:transform_type": "affine",
        "spatial:transform": [float(v) for v in transform],
        "spatial:shape": [int(height), int(width)],
        "spatial:bbox": bbox(transform, height, width),
        "spatial:registration": "pixel",
    })
    return attrs


def gdal_crs_attr(wkt: str) -> dict[str, Any]:
    """GDAL's own ``_CRS`` array attribute (the only CRS source GDAL 3.4-3.8 read)."""
    return {"wkt": crs_wkt2(wkt)}


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.generic,)):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_jsonable(i) for i in v]
    return v
