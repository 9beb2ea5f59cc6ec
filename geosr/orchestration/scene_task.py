"""The body of the per-scene Prefect task that every flow runs (the flows stay thin): the scene's lifecycle
(:func:`geosr.lifecycle.run_scene`) on the Dask cluster under its lease and the GPU limit, then its quicklook
and artifact."""

from __future__ import annotations

from typing import Any

from ..config import RunConfig
from ..errors import GeosrError
from ..io.storage import StorageEnv
from ..lifecycle import run_scene
from ..retry import RetryPolicy, call_with_retry
from .artifacts import scene_result, write_quicklook
from .cluster import ClusterSpec, dask_client
from .dask_executor import DaskExecutor
from .gpu_limit import gpu_slot
from .jobs import SceneJob
from .prefect_io import PrefectProgress, publish_scene, run_label, run_logger
from .settings import RunSettings


def process_scene(input_uri: str, output_uri: str, config: RunConfig, settings: RunSettings, *,
                  dask_address: str, overwrite: bool = False, scene_id: str = "", collection: str | None = None,
                  acquired: str | None = None) -> dict[str, Any]:
    """Run one scene on the cluster at ``dask_address`` under its lease and the GPU limit, write its
    quicklook and publish its artifact; returns :func:`scene_result` (JSON). Raises geosr's typed errors."""
    job = SceneJob(input_uri, output_uri, config, overwrite, scene_id, collection)
    logger = run_logger()
    logger.info("scene %s: %s -> %s", job.name, input_uri, output_uri)
    env = StorageEnv(config.storage)
    with dask_client(ClusterSpec(address=dask_address)) as client:
        report = run_scene(input_uri, output_uri, config, DaskExecutor(client, env, settings.run_options()),
                           overwrite=overwrite, env=env, progress=PrefectProgress(job.name), announce=logger.info,
                           lease=settings.lease(label=run_label() or job.name), slot=gpu_slot(settings.gpu_limit),
                           extra_provenance={"datetime": acquired, "collection": collection, "scene_id": job.name})
    if report.state == "skipped":
        logger.info("scene %s: output %s is complete; skipped", job.name, output_uri)
        return scene_result(report)
    ql = None
    if settings.quicklook:
        try:
            ql = call_with_retry(lambda: write_quicklook(input_uri, output_uri, config, env),
                                 RetryPolicy(attempts=3), f"writing the quicklook of {output_uri}")
        except (GeosrError, OSError, ValueError) as e:
            logger.warning("scene %s: no quicklook (%s)", job.name, e)
    publish_scene(report, job.name, ql, settings.quicklook_url_map)
    seam = report.metrics.get("seam_metric")
    logger.info("scene %s: %s, %d/%d blocks in %.1f s (%.2f tiles/s), seam %s -> %s", job.name, report.state,
                report.blocks_run, report.blocks_total, report.seconds, report.tiles_per_s,
                "n/a" if seam is None else f"{seam:.3f}", output_uri)
    return scene_result(report, ql)
