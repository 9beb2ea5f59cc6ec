"""What geosr asks of a Prefect run: its configuration from flow parameters, its logger and label, block
progress as a progress artifact, and the scene / backfill report artifacts."""

from __future__ import annotations

import logging
import time
from typing import Any

from ..config import RunConfig, load_config
from ..lifecycle import SceneReport
from .artifacts import artifact_key, backfill_markdown, public_url, scene_markdown
from .backfill import BackfillOutcome, BackfillPlan

log = logging.getLogger(__name__)


# -- configuration ------------------------------------------------------------------------------------------
def resolve_config(config_path: str | None = None, config: RunConfig | None = None) -> RunConfig:
    """A flow's :class:`RunConfig`: ``config`` itself (Prefect validated it from the flow run's parameters), else
    the YAML file ``config_path`` (a path, or the name of a packaged config such as ``sentinel2-l2a``), else
    the defaults."""
    if config is not None:
        return config
    return load_config(config_path)


# -- logging ------------------------------------------------------------------------------------------------
def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a flow or task run (shown in the UI), else this module's logger."""
    try:
        from prefect.exceptions import MissingContextError
        from prefect.logging import get_run_logger

        try:
            return get_run_logger()
        except MissingContextError:
            return log
    except ImportError:  # pragma: no cover
        return log


def run_label() -> str:
    """``flow-run-name (id)`` of the current Prefect flow run, or ''."""
    try:
        from prefect.runtime import flow_run

        if flow_run.id:
            return f"{flow_run.name} ({flow_run.id})"
    except Exception:  # noqa: BLE001 - runtime lookups only fail outside a run
        pass
    return ""


# -- progress -----------------------------------------------------------------------------------------------
class PrefectProgress:
    """Block progress as a Prefect progress artifact (updated at most every ``every`` s) and log lines at
    every 10 %."""

    def __init__(self, scene: str, every: float = 2.0) -> None:
        self.scene = scene
        self.every = every
        self.artifact_id: Any = None
        self.last = 0.0
        self.last_decile = -1
        self.logger = run_logger()

    def __call__(self, done: int, total: int) -> None:
        pct = 100.0 * done / total if total else 100.0
        decile = int(pct // 10)
        if decile != self.last_decile:
            self.last_decile = decile
            self.logger.info("%s: %d/%d blocks (%.0f %%)", self.scene, done, total, pct)
        now = time.monotonic()
        if self.artifact_id is not None and done < total and now - self.last < self.every:
            return
        self.last = now
        try:
            from prefect.artifacts import create_progress_artifact, update_progress_artifact

            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(
                    progress=pct, key=artifact_key("geosr-progress", self.scene),
                    description=f"blocks of {self.scene} done")
            else:
                update_progress_artifact(self.artifact_id, progress=pct)
        except Exception as e:  # noqa: BLE001 - progress is best effort, never fails a scene
            log.debug("progress artifact not updated: %s", e)


# -- artifacts ----------------------------------------------------------------------------------------------
def publish_scene(run: SceneReport, scene_id: str, quicklook: str | None, url_map: str | None) -> None:
    from prefect.artifacts import create_image_artifact, create_markdown_artifact

    link = public_url(quicklook, url_map) if quicklook else None
    create_markdown_artifact(
        markdown=scene_markdown(run, quicklook=quicklook, quicklook_link=link, scene_id=scene_id),
        key=artifact_key("geosr-scene", scene_id),
        description=f"geosr {run.state}: {run.output_uri}",
    )
    if link:
        create_image_artifact(image_url=link, key=artifact_key("geosr-quicklook", scene_id),
                              description=f"input (left) and super-resolved output (right) of {scene_id}")


def publish_backfill(outcome: BackfillOutcome, plan: BackfillPlan | None, key: str = "geosr-backfill",
                     title: str = "geosr backfill") -> None:
    from prefect.artifacts import create_markdown_artifact

    c = outcome.counts()
    create_markdown_artifact(markdown=backfill_markdown(outcome, plan, title), key=artifact_key(key),
                             description=f"{c['done']} done, {c['skipped']} skipped, {c['failed']} failed")
