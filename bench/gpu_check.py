"""CUDA checks of the bundled model before timing it (part of bench/gpu_session.sh; runs on CPU too).

For 8 real-looking 96 px tiles (``--quick``: 2 of 32 px): the device output against the CPU output (max abs
difference), LR consistency on the device, same seed -> same values twice on the device, and batch-size
independence (batch 8 vs 2); ``--quick`` also turns the self-ensemble off. The model is the bundled one (``--weights DIR``: another checkpoint) with its own
band count (4 bands for a band-agnostic model). Prints one JSON line; exit code 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geosr import metrics  # noqa: E402
from geosr.diffusion.spec import ModelSpec  # noqa: E402
from geosr.diffusion.weights_io import CONFIG, bundled_dir  # noqa: E402
from geosr.upsamplers import TileBatch, build_upsampler  # noqa: E402


def main(argv: list[str] | tuple[str, ...] = ()) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--weights", default=None, help="model directory (default: the bundled model)")
    p.add_argument("--device", default=None, help="default: cuda when visible, else cpu")
    p.add_argument("--quick", action="store_true", help="2 tiles of 32 px, no self-ensemble (a logic check)")
    p.add_argument("--json", default=None, help="also write the result line to this file")
    a = p.parse_args(list(argv))
    dev = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    weights = Path(a.weights) if a.weights else bundled_dir()
    bands = ModelSpec.load(weights / CONFIG).bands or 4
    n, side = (2, 32) if a.quick else (8, 96)
    rng = np.random.default_rng(0)
    px = ndimage.gaussian_filter(rng.random((n, bands, side, side)), (0, 0, 1.5, 1.5)).astype(np.float32) * 0.6
    batch = TileBatch(px, (np.arange(2 * n, dtype=np.int64).reshape(n, 2) * (side * 3 // 4)), seed=0)
    out = {"device": torch.cuda.get_device_name(dev) if dev.startswith("cuda") else "cpu", "weights": str(weights),
           "bands": bands, "tiles": n, "side": side}
    base = {"weights": str(weights)} if a.weights else {}
    if a.quick:
        base["ensemble"] = 1

    def build(device: str, batch_size: int, **params):
        return build_upsampler("ldm", scale=4, device=device, bands=bands, seed=0, batch_size=batch_size,
                               params={**base, **params})

    ref = build("cpu", n)(batch)
    results = {}
    for diffusion in (False, True):
        params = {"diffusion": True, "steps": 1} if diffusion else {"diffusion": False}
        up = build(dev, n, **params)
        first, second = up(batch), up(batch)
        small = build(dev, 2 if n > 2 else 1, **params)(batch)
        key = "diffusion_1step" if diffusion else "mean"
        results[key] = {
            "same_twice": bool(np.array_equal(first, second)),
            f"batch{n}_vs_small_max_abs": float(np.abs(first - small).max()),
            "lr_l1_max": float(max(metrics.lr_consistency(first[i], px[i], 4)["lr_l1"] for i in range(n))),
        }
        if not diffusion:
            results[key]["vs_cpu_max_abs"] = float(np.abs(first - ref).max())
    out.update(results)
    print(json.dumps(out))
    if a.json:
        Path(a.json).write_text(json.dumps(out) + "\n")
    ok = all(v["lr_l1_max"] < 1e-4 and v[f"batch{n}_vs_small_max_abs"] < 1e-2 for v in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
