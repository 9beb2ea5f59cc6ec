"""The device session's own steps (called by bench/gpu_session.sh; each runs on CPU too).

    python bench/gpu_session.py e2e --device cuda --side 2048 --json OUT/e2e.json   # one timed `geosr run`
    python bench/gpu_session.py train --device cuda --time-limit 60                 # a short `geosr train`
    python bench/gpu_session.py summary OUT                                          # the session's table

``e2e`` makes a synthetic ``side``^2 4-band uint16 GeoTIFF (bench/core.py's scene, 10 m, EPSG:32633), then runs
``python -m geosr run SCENE OUT.zarr --device DEVICE`` as a user would (the default config: bundled model,
its recommended sampling, the engine's tiles and batch size) and times it. ``train`` trains the model
recipe (configs/model-x4.yaml, or --config) on such a scene through ``geosr train --time-limit``: it proves
that training runs on the device and stops on time, not that it makes a model to keep. ``summary`` prints
tiles/s and seconds per 10980^2 x4 Sentinel-2 tile of the shipped path (bench/gpu.py's JSON), of the
end-to-end run, and LDSR-S2's figures beside them.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

S2_SIDE = 10980
WRITTEN = re.compile(r"^written: .*?blocks (\d+)/(\d+)\s+([\d.]+) s\s+([\d.]+) Mpx/s", re.M)


def scene(path: Path, side: int) -> Path:
    from core import make_scene

    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        make_scene(path, side)
    return path


def e2e(a: argparse.Namespace) -> int:
    from geosr.config import load_config
    from geosr.grid import axis_origins

    work = Path(a.work)
    t = time.perf_counter()
    tif = scene(work / f"scene-{a.side}.tif", a.side)
    made = time.perf_counter() - t
    cmd = [sys.executable, "-m", "geosr", "run", str(tif), str(work / f"scene-{a.side}.zarr"), "--device", a.device,
           "--no-progress", "--overwrite"]
    if a.weights:
        cmd += ["--set", f"model.params.weights={a.weights}"]
    cmd += a.extra
    print("$ " + " ".join(cmd), flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr[-4000:])
    m = WRITTEN.search(proc.stdout)
    if proc.returncode != 0 or m is None:
        print(f"gpu_session e2e: geosr run failed (exit {proc.returncode}); its output is above", file=sys.stderr)
        return 1
    cfg = load_config(None, {})
    tile, overlap, scale = cfg.tiling.tile, cfg.tiling.overlap, cfg.tiling.scale
    windows = len(axis_origins(a.side, tile, overlap)) ** 2
    run_s = float(m.group(3))  # geosr's own timing of the run (the 1-decimal Mpx/s it prints is too coarse here)
    mpx_s = (a.side * scale) ** 2 / 1e6 / run_s
    s2_out_mpx = (S2_SIDE * scale) ** 2 / 1e6
    res = {"device": a.device, "side": a.side, "bands": 4, "scale": scale, "tile": tile, "overlap": overlap,
           "windows": windows, "scene_seconds": made, "wall_seconds": wall, "run_seconds": run_s,
           "mpx_per_s": mpx_s, "tiles_per_s": windows / run_s, "tiles_per_s_wall": windows / wall,
           "s_per_s2_tile": s2_out_mpx / mpx_s, "s_per_s2_tile_wall": wall * (S2_SIDE / a.side) ** 2,
           "command": cmd[1:]}
    print(f"end to end: {a.side}^2 x{scale} ({windows} tiles) in {run_s:.1f} s of geosr's run ({wall:.1f} s wall, "
          f"start-up and model load included): {res['tiles_per_s']:.3g} tiles/s, {mpx_s:.3g} output Mpx/s -> "
          f"{res['s_per_s2_tile']:.0f} s per 10980^2 x4 S2 tile ({res['s_per_s2_tile_wall']:.0f} s scaled from wall)")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


def train(a: argparse.Namespace) -> int:
    import yaml

    from geosr.cli import main as geosr

    recipe = yaml.safe_load(Path(a.config).read_text())
    data = recipe["train"]["data"]
    keep = ("patch", "context", "pyramid", "size_power", "gain", "degradation", "band_counts")
    tif = scene(Path(a.scene) if a.scene else Path(a.work) / "scene-train.tif", 512)
    recipe["train"]["data"] = {**{k: data[k] for k in keep if k in data}, "files": [str(tif)],
                               "band_names": ["red", "green", "blue", "nir"], "dn_scale": 1e-4, "holdout": 0.25}
    recipe["train"]["data"]["band_counts"] = {k: v for k, v in recipe["train"]["data"].get("band_counts", {3: 1}).items()
                                              if int(k) <= 4} or {4: 1.0}
    if a.quick:  # a logic check: tiny patches, more steps than the time limit allows (it must end the run)
        recipe["train"].update(batch=2, mean_batch=2, mean_steps=100_000, denoiser_steps=100_000, val_every=100_000,
                               val_batches=1, checkpoint_every=100_000, warmup=1)
        recipe["train"]["data"].update(patch=32, context=64, pyramid=[1])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    argv = ["train", "--config", str(path), "--out", str(out), "--device", a.device, "--time-limit", str(a.time_limit)]
    print("$ geosr " + " ".join(argv), flush=True)
    t = time.perf_counter()
    rc = geosr(argv)
    wall = time.perf_counter() - t
    # the limit covers the stages; loading data and saving the last checkpoint come on top
    print(f"geosr train: exit {rc} after {wall:.1f} s wall with --time-limit {a.time_limit:g} s", flush=True)
    return rc


def summary(a: argparse.Namespace) -> int:
    from gpu import LDSR_S2_H200

    out = Path(a.out)
    bench = json.loads((out / "bench.json").read_text()) if (out / "bench.json").is_file() else None
    e2e_res = json.loads((out / "e2e.json").read_text()) if (out / "e2e.json").is_file() else None
    device = (bench or {}).get("info", {}).get("device", e2e_res["device"] if e2e_res else "?")
    lines = [f"## geosr on {device}: tiles/s and seconds per 10980^2 x4 Sentinel-2 tile", "",
             "| what | dtype | batch | tiles/s | s per S2 tile |", "| --- | --- | ---: | ---: | ---: |"]
    for r in (bench or {}).get("rows", []):
        if r["arch"] == "geosr shipped" or r["arch"].startswith("LDSR-S2 arch"):
            what = f"{r['arch']}, model only ({r.get('sampling') or str(r['steps']) + ' steps'})"
            lines.append(f"| {what} | {r['dtype']} | {r['batch']} | {r['tiles_per_s']:.1f} | {r['s_per_s2_tile']:.0f} |")
    if e2e_res:
        lines.append(f"| geosr run end to end, {e2e_res['side']}^2 scene on {e2e_res['device']} (default config) | "
                     f"auto | engine | {e2e_res['tiles_per_s']:.1f} | {e2e_res['s_per_s2_tile']:.0f} |")
    ref = LDSR_S2_H200
    for b, s in sorted(ref["s_per_tile"].items()):
        lines.append(f"| LDSR-S2 published (H200; ../shared/reference/ldsr_s2_h200.md) | float32 | {b} | "
                     f"{1 / s:.1f} | {s * ref['windows_per_s2_tile']:.0f} |")
    if not bench and not e2e_res:
        lines.append("| (no bench.json or e2e.json: the measuring steps did not finish; see session.log) | | | | |")
    text = "\n".join(lines) + "\n"
    print(text)
    (out / "summary.md").write_text(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("e2e", help="one timed `geosr run` on a synthetic scene")
    e.add_argument("--device", default="cuda")
    e.add_argument("--side", type=int, default=2048, help="low-res px per side of the synthetic scene")
    e.add_argument("--work", default="/tmp/geosr-session", help="scene and output store (not under $OUT)")
    e.add_argument("--weights", default=None, help="model directory (default: the bundled model)")
    e.add_argument("--json", default=None)
    e.add_argument("extra", nargs="*", help="more `geosr run` options, after --")
    t = sub.add_parser("train", help="a short time-limited `geosr train` on a synthetic scene")
    t.add_argument("--config", default=str(ROOT / "configs" / "model-x4.yaml"), help="model recipe (model: + train:)")
    t.add_argument("--device", default="cuda")
    t.add_argument("--time-limit", type=float, default=60.0)
    t.add_argument("--scene", default=None, help="high-res GeoTIFF to train on (default: a synthetic 512^2 one)")
    t.add_argument("--work", default="/tmp/geosr-session")
    t.add_argument("--out", default="/tmp/geosr-session/train")
    t.add_argument("--quick", action="store_true", help="tiny patches and step counts (logic check)")
    s = sub.add_parser("summary", help="print and write OUT/summary.md from OUT/bench.json and OUT/e2e.json")
    s.add_argument("out")
    a = p.parse_args(argv)
    return {"e2e": e2e, "train": train, "summary": summary}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
