"""geosr against the tools users would pick instead, on the same inputs, in one session.

For each scene size (a synthetic but real-ish 4-band uint16 GeoTIFF, tiled, zstd; ``bench/core.py``'s
``make_scene``) and x4, each run in its own subprocess so peak RSS is its own, one after the other:

* ``floor``: the I/O floor -- a windowed read of the input plus a write of the output's bytes (level 0 and
  the overview levels blocks write) with geosr's codec, chunks and dtype (real geosr output bytes, so the
  compressor works as hard; nothing computed);
* ``geosr bicubic``: ``run_scene`` with the bicubic upsampler (Zarr + overviews + metrics + STAC);
* ``GDAL cubic -> COG``: what ``gdalwarp -r cubic -tr <res/4> -of COG -co COMPRESS=ZSTD`` does, through
  rasterio's GDAL: a ``WarpedVRT`` at 4x resolution (cubic, 2 warp threads) copied by the COG driver
  (ZSTD level 1, 1024 px blocks, overviews, 2 threads);
* ``rioxarray -> Zarr``: ``open_rasterio(...).rio.reproject(resolution=res/4, resampling=cubic)`` (2 warp
  threads) then ``to_zarr`` with the same codec and chunks as geosr (the reprojection is held in memory);
* ``geosr default model (CPU)``: ``run_scene`` with the bundled model and its recommended sampling (or
  ``--weights`` / ``--ldm-params``) on a ``--ldm-crop``^2 crop of the scene (default 1024^2 low-res px,
  16.8 Mpx out): output Mpx/s is the figure to compare; tiles/s too.

Prints a table: seconds, output Mpx/s, ratio to the floor (floor time / tool time per output pixel: 1.0 =
as fast as moving the bytes), CPU seconds of the process (all threads, the timed part) and the same
ratio in CPU time (steadier than wall time on a shared machine), peak RSS, output size. ``--repeat N`` runs floor and geosr N times, interleaved, and
keeps the fastest of each (the machine may be shared).

    python bench/peers.py                          # 4096^2 and 8192^2 low-res px (x4: 16384^2 and 32768^2)
    python bench/peers.py --sizes 1024 --tools floor geosr gdal   # quick
    python bench/peers.py --gpu -- --json bench-gpu.json          # the GPU model bench (bench/gpu.py)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from core import ROOT, cpu_seconds, floor_run, geosr_run, make_scene  # noqa: E402

TOOLS = ("floor", "geosr", "gdal", "rioxarray", "ldm")
LABELS = {"floor": "I/O floor (read + write Zarr)", "geosr": "geosr bicubic -> Zarr",
          "gdal": "GDAL cubic -> COG", "rioxarray": "rioxarray cubic -> Zarr", "ldm": "geosr default model (CPU)"}
THREADS = 2


def gdal_run(inp: str, out: str, scale: int, chunk: int) -> dict:
    """gdalwarp -r cubic -tr res/scale -of COG, via rasterio's GDAL."""
    import rasterio
    import rasterio.shutil
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    t0, c0 = time.perf_counter(), cpu_seconds()
    with rasterio.Env(GDAL_NUM_THREADS=str(THREADS)), rasterio.open(inp) as src:
        tr = src.transform * src.transform.scale(1 / scale, 1 / scale)
        with WarpedVRT(src, crs=src.crs, transform=tr, width=src.width * scale, height=src.height * scale,
                       resampling=Resampling.cubic, warp_extras={"NUM_THREADS": THREADS},
                       warp_mem_limit=256) as vrt:
            rasterio.shutil.copy(vrt, out, driver="COG", COMPRESS="ZSTD", LEVEL=1, BLOCKSIZE=chunk,
                                 NUM_THREADS=THREADS, BIGTIFF="YES", OVERVIEW_RESAMPLING="AVERAGE")
        n = src.width * src.height * scale * scale
    return {"seconds": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0, "out_px": n}


def rioxarray_run(inp: str, out: str, scale: int, chunk: int) -> dict:
    """rioxarray's reproject (in memory) then to_zarr with geosr's codec and chunks."""
    import numcodecs
    import rioxarray
    from rasterio.enums import Resampling

    t0, c0 = time.perf_counter(), cpu_seconds()
    da = rioxarray.open_rasterio(inp)
    res = abs(da.rio.resolution()[0]) / scale
    up = da.rio.reproject(da.rio.crs, resolution=res, resampling=Resampling.cubic, num_threads=THREADS)
    ds = up.to_dataset(name="reflectance")
    comp = numcodecs.Blosc(cname="zstd", clevel=1, shuffle=numcodecs.Blosc.SHUFFLE)
    ds.to_zarr(out, mode="w", zarr_format=2, consolidated=True,
               encoding={"reflectance": {"compressors": (comp,), "chunks": (1, chunk, chunk)}})
    return {"seconds": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0, "out_px": int(up.sizes["x"] * up.sizes["y"])}


def ldm_run(inp: str, out: str, scale: int, chunk: int, crop: int = 1024, params: dict | None = None,
            weights: str | None = None) -> dict:
    """The default model end to end (``run_scene``, CPU, the model's recommended sampling unless ``params``)
    on a ``crop``^2 crop of the input."""
    import rasterio
    from rasterio.windows import Window

    from geosr.config import load_config
    from geosr.engine import run_scene

    small = str(Path(out).with_suffix(".crop.tif"))
    with rasterio.open(inp) as src:
        prof = src.profile
        prof.update(width=crop, height=crop, transform=src.window_transform(Window(0, 0, crop, crop)))
        with rasterio.open(small, "w", **prof) as dst:
            dst.write(src.read(window=Window(0, 0, crop, crop)))
    params = dict(params or {})
    if weights:
        params["weights"] = weights
    cfg = load_config(None, {"tiling.scale": scale, "tiling.chunk": chunk, "tiling.block": 2048, "workers": 1,
                             "model.name": "ldm", "model.device": "cpu", "model.params": params})
    t0, c0 = time.perf_counter(), cpu_seconds()
    rep = run_scene(small, out, cfg, overwrite=True)
    sec = time.perf_counter() - t0
    return {"seconds": sec, "cpu_s": cpu_seconds() - c0, "out_px": rep.out_pixels, "tiles": rep.metrics.get("tiles_computed"),
            "tiles_per_s": rep.metrics.get("tiles_computed", 0) / sec}


def child(kind: str, inp: str, out: str, a) -> None:
    from geosr.runtime import limit_malloc_arenas

    limit_malloc_arenas()  # as the geosr CLI does; applied to every tool so they compare like for like
    if kind == "floor":
        res = floor_run(inp, out, a.scale, a.chunk, a.block, THREADS)
    elif kind == "geosr":
        res = geosr_run(inp, out, a.scale, a.chunk, a.block, THREADS)
    elif kind == "gdal":
        res = gdal_run(inp, out, a.scale, a.chunk)
    elif kind == "rioxarray":
        res = rioxarray_run(inp, out, a.scale, a.chunk)
    else:
        res = ldm_run(inp, out, a.scale, a.chunk, a.ldm_crop, json.loads(a.ldm_params), a.weights)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    res["peak_rss_mb"] = ru.ru_maxrss / 1024
    res.setdefault("cpu_s", ru.ru_utime + ru.ru_stime)  # all threads; floor and geosr: the timed part only
    print(json.dumps(res))


def disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(kind: str, inp: Path, out: Path, a) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(inp), str(out), "--scale", str(a.scale),
           "--chunk", str(a.chunk), "--block", str(a.block), "--ldm-crop", str(a.ldm_crop),
           "--ldm-params", a.ldm_params] + (["--weights", a.weights] if a.weights else [])
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["out_bytes"] = disk_bytes(out) if out.exists() else 0
    shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
    return res


def run_size(n: int, work: Path, a) -> dict[str, dict]:
    inp = work / f"scene{n}.tif"
    if not inp.exists():
        make_scene(inp, n)
    res: dict[str, dict] = {}
    order = [t for t in ("floor", "geosr") if t in a.tools] * a.repeat + [t for t in a.tools if t not in ("floor", "geosr")]
    for kind in order:
        ext = ".tif" if kind == "gdal" else ".zarr"
        got = measure(kind, inp, work / f"{kind}{n}{ext}", a)
        print(f"  {n}^2 {kind}: {json.dumps(got)}", file=sys.stderr, flush=True)
        best = res.get(kind)
        if best is None or "error" in best or ("seconds" in got and got["seconds"] < best["seconds"]):
            if best is not None and "peak_rss_mb" in best and "peak_rss_mb" in got:
                got["peak_rss_mb"] = max(got["peak_rss_mb"], best["peak_rss_mb"])  # report the worst RSS
            res[kind] = got
    return res


def table(results: dict[int, dict[str, dict]], a) -> str:
    lines = [f"x{a.scale}, 4 bands uint16, chunk {a.chunk}, geosr block {a.block}, {THREADS} threads per tool, "
             f"{os.cpu_count()} CPUs; load average at start {a.load}",
             "| input | tool | seconds | output Mpx/s | ratio to floor | CPU s | CPU ratio | peak RSS MB | output GB | tiles/s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for n, res in results.items():
        fl = res.get("floor", {})
        for kind in a.tools:
            r = res.get(kind)
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {n}² | {LABELS[kind]} | failed: {r['error'][:80]} | | | | | | | |")
                continue
            mpx = r["out_px"] / r["seconds"] / 1e6
            per_px = r["out_px"] / fl["out_px"] if "seconds" in fl else 0.0
            ratio = f"{fl['seconds'] / r['seconds'] * per_px:.2f}" if per_px else "n/a"
            cpu_ratio = f"{fl['cpu_s'] / r['cpu_s'] * per_px:.2f}" if per_px else "n/a"
            size = n if kind != "ldm" else min(n, a.ldm_crop)
            tiles = f"{r['tiles_per_s']:.2f}" if "tiles_per_s" in r else ""
            lines.append(f"| {size}² | {LABELS[kind]} | {r['seconds']:.1f} | {mpx:.1f} | {ratio} | {r['cpu_s']:.0f} | "
                         f"{cpu_ratio} | {r['peak_rss_mb']:.0f} | {r['out_bytes'] / 1e9:.2f} | {tiles} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    p.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--block", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=1, help="runs of floor and geosr (fastest kept)")
    p.add_argument("--workdir", default=None, help="scratch directory, kept (default: a temp dir, removed)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--ldm-crop", type=int, default=1024, help="ldm: low-res crop side (px)")
    p.add_argument("--ldm-params", default="{}", help='ldm: model.params as JSON, e.g. \'{"ensemble": 2}\'')
    p.add_argument("--weights", default=None, help="ldm: model directory (default: the bundled model)")
    p.add_argument("--gpu", action="store_true", help="run bench/gpu.py instead, with the arguments after --")
    p.add_argument("--child", nargs=3, metavar=("KIND", "IN", "OUT"))
    a, rest = p.parse_known_args(argv)
    if a.gpu:
        raise SystemExit(subprocess.call([sys.executable, str(Path(__file__).with_name("gpu.py")),
                                          *[x for x in rest if x != "--"]], cwd=ROOT))
    if a.child:
        child(a.child[0], a.child[1], a.child[2], a)
        return
    a.load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    work = Path(a.workdir or tempfile.mkdtemp(prefix="geosr-peers-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[int, dict[str, dict]] = {}
    try:
        for n in a.sizes:
            results[n] = run_size(n, work, a)
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    out = table(results, a)
    print(out)
    if a.json:
        Path(a.json).write_text(json.dumps({"load": a.load, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
