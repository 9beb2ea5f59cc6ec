"""A scene job: one input, one output, one configuration -- what a flow runs per scene (with
:func:`geosr.lifecycle.run_scene`), its name, its output URI under a prefix, and its idempotency key."""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from dataclasses import dataclass

from ..config import RunConfig


def scene_id_from_uri(uri: str) -> str:
    """``s3://b/x/S2A_T32TQM_20240105.tif`` -> ``S2A_T32TQM_20240105``."""
    name = posixpath.basename(str(uri).rstrip("/"))
    for ext in (".tiff", ".tif", ".TIF", ".TIFF", ".jp2", ".vrt"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name.rsplit(".", 1)[0] if "." in name else name


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """A path segment made of letters, digits, ``.``, ``_`` and ``-`` (never empty)."""
    return _SAFE.sub("-", str(text)).strip("-.") or "scene"


def scene_output_uri(output_prefix: str, collection: str | None, scene_id: str) -> str:
    """``<prefix>/<collection>/<scene_id>.zarr`` (``<prefix>/<scene_id>.zarr`` without a collection)."""
    parts = [str(output_prefix).rstrip("/")]
    if collection:
        parts.append(safe_name(collection))
    parts.append(safe_name(scene_id) + ".zarr")
    return "/".join(parts)


@dataclass(frozen=True)
class SceneJob:
    input_uri: str
    output_uri: str
    config: RunConfig
    overwrite: bool = False
    scene_id: str = ""
    collection: str | None = None

    @property
    def name(self) -> str:
        return self.scene_id or scene_id_from_uri(self.input_uri)

    @property
    def key(self) -> str:
        """Idempotency key: the same input, output, parameters and intent give the same key."""
        doc = {"in": self.input_uri, "out": self.output_uri, "config": self.config.config_hash(),
               "model": self.config.model.model_dump(mode="json", exclude={"device", "batch_size"}),
               "overwrite": self.overwrite}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:24]
