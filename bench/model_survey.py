"""The survey's techniques measured on held-out data (issue: any scale, consistency inside sampling, noise).

Three studies, each a markdown table against lanczos + back-projection at the same scale, every method through
the production path (tile grid, blending, projection; ``geosr.diffusion.testsets.upsample_image``):

* ``scales``: x2, x3, x4, x8, x16 with the default model (read-outs and cascades of the x4 model) on the
  registry's held-out scenes (cropped to ``--side`` HR px) and, for x2-x4, the UC Merced test split;
* ``consistency``: k-step stochastic sampling with the measurement kept at every step (``project_x0``)
  against the same sampler projected once at the end, on the held-out scenes;
* ``noise``: the held-out scenes' LR with added Gaussian noise (sigma 0, 0.005, 0.01 reflectance): the model
  told nothing, told the true sigma, and estimating it per tile (``noise_sigma: auto``), against lanczos + bp;
  quality against the clean truth, and the output's noise: ``std(SR(noisy) - SR(clean)) / sigma`` (the noise
  that reaches the output, per HR pixel, relative to the input's) and the noise estimator on the output.

    python bench/model_survey.py scales --weights runs/x4 --manifest ~/.cache/geosr/corpus/manifest.json
    python bench/model_survey.py noise consistency --limit-scenes 4 --json survey.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geosr import metrics  # noqa: E402
from geosr.diffusion.evaluate import BackProjected, manifest_heldout  # noqa: E402
from geosr.diffusion.testsets import upsample_image  # noqa: E402
from geosr.upsamplers import build_upsampler  # noqa: E402


def _scenes(manifest: str, side: int, limit: int):
    sc = manifest_heldout(str(Path(manifest).expanduser()), (), 1, "average", side)  # truth only (scale 1)
    return [(s.name, s.truth) for s in sc[: limit or None]]


def _model(weights: str | None, scale: int, **params):
    p = {**params, **({"weights": weights} if weights else {})}
    return build_upsampler("ldm", scale=scale, device="cpu", params=p)


def _psnr_ssim(sr, truth):
    return metrics.psnr(sr, truth), metrics.ssim(sr, truth)


def study_scales(a) -> dict:
    out: dict = {}
    scenes = _scenes(a.manifest, a.side, a.limit_scenes)
    for s in a.scales:
        rows = {"lanczos+bp": [], "model": []}
        for name, truth in scenes:
            h, w = (truth.shape[1] // s) * s, (truth.shape[2] // s) * s
            hr = np.ascontiguousarray(truth[:, :h, :w])
            lr = metrics.degrade(hr, s).astype(np.float32)
            tile = max(8, min(64, min(lr.shape[1:])))
            for key, up in (("lanczos+bp", BackProjected(s, "lanczos")), ("model", _model(a.weights, s))):
                sr = upsample_image(up, lr, tile=tile, overlap=min(16, tile // 4))
                rows[key].append(_psnr_ssim(sr, hr))
        out[f"x{s}"] = {k: {"psnr": float(np.mean([r[0] for r in v])), "ssim": float(np.mean([r[1] for r in v]))}
                        for k, v in rows.items()}
        print(f"x{s}: {json.dumps(out[f'x{s}'])}", file=sys.stderr, flush=True)
    return out


def study_consistency(a) -> dict:
    out: dict = {}
    scenes = _scenes(a.manifest, a.side, a.limit_scenes)
    variants = {"mean (no diffusion)": dict(diffusion=False)}
    for k in a.steps:
        variants[f"{k}-step ddim eta=1, projected at the end"] = dict(diffusion=True, steps=k, sampler="ddim", eta=1.0)
        variants[f"{k}-step ddim eta=1, projected every step"] = dict(diffusion=True, steps=k, sampler="ddim", eta=1.0,
                                                                      project_x0=True)
    variants["lanczos+bp"] = None
    for key, params in variants.items():
        ps, ss, hf = [], [], []
        for name, truth in scenes:
            h, w = (truth.shape[1] // 4) * 4, (truth.shape[2] // 4) * 4
            hr = np.ascontiguousarray(truth[:, :h, :w])
            lr = metrics.degrade(hr, 4).astype(np.float32)
            up = BackProjected(4, "lanczos") if params is None else _model(a.weights, 4, **params)
            sr = upsample_image(up, lr)
            p, s = _psnr_ssim(sr, hr)
            from geosr.diffusion.evaluate import hf_energy_ratio

            ps.append(p), ss.append(s), hf.append(hf_energy_ratio(sr, hr, 4))
        out[key] = {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "hf_ratio": float(np.mean(hf))}
        print(f"{key}: {json.dumps(out[key])}", file=sys.stderr, flush=True)
    return out


def study_noise(a) -> dict:
    import torch

    from geosr.diffusion.noise_estimate import noise_sigma

    out: dict = {}
    scenes = _scenes(a.manifest, a.side, a.limit_scenes)
    for sigma in a.sigmas:
        methods = {"lanczos+bp": lambda: BackProjected(4, "lanczos"),
                   "model, told nothing": lambda: _model(a.weights, 4, noise_sigma=0.0),
                   "model, noise_sigma auto": lambda: _model(a.weights, 4, noise_sigma="auto"),
                   "model, told the true sigma": lambda: _model(a.weights, 4, noise_sigma=float(sigma))}
        res: dict = {}
        for key, make in methods.items():
            up = make()
            ps, ss, ratio, est = [], [], [], []
            for i, (name, truth) in enumerate(scenes):
                h, w = (truth.shape[1] // 4) * 4, (truth.shape[2] // 4) * 4
                hr = np.ascontiguousarray(truth[:, :h, :w])
                lr = metrics.degrade(hr, 4).astype(np.float32)
                rng = np.random.default_rng(1000 + i)
                noisy = (lr + sigma * rng.standard_normal(lr.shape)).astype(np.float32)
                sr = upsample_image(up, noisy)
                p, s = _psnr_ssim(sr, hr)
                ps.append(p), ss.append(s)
                if sigma > 0:
                    clean = upsample_image(up, lr)
                    ratio.append(float(np.std(sr - clean)) / sigma)
                    est.append(float(noise_sigma(torch.from_numpy(sr[None])).mean()) / sigma)
            res[key] = {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)),
                        "output_noise_ratio": float(np.mean(ratio)) if ratio else 0.0,
                        "output_noise_estimate_ratio": float(np.mean(est)) if est else 0.0}
            print(f"sigma {sigma} {key}: {json.dumps(res[key])}", file=sys.stderr, flush=True)
        out[str(sigma)] = res
    return out


def tables(res: dict) -> str:
    lines = []
    if "scales" in res:
        lines += ["### Any scale (held-out scenes, block average x s)", "",
                  "| scale | lanczos+bp PSNR / SSIM | model PSNR / SSIM | Δ PSNR | Δ SSIM |", "| --- | ---: | ---: | ---: | ---: |"]
        for s, r in res["scales"].items():
            b, m = r["lanczos+bp"], r["model"]
            lines.append(f"| {s} | {b['psnr']:.3f} / {b['ssim']:.4f} | {m['psnr']:.3f} / {m['ssim']:.4f} | "
                         f"{m['psnr'] - b['psnr']:+.3f} | {m['ssim'] - b['ssim']:+.4f} |")
        lines.append("")
    if "consistency" in res:
        b = res["consistency"]["lanczos+bp"]
        lines += ["### Consistency inside sampling (held-out scenes, x4)", "",
                  "| sampling | PSNR | Δ vs lanczos+bp | SSIM | HF energy (truth = 1) |", "| --- | ---: | ---: | ---: | ---: |"]
        for k, r in res["consistency"].items():
            lines.append(f"| {k} | {r['psnr']:.3f} | {r['psnr'] - b['psnr']:+.3f} | {r['ssim']:.4f} | {r['hf_ratio']:.2f} |")
        lines.append("")
    if "noise" in res:
        lines += ["### Noisy input (held-out scenes, x4, Gaussian noise added to the LR)", "",
                  "| sigma | method | PSNR vs clean truth | Δ vs lanczos+bp | SSIM | output noise / input | noise estimate on output / input |",
                  "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
        for sg, per in res["noise"].items():
            b = per["lanczos+bp"]
            for k, r in per.items():
                lines.append(f"| {sg} | {k} | {r['psnr']:.3f} | {r['psnr'] - b['psnr']:+.3f} | {r['ssim']:.4f} | "
                             f"{r['output_noise_ratio']:.3f} | {r['output_noise_estimate_ratio']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("studies", nargs="+", choices=["scales", "consistency", "noise"])
    p.add_argument("--weights", default=None, help="model directory (default: the bundled model)")
    p.add_argument("--manifest", default="~/.cache/geosr/corpus/manifest.json")
    p.add_argument("--side", type=int, default=512, help="crop held-out scenes to this many HR px per side")
    p.add_argument("--limit-scenes", type=int, default=0)
    p.add_argument("--scales", type=int, nargs="+", default=[2, 3, 4, 8, 16])
    p.add_argument("--steps", type=int, nargs="+", default=[4])
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.005, 0.01])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    res = {s: globals()[f"study_{s}"](a) for s in a.studies}
    res["seconds"] = time.perf_counter() - t0
    print(tables(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
