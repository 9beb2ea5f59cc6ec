"""One-machine mode: serve every geosr flow from one long-running process (``geosr flows serve``).

The process runs the flow runs itself (as subprocesses) — no work pool, no worker. With no Dask
address the blocks of every run go to one embedded cluster that this process starts and shares.
"""


from typing import Any

from geosr.flows.backfill import backfill
from geosr.flows.new_scenes import process_new_scenes
from geosr.flows.scene import super_resolve_scene
from geosr.orchestration.settings import RunSettings


def deployments(settings: RunSettings, *, new_scenes: dict[str, Any] | None = None, cron: str | None = None,
                timezone: str | None = None, tags: list[str] | None = None) -> list[Any]:
    """RunnerDeployments: ``super-resolve-scene/on-demand``, ``geosr-backfill/analyst`` and, with
    ``new_scenes`` parameters (source, output_prefix, filters), ``process-new-scenes/scheduled`` on ``cron``."""
    from prefect.schedules import Cron

    tags = tags or ["geosr"]
    common = {"settings": settings.model_dump(mode="json")}
    out = [
        super_resolve_scene.to_deployment(name="on-demand", parameters=common, tags=tags,
                                          description="one scene -> one Zarr store"),
        backfill.to_deployment(name="analyst", parameters=common, tags=tags,
                               description="date range / area / scene list; dry_run=true to plan only"),
    ]
    if new_scenes:
        schedules = [Cron(cron, timezone=timezone or "UTC")] if cron else None
        # concurrency_limit=1: a run that is still busy when the next one is due is not overlapped
        out.append(process_new_scenes.to_deployment(name="scheduled", parameters={**new_scenes, **common},
                                                    schedules=schedules, tags=tags, concurrency_limit=1,
                                                    description="new scenes of a source, on a schedule"))
    return out


def serve_all(settings: RunSettings, *, new_scenes: dict[str, Any] | None = None, cron: str | None = None,
              timezone: str | None = None, limit: int | None = None) -> None:
    """Register the deployments and run their flow runs until interrupted."""
    from prefect import serve

    serve(*deployments(settings, new_scenes=new_scenes, cron=cron, timezone=timezone), limit=limit)
