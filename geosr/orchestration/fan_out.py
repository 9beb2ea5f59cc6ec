"""Many scenes from one flow run: as tasks of that run (at most N in flight) or as flow runs of the scene
deployment (with idempotency keys), and the run's outcome (a Failed state when any scene failed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .backfill import BackfillOutcome
from .prefect_io import run_logger


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
        fr: Any = run_deployment(deployment, parameters=params, idempotency_key=key, timeout=0, as_subflow=True)
        out.append((c, str(fr.id)))
    return out


def wait_flow_runs(runs: list[tuple[SceneCall, str]], poll_s: float = 10.0,
                   outcome: BackfillOutcome | None = None) -> BackfillOutcome:
    """Wait (Prefect's ``wait_for_flow_run``) until each flow run is final; done / skipped / failed (skipped
    when the scene flow reports its output was already complete)."""
    from uuid import UUID

    from prefect.flow_runs import wait_for_flow_run
    from prefect.utilities.asyncutils import run_coro_as_sync

    outcome = outcome or BackfillOutcome()
    for c, fid in runs:
        done: Any = run_coro_as_sync(wait_for_flow_run(UUID(fid), timeout=None, poll_interval=max(1, int(poll_s))))
        st = done.state
        if st is not None and st.is_completed():
            try:
                res = st.result(raise_on_failure=False)
            except Exception:  # noqa: BLE001 - results are only there when persisted
                res = None
            outcome.add_result(c.scene_id, c.output_uri, res if isinstance(res, dict) else {"state": "written"})
        else:
            outcome.add_failure(c.scene_id, c.output_uri, f"{st.name}: {st.message or ''}" if st else "no state")
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
