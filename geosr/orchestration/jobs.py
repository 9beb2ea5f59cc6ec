"""A scene job: one input, one output, one configuration — run under the scene's lease on a cluster.

This is what every flow runs per scene. Order of events: a complete output is skipped at once (no
lease, no GPU); otherwise the lease is taken (waiting while another run holds it), then the GPU slot,
then the blocks; a run that waited for the lease usually finds the scene complete and skips it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Callable, ContextManager

from ..config import RunConfig
from ..io.storage import StorageEnv
from .lease import SceneLease
from .retry import call_with_retry
from .scene import ClusterRunOptions, ProgressFn, SceneRun, run_scene_distributed

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class LeaseOptions:
    enabled: bool = True
    ttl: float = 120.0
    wait: float = 6 * 3600.0  # how long a second trigger waits for the first one
    poll: float = 2.0


def run_scene_job(job: SceneJob, client: Any, *, slot: Callable[[], ContextManager[Any]] | None = None,
                  lease: LeaseOptions = LeaseOptions(), options: ClusterRunOptions = ClusterRunOptions(),
                  progress: ProgressFn | None = None, label: str = "", max_blocks: int | None = None,
                  extra_provenance: dict[str, Any] | None = None) -> SceneRun:
    """Run ``job`` on the cluster behind ``client`` under the scene's lease (see the module docstring)."""
    env = StorageEnv(job.config.storage)
    from ..store import store_status

    if not job.overwrite:
        st = call_with_retry(lambda: store_status(job.output_uri, env), options.retry, f"checking {job.output_uri}")
        if st.state == "complete":
            if lease.enabled:  # a run killed after finishing the store may have left its lease behind
                call_with_retry(SceneLease(job.output_uri, env, ttl=lease.ttl).clear_stale, options.retry,
                                f"checking the lease of {job.output_uri}")
            return run_scene_distributed(job.input_uri, job.output_uri, job.config, client, env=env,
                                         options=options)
    run = lambda check: run_scene_distributed(  # noqa: E731
        job.input_uri, job.output_uri, job.config, client, overwrite=job.overwrite, env=env, options=options,
        progress=progress, slot=slot, check=check, max_blocks=max_blocks, extra_provenance=extra_provenance)
    if not lease.enabled:
        return run(None)
    sl = SceneLease(job.output_uri, env, ttl=lease.ttl, label=label or job.name, poll=lease.poll)
    with sl.hold(wait=lease.wait):
        return run(sl.check)
