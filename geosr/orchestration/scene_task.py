"""The body of the per-scene Prefect task that every flow runs (the flows stay thin): the scene on the Dask
cluster under its lease and the GPU limit, then its quicklook and artifact; and which failures Prefect
retries."""

from __future__ import annotations

from typing import Any

from ..config import RunConfig
from ..errors import GeosrError
from ..io.storage import StorageEnv
from .artifacts import scene_result, write_quicklook
from .cluster import ClusterSpec, dask_client
from .gpu_limit import gpu_slot
from .jobs import SceneJob, run_scene_job
from .prefect_io import PrefectProgress, publish_scene, run_label, run_logger
from .retry import RetryPolicy, call_with_retry, is_transient
from .settings import RunSettings


def process_scene(input_uri: str, output_uri: str, config: dict[str, Any], settings: RunSettings, *,
                  dask_address: str, overwrite: bool = False, scene_id: str = "", collection: str | None = None,
                  acquired: str | None = None) -> dict[str, Any]:
    """Run one scene on the cluster at ``dask_address`` under its lease and the GPU limit, write its
    quicklook and publish its artifact; returns :func:`scene_result` (JSON). Raises geosr's typed errors."""
    cfg = RunConfig.model_validate(config)
    job = SceneJob(input_uri, output_uri, cfg, overwrite, scene_id, collection)
    logger = run_logger()
    logger.info("scene %s: %s -> %s", job.name, input_uri, output_uri)
    with dask_client(ClusterSpec(address=dask_address)) as client:
        run = run_scene_job(job, client, slot=gpu_slot(settings.gpu_limit), lease=settings.lease(),
                            options=settings.run_options(), progress=PrefectProgress(job.name),
                            label=run_label() or job.name,
                            extra_provenance={"datetime": acquired, "collection": collection, "scene_id": job.name})
    if run.state == "skipped":
        logger.info("scene %s: output %s is complete; skipped", job.name, output_uri)
        return scene_result(run)
    ql = None
    if settings.quicklook:
        try:
            ql = call_with_retry(lambda: write_quicklook(input_uri, output_uri, cfg, StorageEnv(cfg.storage)),
                                 RetryPolicy(attempts=3), f"writing the quicklook of {output_uri}")
        except (GeosrError, OSError, ValueError) as e:
            logger.warning("scene %s: no quicklook (%s)", job.name, e)
    publish_scene(run, job.name, ql, settings.quicklook_url_map)
    r = run.report
    logger.info("scene %s: %s, %d/%d blocks in %.1f s (%.2f tiles/s), seam %.3f -> %s", job.name, r.state,
                r.blocks_run, r.blocks_total, r.seconds, run.tiles_per_s, r.metrics.get("seam_metric", float("nan")),
                output_uri)
    return scene_result(run, ql)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a scene task only for transient (I/O, network) failures."""
    try:
        state.result()
    except Exception as e:  # noqa: BLE001 - we classify whatever the task raised
        return is_transient(e)
    return False
