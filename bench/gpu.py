"""GPU benchmark of geosr's shipped default path, with LDSR-S2's architecture as the baseline in the same run.

One prepared script for a device machine:

    python bench/gpu.py --json bench-gpu.json                  # the bundled model as the engine runs it, CUDA
    python bench/gpu.py --weights DIR                          # another checkpoint directory
    python bench/gpu.py --config configs/model-production.yaml # also a random-weight architecture, --steps 1 2 4
    bash bench/gpu_session.sh                                  # the whole device-machine session (install,
                                                               # check, measure, end-to-end run, training)
    python bench/gpu.py --device cpu --quick                   # logic check on CPU with tiny tiles and configs

The shipped default path is what ``geosr run`` does per batch of tiles: the bundled model (``--weights``)
with its recommended sampling (config.json ``sampling``: mean predictor, self-ensemble, diffusion steps), the
engine's tile size and batch size (geosr's default run config) and larger batches, bf16 autocast on CUDA,
numpy in and out as the engine hands them over. Seconds per full Sentinel-2 tile (10980^2 low-res px at x4)
count the engine's windows (9604 of 128 px with 16 px overlap). The baseline is LDSR-S2's architecture
(113.6 M UNet, KL autoencoder, condition = bilinear x4 upsample encoded by the autoencoder, random weights:
throughput does not depend on them) run through the same code with DPM-Solver++ 3 steps and its own
windows (9025 with 12 px overlap); if opensr-model is importable its own modules are timed as well. The
table ends with LDSR-S2's published figures (:data:`LDSR_S2_H200`) beside them.
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

from geosr.config import load_config  # noqa: E402
from geosr.diffusion.ldsr import ldsr_spec  # noqa: E402
from geosr.diffusion.model import LatentSR, count_parameters  # noqa: E402
from geosr.diffusion.pipeline import SamplingOptions, super_resolve  # noqa: E402
from geosr.diffusion.spec import AutoencoderSpec, DenoiserSpec, ModelSpec, spec_from_yaml  # noqa: E402
from geosr.diffusion.weights_io import CONFIG, bundled_dir  # noqa: E402
from geosr.grid import axis_origins  # noqa: E402
from geosr.upsamplers import TileBatch, build_upsampler  # noqa: E402

S2_SIDE = 10980
LDSR_S2_H200 = {  # ../shared/reference/ldsr_s2_h200.md: opensr-model 1.2.2, fp32, 128 px RGBN tiles, 3 steps
    "source": "ESA OpenSR LDSR-S2 (opensr-model 1.2.2) on one H200, fp32, DPM-Solver++ 3 steps, median of 3-5 runs",
    "s_per_tile": {1: 0.1062, 16: 0.0566, 32: 0.0564},  # batch -> s per 128 px tile, full forward
    "windows_per_s2_tile": 9025,  # 128 px windows with 12 px overlap
    "min_per_s2_tile": 8.5,
}


def windows_per_s2_tile(tile: int = 128, overlap: int = 12) -> int:
    return len(axis_origins(S2_SIDE, tile, overlap)) ** 2


def engine_tiling() -> tuple[int, int, int]:
    """(tile, overlap, batch size) of geosr's default run config: what ``geosr run`` hands the model."""
    cfg = load_config(None, {})
    return cfg.tiling.tile, cfg.tiling.overlap, cfg.model.batch_size


def ldsr_reference_rows() -> list[dict]:
    ref = LDSR_S2_H200
    return [{"arch": "LDSR-S2 reference (H200, published)", "dtype": "float32", "batch": b, "steps": 3,
             "ms_per_tile": 1000 * s, "tiles_per_s": 1 / s, "windows_per_s2_tile": ref["windows_per_s2_tile"],
             "s_per_s2_tile": s * ref["windows_per_s2_tile"], "min_per_s2_tile": s * ref["windows_per_s2_tile"] / 60,
             "measured": False} for b, s in sorted(ref["s_per_tile"].items())]


def _row(arch: str, dtype: str, batch: int, steps: int, seconds_per_tile: float, windows: int, **extra) -> dict:
    ms = 1000 * seconds_per_tile
    return {"arch": arch, "dtype": dtype, "batch": batch, "steps": steps, "ms_per_tile": ms, "tiles_per_s": 1000 / ms,
            "windows_per_s2_tile": windows, "s_per_s2_tile": ms * windows / 1000,
            "min_per_s2_tile": ms * windows / 1000 / 60, "measured": True, **extra}


def bench_shipped(weights: Path | None, dev: torch.device, dtype: str, batch: int, tile: int, windows: int,
                  repeat: int, params: dict) -> dict:
    """The engine's model call on one batch of ``tile`` px tiles: build_upsampler("ldm") with the checkpoint's
    recommended sampling, numpy in, numpy out (host <-> device copies included)."""
    spec = ModelSpec.load((weights or bundled_dir()) / CONFIG)
    bands = spec.bands or 4
    extra = {"weights": str(weights)} if weights else {}
    up = build_upsampler("ldm", scale=spec.scale, device=str(dev), bands=bands, seed=0, batch_size=batch,
                         params={**extra, "dtype": dtype, **params})
    rng = np.random.default_rng(0)
    px = (rng.random((batch, bands, tile, tile)) * 0.3).astype(np.float32)
    tiles = TileBatch(px, np.stack([np.arange(batch) * tile, np.zeros(batch, np.int64)], 1).astype(np.int64), seed=0)
    s = timeit(lambda: up(tiles), dev, repeat)
    o = up.options
    sampling = (f"diffusion {o.steps} step(s) {o.sampler}" if o.diffusion else "mean predictor") + \
        (f", {o.ensemble}x ensemble" if o.ensemble > 1 else "")
    row = _row("geosr shipped", dtype if dev.type == "cuda" else "float32", batch, o.steps if o.diffusion else 0,
               s / batch, windows, sampling=sampling, weights=str(weights or bundled_dir().name), bands=bands)
    print(f"{'geosr shipped':>24} {row['dtype']:>8} b={batch:<4} {sampling:<32} {row['ms_per_tile']:8.2f} ms/tile "
          f"{row['tiles_per_s']:8.1f} tiles/s  {row['s_per_s2_tile']:7.1f} s/S2 tile", flush=True)
    return row


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
               windows: int, sampler: str = "dpmpp") -> list[dict]:
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
        rows.append(_row(name, dtype if dev.type == "cuda" else "float32", batch, steps, full / batch, windows,
                         sampler=sampler, unet_ms_per_tile_step=1000 * unet_s / batch,
                         decode_ms_per_tile=1000 * dec_s / batch, condition_ms_per_tile=1000 * cond_s / batch,
                         denoiser_params=count_parameters(model.denoiser),
                         autoencoder_params=count_parameters(model.autoencoder)))
        r = rows[-1]
        print(f"{name:>24} {r['dtype']:>8} b={batch:<4} steps={steps:<26} {r['ms_per_tile']:8.2f} ms/tile "
              f"{r['tiles_per_s']:8.1f} tiles/s  {r['s_per_s2_tile']:7.1f} s/S2 tile  "
              f"(unet {r['unet_ms_per_tile_step']:.2f} ms/step, decode {r['decode_ms_per_tile']:.2f}, "
              f"cond {r['condition_ms_per_tile']:.2f})", flush=True)
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
    row = _row("opensr-model modules" + (" (reduced)" if reduced else ""), dtype, batch, 3, (3 * u + e + d) / batch,
               windows_per_s2_tile(), sampler="dpmpp (UNet x3 + encode + decode)",
               unet_ms_per_tile_step=1000 * u / batch, encode_ms_per_tile=1000 * e / batch,
               decode_ms_per_tile=1000 * d / batch)
    print(f"{row['arch']:>24} {dtype:>8} b={batch:<4} steps=3 {row['ms_per_tile']:8.2f} ms/tile "
          f"(unet {row['unet_ms_per_tile_step']:.2f} ms/step, encode {row['encode_ms_per_tile']:.2f}, "
          f"decode {row['decode_ms_per_tile']:.2f})", flush=True)
    return [row]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--weights", default=None, help="model directory to time as shipped (default: the bundled model)")
    p.add_argument("--config", default=None,
                   help="also time this model YAML's architecture with random weights at --steps "
                        "(e.g. configs/model-production.yaml)")
    p.add_argument("--batch", type=int, nargs="+", default=None,
                   help="batch sizes (default: the engine's model.batch_size, 64 and 128)")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4], help="sampler steps for --config")
    p.add_argument("--dtype", nargs="+", default=["bfloat16"], help="CUDA autocast dtypes (bfloat16, float16, float32)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="torch.compile the denoiser and decoder (--config, baseline)")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--no-baseline", action="store_true", help="skip LDSR-S2's architecture")
    p.add_argument("--quick", action="store_true", help="tiny tiles and configs, no self-ensemble (logic check, e.g. on CPU)")
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
    tile, overlap, engine_batch = engine_tiling()
    ours_windows = windows_per_s2_tile(tile, overlap)
    shipped_params: dict = {}
    if a.quick:
        tile, batches, steps, repeat = 32, a.batch or [1, 2], [1, 2], 1
        spec = tiny_spec() if a.config else None
        base_spec = ldsr_spec(model_channels=32, ae_ch=32)
        shipped_params = {"ensemble": 1}
    else:
        batches, steps, repeat = a.batch or sorted({engine_batch, 64, 128}), a.steps, a.repeat
        spec = spec_from_yaml(a.config) if a.config else None
        base_spec = ldsr_spec()
    dtypes = a.dtype if dev.type == "cuda" else ["float32"]
    weights = Path(a.weights) if a.weights else None
    info = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
            "weights": str(weights or bundled_dir()), "tile": tile, "overlap": overlap, "engine_batch": engine_batch,
            "windows_per_s2_tile": ours_windows, "ldsr_windows_per_s2_tile": windows_per_s2_tile(),
            "config": a.config, "quick": a.quick, "compile": a.compile}
    print(json.dumps(info), flush=True)
    t_start = time.perf_counter()
    rows: list[dict] = []
    ours = None if spec is None else build(spec, dev, not a.no_channels_last, a.compile)
    base = None if a.no_baseline else build(base_spec, dev, not a.no_channels_last, a.compile)
    for dtype in dtypes:
        for b in batches:
            if time.perf_counter() - t_start > a.time_budget:
                print(f"time budget reached; skipping dtype={dtype} batch={b}", flush=True)
                continue
            try:
                rows.append(bench_shipped(weights, dev, dtype, b, tile, ours_windows, repeat, shipped_params))
                if ours is not None:
                    rows += bench_arch(f"{Path(a.config).stem} (random)", ours, dev, dtype, b, steps, tile, repeat,
                                       ours_windows)
                if base is not None:
                    rows += bench_arch("LDSR-S2 arch (diffusers)", base, dev, dtype, b, [3], tile, repeat,
                                       windows_per_s2_tile())
            except torch.OutOfMemoryError:
                print(f"out of memory at batch {b} ({dtype})", flush=True)
                torch.cuda.empty_cache()
    if not a.no_baseline and time.perf_counter() - t_start < a.time_budget:
        try:
            rows += opensr_modules(dev, dtypes[0], batches[-1] if not a.quick else 1, tile, repeat, a.quick)
        except Exception as e:  # the optional cross-check must not lose the main results
            print(f"opensr-model modules not timed: {type(e).__name__}: {e}", flush=True)
    ldsr = {(r["dtype"], r["batch"]): r["ms_per_tile"] for r in rows if r["arch"].startswith("LDSR-S2 arch")}
    for r in rows:
        ref = ldsr.get((r["dtype"], r["batch"]))
        if ref and not r["arch"].startswith("LDSR"):
            r["speedup_vs_ldsr"] = ref / r["ms_per_tile"]
    ref_rows = ldsr_reference_rows()
    print(table(rows + ref_rows))
    shipped = [r for r in rows if r["arch"] == "geosr shipped"]
    if shipped:
        default = next((r for r in shipped if r["batch"] == engine_batch), shipped[0])
        best = min(shipped, key=lambda r: r["ms_per_tile"])
        ref = LDSR_S2_H200["s_per_tile"][32] * LDSR_S2_H200["windows_per_s2_tile"]
        print(f"\nshipped default ({default['sampling']}, {default['dtype']}, batch {default['batch']}): "
              f"{default['tiles_per_s']:.1f} tiles/s, {default['s_per_s2_tile']:.1f} s per 10980^2 x4 S2 tile "
              f"(model only); best batch {best['batch']}: {best['s_per_s2_tile']:.1f} s. "
              f"LDSR-S2 published: {1 / LDSR_S2_H200['s_per_tile'][32]:.1f} tiles/s, {ref:.0f} s per S2 tile (H200)")
    arch = [r for r in rows if ours is not None and r["arch"].endswith("(random)") and r["steps"] == 2]
    if arch:
        best = min(arch, key=lambda r: r["ms_per_tile"])
        verdict = "meets" if best["s_per_s2_tile"] <= 60 else "misses"
        print(f"{best['arch']}, best 2-step: {best['ms_per_tile']:.2f} ms/tile = {best['s_per_s2_tile']:.0f} s per S2 "
              f"tile ({verdict} the 60 s target) at {best['dtype']}, batch {best['batch']}")
    if a.json:
        Path(a.json).write_text(json.dumps({"info": info, "rows": rows, "reference": ref_rows}, indent=2) + "\n")
    return 0


def table(rows: list[dict]) -> str:
    lines = ["", "| arch | sampling | dtype | batch | ms/tile | tiles/s | s per S2 tile | x vs LDSR-S2 arch |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        sampling = r.get("sampling") or f"{r['steps']} step(s)"
        lines.append(f"| {r['arch']} | {sampling} | {r['dtype']} | {r['batch']} | {r['ms_per_tile']:.2f} | "
                     f"{r['tiles_per_s']:.1f} | {r['s_per_s2_tile']:.0f} | {r.get('speedup_vs_ldsr', float('nan')):.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
