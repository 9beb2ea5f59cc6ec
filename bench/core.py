"""End-to-end throughput and peak memory of the classic (bicubic) path against the I/O floor.

For each scene size it makes a synthetic 4-band uint16 GeoTIFF (tiled, zstd), then, each in its own
subprocess so peak RSS is clean:

* ``floor``: a plain windowed read of the whole input plus a write of the output's bytes (level 0 and the
  in-block overview levels) with the same codec, chunks, dtype and data (one real geosr output block and
  its overviews written everywhere, so the compressor works as hard as on the real output; no
  interpolation, blending, overview computation or metrics);
* ``geosr``: ``geosr run`` with the bicubic upsampler (tiling, blending, encoding, ledger, overviews).

Prints a table with output Mpx/s, the ratio to the floor, and peak RSS.

    python bench/core.py                 # 4096^2 and 8192^2 low-res px at 4x (several minutes)
    python bench/core.py --sizes 1024    # quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_scene(path: Path, n: int, seed: int = 0) -> None:
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    profile = dict(driver="GTiff", height=n, width=n, count=4, dtype="uint16", crs="EPSG:32633",
                   transform=from_origin(500000, 5000000, 10, 10), tiled=True, blockxsize=512, blockysize=512,
                   compress="zstd", nodata=0)
    yy, xx = np.mgrid[0:512, 0:512].astype(np.float32)
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, n, 512):
            for c in range(0, n, 512):
                # smooth across the 512-px write blocks (no artificial edges), plus texture
                base = 1500 + 800 * np.sin((yy + r) / 85.0) * np.cos((xx + c) / 110.0)
                tex = rng.normal(0, 120, (4, 512, 512)).astype(np.float32)
                block = np.clip(base[None] * np.array([1.0, 1.1, 0.9, 1.6])[:, None, None] + tex, 1, 65535)
                h, w = min(512, n - r), min(512, n - c)
                dst.write(block[:, :h, :w].astype(np.uint16), window=((r, r + h), (c, c + w)))


def cpu_seconds() -> float:
    """CPU seconds of this process so far, all threads."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def floor_run(inp: str, out: str, scale: int, chunk: int, block: int, workers: int) -> dict:
    """The I/O floor: a windowed read of the whole input plus a write of the output's bytes -- level 0 and
    the overview levels a block writes -- with the same codec, chunks, dtype and data statistics as geosr's
    (every block writes one real geosr output block and its overviews, computed before the clock starts,
    so compression costs what it costs on real output). No tiling, upsampling, blending, encoding,
    overview computation, metrics, ledger or metadata."""
    from concurrent.futures import ThreadPoolExecutor

    import rasterio

    from geosr.block_step import super_resolve_block
    from geosr.config import load_config
    from geosr.io.source import open_source
    from geosr.io.storage import StorageEnv
    from geosr.plan import ScenePlan
    from geosr.store import ZarrOutput
    from geosr.store.encode import encode
    from geosr.store.overviews import block_pyramid
    from geosr.tiles import read_block
    from geosr.upsamplers.recipe import ModelRecipe

    cfg = load_config(None, {"tiling.scale": scale, "tiling.chunk": chunk, "tiling.block": block,
                             "model.name": "bicubic", "model.device": "cpu"})
    src = open_source(inp, cfg.input, StorageEnv())
    up = ModelRecipe.from_config(cfg, len(src.meta.band_indexes)).build()
    plan = ScenePlan(inp, out, cfg, src.meta, up.describe())
    blocks = list(plan.blocks)
    sample = blocks[len(blocks) // 2]
    bi = read_block(plan, sample, src)
    data, _std, valid = super_resolve_block(plan, bi, up)
    real = encode(data, valid, cfg.output.dtype)  # one real output block, encoded
    del data, valid, bi
    store = ZarrOutput.create(out, plan.output_spec(), StorageEnv(), "floor", overwrite=True)
    spec = store.spec
    levels = [(lv, store._array(lv.index), raw) for lv, raw in block_pyramid(real, store.levels, spec.dtype)]
    arr = store._array(0)
    h, w = src.meta.height, src.meta.width
    t0, c0 = time.perf_counter(), cpu_seconds()

    def one(b):
        with rasterio.open(inp) as s:
            s.read(window=((b.y0 // scale, -(-b.y1 // scale)), (b.x0 // scale, -(-b.x1 // scale))))
        arr[:, b.y0 : b.y1, b.x0 : b.x1] = real[:, : b.y1 - b.y0, : b.x1 - b.x0]
        for lv, level_arr, raw in levels:
            rows, cols = lv.region(spec, b.y0, b.y1, b.x0, b.x1)
            level_arr[:, rows, cols] = raw[:, : rows.stop - rows.start, : cols.stop - cols.start]

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, blocks))
    return {"seconds": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0, "out_px": h * w * scale * scale}


def geosr_run(inp: str, out: str, scale: int, chunk: int, block: int, workers: int) -> dict:
    from geosr.config import load_config
    from geosr.lifecycle import run_scene

    cfg = load_config(None, {"tiling.scale": scale, "tiling.chunk": chunk, "tiling.block": block,
                             "workers": workers, "model.name": "bicubic", "model.device": "cpu"})
    t0, c0 = time.perf_counter(), cpu_seconds()
    rep = run_scene(inp, out, cfg, overwrite=True)
    return {"seconds": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0, "out_px": rep.out_pixels,
            "seam": rep.metrics.get("seam_metric"),
            "lr_l1": rep.metrics.get("lr_l1")}


def child(kind: str, inp: str, out: str, scale: int, chunk: int, block: int, workers: int) -> None:
    from geosr.runtime import limit_malloc_arenas

    limit_malloc_arenas()  # as the geosr CLI does; applied to both so they compare like for like
    fn = floor_run if kind == "floor" else geosr_run
    res = fn(inp, out, scale, chunk, block, workers)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(res))


def measure(kind: str, inp: Path, out: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, str(inp), str(out), "--scale", str(args.scale),
           "--chunk", str(args.chunk), "--block", str(args.block), "--workers", str(args.workers)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"{kind} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--block", type=int, default=4096)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--workdir", default=None, help="scratch directory (default: a temp dir, removed)")
    p.add_argument("--child", nargs=3, metavar=("KIND", "IN", "OUT"))
    a = p.parse_args()
    if a.child:
        child(a.child[0], a.child[1], a.child[2], a.scale, a.chunk, a.block, a.workers)
        return
    import shutil

    work = Path(a.workdir or tempfile.mkdtemp(prefix="geosr-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for n in a.sizes:
            inp = work / f"scene{n}.tif"
            if not inp.exists():
                make_scene(inp, n)
            fl = measure("floor", inp, work / f"floor{n}.zarr", a)
            shutil.rmtree(work / f"floor{n}.zarr", ignore_errors=True)
            gs = measure("geosr", inp, work / f"geosr{n}.zarr", a)
            shutil.rmtree(work / f"geosr{n}.zarr", ignore_errors=True)
            rows.append((n, fl, gs))
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nbicubic x{a.scale}, 4 bands uint16, chunk {a.chunk}, block {a.block}, {a.workers} workers, "
          f"{os.cpu_count()} CPUs")
    print(f"{'scene':>11} | {'floor Mpx/s':>11} | {'geosr Mpx/s':>11} | {'ratio':>5} | {'floor RSS MB':>12} | "
          f"{'geosr RSS MB':>12} | {'seam':>5} | {'LR L1':>7}")
    for n, fl, gs in rows:
        f_mpx = fl["out_px"] / fl["seconds"] / 1e6
        g_mpx = gs["out_px"] / gs["seconds"] / 1e6
        print(f"{n:>5}^2 x4 | {f_mpx:>11.1f} | {g_mpx:>11.1f} | {g_mpx / f_mpx:>5.2f} | {fl['peak_rss_mb']:>12.0f} | "
              f"{gs['peak_rss_mb']:>12.0f} | {gs['seam']:>5.3f} | {gs['lr_l1']:>7.5f}")


if __name__ == "__main__":
    main()
