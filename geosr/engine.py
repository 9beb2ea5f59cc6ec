"""The data path for one scene: plan, then per block read -> tile -> upsample -> blend -> write -> mark done.

The per-block steps are separate functions so an orchestrator can put them on different workers
(read on CPU workers, upsample + blend + write where the model lives); :func:`run_scene` runs them on a
local thread pool. Every block is a pure function of (input window, grid, model, seed): rerunning one
rewrites identical bytes, which is what makes resume and concurrent writers safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import cached_property
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from scipy import ndimage

from . import __version__
from .blend import BlockBlender
from .config import RunConfig
from .errors import OutputExistsError
from .grid import Block, BlockGrid, TileGrid, mirror_indices
from .io.source import RasterSource, SourceMeta, open_source
from .io.storage import StorageEnv
from .metrics import ConsistencyAccumulator, SeamAccumulator, degrade, tile_boundaries
from .store import OutputSpec, ZarrOutput, store_status
from .upsamplers import TileBatch, Upsampler, build_upsampler, require_sampling
from .upsamplers.base import check_samples
from .upsamplers.classic import KINDS as CLASSIC_KINDS
from .upsamplers.classic import ClassicUpsampler
from . import separable
from .scratch import buffer

log = logging.getLogger(__name__)


def output_transform(transform: tuple[float, ...], scale: int) -> tuple[float, ...]:
    """Low-res affine (a, b, c, d, e, f) -> the output's: same origin, pixels ``scale`` times smaller."""
    a, b, c, d, e, f = transform[:6]
    return (a / scale, b / scale, c, d / scale, e / scale, f)


@dataclass(frozen=True)
class ScenePlan:
    """Everything that fixes a scene's output bytes, plus where it goes."""

    input_uri: str
    output_uri: str
    config: RunConfig
    meta: SourceMeta
    model: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def grid(self) -> TileGrid:
        t = self.config.tiling
        return TileGrid(self.meta.height, self.meta.width, t.tile, t.overlap, t.scale)

    @property
    def blocks(self) -> BlockGrid:
        t = self.config.tiling
        return BlockGrid(self.grid, t.block, t.chunk)

    @property
    def plan_hash(self) -> str:
        """Changes whenever the output's bytes could: input, config, model, geosr version."""
        doc = {
            "input_checksum": self.meta.checksum,
            "config": self.config.config_hash(),
            "model": self.model,
            "geosr": __version__,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:20]

    def output_spec(self) -> OutputSpec:
        c = self.config
        h, w = self.grid.out_shape
        return OutputSpec(
            shape=(len(self.meta.band_indexes), h, w),
            chunk=c.tiling.chunk,
            block=c.tiling.block,
            band_names=tuple(self.meta.band_names),
            crs_wkt=self.meta.crs_wkt,
            transform=output_transform(self.meta.transform, c.tiling.scale),
            variable=c.output.variable,
            dtype=c.output.dtype,
            zarr_format=c.output.zarr_format,
            shard=c.output.shard,
            compressor=c.output.compressor,
            level=c.output.level,
            overviews=c.output.overviews,
            uncertainty_samples=c.output.uncertainty_samples,
        )


@dataclass(frozen=True)
class BlockInput:
    """What a block needs from the input: the low-res window its tiles cover, read once.

    The tiles (nodata filled per tile) are cut from the window when first asked for (``pixels``,
    ``origins``, ``skip``), so a model that does not need them (the classic kernels' window path,
    :mod:`geosr.separable`) never pays for them; :func:`read_block` cuts them at once for other models.
    Picklable (what was cut travels with it)."""

    block: Block
    keys: tuple[tuple[int, int], ...]  # (ky, kx) of each tile touching the block, global order
    grid: TileGrid
    window: np.ndarray  # (C, wh, ww) float32 reflectance of the read window
    window_valid: np.ndarray  # (wh, ww) bool
    window_origin: tuple[int, int]  # scene (row, col) of the window's top-left pixel

    @cached_property
    def _tiles(self) -> tuple[np.ndarray, np.ndarray, tuple[bool, ...]]:
        g = self.grid
        r0, c0 = self.window_origin
        tiles, origins, skip = [], [], []
        for ky, kx in self.keys:
            oy, ox = g.origin(ky, kx)
            ri = mirror_indices(oy, oy + g.tile, g.height) - r0
            ci = mirror_indices(ox, ox + g.tile, g.width) - c0
            v = self.window_valid[np.ix_(ri, ci)]
            if not v.any():
                skip.append(True)
                continue
            skip.append(False)
            tiles.append(fill_nodata(self.window[:, ri][:, :, ci], v))
            origins.append((oy, ox))
        bands = self.window.shape[0]
        pixels = (np.stack(tiles).astype(np.float32, copy=False) if tiles
                  else np.zeros((0, bands, g.tile, g.tile), np.float32))
        return pixels, np.asarray(origins, dtype=np.int64).reshape(-1, 2), tuple(skip)

    @property
    def pixels(self) -> np.ndarray:
        """(N, C, T, T) float32 tiles; tiles with no valid pixel are excluded (see ``skip``)."""
        return self._tiles[0]

    @property
    def origins(self) -> np.ndarray:
        """(N, 2) int64 low-res origin of each tile in ``pixels``."""
        return self._tiles[1]

    @property
    def skip(self) -> tuple[bool, ...]:
        """Per key: True when the tile has no valid pixel (its output is nodata anyway)."""
        return self._tiles[2]

    @property
    def tiles_skipped(self) -> int:
        """How many of ``keys`` have no valid pixel (without cutting the tiles when the window is all valid)."""
        if "_tiles" not in self.__dict__ and self.window_valid.all():
            return 0
        return int(sum(self.skip))

    def _own(self) -> tuple[slice, slice]:
        s, b = self.grid.scale, self.block
        r0, c0 = self.window_origin
        return (slice(b.y0 // s - r0, math.ceil(b.y1 / s) - r0), slice(b.x0 // s - c0, math.ceil(b.x1 / s) - c0))

    @property
    def lowres(self) -> np.ndarray:
        """(C, h, w) the block's own low-res footprint, for consistency metrics."""
        rows, cols = self._own()
        return self.window[:, rows, cols]

    @property
    def lowres_valid(self) -> np.ndarray:
        rows, cols = self._own()
        return self.window_valid[rows, cols]


def fill_nodata(tile: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Replace invalid pixels by their nearest valid neighbour, so nodata never leaks into valid pixels
    through the upsampler's support. A pure function of the tile (partition invariant)."""
    if valid.all():
        return tile
    idx = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return tile[:, idx[0], idx[1]]


def read_block(plan: ScenePlan, block: Block, source: RasterSource) -> BlockInput:
    """Read the block's low-res window once. Its tiles are cut at once unless the model is a classic kernel
    (which can skip them, :mod:`geosr.separable`), so an orchestrator's read step does that work."""
    bg = plan.blocks
    (r0, r1), (c0, c1) = bg.read_window(block)
    data, valid = source.read((r0, r1), (c0, c1))
    inp = BlockInput(block, tuple(bg.tiles(block)), plan.grid, data.astype(np.float32, copy=False), valid, (r0, c0))
    if plan.config.model.name not in CLASSIC_KINDS:
        inp.pixels  # noqa: B018  (cut the tiles now)
    return inp


def upsample_tiles(upsampler: Upsampler, inp: BlockInput, seed: int) -> Iterable[np.ndarray]:
    """Yield upsampled tiles (C, sT, sT) in the block's tile order, batch by batch."""
    n = inp.pixels.shape[0]
    bs = max(1, upsampler.batch_size)
    for i in range(0, n, bs):
        batch = TileBatch(inp.pixels[i : i + bs], inp.origins[i : i + bs], seed=seed)
        out = upsampler(batch)
        yield from out


def upsample_tiles_with_std(upsampler: Upsampler, inp: BlockInput, seed: int,
                            samples: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (mean, std) of ``samples`` model samples per tile, each (C, sT, sT) float32, in the block's
    tile order, batch by batch (``upsampler.sample_with_std``; one batch of samples in memory at a time)."""
    n = inp.pixels.shape[0]
    bs = max(1, upsampler.batch_size)
    for i in range(0, n, bs):
        batch = TileBatch(inp.pixels[i : i + bs], inp.origins[i : i + bs], seed=seed)
        mean, std = upsampler.sample_with_std(batch, samples)  # type: ignore[attr-defined]
        check_samples(batch, mean, std, upsampler.scale)
        yield from zip(mean, std)


def _blend_streams(plan: ScenePlan, inp: BlockInput, outputs: Iterable[Any], streams: int) -> list[np.ndarray]:
    """Blend ``streams`` parallel tile streams into the block with the same global weights, in global tile
    order. ``outputs`` yields one tile per computed key (``streams == 1``) or a tuple of ``streams``
    tiles; skipped keys (no valid pixel) blend zeros, which only ever reach nodata pixels."""
    g = plan.grid
    bands = inp.window.shape[0]
    blenders = [BlockBlender(g, inp.block, bands, plan.config.tiling.ramp) for _ in range(streams)]
    it = iter(outputs)
    zero = None
    for (ky, kx), skipped in zip(inp.keys, inp.skip):
        if skipped:
            if zero is None:
                zero = np.zeros((bands, g.out_tile, g.out_tile), np.float32)
            tiles: tuple[np.ndarray, ...] = (zero,) * streams
        else:
            item = next(it)
            tiles = (item,) if streams == 1 else tuple(item)
        for blender, tile in zip(blenders, tiles, strict=True):
            blender.add(ky, kx, tile)
    return [b.result() for b in blenders]


def _block_valid(plan: ScenePlan, inp: BlockInput) -> np.ndarray:
    """The block's (h, w) valid mask at output resolution: each low-res pixel's validity, repeated."""
    s = plan.grid.scale
    b = inp.block
    oy, ox = (b.y0 // s) * s, (b.x0 // s) * s
    up = inp.lowres_valid.repeat(s, axis=0).repeat(s, axis=1)
    return up[b.y0 - oy : b.y1 - oy, b.x0 - ox : b.x1 - ox]


def _project(plan: ScenePlan, inp: BlockInput, data: np.ndarray, upsampler: Upsampler | None) -> np.ndarray:
    project = getattr(upsampler, "project_blended", None)
    s, b = plan.grid.scale, inp.block
    if project is not None and b.y0 % s == 0 and b.x0 % s == 0:
        data = np.asarray(project(data, inp.lowres), dtype=np.float32)
    return data


def blend_block(plan: ScenePlan, inp: BlockInput, outputs: Iterable[np.ndarray],
                upsampler: Upsampler | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Blend the tiles into the block; returns (data (C,h,w) float32, valid (h,w) bool).

    A model that offers ``project_blended(hr, lowres)`` gets the blended block back to re-impose
    low-resolution consistency (blending consistent tiles with per-pixel weights is not exactly
    consistent); the projection is local to each low-res pixel, so blocks still give identical bytes."""
    (data,) = _blend_streams(plan, inp, outputs, 1)
    return _project(plan, inp, data, upsampler), _block_valid(plan, inp)


def blend_block_with_std(plan: ScenePlan, inp: BlockInput, outputs: Iterable[tuple[np.ndarray, np.ndarray]],
                         upsampler: Upsampler | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blend (mean, std) tile pairs (:func:`upsample_tiles_with_std`) into the block; returns
    (data (C,h,w), std (C,h,w), valid (h,w)).

    The mean is blended and projected exactly as :func:`blend_block` blends single outputs. The std goes
    through a second blender with the same global weights, so it is ``sum_k w_k * std_k``: exactly the
    tile's sample std where one tile covers a pixel; where tiles overlap, an approximation of the std of
    the blended sample ``sum_k w_k * X_k`` -- never below it (triangle inequality, ``w_k >= 0``) and equal
    when the overlapping tiles' samples are perfectly correlated (position-keyed noise makes them close).
    It is the spread of single samples, not the standard error of the N-sample mean (that is std/sqrt(N)).
    The projection is not applied to the std (it shifts each sample by a per-low-res-pixel constant that
    is nearly the same for all samples). Block partitions give the same std, as they give the same data."""
    data, std = _blend_streams(plan, inp, outputs, 2)
    np.maximum(std, 0.0, out=std)  # a convex blend of non-negative values; clip float rounding below 0
    return _project(plan, inp, data, upsampler), std, _block_valid(plan, inp)


def block_stats(plan: ScenePlan, inp: BlockInput, data: np.ndarray, valid: np.ndarray,
                std: np.ndarray | None = None) -> dict[str, Any]:
    """Per-block sums for scene metrics (LR consistency, seams, mean std when ``std`` is given), saved with
    the block's done marker."""
    g, b = plan.grid, inp.block
    s = g.scale
    stats: dict[str, Any] = {"tiles": len(inp.keys), "tiles_skipped": inp.tiles_skipped}
    if b.y0 % s == 0 and b.x0 % s == 0 and data.shape[1] % s == 0 and data.shape[2] % s == 0:
        cons = ConsistencyAccumulator()
        cons.add(degrade(data, s), inp.lowres, inp.lowres_valid)
        stats["consistency"] = [cons.l1_sum, cons.angle_sum, cons.n]
    seam = SeamAccumulator()
    by = tile_boundaries(g.y_origins, g.tile, s, g.height)
    bx = tile_boundaries(g.x_origins, g.tile, s, g.width)
    seam.add(data, by, bx, valid, y0=b.y0, x0=b.x0, period=s, band_mean=True)
    stats["seam"] = [seam.seam_sum, seam.seam_n, seam.inner_sum, seam.inner_n]
    if std is not None:
        ok = valid[None] & np.isfinite(std)
        stats["std"] = [float(std.sum(where=ok, dtype=np.float64)), int(ok.sum())]
    return stats


def window_upsample(plan: ScenePlan, inp: BlockInput, upsampler: Upsampler,
                    out: np.ndarray | None = None) -> np.ndarray | None:
    """The block's blended output straight from its window (:mod:`geosr.separable`) when the model is a
    classic kernel on CPU and the window allows it; None means: use the tiles. Same bytes either way."""
    if not (isinstance(upsampler, ClassicUpsampler) and upsampler.device == "cpu"):
        return None
    if not separable.applies(plan.grid, inp.window, inp.window_valid):
        return None
    return separable.upsample_block(plan.grid, inp.block, inp.window, inp.window_origin, upsampler.kind,
                                    plan.config.tiling.ramp, out=out)


TileStream = Callable[[], Iterable[Any]]


def super_resolve_block(plan: ScenePlan, inp: BlockInput, upsampler: Upsampler, tiles: TileStream | None = None,
                        out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Upsample and blend one block: (data (C,h,w) float32, std (C,h,w) or None, valid (h,w)).

    ``tiles`` makes the upsampled tile stream when the tiles are needed (default: :func:`upsample_tiles`,
    or :func:`upsample_tiles_with_std` when ``output.uncertainty_samples``); an orchestrator passes its own
    (batched, OOM-adaptive). The classic kernels on CPU skip the tiles (:func:`window_upsample`, which
    writes into ``out`` when given: a reused per-thread buffer, :func:`geosr.scratch.buffer`)."""
    seed, samples = plan.config.model.seed, plan.config.output.uncertainty_samples
    if samples:
        stream = tiles() if tiles else upsample_tiles_with_std(upsampler, inp, seed, samples)
        return blend_block_with_std(plan, inp, stream, upsampler)
    data = window_upsample(plan, inp, upsampler, out)
    if data is not None:
        return data, None, _block_valid(plan, inp)
    data, valid = blend_block(plan, inp, tiles() if tiles else upsample_tiles(upsampler, inp, seed), upsampler)
    return data, None, valid


def process_block(plan: ScenePlan, block: Block, source: RasterSource, upsampler: Upsampler,
                  output: ZarrOutput) -> dict[str, Any]:
    """Read, upsample, blend, write and mark one block done. Returns its stats."""
    t0 = time.perf_counter()
    inp = read_block(plan, block, source)
    bands = inp.window.shape[0]
    data, std, valid = super_resolve_block(plan, inp, upsampler,
                                           out=buffer("block", (bands, *block.shape), np.float32))
    stats = block_stats(plan, inp, data, valid, std)
    output.write_block(block, data, valid, std=std)
    stats["seconds"] = round(time.perf_counter() - t0, 4)
    output.mark_done(block, stats)
    return stats


def scene_metrics(done: dict[str, dict]) -> dict[str, Any]:
    """Aggregate the per-block stats of every done block into scene metrics."""
    cons, seam = ConsistencyAccumulator(), SeamAccumulator()
    tiles = skipped = std_n = 0
    seconds = std_sum = 0.0
    for st in done.values():
        tiles += int(st.get("tiles", 0))
        skipped += int(st.get("tiles_skipped", 0))
        seconds += float(st.get("seconds", 0.0))
        if "consistency" in st:
            cons = cons.merge(ConsistencyAccumulator(*st["consistency"]))
        if "seam" in st:
            seam = seam.merge(SeamAccumulator(*st["seam"]))
        if "std" in st:
            std_sum += float(st["std"][0])
            std_n += int(st["std"][1])
    out: dict[str, Any] = {"tiles_computed": tiles, "tiles_skipped_nodata": skipped, "block_seconds": round(seconds, 3)}
    out.update(cons.value())
    out["seam_metric"] = seam.value()
    if std_n:
        out["std_mean"] = std_sum / std_n  # mean per-pixel std over valid pixels and bands
    return out


@dataclass(frozen=True)
class SceneReport:
    input_uri: str
    output_uri: str
    state: str  # "written" | "resumed" | "skipped"
    blocks_total: int
    blocks_run: int
    seconds: float
    out_pixels: int
    metrics: dict[str, Any]

    @property
    def mpx_per_s(self) -> float:
        return self.out_pixels / 1e6 / self.seconds if self.seconds > 0 else float("nan")


ProgressFn = Callable[[int, int], None]


def plan_scene(input_uri: str, output_uri: str, cfg: RunConfig, env: StorageEnv | None = None,
               upsampler: Upsampler | None = None) -> tuple[ScenePlan, RasterSource]:
    env = env or StorageEnv(cfg.storage)
    source = open_source(input_uri, cfg.input, env)
    model = upsampler.describe() if upsampler is not None else {"name": cfg.model.name, "params": cfg.model.params}
    return ScenePlan(input_uri, output_uri, cfg, source.meta, model), source


def build_model(cfg: RunConfig, bands: int) -> Upsampler:
    m = cfg.model
    return build_upsampler(m.name, scale=cfg.tiling.scale, batch_size=m.batch_size, device=m.device,
                           bands=bands, seed=m.seed, params=m.params)


def prepare_output(plan: ScenePlan, env: StorageEnv, overwrite: bool) -> tuple[ZarrOutput | None, str]:
    """Decide skip / resume / create for the output. Returns (output or None when skipped, state)."""
    st = store_status(plan.output_uri, env)
    if st.state == "complete" and not overwrite:
        return None, "skipped"
    if st.state == "incomplete" and not overwrite:
        if st.plan_hash != plan.plan_hash:
            raise OutputExistsError(
                f"{plan.output_uri} holds an unfinished run with different inputs or parameters "
                f"(plan {st.plan_hash} != {plan.plan_hash}); rerun with the original parameters to resume, "
                "or pass --overwrite to replace it"
            )
        return ZarrOutput.open(plan.output_uri, env), "resumed"
    return ZarrOutput.create(plan.output_uri, plan.output_spec(), env, plan.plan_hash, overwrite=overwrite), "written"


def provenance(plan: ScenePlan, started: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "input_uri": plan.input_uri,
        "input_checksum": plan.meta.checksum,
        "geosr_version": __version__,
        "model": plan.model,
        "config_hash": plan.config.config_hash(),
        "plan_hash": plan.plan_hash,
        "parameters": plan.config.model_dump(mode="json", exclude={"storage"}),
        "uncertainty_samples": plan.config.output.uncertainty_samples,
        "start_time": started,
        "end_time": datetime.now(timezone.utc).isoformat(),
        "metrics": metrics,
        **({"source_item": plan.meta.stac} if plan.meta.stac else {}),  # a STAC Item input: the output Item links it
    }


def run_scene(input_uri: str, output_uri: str, cfg: RunConfig, *, overwrite: bool = False,
              progress: ProgressFn | None = None, env: StorageEnv | None = None,
              upsampler: Upsampler | None = None, max_blocks: int | None = None) -> SceneReport:
    """Super-resolve one scene into a Zarr store: skip if complete, resume if incomplete, else write.

    ``max_blocks`` stops after that many blocks (tests use it to simulate a crash; the store stays
    incomplete)."""
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat()
    env = env or StorageEnv(cfg.storage)
    source = open_source(input_uri, cfg.input, env)
    bands = len(source.meta.band_indexes)
    upsampler = upsampler or build_model(cfg, bands)
    require_sampling(upsampler, cfg.output.uncertainty_samples)
    plan = ScenePlan(input_uri, output_uri, cfg, source.meta, upsampler.describe())
    blocks = plan.blocks
    out_px = plan.grid.out_shape[0] * plan.grid.out_shape[1]
    output, state = prepare_output(plan, env, overwrite)
    if output is None:
        log.info("%s is complete; skipping (pass overwrite to redo it)", output_uri)
        return SceneReport(input_uri, output_uri, "skipped", len(blocks), 0, time.perf_counter() - t0, out_px, {})
    done = set(output.done_blocks())
    todo = [b for b in blocks if b.key not in done]
    if max_blocks is not None:
        todo = todo[:max_blocks]
    if progress:
        progress(len(done), len(blocks))
    workers = cfg.workers or os.cpu_count() or 1
    run_blocks(todo, lambda b: process_block(plan, b, source, upsampler, output), workers,
               (lambda n: progress(len(done) + n, len(blocks))) if progress else None)
    all_done = output.done_blocks()
    metrics = scene_metrics(all_done)
    if len(all_done) == len(blocks):
        output.finalize(provenance(plan, started, metrics), stac=cfg.output.stac)
    return SceneReport(input_uri, output_uri, state, len(blocks), len(todo), time.perf_counter() - t0, out_px, metrics)


def run_blocks(blocks: list[Block], fn: Callable[[Block], Any], workers: int,
               progress: Callable[[int], None] | None = None) -> None:
    """Run ``fn`` over blocks on a thread pool, at most ``workers`` in flight (bounded memory).
    The first failure cancels what has not started and is re-raised."""
    if workers <= 1:
        for i, b in enumerate(blocks, 1):
            fn(b)
            if progress:
                progress(i)
        return
    it = iter(blocks)
    finished = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="geosr-block") as pool:
        pending: set[Future] = set()
        for b in it:
            pending.add(pool.submit(fn, b))
            if len(pending) >= workers:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                exc = f.exception()
                if exc is not None:
                    for p in pending:
                        p.cancel()
                    raise exc
                finished += 1
                if progress:
                    progress(finished)
                nxt = next(it, None)
                if nxt is not None:
                    pending.add(pool.submit(fn, nxt))
