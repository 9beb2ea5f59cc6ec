"""GPU benchmark of the latent-diffusion upsampler, with LDSR-S2's architecture as the baseline in the same run.

One prepared script for a device machine (random weights: throughput does not depend on them):

    python bench/gpu.py --json bench-gpu.json                  # shipped model config, CUDA, bf16 + fp16
    python bench/gpu.py --config configs/model-production.yaml # the large production architecture
    bash bench/gpu_session.sh                                  # the whole device-machine session (install,
                                                               # check, measure, short CUDA training run)
    python bench/gpu.py --device cpu --quick                   # logic check on CPU with tiny configs

For each (architecture, dtype, batch size, sampler steps) it times the whole per-tile pipeline the engine
runs (position-keyed noise, consistent bicubic base, denoiser steps, decoder, LR projection) and its parts
(one denoiser step, decoder, condition), and derives minutes per full Sentinel-2 tile (10980^2 low-res px
at x4 = 9025 windows of 128 px with 12 px overlap). The baseline is LDSR-S2's architecture (113.6 M UNet,
KL autoencoder, condition = bilinear x4 upsample encoded by the autoencoder) run through the same code with
DPM-Solver++ 3 steps; if opensr-model is importable its own modules are timed as well.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geosr.diffusion.ldsr import ldsr_spec  # noqa: E402
from geosr.diffusion.model import LatentSR, count_parameters  # noqa: E402
from geosr.diffusion.pipeline import SamplingOptions, super_resolve  # noqa: E402
from geosr.diffusion.spec import AutoencoderSpec, DenoiserSpec, ModelSpec, spec_from_yaml  # noqa: E402
from geosr.grid import axis_origins  # noqa: E402

S2_SIDE = 10980


def windows_per_s2_tile(tile: int = 128, overlap: int = 12) -> int:
    return len(axis_origins(S2_SIDE, tile, overlap)) ** 2


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timeit(fn, dev: torch.device, repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    sync(dev)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(dev)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def tiny_spec() -> ModelSpec:
    return ModelSpec(bands=4, autoencoder=AutoencoderSpec(encoder_block_out_channels=(8, 8, 8),
                                                          decoder_block_out_channels=(8, 8, 8)),
                     denoiser=DenoiserSpec(block_out_channels=(16, 16), down_block_types=("DownBlock2D",) * 2,
                                           up_block_types=("UpBlock2D",) * 2, norm_num_groups=8))


def build(spec: ModelSpec, dev: torch.device, channels_last: bool, compile_: bool) -> LatentSR:
    torch.manual_seed(0)
    m = LatentSR(spec).to(dev).eval()
    if dev.type == "cuda" and channels_last:
        m = m.to(memory_format=torch.channels_last)
    if compile_:
        m.denoiser = torch.compile(m.denoiser)
        if spec.autoencoder.kind == "tiny":
            m.autoencoder.decoder = torch.compile(m.autoencoder.decoder)
    return m


def bench_arch(name: str, model: LatentSR, dev, dtype: str, batch: int, steps_list, tile: int, repeat: int,
               sampler: str = "dpmpp") -> list[dict]:
    spec = model.spec
    g = torch.Generator(device="cpu").manual_seed(0)
    lr = (torch.rand((batch, spec.bands, tile, tile), generator=g) * 0.3).to(dev)
    origins = np.stack([np.arange(batch) * tile, np.zeros(batch, np.int64)], axis=1).astype(np.int64)
    opts0 = SamplingOptions(steps=1, sampler=sampler, dtype=dtype)
    amp = opts0.autocast_dtype(dev)
    lat = tile * spec.latent_per_lowres
    x = torch.randn((batch, spec.autoencoder.latent_channels, lat, lat), device=dev)
    t = torch.full((batch,), 999, device=dev, dtype=torch.long)
    rows = []
    with torch.no_grad(), torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
        cond = model.condition(lr, (lat, lat))
        unet_s = timeit(lambda: model.denoise(x, t, cond), dev, repeat)
        dec_s = timeit(lambda: model.decode(x), dev, repeat)
        cond_s = timeit(lambda: model.condition(lr, (lat, lat)), dev, repeat)
    for steps in steps_list:
        opts = replace(opts0, steps=steps)
        full = timeit(lambda: super_resolve(model, lr, origins, seed=0, options=opts), dev, repeat)
        ms = 1000 * full / batch
        rows.append({
            "arch": name, "dtype": dtype if dev.type == "cuda" else "float32", "batch": batch, "steps": steps,
            "sampler": sampler, "ms_per_tile": ms, "tiles_per_s": 1000 / ms,
            "min_per_s2_tile": ms * windows_per_s2_tile() / 1000 / 60,  # meaningful for 128 px tiles
            "unet_ms_per_tile_step": 1000 * unet_s / batch, "decode_ms_per_tile": 1000 * dec_s / batch,
            "condition_ms_per_tile": 1000 * cond_s / batch,
            "denoiser_params": count_parameters(model.denoiser),
            "autoencoder_params": count_parameters(model.autoencoder),
        })
        print(f"{name:>24} {rows[-1]['dtype']:>8} b={batch:<4} steps={steps} {ms:8.2f} ms/tile "
              f"{rows[-1]['tiles_per_s']:8.1f} tiles/s  {rows[-1]['min_per_s2_tile']:7.2f} min/S2 tile  "
              f"(unet {rows[-1]['unet_ms_per_tile_step']:.2f} ms/step, decode {rows[-1]['decode_ms_per_tile']:.2f}, "
              f"cond {rows[-1]['condition_ms_per_tile']:.2f})", flush=True)
    return rows


def opensr_modules(dev, dtype: str, batch: int, tile: int, repeat: int, reduced: bool) -> list[dict]:
    """Time opensr-model's own UNet step and autoencoder (random weights) when the package is importable."""
    import importlib.util
    import types

    spec = importlib.util.find_spec("opensr_model")
    if spec is None or importlib.util.find_spec("einops") is None:
        print("opensr-model not installed: skipping its own modules (the converted architecture is timed above)")
        return []
    if "opensr_model" not in sys.modules:
        pkg = types.ModuleType("opensr_model")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["opensr_model"] = pkg
    from opensr_model.diffusion.latentdiffusion import LatentDiffusion

    ch = 32 if reduced else 128
    mc = 32 if reduced else 160
    first = dict(embed_dim=4, double_z=True, z_channels=4, resolution=512, in_channels=4, out_ch=4, ch=ch,
                 ch_mult=[1, 2, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0)
    unet = dict(image_size=128, in_channels=8, model_channels=mc, out_channels=4, num_res_blocks=2,
                attention_resolutions=[16, 8], channel_mult=[1, 2, 2, 4], num_head_channels=32)
    ld = LatentDiffusion(first, unet, timesteps=1000, unet_config=unet, linear_start=0.0001, linear_end=0.015,
                         concat_mode=True, cond_stage_trainable=False, first_stage_key="image",
                         cond_stage_key="LR_image").to(dev).eval()
    amp = SamplingOptions(dtype=dtype).autocast_dtype(dev)
    x = torch.randn((batch, 4, tile, tile), device=dev)
    hr = torch.rand((batch, 4, tile * 4, tile * 4), device=dev)
    t = torch.full((batch,), 999, device=dev, dtype=torch.long)
    with torch.no_grad(), torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
        u = timeit(lambda: ld.model(x, t, c_concat=[x]), dev, repeat)
        e = timeit(lambda: ld.first_stage_model.encode(hr).mode(), dev, repeat)
        d = timeit(lambda: ld.first_stage_model.decode(x), dev, repeat)
    ms = 1000 * (3 * u + e + d) / batch
    row = {"arch": "opensr-model modules" + (" (reduced)" if reduced else ""), "dtype": dtype, "batch": batch,
           "steps": 3, "sampler": "dpmpp (UNet x3 + encode + decode)", "ms_per_tile": ms, "tiles_per_s": 1000 / ms,
           "min_per_s2_tile": ms * windows_per_s2_tile() / 1000 / 60, "unet_ms_per_tile_step": 1000 * u / batch,
           "encode_ms_per_tile": 1000 * e / batch, "decode_ms_per_tile": 1000 * d / batch}
    print(f"{row['arch']:>24} {dtype:>8} b={batch:<4} steps=3 {ms:8.2f} ms/tile (unet {row['unet_ms_per_tile_step']:.2f} "
          f"ms/step, encode {row['encode_ms_per_tile']:.2f}, decode {row['decode_ms_per_tile']:.2f})", flush=True)
    return [row]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--config", default=str(ROOT / "configs" / "model-rgbn-x4.yaml"),
                   help="model YAML to time (default: the shipped model; configs/model-production.yaml: the large one)")
    p.add_argument("--batch", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--dtype", nargs="+", default=["bfloat16", "float16"])
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="torch.compile the denoiser and decoder")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny configs, small tiles (logic check, e.g. on CPU)")
    p.add_argument("--time-budget", type=float, default=480.0, help="seconds; skip remaining cases after it")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            print("no CUDA device visible; use --device cpu --quick for a logic check", file=sys.stderr)
            return 2
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(max(1, torch.get_num_threads()))
    if a.quick:
        spec, tile, batches, steps, repeat = tiny_spec(), 32, [1, 2], [1, 2], 1
        base_spec = ldsr_spec(model_channels=32, ae_ch=32)
        dtypes = a.dtype if dev.type == "cuda" else ["float32"]
    else:
        spec, tile, batches, steps, repeat = spec_from_yaml(a.config), a.tile, a.batch, a.steps, a.repeat
        base_spec = ldsr_spec()
        dtypes = a.dtype if dev.type == "cuda" else ["float32"]
    info = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
            "tile": tile, "windows_per_s2_tile": windows_per_s2_tile(), "config": a.config, "quick": a.quick,
            "compile": a.compile}
    print(json.dumps(info), flush=True)
    t_start = time.perf_counter()
    rows: list[dict] = []
    ours = build(spec, dev, not a.no_channels_last, a.compile)
    base = None if a.no_baseline else build(base_spec, dev, not a.no_channels_last, a.compile)
    for dtype in dtypes:
        for b in batches:
            if time.perf_counter() - t_start > a.time_budget:
                print(f"time budget reached; skipping dtype={dtype} batch={b}", flush=True)
                continue
            try:
                rows += bench_arch("geosr ldm", ours, dev, dtype, b, steps, tile, repeat)
                if base is not None:
                    rows += bench_arch("LDSR-S2 arch (diffusers)", base, dev, dtype, b, [3], tile, repeat)
            except torch.OutOfMemoryError:
                print(f"out of memory at batch {b} ({dtype})", flush=True)
                torch.cuda.empty_cache()
    if not a.no_baseline and time.perf_counter() - t_start < a.time_budget:
        try:
            rows += opensr_modules(dev, dtypes[0], batches[-1] if not a.quick else 1, tile, repeat, a.quick)
        except Exception as e:  # the optional cross-check must not lose the main results
            print(f"opensr-model modules not timed: {type(e).__name__}: {e}", flush=True)
    ldsr = {(r["dtype"], r["batch"]): r["ms_per_tile"] for r in rows if r["arch"].startswith("LDSR")}
    for r in rows:
        ref = ldsr.get((r["dtype"], r["batch"]))
        if ref and r["arch"] == "geosr ldm":
            r["speedup_vs_ldsr"] = ref / r["ms_per_tile"]
    print("\n| arch | dtype | batch | steps | ms/tile | tiles/s | min per S2 tile | x vs LDSR-S2 arch |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['arch']} | {r['dtype']} | {r['batch']} | {r['steps']} | {r['ms_per_tile']:.2f} | "
              f"{r['tiles_per_s']:.1f} | {r['min_per_s2_tile']:.2f} | {r.get('speedup_vs_ldsr', float('nan')):.1f} |")
    best = min((r for r in rows if r["arch"] == "geosr ldm" and r["steps"] == 2), key=lambda r: r["ms_per_tile"],
               default=None)
    if best:
        verdict = "meets" if best["min_per_s2_tile"] * 60 <= 60 else "misses"
        print(f"\nbest 2-step: {best['ms_per_tile']:.2f} ms/tile = {best['min_per_s2_tile'] * 60:.0f} s per S2 tile "
              f"({verdict} the 60 s target) at {best['dtype']}, batch {best['batch']}")
    if a.json:
        Path(a.json).write_text(json.dumps({"info": info, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
