"""``geosr eval``: PSNR/SSIM against held-out high-res truth (model vs bicubic, lanczos and the honest baseline
lanczos + back-projection), LR consistency, high-frequency energy and the seam metric.

Two modes: ``--manifest`` (the corpus' held-out scenes, whole files never trained on; one table row per scene
and method) and ``--config/--data`` (the east part of training rasters, plus the whole-raster seam study)."""

from __future__ import annotations

import argparse

from ..jsonio import dumps


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a model on held-out high-res imagery",
        description="Degrade the held-out (east) part of high-res GeoTIFFs by the sensor operator, super-resolve "
                    "it, and report PSNR/SSIM against the truth for the model, bicubic and lanczos, with LR "
                    "consistency; then the seam metric on the whole rasters taken as low-res scenes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--weights", default=None, help="model directory (config.json + safetensors); default: bundled")
    p.add_argument("--config", default=None,
                   help="model YAML whose train.data (files, bands, dn_scale, holdout) defines the held-out data")
    p.add_argument("--data", nargs="+", default=None, help="high-res GeoTIFFs (override the config's files)")
    p.add_argument("--manifest", default=None,
                   help="corpus manifest.json (scripts/fetch_corpus.py): evaluate on its held-out scenes, per scene")
    p.add_argument("--test-split", default=None, metavar="RECIPE",
                   help="a training recipe (configs/model-x4.yaml): evaluate on the test split of its image folders "
                        "(e.g. UC Merced images 60-79 of every class), geosr's protocol and the field's")
    p.add_argument("--corpus-root", default=None, help="--test-split: where the recipe's folders are")
    p.add_argument("--protocols", nargs="+", default=["average", "bicubic-uint8"],
                   choices=["average", "bicubic-uint8"], help="--test-split: how the low-res input is made")
    p.add_argument("--limit", type=int, default=0, help="--test-split: at most this many images (0: all)")
    p.add_argument("--max-side", type=int, default=1024, help="--manifest: crop scenes to this many HR px per side")
    p.add_argument("--scene-tile", type=int, default=64, help="--manifest: low-res tile (tile seams fall inside)")
    p.add_argument("--scene-overlap", type=int, default=16, help="--manifest: low-res tile overlap")
    p.add_argument("--texture-steps", type=int, default=4,
                   help="--manifest: also report the model sampled with this many stochastic steps (0: skip)")
    p.add_argument("--holdout", type=float, default=None, help="east fraction held out (default: from config, 0.25)")
    p.add_argument("--dn-scale", type=float, default=None, help="reflectance = DN * dn-scale (default 1/255)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's recommendation)")
    p.add_argument("--sampler", default="dpmpp", choices=["dpmpp", "ddim"])
    p.add_argument("--operator", default="average", choices=["average", "gaussian"])
    p.add_argument("--tile", type=int, default=32, help="low-res tile for the quality run")
    p.add_argument("--overlap", type=int, default=8)
    p.add_argument("--seam-tile", type=int, default=128, help="low-res tile for the seam run")
    p.add_argument("--seam-overlap", type=int, default=16)
    p.add_argument("--no-seams", action="store_true", help="skip the seam run")
    p.add_argument("--seam-steps", type=int, nargs="*", default=[4],
                   help="extra stochastic seam runs (DDIM, eta=1) at these step counts, keyed vs independent noise")
    p.add_argument("--opensr", action="store_true", help="--manifest: also opensr-test's consistency, synthesis "
                   "and correctness (improvement/omission/hallucination) scores (geosr/metrics_opensr.py)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="write the results here as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    from pathlib import Path

    import yaml

    from ..diffusion.evaluate import BackProjectedBicubic, EvalSetup, classic, evaluate, markdown_table, seams
    from ..diffusion.weights_io import bundled_dir, load_model
    from ..errors import ConfigError
    from ..upsamplers import build_upsampler

    if args.test_split:
        return _run_test_split(args)
    if args.manifest:
        return _run_manifest(args)
    data: dict = {}
    if args.config:
        cp = Path(args.config)
        if not cp.is_file():
            raise ConfigError(f"--config {cp} does not exist")
        data = ((yaml.safe_load(cp.read_text()) or {}).get("train") or {}).get("data") or {}
    files = tuple(args.data or data.get("files") or ())
    if not files:
        raise ConfigError("give --data GeoTIFFs or a --config whose train.data.files lists them")
    weights = args.weights or str(bundled_dir())
    spec = load_model(weights).spec
    setup = EvalSetup(
        files=files, bands=tuple(data["bands"]) if data.get("bands") else None,
        dn_scale=args.dn_scale if args.dn_scale is not None else float(data.get("dn_scale", 1 / 255)),
        holdout=args.holdout if args.holdout is not None else float(data.get("holdout", 0.25)),
        scale=spec.scale, operator=args.operator, tile=args.tile, overlap=args.overlap,
        seam_tile=args.seam_tile, seam_overlap=args.seam_overlap, seed=args.seed,
    )

    def model(keyed: bool = True, **extra):
        params = {"weights": weights, "sampler": args.sampler, "operator": args.operator, "keyed_noise": keyed}
        if args.steps is not None:
            params["steps"] = args.steps
        params.update(extra)
        return lambda: build_upsampler("ldm", scale=spec.scale, device=args.device, bands=spec.bands,
                                       seed=args.seed, params=params)

    methods = {"ldm": model(), "bicubic": classic("bicubic", spec.scale), "lanczos": classic("lanczos", spec.scale),
               "bicubic + back-projection (ablation: no denoiser)": lambda: BackProjectedBicubic(spec.scale, operator=args.operator)}
    res = evaluate(methods, setup)
    if not args.no_seams:
        runs = {"ldm": model(True), "ldm (independent noise)": model(False), "ldm (keyed + fuse)": model(True, fuse=True),
                "bicubic": classic("bicubic", spec.scale),
                "bicubic + back-projection (ablation: no denoiser)": lambda: BackProjectedBicubic(spec.scale, operator=args.operator)}
        for st in args.seam_steps or []:
            runs[f"ldm {st}-step ddim eta=1"] = model(True, steps=st, sampler="ddim", eta=1.0)
            runs[f"ldm {st}-step ddim eta=1 (independent noise)"] = model(False, steps=st, sampler="ddim", eta=1.0)
        res.update(seams(runs, setup))
    res["setup"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in setup.__dict__.items()}
    res["model"] = {"weights": weights, "digest": spec.digest(),
                    "steps": args.steps or spec.sampling.get("steps", 2), "sampler": args.sampler,
                    "trained": spec.trained}
    print(markdown_table(res["quality"], res.get("seam")))
    if res.get("seam"):
        print("\nseam metric (whole rasters as low-res input, tile "
              f"{args.seam_tile}/overlap {args.seam_overlap}):")
        print("| run | seam metric | phase-aligned seam ratio |\n| --- | ---: | ---: |")
        for k, v in res["seam"].items():
            print(f"| {k} | {v:.4f} | {res['seam_aligned'][k]:.4f} |")
    if args.json:
        Path(args.json).write_text(dumps(res, indent=2) + "\n")
    return 0


def _run_manifest(args: argparse.Namespace) -> int:

    from pathlib import Path

    from ..diffusion.evaluate import (
        BackProjected,
        classic,
        evaluate_scenes,
        manifest_heldout,
        scenes_table,
        summary_table,
    )
    from ..diffusion.weights_io import bundled_dir, load_model
    from ..errors import InputError
    from ..upsamplers import build_upsampler

    weights = args.weights or str(bundled_dir())
    spec = load_model(weights).spec
    scenes = manifest_heldout(str(Path(args.manifest).expanduser()), spec.band_names, spec.scale, args.operator,
                              args.max_side)
    if not scenes:
        raise InputError(f"{args.manifest} has no held-out scene with all of {list(spec.band_names)}")

    def model(**extra):
        params = {"weights": weights, "operator": args.operator, **extra}
        if args.steps is not None and "steps" not in extra:
            params["steps"] = args.steps
        return lambda: build_upsampler("ldm", scale=spec.scale, device=args.device, bands=spec.bands,
                                       seed=args.seed, params=params)

    s = spec.scale
    methods = {"bicubic": classic("bicubic", s), "lanczos": classic("lanczos", s),
               "lanczos+bp": lambda: BackProjected(s, "lanczos", operator=args.operator), "ldm": model()}  # ldm: the model's own default
    if spec.mean is not None:
        methods["ldm mean only (no diffusion)"] = model(diffusion=False, ensemble=1)
        methods["ldm mean, 8x self-ensemble"] = model(diffusion=False, ensemble=8)
        methods["ldm 1-step diffusion"] = model(diffusion=True, steps=1, sampler="dpmpp", ensemble=1)
    if args.texture_steps:
        methods[f"ldm {args.texture_steps}-step ddim eta=1"] = model(steps=args.texture_steps, sampler="ddim", eta=1.0,
                                                                     diffusion=True)
    tile = args.scene_tile
    rows = evaluate_scenes(methods, scenes, scale=s, tile=tile, overlap=args.scene_overlap, operator=args.operator,
                           seed=args.seed, opensr=args.opensr)
    print(scenes_table(rows, baseline="lanczos+bp"))
    print()
    print(summary_table(rows, "ldm", "lanczos+bp", tuple(k for k in methods if k.startswith("ldm "))))
    if args.json:
        res = {"rows": rows, "scenes": [{"name": sc.name, "sensor": sc.sensor, "truth_shape": list(sc.truth.shape)}
                                        for sc in scenes],
               "model": {"weights": weights, "digest": spec.digest(), "sampling": spec.sampling,
                         "trained": spec.trained}, "tile": tile}
        Path(args.json).write_text(dumps(res, indent=2) + "\n")
    return 0


def _run_test_split(args: argparse.Namespace) -> int:
    """The recipe's image-folder test split through the production path: bicubic, lanczos, lanczos + back-
    projection and the model (its default sampling, and its mean alone with 2 and 8 symmetries), mean PSNR /
    SSIM over the images with a ``scale``-px border cropped; per protocol."""
    from pathlib import Path

    import yaml

    from ..diffusion.evaluate import BackProjected, classic
    from ..diffusion.testsets import evaluate_images, folder_test_images, images_table, upsample_image
    from ..diffusion.train import train_spec_from_dict
    from ..diffusion.weights_io import bundled_dir, load_model
    from ..errors import ConfigError, InputError
    from ..upsamplers import build_upsampler

    rp = Path(args.test_split)
    if not rp.is_file():
        raise ConfigError(f"--test-split {rp} does not exist")
    data = train_spec_from_dict((yaml.safe_load(rp.read_text()) or {}).get("train") or {}).data
    if args.corpus_root:
        data = data.model_copy(update={"corpus_root": args.corpus_root})
    weights = args.weights or str(bundled_dir())
    spec = load_model(weights, denoiser=False).spec
    s = spec.scale

    def model(**extra):
        return lambda: build_upsampler("ldm", scale=s, device=args.device, seed=args.seed,
                                       params={"weights": weights, **extra})

    out: dict = {"recipe": str(rp), "weights": weights, "model": {"digest": spec.digest(), "sampling": spec.sampling}}
    for protocol in args.protocols:
        images = folder_test_images(data, s, protocol, args.limit)
        if not images:
            raise InputError(f"{rp}: no image folder has a test split (train.data.folders[].test)")
        methods = {"bicubic": classic("bicubic", s), "lanczos": classic("lanczos", s),
                   "lanczos+bp": lambda: BackProjected(s, "lanczos"), "ldm": model()}
        if protocol == "average" and spec.mean is not None:
            methods["ldm mean, 2x self-ensemble"] = model(diffusion=False, ensemble=2)
            methods["ldm mean, 8x self-ensemble"] = model(diffusion=False, ensemble=8)
        res = evaluate_images(methods, images, scale=s, upsample=upsample_image, protocol=protocol)
        print(f"\n{len(images)} test images, protocol {protocol}:\n")
        print(images_table(res))
        out[protocol] = {k: {kk: vv for kk, vv in v.items() if kk != "per_image_psnr"} for k, v in res.items()}
    if args.json:
        Path(args.json).write_text(dumps(out, indent=2) + "\n")
    return 0
