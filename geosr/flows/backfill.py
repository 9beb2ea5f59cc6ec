"""``geosr-backfill``: an analyst's backfill — a date range and/or an area over a source, and/or an
explicit list of scenes. The plan (scenes, tiles, estimated GPU time) is logged and published before
anything runs; ``dry_run`` stops there.

Fan-out: ``tasks`` (default) runs the scenes as tasks of this flow run on one cluster, at most
``settings.max_concurrent_scenes`` at a time; ``deployment`` creates one flow run of the scene
deployment per scene, each with an idempotency key derived from this backfill run and the scene job
(a retried backfill run does not create its scene runs twice).
"""


from typing import Any, Literal

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from geosr.config import RunConfig
from geosr.flows.scene import scene_task
from geosr.io.storage import StorageEnv
from geosr.orchestration.artifacts import artifact_key
from geosr.orchestration.backfill import BackfillOutcome, BackfillPlan, plan_backfill
from geosr.orchestration.cluster import cluster_address
from geosr.orchestration.discovery import discover, explicit_scenes
from geosr.orchestration.fan_out import SceneCall, fan_out, finish, submit_deployment_runs, wait_flow_runs
from geosr.orchestration.prefect_io import publish_backfill, resolve_config, run_logger
from geosr.orchestration.query import SceneQuery, SourceKind, interval_text, parse_bbox
from geosr.orchestration.settings import RunSettings

SCENE_DEPLOYMENT = "super-resolve-scene/on-demand"


@task(name="plan-backfill", retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE)
def plan(query: SceneQuery | None, scenes: list[str], output_prefix: str, cfg: RunConfig, overwrite: bool,
         seconds_per_tile: float | None) -> BackfillPlan:
    env = StorageEnv(cfg.storage)
    refs = discover(query, env) if query is not None else []
    seen = {r.input_uri for r in refs}
    refs += [r for r in explicit_scenes(scenes, query.collection if query else None) if r.input_uri not in seen]
    return plan_backfill(refs, output_prefix, cfg, overwrite=overwrite, seconds_per_tile=seconds_per_tile, env=env)


@flow(name="geosr-backfill")
def backfill(output_prefix: str, source: str | None = None, scenes: list[str] | None = None,
             start: str | None = None, end: str | None = None, bbox: list[float] | str | None = None,
             collection: str | None = None, glob: str = "*.tif", source_kind: SourceKind = "auto",
             max_cloud_cover: float | None = None, asset: str | None = None, limit: int | None = None,
             config: RunConfig | None = None, config_path: str | None = None, overwrite: bool = False,
             dry_run: bool = False, seconds_per_tile: float | None = None,
             fan_out_to: Literal["tasks", "deployment"] = "tasks", deployment: str = SCENE_DEPLOYMENT,
             settings: RunSettings | None = None) -> dict[str, Any]:
    settings = settings or RunSettings()
    cfg = resolve_config(config_path, config)
    if not source and not scenes:
        raise ValueError("give a source (prefix, STAC API or ItemCollection) and/or a list of scenes")
    query = (SceneQuery(source, source_kind, glob, collection, parse_bbox(bbox), interval_text(start, end),
                        max_cloud_cover, asset, limit) if source else None)
    p = plan(query, list(scenes or []), output_prefix, cfg, overwrite, seconds_per_tile)
    logger = run_logger()
    logger.info("backfill plan:\n%s", p.table())
    if dry_run:
        create_markdown_artifact(markdown=f"### geosr backfill plan (dry run)\n\n```\n{p.table()}\n```\n",
                                 key=artifact_key("geosr-backfill-plan"), description="dry run: nothing was run")
        return {"dry_run": True, **p.summary(), "table": p.table()}
    outcome = BackfillOutcome()
    for s in p.by_action("skip"):
        outcome.add_result(s.ref.scene_id, s.output_uri, {"state": "skipped"})
    for s in p.by_action("error"):
        outcome.add_failure(s.ref.scene_id, s.output_uri, s.error or "unknown error")
    todo = p.to_run
    if todo and fan_out_to == "deployment":
        calls = [SceneCall(s.ref.scene_id, s.output_uri, {
            "input_uri": s.ref.input_uri, "output_uri": s.output_uri, "config": cfg.model_dump(mode="json"), "overwrite": overwrite,
            "collection": s.ref.collection, "acquired": s.ref.datetime, "settings": settings.model_dump(mode="json"),
            "idempotency_key": s.key}) for s in todo]
        runs = submit_deployment_runs(deployment, calls, key_prefix=f"geosr-backfill:{flow_run.id}")
        wait_flow_runs(runs, outcome=outcome)
    elif todo:
        with cluster_address(settings.cluster_spec()) as address:
            calls = [SceneCall(s.ref.scene_id, s.output_uri, {
                "input_uri": s.ref.input_uri, "output_uri": s.output_uri, "config": cfg, "settings": settings,
                "dask_address": address, "overwrite": overwrite, "scene_id": s.ref.scene_id,
                "collection": s.ref.collection, "acquired": s.ref.datetime}) for s in todo]
            fan_out(scene_task, calls, settings.max_concurrent_scenes, outcome)
    publish_backfill(outcome, p)
    return finish({**outcome.counts(), "plan": p.summary(), "done_scenes": outcome.done,
                   "skipped_scenes": outcome.skipped, "failed_scenes": outcome.failed}, outcome)
