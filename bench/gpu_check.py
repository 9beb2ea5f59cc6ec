"""CUDA checks of the bundled model before timing it (part of bench/gpu_session.sh; runs on CPU too).

For 8 real-looking 96 px tiles: the device output against the CPU output (max abs difference), LR
consistency on the device, same seed -> same values twice on the device, and batch-size independence
(batch 8 vs 2). Prints one JSON line; exit code 1 if a check fails.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

from geosr import metrics  # noqa: E402
from geosr.upsamplers import TileBatch, build_upsampler  # noqa: E402


def main() -> int:
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    rng = np.random.default_rng(0)
    px = ndimage.gaussian_filter(rng.random((8, 4, 96, 96)), (0, 0, 1.5, 1.5)).astype(np.float32) * 0.6
    batch = TileBatch(px, (np.arange(16, dtype=np.int64).reshape(8, 2) * 72), seed=0)
    out = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"}
    ref = build_upsampler("ldm", scale=4, device="cpu", bands=4, seed=0, batch_size=8)(batch)
    for diffusion in (False, True):
        params = {"diffusion": diffusion}
        up = build_upsampler("ldm", scale=4, device=dev, bands=4, seed=0, batch_size=8, params=params)
        a, b = up(batch), up(batch)
        small = build_upsampler("ldm", scale=4, device=dev, bands=4, seed=0, batch_size=2, params=params)(batch)
        key = "mean" if not diffusion else "diffusion_1step"
        out[key] = {
            "same_twice": bool(np.array_equal(a, b)),
            "batch8_vs_2_max_abs": float(np.abs(a - small).max()),
            "lr_l1_max": float(max(metrics.lr_consistency(a[i], px[i], 4)["lr_l1"] for i in range(8))),
        }
        if not diffusion:
            out[key]["vs_cpu_max_abs"] = float(np.abs(a - ref).max())
    print(json.dumps(out))
    ok = all(v["lr_l1_max"] < 1e-4 and v["batch8_vs_2_max_abs"] < 1e-2 for k, v in out.items() if k != "device")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
