"""CPU throughput of the bundled latent-diffusion model (or any model directory): tiles/s by tile size,
sampler steps and thread count. Prints a markdown table (and JSON with --json).

    python bench/model_cpu.py                       # bundled model, 128 -> 512 RGBN tiles
    python bench/model_cpu.py --tiles 64 128 --steps 1 2 4 --threads 1 2 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geosr.diffusion.pipeline import SamplingOptions  # noqa: E402
from geosr.diffusion.upsampler import LatentDiffusionUpsampler  # noqa: E402
from geosr.diffusion.weights_io import bundled_dir, load_model  # noqa: E402
from geosr.upsamplers import TileBatch, build_upsampler  # noqa: E402


def time_call(fn, repeat: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=str(bundled_dir()))
    p.add_argument("--tiles", type=int, nargs="+", default=[128], help="low-res tile sizes")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    model = load_model(a.weights, "cpu")
    spec = model.spec
    rows = []
    rng = np.random.default_rng(0)
    for threads in sorted(set(a.threads)):
        torch.set_num_threads(threads)
        for t in a.tiles:
            px = (rng.random((a.batch, spec.bands, t, t)) * 0.3).astype(np.float32)
            batch = TileBatch(px, np.zeros((a.batch, 2), np.int64))
            bic = build_upsampler("bicubic", scale=spec.scale, device="cpu")
            sec = time_call(lambda: bic(batch), a.repeat)
            rows.append({"method": "bicubic", "threads": threads, "tile": t, "steps": 0, "tiles_per_s": a.batch / sec,
                         "ms_per_tile": 1000 * sec / a.batch})
            for steps in a.steps:
                up = LatentDiffusionUpsampler(model, scale=spec.scale, batch_size=a.batch, device="cpu",
                                              options=SamplingOptions(steps=steps))
                sec = time_call(lambda: up(batch), a.repeat)
                rows.append({"method": "ldm", "threads": threads, "tile": t, "steps": steps,
                             "tiles_per_s": a.batch / sec, "ms_per_tile": 1000 * sec / a.batch})
    print(f"model {a.weights}: autoencoder {sum(p.numel() for p in model.autoencoder.parameters())} params, "
          f"denoiser {sum(p.numel() for p in model.denoiser.parameters())} params; batch {a.batch}; torch "
          f"{torch.__version__}; CPU float32")
    print("| method | threads | tile (low-res px) | steps | tiles/s | ms/tile |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['method']} | {r['threads']} | {r['tile']} -> {r['tile'] * spec.scale} | {r['steps']} | "
              f"{r['tiles_per_s']:.2f} | {r['ms_per_tile']:.0f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
