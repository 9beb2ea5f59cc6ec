"""One scene on a Dask cluster: the same data path as :func:`geosr.engine.run_scene`, with the blocks
spread over workers by role.

For every missing block two tasks are submitted: ``read_task`` (restricted, loosely, to the CPU
workers) and ``model_task`` (``resources={"GPU": 1}``), which receives the read's future, so the
low-res input moves from a CPU worker to a GPU worker and nothing else does. At most
``gpu_slots * (1 + prefetch)`` blocks are in flight: while a GPU works on one block, the reads of the
next ``prefetch`` blocks per GPU run on the CPU workers, so the GPU always has input waiting, and
memory stays bounded however large the scene is.

Resume and idempotency come from the store: the ledger says which blocks are done, every block is a
pure function of its input window, and a block is marked done only after its chunks are stored. A
worker that dies mid-block loses nothing but that block, which Dask runs again elsewhere; a run that
dies leaves a store whose missing blocks the next run computes.
"""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, ContextManager

from ..config import RunConfig
from ..engine import ScenePlan, SceneReport, prepare_output, provenance, scene_metrics
from ..grid import Block
from ..io.source import RasterSource, open_source
from ..io.storage import StorageEnv
from ..store import ZarrOutput, store_status
from .blocks import describe_task, model_task, read_task
from .cluster import GPU, WorkerRoles, wait_for_gpu_workers, worker_roles
from .errors import ClusterError
from .gpu import ModelPlugin, ModelSpec
from .retry import RetryPolicy, call_with_retry

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class ClusterRunOptions:
    prefetch: int = 2  # blocks read ahead per GPU slot, beyond the one on the GPU
    retry: RetryPolicy = RetryPolicy()
    gpu_wait_s: float = 300.0  # how long to wait for a GPU-tagged worker to join
    roles_refresh_s: float = 10.0  # how often the CPU/GPU worker lists are refreshed


@dataclass(frozen=True)
class SceneRun:
    """What happened to one scene (the engine's :class:`SceneReport` plus what the cluster adds)."""

    report: SceneReport
    model: dict[str, Any] = field(default_factory=dict)
    in_shape: tuple[int, int, int] = (0, 0, 0)  # (bands, height, width) low-res
    out_shape: tuple[int, int] = (0, 0)
    tiles: int = 0  # tiles of the scene's grid
    tiles_run: int = 0  # tiles computed by this run (a tile straddling two blocks counts twice)
    model_seconds: float = 0.0  # model+blend time summed over this run's blocks
    slot_wait_s: float = 0.0  # time spent waiting for the GPU concurrency slot
    slot_held: tuple[float, float] | None = None  # (acquired, released), epoch seconds
    gpu_workers: tuple[str, ...] = ()

    @property
    def state(self) -> str:
        return self.report.state

    @property
    def tiles_per_s(self) -> float:
        s = self.report.seconds
        return self.tiles_run / s if s > 0 and self.tiles_run else 0.0


def _plan_shape(input_uri: str, output_uri: str, cfg: RunConfig, source: RasterSource) -> ScenePlan:
    return ScenePlan(input_uri, output_uri, cfg, source.meta, {})


def run_scene_distributed(input_uri: str, output_uri: str, cfg: RunConfig, client: Any, *,
                          overwrite: bool = False, env: StorageEnv | None = None,
                          options: ClusterRunOptions = ClusterRunOptions(), progress: ProgressFn | None = None,
                          slot: Callable[[], ContextManager[Any]] | None = None,
                          check: Callable[[], None] | None = None, max_blocks: int | None = None,
                          extra_provenance: dict[str, Any] | None = None) -> SceneRun:
    """Super-resolve one scene on the cluster behind ``client``: skip it if complete (unless
    ``overwrite``), resume it if incomplete, else write it.

    ``slot`` is entered around the GPU work (the Prefect GPU concurrency limit); ``check`` is called after
    every block and may raise to stop the run (a lost lease); ``max_blocks`` stops after that many blocks
    (the store stays incomplete, as after a crash); ``extra_provenance`` is merged into the provenance
    record (e.g. ``{"datetime": acquisition time}``, which becomes the STAC item's datetime)."""
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat()
    env = env or StorageEnv(cfg.storage)
    pol = options.retry
    source = call_with_retry(lambda: open_source(input_uri, cfg.input, env), pol, f"opening {input_uri}")
    shape_plan = _plan_shape(input_uri, output_uri, cfg, source)
    grid, blocks = shape_plan.grid, shape_plan.blocks
    base = {
        "in_shape": (len(source.meta.band_indexes), source.meta.height, source.meta.width),
        "out_shape": grid.out_shape,
        "tiles": grid.n_tiles,
    }
    out_px = grid.out_shape[0] * grid.out_shape[1]

    def skipped(model: dict[str, Any], wait: float = 0.0) -> SceneRun:
        log.info("%s is complete; skipping (pass overwrite to redo it)", output_uri)
        rep = SceneReport(input_uri, output_uri, "skipped", len(blocks), 0, time.perf_counter() - t0, out_px, {})
        return SceneRun(rep, model=model, slot_wait_s=wait, **base)

    st = call_with_retry(lambda: store_status(output_uri, env), pol, f"checking {output_uri}")
    if st.state == "complete" and not overwrite:
        return skipped({})

    tw = time.perf_counter()
    with (slot() if slot is not None else nullcontext()):
        wait = time.perf_counter() - tw
        held_from = time.time()
        if wait > 1:
            log.info("waited %.1f s for a GPU slot", wait)
        roles = wait_for_gpu_workers(client, options.gpu_wait_s)
        client.register_plugin(ModelPlugin())
        spec = ModelSpec.from_config(cfg, len(source.meta.band_indexes))
        # on a GPU worker: loads the model, and refuses uncertainty for a model that cannot sample
        model = client.submit(describe_task, spec, cfg.output.uncertainty_samples, resources={GPU: 1},
                              pure=False, key=f"geosr-describe-{uuid.uuid4().hex[:12]}").result()
        plan = ScenePlan(input_uri, output_uri, cfg, source.meta, model)
        output, state = call_with_retry(lambda: prepare_output(plan, env, overwrite), pol,
                                        f"preparing {output_uri}")
        if output is None:  # finished by someone else meanwhile
            return skipped(model, wait)
        done = call_with_retry(output.done_blocks, pol, f"reading the ledger of {output_uri}")
        todo = [b for b in blocks if b.key not in done]
        if max_blocks is not None:
            todo = todo[:max_blocks]
        total, n_done = len(blocks), len(done)
        log.info("%s: %s, %d of %d blocks to do on %d GPU worker(s)", output_uri,
                 "resuming" if state == "resumed" else "writing", len(todo), total, len(roles.gpu))
        if progress:
            progress(n_done, total)

        def on_block(i: int) -> None:
            if progress:
                progress(n_done + i, total)

        results = _pipeline(client, plan, source, env, todo, roles, options, on_block, check)
        held = (held_from, time.time())

    all_done = call_with_retry(output.done_blocks, pol, f"reading the ledger of {output_uri}")
    metrics = scene_metrics(all_done)
    metrics["model_seconds"] = round(sum(float(s.get("model_seconds", 0.0)) for s in all_done.values()), 3)
    if len(all_done) == len(blocks):
        prov = provenance(plan, started, metrics)
        prov.update({k: v for k, v in (extra_provenance or {}).items() if v is not None})
        _finalize(output, prov, cfg.output.stac, pol)
    rep = SceneReport(input_uri, output_uri, state, len(blocks), len(todo), time.perf_counter() - t0, out_px, metrics)
    tiles_run = sum(int(s.get("tiles", 0)) - int(s.get("tiles_skipped", 0)) for s in results)
    model_s = sum(float(s.get("model_seconds", 0.0)) for s in results)
    return SceneRun(rep, model=model, tiles_run=tiles_run, model_seconds=round(model_s, 3), slot_wait_s=wait,
                    slot_held=held, gpu_workers=roles.gpu, **base)


def _finalize(output: ZarrOutput, prov: dict[str, Any], stac: bool, pol: RetryPolicy) -> None:
    def go() -> None:
        if not output.is_complete():
            output.finalize(prov, stac=stac)

    call_with_retry(go, pol, f"finalizing {output.uri}")


class _Roles:
    """Worker roles, refreshed every ``every`` seconds (workers come and go)."""

    def __init__(self, client: Any, first: WorkerRoles, every: float) -> None:
        self.client, self.roles, self.every, self.at = client, first, every, time.monotonic()

    def cpu(self) -> list[str]:
        if time.monotonic() - self.at > self.every:
            self.roles, self.at = worker_roles(self.client), time.monotonic()
        return list(self.roles.cpu)


def _pipeline(client: Any, plan: ScenePlan, source: RasterSource, env: StorageEnv, todo: list[Block],
              roles: WorkerRoles, options: ClusterRunOptions, on_block: Callable[[int], None],
              check: Callable[[], None] | None) -> list[dict[str, Any]]:
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    token = uuid.uuid4().hex[:10]
    tag = plan.plan_hash[:10]
    window = max(1, roles.gpu_slots) * (1 + max(0, options.prefetch))
    pending = iter(todo)
    inflight: dict[Any, tuple[Block, Any]] = {}
    ac = as_completed(loop=client.loop)
    current = _Roles(client, roles, options.roles_refresh_s)
    results: list[dict[str, Any]] = []

    def submit_next() -> None:
        b = next(pending, None)
        if b is None:
            return
        cpu = current.cpu()
        rf = client.submit(read_task, plan, b, source, options.retry, key=f"geosr-read-{tag}-{b.key}-{token}",
                           workers=cpu or None, allow_other_workers=bool(cpu), pure=False)
        mf = client.submit(model_task, plan, rf, env, token, options.retry,
                           key=f"geosr-model-{tag}-{b.key}-{token}", resources={GPU: 1}, pure=False)
        inflight[mf] = (b, rf)
        ac.add(mf)

    try:
        for _ in range(window):
            submit_next()
        for fut in ac:
            block, _read = inflight.pop(fut)
            try:
                stats = fut.result()
            except KilledWorker as e:
                raise ClusterError(f"block {block.key} of {plan.output_uri} killed its worker repeatedly ({e}); "
                                   "check the workers' logs (memory, GPU) and rerun to resume") from e
            results.append(stats)
            on_block(len(results))
            if check is not None:
                check()
            submit_next()
    except BaseException:
        client.cancel([f for f in inflight] + [rf for _, rf in inflight.values()])
        raise
    return results
