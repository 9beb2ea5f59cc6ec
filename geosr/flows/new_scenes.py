"""``process-new-scenes``: find the scenes of a source that have no complete output and run them.

Sources: an object-store or local prefix with a glob, a STAC API, or a static STAC ItemCollection
(JSON, local or s3://), filtered by collection, bbox, datetime (or the last ``lookback_days``) and
cloud cover. Deployed on a cron schedule (prefect.yaml, or ``geosr flows serve``).
"""


from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from geosr.config import RunConfig, StorageConfig
from geosr.flows.scene import scene_task
from geosr.io.storage import StorageEnv
from geosr.orchestration.backfill import BackfillOutcome
from geosr.orchestration.cluster import cluster_address
from geosr.orchestration.discovery import discover, pending
from geosr.orchestration.fan_out import SceneCall, fan_out, finish
from geosr.orchestration.prefect_io import publish_backfill, resolve_config, run_logger
from geosr.orchestration.query import SceneQuery, SourceKind, lookback_interval, parse_bbox
from geosr.orchestration.settings import RunSettings


@task(name="find-new-scenes", retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE)
def find_new_scenes(query: SceneQuery, output_prefix: str, storage: StorageConfig, overwrite: bool) -> list[dict[str, Any]]:
    env = StorageEnv(storage)
    todo = pending(discover(query, env), output_prefix, env, overwrite=overwrite)
    return [{"scene_id": s.ref.scene_id, "input_uri": s.ref.input_uri, "output_uri": s.output_uri,
             "collection": s.ref.collection, "acquired": s.ref.datetime, "state": s.state, "error": s.error}
            for s in todo]


@flow(name="process-new-scenes")
def process_new_scenes(source: str, output_prefix: str, glob: str = "*.tif", source_kind: SourceKind = "auto",
                       collection: str | None = None, bbox: list[float] | str | None = None,
                       datetime: str | None = None, lookback_days: float | None = None,
                       max_cloud_cover: float | None = None, asset: str | None = None, limit: int | None = None,
                       config: RunConfig | None = None, config_path: str | None = None,
                       overwrite: bool = False, settings: RunSettings | None = None) -> dict[str, Any]:
    settings = settings or RunSettings()
    cfg = resolve_config(config_path, config)
    when = datetime or lookback_interval(lookback_days)
    query = SceneQuery(source, source_kind, glob, collection, parse_bbox(bbox), when, max_cloud_cover, asset, limit)
    todo = find_new_scenes(query, output_prefix, cfg.storage, overwrite)
    logger = run_logger()
    logger.info("%d scene(s) of %s to process", len(todo), source)
    if not todo:
        return {"done": 0, "skipped": 0, "failed": 0, "scenes": []}
    outcome = BackfillOutcome()
    for s in todo:
        if s["state"] == "error":  # e.g. two scenes whose names map to one output: neither runs
            outcome.add_failure(s["scene_id"], s["output_uri"], s["error"] or "unknown error")
    runnable = [s for s in todo if s["state"] != "error"]
    with cluster_address(settings.cluster_spec()) as address:
        calls = [SceneCall(s["scene_id"], s["output_uri"], {
            "input_uri": s["input_uri"], "output_uri": s["output_uri"], "config": cfg, "settings": settings,
            "dask_address": address, "overwrite": overwrite, "scene_id": s["scene_id"],
            "collection": s["collection"], "acquired": s["acquired"]}) for s in runnable]
        outcome = fan_out(scene_task, calls, settings.max_concurrent_scenes, outcome) if calls else outcome
    publish_backfill(outcome, None, key="geosr-new-scenes", title=f"geosr new scenes of {source}")
    return finish({**outcome.counts(), "scenes": outcome.done + outcome.skipped + outcome.failed}, outcome)
