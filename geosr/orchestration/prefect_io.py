"""Everything geosr asks of Prefect: the GPU concurrency limit, run-scoped logging and progress,
artifacts, and the body of the per-scene task that every flow runs (the flows stay thin)."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator

from ..config import RunConfig, load_config
from ..errors import GeosrError
from ..io.storage import StorageEnv
from .artifacts import (
    artifact_key,
    backfill_markdown,
    public_url,
    scene_markdown,
    scene_result,
    write_quicklook,
)
from .backfill import BackfillOutcome, BackfillPlan
from .cluster import ClusterSpec, dask_client
from .errors import GpuLimitError
from .jobs import SceneJob, run_scene_job
from .retry import RetryPolicy, call_with_retry, is_transient
from .scene import SceneRun
from .settings import DEFAULT_GPU_LIMIT, RunSettings

log = logging.getLogger(__name__)



# -- configuration ------------------------------------------------------------------------------------------
def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and not key.endswith("params"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def resolve_config(config_path: str | None = None, config: dict[str, Any] | None = None) -> RunConfig:
    """A validated :class:`RunConfig` from a YAML file (optional) and overrides, given nested
    (``{"tiling": {"scale": 2}}``) or dotted (``{"tiling.scale": 2}``) — flow parameters are JSON."""
    return load_config(config_path, _flatten(config or {}))


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


# -- GPU concurrency limit ----------------------------------------------------------------------------------
def ensure_gpu_limit(name: str = DEFAULT_GPU_LIMIT, slots: int = 1, *, update: bool = False) -> int:
    """Create the global concurrency limit ``name`` with ``slots`` slots if it does not exist (or set its
    size with ``update``). Returns its size."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    if slots < 1:
        raise GpuLimitError(f"GPU limit {name!r}: slots={slots}; give at least 1")
    with get_client(sync_client=True) as client:
        try:
            current = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
            log.info("created the global concurrency limit %s with %d slot(s)", name, slots)
            return slots
        if update and current.limit != slots:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=slots))
            return slots
        return int(current.limit)


def gpu_slot(name: str | None, timeout_s: float | None = None,
             lease_s: float = 60.0) -> Callable[[], ContextManager[Any]] | None:
    """A factory of context managers that hold one slot of the Prefect global concurrency limit ``name``
    (strict: a missing limit is an error, never a silent free-for-all). None when ``name`` is empty.

    The slot is a lease that Prefect renews while it is held; if the holding process dies, the server
    frees the slot after ``lease_s`` seconds."""
    if not name:
        return None

    @contextmanager
    def hold() -> Iterator[None]:
        from prefect.concurrency.sync import concurrency

        acquired = False
        try:
            with concurrency(name, occupy=1, timeout_seconds=timeout_s, lease_duration=lease_s, strict=True):
                acquired = True
                yield
        except Exception as e:
            if not acquired and type(e).__name__ == "ConcurrencySlotAcquisitionError":
                raise GpuLimitError(
                    f"the GPU concurrency limit {name!r} does not exist on the Prefect server; create it with "
                    f"`geosr flows gpu-limit --name {name} --slots N` (N = flow runs that may share the GPUs at once)"
                ) from None
            raise

    return hold


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
def publish_scene(run: SceneRun, scene_id: str, quicklook: str | None, url_map: str | None) -> None:
    from prefect.artifacts import create_image_artifact, create_markdown_artifact

    link = public_url(quicklook, url_map) if quicklook else None
    create_markdown_artifact(
        markdown=scene_markdown(run, quicklook=quicklook, quicklook_link=link, scene_id=scene_id),
        key=artifact_key("geosr-scene", scene_id),
        description=f"geosr {run.state}: {run.report.output_uri}",
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


# -- the per-scene task body ----------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class SceneCall:
    """One scene for :func:`fan_out`: the task's keyword arguments plus how to report it."""

    scene_id: str
    output_uri: str
    kwargs: dict[str, Any]


def fan_out(task: Any, calls: list[SceneCall], max_concurrent: int,
            outcome: BackfillOutcome | None = None) -> BackfillOutcome:
    """Submit ``task`` once per call, at most ``max_concurrent`` in flight (a backfill of thousands of
    scenes never has thousands of waiting task runs), and collect done / skipped / failed."""
    from prefect.futures import as_completed

    outcome = outcome or BackfillOutcome()
    logger = run_logger()
    queue = list(calls)
    running: dict[Any, SceneCall] = {}
    while queue or running:
        while queue and len(running) < max(1, max_concurrent):
            c = queue.pop(0)
            running[task.submit(**c.kwargs)] = c
        fut = next(iter(as_completed(list(running))))
        c = running.pop(fut)
        result = fut.result(raise_on_failure=False)
        if isinstance(result, BaseException) or not fut.state.is_completed():
            reason = f"{type(result).__name__}: {result}" if isinstance(result, BaseException) else str(fut.state.message)
            logger.error("scene %s failed: %s", c.scene_id, reason)
            outcome.add_failure(c.scene_id, c.output_uri, reason)
        else:
            outcome.add_result(c.scene_id, c.output_uri, result)
    return outcome


# -- fan-out to a deployment -------------------------------------------------------------------------------------
def submit_deployment_runs(deployment: str, calls: list[SceneCall], key_prefix: str) -> list[tuple[SceneCall, str]]:
    """Create one flow run of ``deployment`` per call, with idempotency key ``<key_prefix>:<call key>``:
    submitting the same backfill twice (a retried parent run) returns the flow runs created the first time
    instead of new ones. Returns (call, flow run id) pairs."""
    from prefect.deployments import run_deployment

    out = []
    for c in calls:
        key = f"{key_prefix}:{c.kwargs.get('idempotency_key') or c.scene_id}"
        params = {k: v for k, v in c.kwargs.items() if k != "idempotency_key"}
        fr = run_deployment(deployment, parameters=params, idempotency_key=key, timeout=0, as_subflow=True)
        out.append((c, str(fr.id)))
    return out


def wait_flow_runs(runs: list[tuple[SceneCall, str]], poll_s: float = 10.0,
                   outcome: BackfillOutcome | None = None) -> BackfillOutcome:
    """Poll the flow runs until each is final; done / skipped / failed (skipped when the scene flow
    reports its output was already complete)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    outcome = outcome or BackfillOutcome()
    left = dict((fid, c) for c, fid in runs)
    with get_client(sync_client=True) as client:
        while left:
            for fid in list(left):
                fr = client.read_flow_run(UUID(fid))
                st = fr.state
                if st is None or not st.is_final():
                    continue
                c = left.pop(fid)
                if st.is_completed():
                    try:
                        res = st.result(raise_on_failure=False)
                    except Exception:  # noqa: BLE001 - results are only there when persisted
                        res = None
                    outcome.add_result(c.scene_id, c.output_uri, res if isinstance(res, dict) else {"state": "written"})
                else:
                    outcome.add_failure(c.scene_id, c.output_uri, f"{st.name}: {st.message or ''}")
            if left:
                time.sleep(poll_s)
    return outcome


def finish(summary: dict[str, Any], outcome: BackfillOutcome) -> Any:
    """A multi-scene flow's return value: the summary, as a Failed state when any scene failed (so
    automations and the UI flag the run) — the summary stays readable as the state's data."""
    if not outcome.failed:
        return summary
    from prefect.states import Failed

    first = outcome.failed[0]
    return Failed(message=f"{len(outcome.failed)} scene(s) failed, e.g. {first['scene']}: {first['reason'][:200]}",
                  data=summary)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a scene task only for transient (I/O, network) failures."""
    try:
        state.result()
    except Exception as e:  # noqa: BLE001 - we classify whatever the task raised
        return is_transient(e)
    return False
