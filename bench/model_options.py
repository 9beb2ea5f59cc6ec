"""The default model's options side by side: quality against speed, so a user can choose.

For every model directory (``--weights``: the bundled model and any other width) and every sampling option
set (``--options``, JSON each; default: ensemble 1, 2, 4 and 8), it measures

* **speed**: output Mpx/s of ``run_scene`` (the production path: tiles, blending, projection, Zarr, overviews)
  on a synthetic 4-band scene (``--side`` low-res px; default 512, 4.2 Mpx out) on ``--threads`` CPU threads,
  each run in its own process; the classic ``lanczos`` path is timed alongside as the reference;
* **quality**: mean PSNR / SSIM over the UC Merced test split of the training recipe (images 60-79 of every
  class, never trained on; block-average x4, 4 px border cropped) against lanczos + back-projection.

    python bench/model_options.py                                   # bundled model, ensembles 1/2/4/8
    python bench/model_options.py --weights geosr/data/models/geosr-ldm-x4 runs/x4-small --limit 80
    python bench/model_options.py --options '{"ensemble": 1}' '{"diffusion": true, "steps": 2, "eta": 1.0}'

Prints a markdown table (and JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def speed_child(weights: str | None, params: dict, scene: str, threads: int) -> dict:
    """One timed ``run_scene`` (in this process); returns seconds and output Mpx/s."""
    import torch

    torch.set_num_threads(threads)
    from geosr.config import load_config
    from geosr.lifecycle import run_scene

    model = {"model.name": "lanczos"} if weights == "lanczos" else \
        {"model.name": "ldm", "model.params": {**params, **({"weights": weights} if weights else {})}}
    cfg = load_config(None, {"tiling.chunk": 1024, "tiling.block": 2048, "workers": 1, "model.device": "cpu", **model})
    out = tempfile.mkdtemp(prefix="geosr-opt-") + "/o.zarr"
    t0 = time.perf_counter()
    rep = run_scene(scene, out, cfg, overwrite=True)
    sec = time.perf_counter() - t0
    return {"seconds": sec, "mpx_per_s": rep.out_pixels / sec / 1e6}


def speed(weights: str | None, params: dict, scene: str, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps({"weights": weights, "params": params, "scene": scene,
                                                           "threads": threads})]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if r.returncode:
        return {"error": (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def quality(weights: str | None, params: dict, images, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from geosr.diffusion.evaluate import BackProjected
    from geosr.diffusion.testsets import evaluate_images, upsample_image
    from geosr.upsamplers import build_upsampler

    if weights == "lanczos":
        make = lambda: BackProjected(4, "lanczos")  # noqa: E731
    else:
        make = lambda: build_upsampler("ldm", scale=4, device="cpu", params={**params, **({"weights": weights} if weights else {})})  # noqa: E731
    r = evaluate_images({"m": make}, images, scale=4, upsample=upsample_image, log=lambda m: None)["m"]
    return {"psnr": r["psnr"], "ssim": r["ssim"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", nargs="+", default=[None], help="model directories (default: the bundled model)")
    p.add_argument("--options", nargs="+", default=['{"ensemble": 1}', '{"ensemble": 2}', '{"ensemble": 4}',
                                                     '{"ensemble": 8}'])
    p.add_argument("--recipe", default=str(ROOT / "configs" / "model-x4.yaml"), help="its folders' test split")
    p.add_argument("--corpus-root", default=None)
    p.add_argument("--limit", type=int, default=0, help="at most this many test images (0: all)")
    p.add_argument("--side", type=int, default=512, help="low-res side of the speed scene")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        c = json.loads(a.child)
        print(json.dumps(speed_child(c["weights"], c["params"], c["scene"], c["threads"])))
        return 0
    import yaml
    from core import make_scene

    from geosr.diffusion.testsets import folder_test_images
    from geosr.diffusion.train import train_spec_from_dict

    doc = yaml.safe_load(Path(a.recipe).read_text())
    data = train_spec_from_dict(doc["train"]).data
    if a.corpus_root:
        data = data.model_copy(update={"corpus_root": a.corpus_root})
    images = folder_test_images(data, 4, "average", a.limit)
    scene = Path(tempfile.mkdtemp(prefix="geosr-opt-")) / f"scene{a.side}.tif"
    make_scene(scene, a.side)
    rows = [{"model": "lanczos + back-projection", "options": {}, **quality("lanczos", {}, images, a.threads),
             **speed("lanczos", {}, str(scene), a.threads)}]
    for w in a.weights:
        for o in a.options:
            params = json.loads(o)
            row = {"model": w or "bundled", "options": params, **quality(w, params, images, a.threads),
                   **speed(w, params, str(scene), a.threads)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    base = rows[0]
    lines = [f"{len(images)} UC Merced test images (block average x4, border 4); speed: run_scene on a "
             f"{a.side}^2 4-band scene, {a.threads} threads, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}",
             "| model | options | PSNR (dB) | Δ vs lanczos+bp | SSIM | output Mpx/s | seconds |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        sp = f"{r['mpx_per_s']:.3f} | {r['seconds']:.1f}" if "mpx_per_s" in r else f"failed: {r.get('error')} |"
        lines.append(f"| {r['model']} | {json.dumps(r['options']) if r['options'] else ''} | {r['psnr']:.3f} | "
                     f"{r['psnr'] - base['psnr']:+.3f} | {r['ssim']:.4f} | {sp} |")
    print("\n".join(lines))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
