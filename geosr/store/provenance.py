"""The ``geosr`` root attribute of a store: what the store knows about itself plus the run's provenance.

``finalize(provenance)`` stores whatever dict the run passes (input URI and checksum, model name,
version and config hash, parameters, start/end time, metrics, ...) under ``geosr.provenance``, beside
the store's own facts (format, geosr version, plan hash, creation/finalisation time, block grid,
overview levels, encoding). Values that JSON cannot hold are stored as strings.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from .. import __version__
from ..jsonio import jsonable
from .encode import SCALE
from .ledger import STORE_FORMAT
from .overviews import Level
from .spec import OutputSpec

ATTR = "geosr"


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat()


def encoding_note(spec: OutputSpec) -> str:
    if spec.dtype == "uint16":
        return f"uint16 = round(reflectance * {SCALE}) clipped to [1, 65535]; 0 = nodata"
    return "float32 reflectance; NaN = nodata"


def store_record(spec: OutputSpec, plan_hash: str, created: str, levels: tuple[Level, ...]) -> dict[str, Any]:
    """The ``geosr`` attribute written at creation (``complete`` false, no provenance yet)."""
    record: dict[str, Any] = {
        "format": STORE_FORMAT,
        "version": __version__,
        "plan_hash": plan_hash,
        "created": created,
        "complete": False,
        "variable": spec.variable,
        "encoding": encoding_note(spec),
        "blocks": {"block": spec.block, "chunk": spec.chunk, "grid": list(spec.block_grid_shape), "total": spec.n_blocks},
        "overviews": {
            "levels": len(levels) - 1,
            "written_per_block": [lv.index for lv in levels[1:] if lv.in_block],
            "written_at_finalize": [lv.index for lv in levels[1:] if not lv.in_block],
            "resampling": "mean of the valid pixels of each 2x2 cell of the level above; nodata if none",
        },
    }
    if spec.std_variable:
        record["uncertainty"] = {"variable": spec.std_variable, "samples": spec.uncertainty_samples,
                                 "overviews": "none (level 0 only)"}
    return record


def finalized_record(record: dict[str, Any], provenance: dict[str, Any], finalized: str) -> dict[str, Any]:
    out = dict(record)
    out.update(complete=True, finalized=finalized, provenance=jsonable(provenance))
    return out


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """The few provenance facts ``geosr info`` shows."""
    prov = record.get("provenance") or {}
    model = prov.get("model")
    model_name = model.get("name") if isinstance(model, dict) else model
    model_version = model.get("version") if isinstance(model, dict) else None
    out = {
        "geosr_version": prov.get("geosr_version") or record.get("version"),
        "input_uri": prov.get("input_uri"),
        "input_checksum": prov.get("input_checksum"),
        "model": model_name,
        "model_version": model_version,
        "config_hash": prov.get("config_hash"),
        "uncertainty_samples": prov.get("uncertainty_samples") or None,
        "plan_hash": record.get("plan_hash"),
        "start_time": prov.get("start_time"),
        "end_time": prov.get("end_time"),
        "created": record.get("created"),
        "finalized": record.get("finalized"),
    }
    return {k: v for k, v in out.items() if v is not None}
