"""``geosr train``: train the latent-diffusion SR model (mean predictor, autoencoder, denoiser) from high-res
GeoTIFFs or a corpus manifest."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train the latent-diffusion model from high-res GeoTIFFs",
        description="Build LR/HR pairs from high-res GeoTIFFs and image folders (the sensor operator + noise), then "
                    "train the recipe's stages in order: mean predictor, autoencoder, v-prediction denoiser with "
                    "EMA, one-step fine-tuning (a stage with 0 steps is skipped). Resumable: rerun the same command.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", required=True, help="model config YAML with model: and train: sections "
                                                    "(configs/model-x4.yaml)")
    p.add_argument("--out", required=True, help="run directory; holds config.json + safetensors when done")
    p.add_argument("--data", nargs="+", default=None, help="high-res GeoTIFFs (override train.data.files)")
    p.add_argument("--manifest", default=None, help="corpus manifest.json (override train.data.manifest)")
    p.add_argument("--corpus-root", default=None,
                   help="folder that train.data.folders are relative to (override train.data.corpus_root, "
                        "default ../shared/corpus): point it at your own imagery")
    p.add_argument("--mean-steps", type=int, default=None, help="stage 0: mean predictor steps")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (override train.device)")
    p.add_argument("--ae-steps", type=int, default=None)
    p.add_argument("--denoiser-steps", type=int, default=None)
    p.add_argument("--finetune-steps", type=int, default=None, help="stage 3: one-step pixel-loss fine-tuning steps")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds of wall clock for this invocation (all stages); saves and stops after it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    from ..diffusion.spec import ModelSpec
    from ..diffusion.train import train, train_spec_from_dict
    from ..errors import ConfigError

    path = Path(args.config)
    if not path.is_file():
        raise ConfigError(f"--config {path} does not exist")
    doc = yaml.safe_load(path.read_text()) or {}
    if "model" not in doc or "train" not in doc:
        raise ConfigError(f"{path} needs a model: and a train: section")
    spec = ModelSpec.from_dict(doc["model"])
    tr = doc["train"]
    if args.data:
        tr = {**tr, "data": {**tr.get("data", {}), "files": list(args.data)}}
    if args.manifest:
        tr = {**tr, "data": {**tr.get("data", {}), "manifest": args.manifest}}
    if args.corpus_root:
        tr = {**tr, "data": {**tr.get("data", {}), "corpus_root": args.corpus_root}}
    if (tr.get("data") or {}).get("manifest"):
        tr["data"]["manifest"] = str(Path(tr["data"]["manifest"]).expanduser())
    over = {k: v for k, v in {"device": args.device, "ae_steps": args.ae_steps, "denoiser_steps": args.denoiser_steps,
                              "finetune_steps": args.finetune_steps,
                              "mean_steps": args.mean_steps,
                              "batch": args.batch, "threads": args.threads, "time_limit_s": args.time_limit}.items()
            if v is not None}
    cfg = train_spec_from_dict({**tr, **over})
    run = train(spec, cfg, args.out)
    state = run.state["stage"]
    print(f"model saved to {run.out} (config.json + safetensors weights); "
          + ("training done" if state == "done" else f"stopped in stage {state}: rerun the same command to continue"))
    return 0
