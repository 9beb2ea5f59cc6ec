"""``geosr import-weights``: convert an LDSR-S2 checkpoint (CompVis LDM .ckpt) to geosr's safetensors format."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import-weights", help="convert LDSR-S2 (opensr-model) weights to geosr's format",
        description="Read an LDSR-S2 checkpoint (e.g. opensr-ldsrs2_v1_0_0.ckpt) with torch.load(weights_only=True), "
                    "convert it to diffusers AutoencoderKL + UNet2DModel and write config.json + safetensors. "
                    "Use the result with model.name: ldm, model.params.weights: OUT.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("ckpt", help="LDSR-S2 .ckpt file")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--linear-start", type=float, default=0.0001,
                   help="beta start (v1.0 checkpoints: 0.0001; pre-1.0: 0.0015)")
    p.add_argument("--linear-end", type=float, default=0.015, help="beta end (v1.0: 0.015; pre-1.0: 0.0155)")
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA denoiser weights")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..diffusion.ldsr import import_ldsr

    out = import_ldsr(args.ckpt, args.out, linear_start=args.linear_start, linear_end=args.linear_end,
                      use_ema=args.ema)
    print(f"wrote {out} (config.json, autoencoder.safetensors, denoiser.safetensors); "
          f"run it with model.name=ldm model.params.weights={out}")
    return 0
