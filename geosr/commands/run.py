"""``geosr run INPUT OUTPUT``: super-resolve one scene into a Zarr store (resumable)."""

from __future__ import annotations

import argparse
import sys
import time

from ..config import load_config, parse_override

LEASE_WAIT_S = 6 * 3600.0
"""How long ``geosr run`` waits for another run of the same output (see :mod:`geosr.orchestration.lease`)."""


def register(sub) -> None:
    p = sub.add_parser("run", help="super-resolve a GeoTIFF into a georeferenced Zarr store",
                       description="Super-resolve INPUT (GeoTIFF/COG, local or s3://) into OUTPUT (a .zarr "
                       "directory, local or s3://). Rerunning resumes an unfinished output; a complete one "
                       "is left alone unless --overwrite.")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--config", help="YAML run configuration (see configs/)")
    p.add_argument("--scale", type=int, help="upscaling factor (tiling.scale)")
    p.add_argument("--tile", type=int, help="low-res tile size (tiling.tile)")
    p.add_argument("--overlap", type=int, help="low-res tile overlap (tiling.overlap)")
    p.add_argument("--block", type=int, help="output block size in px (tiling.block)")
    p.add_argument("--chunk", type=int, help="output chunk size in px (tiling.chunk)")
    p.add_argument("--model", help="upsampler: nearest, bilinear, bicubic, lanczos, or a model name")
    p.add_argument("--bands", help="comma-separated 1-based indices or band descriptions, e.g. 3,2,1,4 or red,green,blue,nir")
    p.add_argument("--preset", choices=["none", "sentinel2-l2a"], help="radiometric preset (input.preset)")
    p.add_argument("--dtype", choices=["uint16", "float32"], help="output dtype (output.dtype)")
    p.add_argument("--zarr-format", type=int, choices=[2, 3], help="output Zarr format (output.zarr_format)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (model.device)")
    p.add_argument("--batch-size", type=int, help="tiles per model call (model.batch_size)")
    p.add_argument("--seed", type=int, help="model seed (model.seed)")
    p.add_argument("--workers", type=int, help="blocks processed at once (default: CPU count)")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (storage.endpoint_url)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config override, e.g. --set output.compressor=blosc (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--preview", metavar="PNG", help="also write a side-by-side quicklook PNG")
    p.set_defaults(func=_run)


def _bands(text: str | None):
    if not text:
        return None
    out = []
    for part in text.split(","):
        part = part.strip()
        out.append(int(part) if part.lstrip("-").isdigit() else part)
    return out


def overrides_from_args(args: argparse.Namespace) -> dict:
    o = {
        "tiling.scale": args.scale, "tiling.tile": args.tile, "tiling.overlap": args.overlap,
        "tiling.block": args.block, "tiling.chunk": args.chunk, "model.name": args.model,
        "input.bands": _bands(args.bands), "input.preset": args.preset, "output.dtype": args.dtype,
        "output.zarr_format": args.zarr_format, "model.device": args.device,
        "model.batch_size": args.batch_size, "model.seed": args.seed, "workers": args.workers,
        "storage.endpoint_url": args.endpoint_url,
    }
    for item in args.set:
        k, v = parse_override(item)
        o[k] = v
    return o


class Progress:
    """tqdm bar over blocks, with output Mpx/s and ETA."""

    def __init__(self, enabled: bool, px_per_block: float) -> None:
        self.enabled = enabled
        self.bar = None
        self.px = px_per_block
        self.t0 = time.perf_counter()
        self.start = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, initial=done, unit="block", file=sys.stderr, dynamic_ncols=True)
            self.start = done
            return
        self.bar.update(done - self.bar.n)
        dt = time.perf_counter() - self.t0
        if dt > 0 and done > self.start:
            self.bar.set_postfix_str(f"{(done - self.start) * self.px / dt / 1e6:.1f} Mpx/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _run(args: argparse.Namespace) -> int:
    from ..engine import run_scene
    from ..io.storage import StorageEnv
    from ..orchestration.lease import SceneLease

    cfg = load_config(args.config, overrides_from_args(args))
    env = StorageEnv(cfg.storage)
    bar = Progress(not args.no_progress, cfg.tiling.block**2)
    try:
        # one run per output at a time: a second run of the same output waits, then finds it complete
        with SceneLease(args.output, env, label="geosr run").hold(wait=LEASE_WAIT_S):
            rep = run_scene(args.input, args.output, cfg, overwrite=args.overwrite, progress=bar, env=env)
    finally:
        bar.close()
    if rep.state == "skipped":
        print(f"{args.output} is already complete; nothing to do (use --overwrite to redo it)")
    else:
        m = rep.metrics
        print(f"{rep.state}: {args.output}  blocks {rep.blocks_run}/{rep.blocks_total}  "
              f"{rep.seconds:.1f} s  {rep.mpx_per_s:.1f} Mpx/s  "
              f"LR-L1 {m.get('lr_l1', float('nan')):.5f}  seam {m.get('seam_metric', float('nan')):.3f}")
    if args.preview:
        from ..io.storage import StorageEnv
        from ..preview import make_preview

        make_preview(args.input, args.output, args.preview, cfg, StorageEnv(cfg.storage))
        print(f"preview: {args.preview}")
    return 0
