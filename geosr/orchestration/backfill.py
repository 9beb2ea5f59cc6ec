"""Backfill planning: which scenes, how many tiles, roughly how much GPU time — before anything runs.

The plan reads only headers and ledgers: each input's header (its size gives the tile grid) and each
output's ledger (a resumable output only needs its missing blocks). The GPU-time estimate is
``tiles to compute x seconds per tile``, where seconds per tile is, in order of preference: given by
the operator, measured on outputs of the same model that this backfill already finished (their
provenance metrics), or a rough default per model family.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..config import ClassicModel, RunConfig
from ..errors import GeosrError
from ..io.source import open_source
from ..io.storage import StorageEnv
from ..plan import ScenePlan
from ..retry import RetryPolicy, call_with_retry, storage_policy
from .discovery import SceneState, scene_states
from .jobs import SceneJob
from .query import SceneRef

log = logging.getLogger(__name__)

DEFAULT_SECONDS_PER_TILE = {"classic": 0.005, "model": 1.0}


@dataclass(frozen=True)
class PlannedScene:
    ref: SceneRef
    output_uri: str
    action: str  # "run" (new), "resume", "skip" (complete), "error"
    key: str = ""  # idempotency key of the scene job
    blocks_total: int = 0
    blocks_todo: int = 0
    tiles: int = 0  # tiles of the scene's grid
    tiles_todo: int = 0  # tiles the missing blocks compute (a tile straddling two blocks counts twice)
    est_gpu_s: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class BackfillPlan:
    scenes: tuple[PlannedScene, ...]
    seconds_per_tile: float
    seconds_per_tile_source: str
    model: str
    output_prefix: str

    def by_action(self, action: str) -> list[PlannedScene]:
        return [s for s in self.scenes if s.action == action]

    @property
    def to_run(self) -> list[PlannedScene]:
        return [s for s in self.scenes if s.action in ("run", "resume")]

    @property
    def tiles_todo(self) -> int:
        return sum(s.tiles_todo for s in self.scenes)

    @property
    def est_gpu_s(self) -> float:
        return sum(s.est_gpu_s for s in self.scenes)

    def summary(self) -> dict[str, Any]:
        return {
            "scenes": len(self.scenes), "run": len(self.by_action("run")), "resume": len(self.by_action("resume")),
            "skip": len(self.by_action("skip")), "error": len(self.by_action("error")),
            "tiles_todo": self.tiles_todo, "est_gpu_s": round(self.est_gpu_s, 1),
            "seconds_per_tile": self.seconds_per_tile, "seconds_per_tile_source": self.seconds_per_tile_source,
            "model": self.model,
        }

    def table(self) -> str:
        """The dry-run report: one line per scene, then the totals."""
        rows = [("scene", "action", "blocks", "tiles", "est. GPU", "output")]
        for s in self.scenes:
            blocks = f"{s.blocks_todo}/{s.blocks_total}" if s.blocks_total else "-"
            what = s.output_uri if s.action != "error" else f"ERROR: {s.error}"
            rows.append((s.ref.scene_id, s.action, blocks, str(s.tiles_todo), format_seconds(s.est_gpu_s), what))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5] for r in rows]
        t = self.summary()
        lines.append("")
        lines.append(
            f"{t['scenes']} scene(s): {t['run']} to run, {t['resume']} to resume, {t['skip']} complete (skipped), "
            f"{t['error']} with errors; {t['tiles_todo']} tiles to compute; estimated GPU time "
            f"{format_seconds(self.est_gpu_s)} at {self.seconds_per_tile:g} s/tile ({self.seconds_per_tile_source})"
        )
        return "\n".join(lines)


def format_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def default_seconds_per_tile(cfg: RunConfig) -> float:
    """A rough default, scaled by tile area relative to 128 x 128 low-res pixels."""
    base = DEFAULT_SECONDS_PER_TILE["classic" if isinstance(cfg.model, ClassicModel) else "model"]
    return base * (cfg.tiling.tile / 128) ** 2


def _calibrate(states: list[SceneState], env: StorageEnv, model_name: str) -> tuple[float, int] | None:
    """Seconds per tile measured on complete outputs of the same model: (value, outputs used)."""
    import warnings

    import zarr

    from ..store.backend import StoreLocation

    secs = tiles = 0.0
    used = 0
    for st in states:
        if st.state != "complete" or used >= 20:
            continue
        try:
            loc = StoreLocation(st.output_uri, env)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                attrs: dict[str, Any] = dict(zarr.open_group(loc.zarr_store(read_only=True), mode="r").attrs.asdict())
        except Exception as e:  # a store we cannot read is no calibration point
            log.debug("no calibration from %s: %s", st.output_uri, e)
            continue
        prov = (attrs.get("geosr") or {}).get("provenance") or {}
        model = prov.get("model") or {}
        m = prov.get("metrics") or {}
        if model.get("name") != model_name or not m.get("tiles_computed"):
            continue
        secs += float(m.get("model_seconds") or m.get("block_seconds") or 0.0)
        tiles += float(m["tiles_computed"])
        used += 1
    if used and tiles > 0 and secs > 0:
        return secs / tiles, used
    return None


def plan_backfill(refs: list[SceneRef], output_prefix: str, cfg: RunConfig, *, overwrite: bool = False,
                  seconds_per_tile: float | None = None, env: StorageEnv | None = None,
                  retry: RetryPolicy | None = None, threads: int = 8) -> BackfillPlan:
    """Plan a backfill of ``refs`` into ``output_prefix`` (reads headers and ledgers only; storage retries:
    ``cfg.storage.retry_attempts`` unless ``retry`` is given)."""
    env = env or StorageEnv(cfg.storage)
    retry = retry or storage_policy(cfg.storage.retry_attempts)
    states = scene_states(refs, output_prefix, env, retry=retry, threads=threads)
    model_name = cfg.model.name
    if seconds_per_tile is not None:
        spt, src = float(seconds_per_tile), "given"
    else:
        cal = _calibrate(states, env, model_name)
        if cal is not None:
            spt, src = cal[0], f"measured on {cal[1]} finished output(s)"
        else:
            spt, src = default_seconds_per_tile(cfg), f"default for {model_name}"

    def one(st: SceneState) -> PlannedScene:
        job = SceneJob(st.ref.input_uri, st.output_uri, cfg, overwrite, st.ref.scene_id, st.ref.collection)
        if st.state == "error":
            return PlannedScene(st.ref, st.output_uri, "error", job.key, error=st.error)
        try:
            src_ = call_with_retry(lambda: open_source(st.ref.input_uri, cfg.input, env), retry,
                                   f"opening {st.ref.input_uri}")
        except GeosrError as e:
            return PlannedScene(st.ref, st.output_uri, "error", job.key, error=str(e))
        plan = ScenePlan(st.ref.input_uri, st.output_uri, cfg, src_.meta, {})
        blocks, grid = plan.blocks, plan.grid
        if st.state == "complete" and not overwrite:
            return PlannedScene(st.ref, st.output_uri, "skip", job.key, len(blocks), 0, grid.n_tiles, 0, 0.0)
        todo = list(blocks)
        action = "run"
        if st.state == "incomplete" and not overwrite:
            done = _done_keys(st.output_uri, env, retry)
            if done is not None and st.total == len(blocks):
                todo = [b for b in blocks if b.key not in done]
                action = "resume"
        tiles_todo = sum(len(blocks.tiles(b)) for b in todo)
        return PlannedScene(st.ref, st.output_uri, action, job.key, len(blocks), len(todo), grid.n_tiles,
                            tiles_todo, round(tiles_todo * spt, 3))

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(states) or 1))) as pool:
        scenes = tuple(pool.map(one, states))
    return BackfillPlan(scenes, spt, src, model_name, output_prefix)


def _done_keys(output_uri: str, env: StorageEnv, retry: RetryPolicy) -> set[str] | None:
    from ..store import ZarrOutput

    try:
        out = call_with_retry(lambda: ZarrOutput.open(output_uri, env), retry, f"opening {output_uri}")
        return set(call_with_retry(out.done_blocks, retry, f"reading the ledger of {output_uri}"))
    except GeosrError:
        return None


@dataclass
class BackfillOutcome:
    """Per-scene results of a backfill, for its summary artifact."""

    done: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)

    def add_result(self, scene_id: str, output_uri: str, result: dict[str, Any]) -> None:
        row = {"scene": scene_id, "output": output_uri, **result}
        (self.skipped if result.get("state") == "skipped" else self.done).append(row)

    def add_failure(self, scene_id: str, output_uri: str, reason: str) -> None:
        self.failed.append({"scene": scene_id, "output": output_uri, "reason": " ".join(str(reason).split())[:500]})

    def counts(self) -> dict[str, int]:
        return {"done": len(self.done), "skipped": len(self.skipped), "failed": len(self.failed)}
