"""``describe_store``: a JSON-ready summary of a store (what ``geosr info`` prints)."""

from __future__ import annotations

import warnings
from dataclasses import asdict
from typing import Any

from ..errors import OutputError
from ..io.storage import StorageEnv
from .backend import StoreLocation, storage_errors
from .encode import nodata
from .georef import crs_code, crs_name, crs_units
from .ledger import Ledger
from .overviews import plan_levels
from .provenance import ATTR, encoding_note, summary
from .readers import readers
from .spec import OutputSpec
from .stac import stac_item_uri


def describe_store(uri: str, env: StorageEnv) -> dict[str, Any]:
    """Shape, CRS, resolution, bands, dtype, chunking, overview levels, the uncertainty variable (if any),
    completeness, the readers that open it, and provenance of the store at ``uri``. Raises :class:`OutputError` when there is no geosr store there."""
    import zarr

    loc = StoreLocation(uri, env)
    loc.check_bucket()
    ledger = Ledger(loc)
    plan = ledger.read_plan()
    if plan is None:
        raise OutputError(f"{loc.uri} is not a geosr output store (no .geosr/plan.json); check the path")
    spec = OutputSpec.from_dict(plan["spec"])
    done = len(ledger.done_keys() & spec.block_keys)
    complete = ledger.read_complete() is not None
    with storage_errors(loc.uri, "read"), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        root = zarr.open_group(loc.zarr_store(read_only=True), mode="r", zarr_format=spec.zarr_format)
        found: Any = root.attrs.get(ATTR)
        record = dict(found or {})
    levels = plan_levels(spec)
    stac_uri = stac_item_uri(loc.uri)
    nd = nodata(spec.dtype)
    return {
        "uri": loc.uri,
        "state": "complete" if complete else "incomplete",
        "blocks": {"done": done, "total": spec.n_blocks, "size": spec.block},
        "plan_hash": plan.get("plan_hash"),
        "zarr_format": spec.zarr_format,
        "variable": spec.variable,
        "variables": list(spec.variables),
        "uncertainty": ({"variable": spec.std_variable, "samples": spec.uncertainty_samples,
                         "statistic": "per-pixel standard deviation over the samples (ddof=0)",
                         "overviews": "none (level 0 only)"}
                        if spec.std_variable else None),
        "shape": list(spec.shape),
        "dtype": spec.dtype,
        "encoding": encoding_note(spec),
        "nodata": nd if nd == nd else "nan",
        "crs": {"code": crs_code(spec.crs_wkt), "name": crs_name(spec.crs_wkt), "units": crs_units(spec.crs_wkt)},
        "transform": list(spec.transform),
        "resolution": list(spec.resolution),
        "bounds": list(spec.bounds),
        "bands": list(spec.band_names),
        "chunks": [1, spec.chunk, spec.chunk],
        "shards": [spec.bands, spec.shard, spec.shard] if spec.shard else None,
        "compressor": spec.compressor if spec.compressor == "none" else f"{spec.compressor} level {spec.level}",
        "overviews": [
            {"level": lv.index, "shape": list(lv.shape), "resolution": [abs(lv.transform[0]), abs(lv.transform[4])],
             "path": lv.array_path(spec.variable), "written": "per block" if lv.in_block else "at finalize"}
            for lv in levels[1:]
        ],
        "readers": [asdict(r) for r in readers(spec.zarr_format, spec.variable)],
        "provenance": summary(record),
        "stac_item": stac_uri if StoreLocation(stac_uri, env).exists() else None,
    }
