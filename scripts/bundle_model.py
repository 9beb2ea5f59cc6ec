#!/usr/bin/env python3
"""Copy a finished training run into the package as the bundled model, with its held-out evaluation.

Usage:
    python scripts/bundle_model.py RUN_DIR EVAL_JSON [--dest geosr/data/models/geosr-ldm-x4]
        [--sampling '{"ensemble": 2}'] [--test-split-json ucm.json]

RUN_DIR is what `geosr train --out` wrote (config.json + safetensors); EVAL_JSON is what `geosr eval --manifest
... --weights RUN_DIR --json EVAL_JSON` wrote for it. The bundled config.json is the run's, with
``trained.heldout_eval`` (per-scene PSNR/SSIM differences against lanczos + back-projection for every model row of
the evaluation, and the command), with ``--test-split-json`` (what ``geosr eval --test-split RECIPE --json`` wrote)
``trained.test_split_eval`` (mean PSNR/SSIM per protocol and method), and, with ``--sampling``, the recommended
sampling options layered on the run's.
MODEL_CARD.md is left as it is: write it by hand from the same numbers.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

FILES = ("autoencoder.safetensors", "denoiser.safetensors", "mean.safetensors")
BASELINE = "lanczos+bp"


def heldout_summary(ev: dict, command: str) -> dict:
    """{row: {scene: ΔPSNR}} and {row: {scene: ΔSSIM}} against the baseline, for every ``ldm*`` row."""
    rows = ev["rows"]
    base = rows[BASELINE]
    out: dict = {"command": command, "baseline": BASELINE, "psnr_gain_db": {}, "ssim_gain": {}}
    for name, per in rows.items():
        if not name.startswith("ldm"):
            continue
        out["psnr_gain_db"][name] = {sc: round(r["psnr"] - base[sc]["psnr"], 3) for sc, r in per.items()}
        out["ssim_gain"][name] = {sc: round(r["ssim"] - base[sc]["ssim"], 4) for sc, r in per.items()}
    return out


def test_split_summary(ev: dict) -> dict:
    """{protocol: {method: {psnr, ssim, images}}} of a ``geosr eval --test-split`` result, and its recipe."""
    out: dict = {"recipe": ev.get("recipe"), "command": "geosr eval --test-split RECIPE --weights MODEL"}
    for protocol, rows in ev.items():
        if isinstance(rows, dict) and all(isinstance(r, dict) and "psnr" in r for r in rows.values()) and rows:
            out[protocol] = {m: {"psnr": round(r["psnr"], 3), "ssim": round(r["ssim"], 4), "images": r["images"]}
                             for m, r in rows.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("eval_json")
    p.add_argument("--dest", default=str(Path(__file__).resolve().parents[1] / "geosr/data/models/geosr-ldm-x4"))
    p.add_argument("--sampling", default="{}", help="JSON object of sampling options to recommend")
    p.add_argument("--command", default="geosr eval --manifest ~/.cache/geosr/corpus/manifest.json --texture-steps 0")
    p.add_argument("--test-split-json", default=None, help="`geosr eval --test-split ... --json` output to record")
    a = p.parse_args(argv)
    run, dest = Path(a.run_dir), Path(a.dest)
    missing = [f for f in ("config.json", *FILES) if not (run / f).is_file()]
    if missing:
        print(f"error: {run} lacks {', '.join(missing)}: is it a finished `geosr train --out` run?", file=sys.stderr)
        return 2
    ev = json.loads(Path(a.eval_json).read_text())
    cfg = json.loads((run / "config.json").read_text())
    cfg["sampling"] = {**cfg.get("sampling", {}), **json.loads(a.sampling)}
    cfg.setdefault("trained", {})["heldout_eval"] = heldout_summary(ev, a.command)
    if a.test_split_json:
        cfg["trained"]["test_split_eval"] = test_split_summary(json.loads(Path(a.test_split_json).read_text()))
    dest.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        shutil.copyfile(run / f, dest / f)
    (dest / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    print(f"bundled {run} -> {dest} (sampling {cfg['sampling']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
