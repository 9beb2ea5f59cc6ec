"""One scene's lifecycle, the same whatever runs the blocks.

    open the input -> plan (geometry, size estimate, size limit) -> the store's state:
      complete, made from this input and these parameters -> skipped
      complete or unfinished, made from something else   -> refused (one line naming what differs; --overwrite)
    [lease] -> [GPU slot] -> load the model where the blocks run -> create or resume the store
    -> the missing blocks, each: read -> tile -> super-resolve -> blend -> project -> write -> mark done
    -> every block recorded? finalize (overviews, provenance, STAC item, completion marker) : error

Two executors run the blocks (:class:`Executor`): :class:`geosr.local_executor.LocalExecutor` (a thread
pool: ``geosr run``, ``geosr eval``) and :class:`geosr.orchestration.dask_executor.DaskExecutor` (reads on CPU
workers, the model step on GPU-tagged workers: the flows). Everything else -- the plan, the skip / resume /
create decision, the retries of every storage operation (:mod:`geosr.retry`), the finalize checks and the
metrics -- is this module, for both.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, ContextManager

from . import __version__
from .config import RunConfig
from .errors import ConfigError, OutputError, OutputExistsError
from .executor import Executor
from .io.source import open_source
from .io.storage import StorageEnv
from .plan import ScenePlan
from .retry import RetryPolicy, call_with_retry, storage_policy
from .stats import scene_metrics
from .store import StoreStatus, ZarrOutput, store_status
from .store.lease import LeaseOptions, SceneLease
from .upsamplers.recipe import ModelRecipe

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class SceneReport:
    """What happened to one scene. ``state``: written | resumed | skipped | incomplete (``max_blocks``)."""

    input_uri: str
    output_uri: str
    state: str
    blocks_total: int
    blocks_run: int
    seconds: float
    out_pixels: int
    metrics: dict[str, Any]
    model: dict[str, Any] = field(default_factory=dict)
    in_shape: tuple[int, int, int] = (0, 0, 0)  # (bands, height, width) low-res
    out_shape: tuple[int, int] = (0, 0)
    tiles: int = 0  # tiles of the scene's grid
    tiles_run: int = 0  # tiles computed by this run (a tile straddling two blocks counts twice)
    model_seconds: float = 0.0  # model + blend time summed over this run's blocks
    slot_wait_s: float = 0.0  # time spent waiting for the GPU slot
    slot_held: tuple[float, float] | None = None  # (acquired, released), epoch seconds
    workers: tuple[str, ...] = ()  # where the model step ran (Dask: the GPU workers)

    @property
    def mpx_per_s(self) -> float:
        return self.out_pixels / 1e6 / self.seconds if self.seconds > 0 else float("nan")

    @property
    def tiles_per_s(self) -> float:
        return self.tiles_run / self.seconds if self.seconds > 0 and self.tiles_run else 0.0


def format_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


def size_estimate(plan: ScenePlan) -> str:
    """One line: what the scene will be (printed before any work starts)."""
    h, w = plan.grid.out_shape
    return (f"{plan.input_uri}: {plan.bands} x {plan.meta.height} x {plan.meta.width} -> {plan.bands} x {h} x {w} "
            f"{plan.config.output.dtype} (x{plan.grid.scale}), {len(plan.blocks)} block(s), {plan.grid.n_tiles} "
            f"tile(s), ~{format_bytes(plan.estimated_bytes())} uncompressed")


def check_size(plan: ScenePlan) -> None:
    """Refuse an output above ``output.max_size_gb`` (0: no limit), in one line naming the option."""
    limit = plan.config.output.max_size_gb
    size = plan.estimated_bytes()
    if limit and size > limit * 1e9:
        h, w = plan.grid.out_shape
        raise ConfigError(
            f"{plan.input_uri} would make a {plan.bands} x {h} x {w} output of ~{format_bytes(size)} uncompressed, "
            f"over output.max_size_gb={limit:g}; raise the limit (--set output.max_size_gb=N, 0 for none) if that "
            "is what you want, or crop the input")


# -- what a store was made from ---------------------------------------------------------------------------------
def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def differences(recorded: dict[str, Any], plan: ScenePlan, *, with_model: bool) -> list[str]:
    """What differs between the record of a store (``made_from``) and ``plan``, in words; [] when nothing."""
    now = plan.made_from()
    out = []
    if recorded.get("input_checksum") != now["input_checksum"]:
        out.append(f"input {recorded.get('input_uri') or '?'} (checksum {recorded.get('input_checksum')}), "
                   f"not {plan.input_uri} (checksum {now['input_checksum']})")
    if recorded.get("config") != now["config"]:
        old, new = _flat(recorded.get("parameters") or {}), _flat(plan.parameters())
        keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        shown = ", ".join(f"{k}={old.get(k)!r} (now {new.get(k)!r})" for k in keys[:4])
        out.append(f"parameters {shown}{', ...' if len(keys) > 4 else ''}" if keys else "other parameters")
    if with_model and recorded.get("model") not in (None, now["model"]):
        old_m, new_m = recorded.get("model") or {}, now["model"]
        keys = [k for k in sorted(set(old_m) | set(new_m)) if old_m.get(k) != new_m.get(k)]
        out.append("model " + ", ".join(f"{k}={old_m.get(k)!r} (now {new_m.get(k)!r})" for k in keys[:3]))
    if with_model and recorded.get("geosr") not in (None, now["geosr"]):
        out.append(f"geosr {recorded.get('geosr')} (now {now['geosr']})")
    return out


def refuse_if_other(st: StoreStatus, plan: ScenePlan, *, with_model: bool) -> None:
    """Raise :class:`OutputExistsError` when the store at ``plan.output_uri`` was made from another input or
    other parameters (the model and geosr version too with ``with_model``)."""
    if st.made_from is None:  # a store written before geosr recorded what it was made from
        if with_model and st.plan_hash != plan.plan_hash:
            raise OutputExistsError(
                f"{plan.output_uri} holds a {'complete' if st.state == 'complete' else 'unfinished'} run with "
                f"different inputs or parameters (plan {st.plan_hash} != {plan.plan_hash}); rerun with the original "
                "parameters, or pass --overwrite to replace it")
        return
    diff = differences(st.made_from, plan, with_model=with_model)
    if diff:
        what = "complete output" if st.state == "complete" else "unfinished output"
        raise OutputExistsError(f"{plan.output_uri} is a {what} made from {'; '.join(diff)}; pass --overwrite to "
                                "replace it, or rerun with the original input and parameters")


# -- steps --------------------------------------------------------------------------------------------------
def prepare_output(plan: ScenePlan, env: StorageEnv, overwrite: bool) -> tuple[ZarrOutput | None, str]:
    """Decide skip / resume / create for the output. Returns (output or None when skipped, state)."""
    st = store_status(plan.output_uri, env)
    replace = overwrite
    if st.state != "absent" and not overwrite:
        try:
            refuse_if_other(st, plan, with_model=True)
        except OutputExistsError:
            if st.state == "complete" or st.done:
                raise
            # an unfinished store without a single block (e.g. its run stopped at a corrupt input that was then
            # replaced) holds nothing to lose: make it again for this plan
            log.warning("replacing %s: it holds no finished block and was made for other inputs or parameters",
                        plan.output_uri)
            replace = True
        else:
            if st.state == "complete":
                return None, "skipped"
            return ZarrOutput.open(plan.output_uri, env, plan.plan_hash), "resumed"
    out = ZarrOutput.create(plan.output_uri, plan.output_spec(), env, plan.plan_hash, overwrite=replace,
                            made_from=plan.record())
    return out, "written"


def provenance(plan: ScenePlan, started: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "input_uri": plan.input_uri,
        "input_checksum": plan.meta.checksum,
        "geosr_version": __version__,
        "model": plan.model,
        "config_hash": plan.config.config_hash(),
        "plan_hash": plan.plan_hash,
        "parameters": plan.parameters(),
        "uncertainty_samples": plan.config.output.uncertainty_samples,
        "start_time": started,
        "end_time": datetime.now(timezone.utc).isoformat(),
        "metrics": metrics,
        **({"source_item": plan.meta.stac} if plan.meta.stac else {}),  # a STAC Item input: the output Item links it
    }


def finalize(output: ZarrOutput, prov: dict[str, Any], stac: bool, policy: RetryPolicy) -> None:
    """Finish the store unless someone else already did (retried: finalize is safe to repeat)."""
    def go() -> None:
        if not output.is_complete():
            output.finalize(prov, stac=stac)

    call_with_retry(go, policy, f"finalizing {output.uri}")


def run_scene(input_uri: str, output_uri: str, cfg: RunConfig, executor: Executor | None = None, *,
              overwrite: bool = False, env: StorageEnv | None = None, progress: ProgressFn | None = None,
              announce: Callable[[str], None] | None = None, lease: LeaseOptions | None = None,
              slot: Callable[[], ContextManager[Any]] | None = None, max_blocks: int | None = None,
              extra_provenance: dict[str, Any] | None = None, policy: RetryPolicy | None = None,
              upsampler: Any = None) -> SceneReport:
    """Super-resolve one scene into a Zarr store (see the module's docstring for the steps).

    ``executor``: where the blocks run (default: :class:`~geosr.local_executor.LocalExecutor` with
    ``cfg.workers`` threads and ``upsampler`` if given). ``announce`` receives the size estimate before any
    work starts. ``lease`` serialises runs of one output (waiting for another run); ``slot`` is entered around
    the model work (the Prefect GPU limit). ``max_blocks`` stops after that many blocks (the store stays
    incomplete, as after a crash); ``extra_provenance`` is merged into the provenance record (e.g.
    ``{"datetime": acquisition time}``, the STAC item's datetime). ``policy``: the retries of every storage
    operation (default: ``cfg.storage.retry_attempts`` tries with backoff)."""
    if policy is None:
        policy = storage_policy(cfg.storage.retry_attempts)
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat()
    env = env or StorageEnv(cfg.storage)
    if executor is None:
        from .local_executor import LocalExecutor

        executor = LocalExecutor(cfg.workers, upsampler=upsampler)
    source = call_with_retry(lambda: open_source(input_uri, cfg.input, env), policy, f"opening {input_uri}")
    shape = ScenePlan(input_uri, output_uri, cfg, source.meta)  # geometry only: the model is not loaded yet
    grid, blocks = shape.grid, shape.blocks
    if announce is not None:
        announce(size_estimate(shape))
    check_size(shape)
    base: dict[str, Any] = {"in_shape": source.meta.shape, "out_shape": grid.out_shape, "tiles": grid.n_tiles}
    out_px = grid.out_shape[0] * grid.out_shape[1]

    def report(state: str, plan: ScenePlan, run: int = 0, metrics: dict[str, Any] | None = None,
               **more: Any) -> SceneReport:
        return SceneReport(input_uri, output_uri, state, len(blocks), run, time.perf_counter() - t0, out_px,
                           metrics or {}, model=plan.model, **base, **more)

    st = call_with_retry(lambda: store_status(output_uri, env), policy, f"checking {output_uri}")
    if st.state == "complete" and not overwrite:
        refuse_if_other(st, shape, with_model=False)
        if lease is not None and lease.enabled:  # a run killed after finishing the store may have left its lease
            call_with_retry(SceneLease(output_uri, env, ttl=lease.ttl).clear_stale, policy,
                            f"checking the lease of {output_uri}")
        log.info("%s is complete; skipping (pass overwrite to redo it)", output_uri)
        return report("skipped", shape)

    with ExitStack() as stack:
        check = None
        if lease is not None and lease.enabled:
            held = stack.enter_context(SceneLease(output_uri, env, ttl=lease.ttl, label=lease.label,
                                                  poll=lease.poll, retry=policy).hold(wait=lease.wait))
            check = held.check
        tw = time.perf_counter()
        stack.enter_context(slot() if slot is not None else nullcontext())
        wait = time.perf_counter() - tw
        held_from = time.time()
        if wait > 1:
            log.info("waited %.1f s for a GPU slot", wait)
        info = executor.load_model(ModelRecipe.from_config(cfg, shape.bands), cfg.output.uncertainty_samples)
        plan = ScenePlan(input_uri, output_uri, cfg, source.meta, info.description, tiles_on_read=not info.window_path)
        output, state = call_with_retry(lambda: prepare_output(plan, env, overwrite), policy,
                                        f"preparing {output_uri}")
        if output is None:  # finished by someone else meanwhile (we waited for its lease)
            return report("skipped", plan, slot_wait_s=wait)
        results: list[dict[str, Any]] = []
        first_pass = None
        for _pass in range(2):  # a second pass for blocks whose marker could not be read back after the first
            done = call_with_retry(output.done_blocks, policy, f"reading the ledger of {output_uri}")
            todo = [b for b in blocks if b.key not in done]
            if first_pass is None:
                first_pass = len(todo)
                log.info("%s: %s, %d of %d blocks to do", output_uri, "resuming" if state == "resumed" else "writing",
                         len(todo), len(blocks))
                if progress:
                    progress(len(done), len(blocks))
            elif todo:
                log.warning("%s: %d block(s) not recorded as done after they ran (%s); running them again",
                            output_uri, len(todo), ", ".join(b.key for b in todo[:5]))
            if max_blocks is not None:
                todo = todo[:max_blocks]
            if not todo:
                break
            n_done = len(done)

            def on_block(stats: dict[str, Any], n_done: int = n_done) -> None:
                results.append(stats)
                if progress:
                    progress(min(len(blocks), n_done + len(results)), len(blocks))
                if check is not None:
                    check()

            executor.run_blocks(plan, source, output, todo, on_block, policy)
            if max_blocks is not None:
                break
        slot_held = (held_from, time.time())
        all_done = call_with_retry(output.done_blocks, policy, f"reading the ledger of {output_uri}")
        metrics = scene_metrics(all_done)
        metrics["model_seconds"] = round(sum(float(s.get("model_seconds", 0.0)) for s in all_done.values()), 3)
        missing = [b.key for b in blocks if b.key not in all_done]
        if missing and max_blocks is None:
            raise OutputError(
                f"{output_uri} is not complete: {len(missing)} of {len(blocks)} blocks are not recorded as done "
                f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}) although they ran; rerun the same "
                "command to finish them")
        if not missing:
            prov = provenance(plan, started, metrics)
            prov.update({k: v for k, v in (extra_provenance or {}).items() if v is not None})
            finalize(output, prov, cfg.output.stac, policy)
        else:
            state = "incomplete"
        tiles_run = sum(int(s.get("tiles", 0)) - int(s.get("tiles_skipped", 0)) for s in results)
        model_s = sum(float(s.get("model_seconds", 0.0)) for s in results)
        return report(state, plan, len(results), metrics, tiles_run=tiles_run, model_seconds=round(model_s, 3),
                      slot_wait_s=wait, slot_held=slot_held, workers=getattr(executor, "workers_used", ()))
