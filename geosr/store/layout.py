"""The store's Zarr hierarchy, created (metadata and coordinates, no pixels) in one go.

::

    <store>/                      root group: multiscales, proj:/spatial: attrs, geosr record
      <variable>  (band, y, x)    level 0; chunks (1, chunk, chunk) [v3 shards (bands, shard, shard)]
      <variable>_std (band, y, x) with output.uncertainty_samples: per-pixel std, level 0 only, same layout
      band (band)  x (x)  y (y)   band names; pixel centres (float64)
      spatial_ref ()              CF grid mapping: crs_wkt, spatial_ref, GeoTransform
      overviews/<l>/              level l = 1..L, 2**l coarser: <variable> (band, y_<l>, x_<l>), band,
                                  x_<l>, y_<l>, spatial_ref; proj:/spatial:/geosr:level attrs
      .geosr/                     ledger (plan, block markers, completion), ignored by Zarr readers

Level 0 lives in the root group, so ``ZARR:"store":/<variable>`` (GDAL) and ``xr.open_zarr(store)``
read full resolution. Each overview level names its pixel-centre coordinates after itself (``x_<l>``,
``y_<l>``): xarray's ``open_datatree`` requires every child group's coordinates to align with the ones
it inherits from the root, and an ``x`` of another length would not. The coordinates carry CF
``axis``/``standard_name`` attributes, from which rioxarray finds the spatial dimensions whatever
their names (on a level's variable, or ``tree[...].to_dataset(inherit=False)``: a datatree node's
default Dataset view also carries the root's inherited ``x``/``y``, which rioxarray would pick); GDAL
takes the last two dimensions. The root's ``multiscales`` attribute (zarr-conventions
multiscales v0.1, composed with ``spatial:``/``proj:``) lists every level's array, shape and affine.

Chunks hold one band each: a band-selective read (e.g. two bands of ten for an index) decodes only
those bands, GDAL's block is exactly one chunk, and each chunk's bytes do not depend on the band
count. With Zarr v3 sharding a shard holds every band of its area, so the object count stays that of
(bands, shard, shard) chunking while reads stay per band.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .encode import compressors, nodata, std_attrs, variable_attrs
from .georef import (
    CONVENTION_MULTISCALES,
    CONVENTION_PROJ,
    CONVENTION_SPATIAL,
    GRID_MAPPING,
    coordinate_attrs,
    gdal_crs_attr,
    geozarr_attrs,
    grid_mapping_attrs,
    pixel_centres,
)
from .overviews import Level
from .spec import OutputSpec

DIMS = ("band", "y", "x")


def level_dims(index: int) -> tuple[str, str, str]:
    """(band, y, x) dimension names of level ``index``: ``y``/``x`` at level 0, ``y_<l>``/``x_<l>`` below."""
    return DIMS if index == 0 else ("band", f"y_{index}", f"x_{index}")


def multiscales_attr(spec: OutputSpec, levels: tuple[Level, ...]) -> dict[str, Any]:
    """The ``multiscales`` convention attribute: one layout entry per level, each derived from the one
    above by a 2x average."""
    layout = []
    for lv in levels:
        entry: dict[str, Any] = {
            "asset": lv.array_path(spec.variable),
            "spatial:dimensions": list(level_dims(lv.index)[1:]),
            "spatial:shape": [lv.shape[0], lv.shape[1]],
            "spatial:transform": [float(v) for v in lv.transform],
        }
        if lv.index == 0:
            entry["transform"] = {"scale": [1.0, 1.0], "translation": [0.0, 0.0]}
        else:
            entry["derived_from"] = levels[lv.index - 1].array_path(spec.variable)
            entry["transform"] = {"scale": [2.0, 2.0], "translation": [0.0, 0.0]}
            entry["resampling_method"] = "average"
        layout.append(entry)
    return {"layout": layout, "resampling_method": "average"}


def root_attrs(spec: OutputSpec, levels: tuple[Level, ...], record: dict[str, Any]) -> dict[str, Any]:
    attrs = geozarr_attrs(spec.crs_wkt, spec.transform, spec.height, spec.width)
    attrs["zarr_conventions"] = [CONVENTION_MULTISCALES, CONVENTION_PROJ, CONVENTION_SPATIAL]
    attrs["multiscales"] = multiscales_attr(spec, levels)
    attrs["Conventions"] = "CF-1.8"
    attrs["geosr"] = record
    return attrs


def create_hierarchy(store: Any, spec: OutputSpec, levels: tuple[Level, ...], record: dict[str, Any]) -> None:
    """Create every group and array of the store (fails if a Zarr node already exists there)."""
    import zarr

    root = zarr.create_group(store, zarr_format=spec.zarr_format, attributes=root_attrs(spec, levels, record))
    for lv in levels:
        if lv.index == 0:
            group = root
        else:
            group = _require_path(root, lv.group)
            attrs = geozarr_attrs(spec.crs_wkt, lv.transform, *lv.shape, dims=level_dims(lv.index)[1:])
            attrs["geosr:level"] = {"index": lv.index, "factor": lv.factor,
                                    "derived_from": levels[lv.index - 1].array_path(spec.variable)}
            group.update_attributes(attrs)
        _create_level(group, spec, lv)


def _require_path(root: Any, path: str) -> Any:
    g = root
    for part in path.split("/"):
        g = g.require_group(part)
    return g


def _dims(spec: OutputSpec, dims: tuple[str, ...]) -> dict[str, Any]:
    """Dimension names: ``dimension_names`` in v3, xarray's ``_ARRAY_DIMENSIONS`` attribute in v2."""
    return {"dimension_names": list(dims)} if spec.zarr_format == 3 else {}


def _with_dims(spec: OutputSpec, attrs: dict[str, Any], dims: tuple[str, ...]) -> dict[str, Any]:
    return attrs if spec.zarr_format == 3 else {**attrs, "_ARRAY_DIMENSIONS": list(dims)}


def _create_level(group: Any, spec: OutputSpec, lv: Level) -> None:
    h, w = lv.shape
    fmt = spec.zarr_format
    coord_comp = compressors(spec.compressor, spec.level, fmt, 8)
    none_fill = {} if fmt == 3 else {"fill_value": None}

    # CF grid mapping (scalar)
    ref = group.create_array(GRID_MAPPING, shape=(), dtype="int64", compressors=None, **none_fill,
                             attributes=_with_dims(spec, grid_mapping_attrs(spec.crs_wkt, lv.transform), ()),
                             **_dims(spec, ()))
    ref[...] = 0

    # coordinates
    xs, ys = pixel_centres(lv.transform, h, w)
    xattrs, yattrs = coordinate_attrs(spec.crs_wkt)
    _, ydim, xdim = level_dims(lv.index)
    for name, values, attrs in ((xdim, xs, xattrs), (ydim, ys, yattrs)):
        arr = group.create_array(name, shape=values.shape, dtype="float64", chunks=values.shape,
                                 compressors=coord_comp, **none_fill,
                                 attributes=_with_dims(spec, attrs, (name,)), **_dims(spec, (name,)))
        arr[:] = values
    names = np.array(spec.band_names)
    if fmt == 2:
        # fixed-width unicode: GDAL reads it (band metadata DIM_band_VALUE), xarray decodes it to str
        band = group.create_array("band", shape=names.shape, dtype=names.dtype, chunks=names.shape,
                                  compressors=None, fill_value=None,
                                  attributes=_with_dims(spec, {"long_name": "band name"}, ("band",)))
    else:
        band = group.create_array("band", shape=names.shape, dtype=str, chunks=names.shape,
                                  attributes={"long_name": "band name"}, dimension_names=["band"])
    band[:] = names

    # the data variable(s)
    attrs = variable_attrs(spec.dtype, fmt)
    if lv.index == 0 and spec.std_variable:
        attrs["ancillary_variables"] = spec.std_variable  # CF: the std describes this variable
    _create_data_array(group, spec, lv, spec.variable, attrs)
    if lv.index == 0 and spec.std_variable:
        _create_data_array(group, spec, lv, spec.std_variable,
                           std_attrs(spec.dtype, fmt, spec.variable, spec.uncertainty_samples))


def _create_data_array(group: Any, spec: OutputSpec, lv: Level, name: str, attrs: dict[str, Any]) -> None:
    """A (band, y, x) array of ``spec.dtype`` on level ``lv``'s grid, chunks, shards and codecs, with the
    georeferencing every reader needs (CF grid mapping, GDAL ``_CRS``, GeoZarr ``proj:``/``spatial:``)."""
    h, w = lv.shape
    fmt = spec.zarr_format
    dims = level_dims(lv.index)
    attrs = dict(attrs)
    attrs.update(geozarr_attrs(spec.crs_wkt, lv.transform, h, w, dims=dims[1:]))
    attrs.update(grid_mapping=GRID_MAPPING, coordinates=GRID_MAPPING, _CRS=gdal_crs_attr(spec.crs_wkt))
    comp = compressors(spec.compressor, spec.level, fmt, np.dtype(spec.dtype).itemsize)
    chunks = (1, *lv.chunk)
    shards = (spec.bands, *lv.shard) if lv.shard else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # NaN fill value notes in zarr-python
        group.create_array(name, shape=(spec.bands, h, w), dtype=spec.dtype, chunks=chunks, shards=shards,
                           compressors=comp, fill_value=nodata(spec.dtype),
                           attributes=_with_dims(spec, attrs, dims), **_dims(spec, dims))
