"""Evaluation behind ``geosr eval``: quality against high-res truth and seam visibility on a real scene.

* **Quality** — the held-out (east) part of each high-res raster is degraded by the sensor operator,
  super-resolved tile by tile with the scene's global blending weights, and compared with the truth
  (PSNR, SSIM, both on reflectance with data range 1), next to bicubic and Lanczos run the same way;
  LR consistency (reflectance L1, spectral angle) of every method's output is reported too.
* **Seams** — a whole raster is taken as the *low-res* input, super-resolved on the production tiling,
  and :func:`geosr.metrics.seam_metric` is measured on the tile boundaries; the model is run with
  position-keyed noise and with independent per-tile noise (LDSR-S2 behaviour) through the same code.

Every method super-resolves through the production path (:func:`upsample_image`, which is ``geosr run``'s read
and model steps on an in-memory source and sink: tiles, batching, blending, nodata fill, projection); it holds
one image in memory, which is all an evaluation needs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np

from .. import metrics
from ..config import LdmModel, OutputConfig, RunConfig
from ..grid import TileGrid
from ..memory import one_block_tiling, super_resolve_array
from ..upsamplers import TileBatch, Upsampler, build_upsampler
from .data import read_reflectance, split


def upsample_image(up: Upsampler, img: np.ndarray, *, scale: int, tile: int, overlap: int, seed: int = 0,
                  ramp: Literal["cosine", "linear", "uniform"] = "cosine") -> np.ndarray:
    """Super-resolve a whole (C, H, W) image exactly as ``geosr run`` does (:func:`geosr.memory.super_resolve_array`:
    the global tile grid, the tile stream's batches, the global blending weights, the projection of a model that
    re-imposes consistency), in memory. Returns (C, sH, sW) float32."""
    c, h, w = img.shape
    cfg = RunConfig(tiling=one_block_tiling(h, w, scale=scale, tile=tile, overlap=min(overlap, tile // 2), ramp=ramp),
                    model=LdmModel(seed=seed), output=OutputConfig(dtype="float32"))
    return super_resolve_array(up, img, cfg).data


def scene_boundaries(h: int, w: int, tile: int, overlap: int, scale: int) -> tuple[list[int], list[int]]:
    grid = TileGrid(h, w, tile, overlap, scale)
    return (metrics.tile_boundaries(grid.y_origins, tile, scale, h),
            metrics.tile_boundaries(grid.x_origins, tile, scale, w))


@dataclass(frozen=True)
class EvalSetup:
    files: tuple[str, ...]
    bands: tuple[int, ...] | None
    dn_scale: float
    holdout: float
    scale: int = 4
    operator: str = "average"
    tile: int = 32  # quality: low-res tile on the small held-out strip
    overlap: int = 8
    seam_tile: int = 128  # seams: production tiling
    seam_overlap: int = 16
    seed: int = 0


def heldout_pairs(s: EvalSetup) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, lowres, truth) for the held-out part of each raster, cropped to a multiple of the scale."""
    out = []
    for f in s.files:
        _, ho = split(read_reflectance(f, s.bands, s.dn_scale), s.holdout)
        h, w = (ho.shape[1] // s.scale) * s.scale, (ho.shape[2] // s.scale) * s.scale
        hr = ho[:, :h, :w]
        lr = metrics.degrade(hr, s.scale, s.operator).astype(np.float32)
        out.append((f, lr, hr))
    return out


def evaluate(methods: dict[str, Callable[[], Any]], s: EvalSetup, log=print) -> dict[str, Any]:
    """``methods``: name -> zero-argument factory of an upsampler (built lazily, one at a time)."""
    pairs = heldout_pairs(s)
    rows: dict[str, dict[str, float]] = {}
    for name, make in methods.items():
        up = make()
        ps, ss, l1, ang, px, secs = [], [], [], [], 0, 0.0
        for f, lr, hr in pairs:
            t0 = time.perf_counter()
            sr = upsample_image(up, lr, scale=s.scale, tile=s.tile, overlap=s.overlap, seed=s.seed)
            secs += time.perf_counter() - t0
            n = hr.shape[1] * hr.shape[2]
            ps.append((metrics.psnr(sr, hr), n))
            ss.append((metrics.ssim(sr, hr), n))
            c = metrics.lr_consistency(sr, lr, s.scale, s.operator)
            l1.append((c["lr_l1"], n))
            ang.append((c["lr_spectral_angle_deg"], n))
            px += n
        wavg = lambda v: float(sum(a * n for a, n in v) / sum(n for _, n in v))  # noqa: E731
        rows[name] = {"psnr": wavg(ps), "ssim": wavg(ss), "lr_l1": wavg(l1), "lr_angle_deg": wavg(ang),
                      "hr_pixels": px, "seconds": secs}
        log(f"quality {name}: " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in rows[name].items()))
    return {"quality": rows, "heldout": [{"file": f, "lowres_shape": list(lr.shape), "truth_shape": list(hr.shape)}
                                         for f, lr, hr in pairs]}


def aligned_seam_ratio(img: np.ndarray, bounds_y, bounds_x, scale: int) -> tuple[float, float, float, float]:
    """Sums of :func:`geosr.metrics.seam_metric` with ``period=scale``: the reference is the gradient energy
    on the *other* lines at the same sub-pixel phase (low-res pixel edges) instead of all other lines. Any
    x``scale`` upsampler has a periodic structure there, which the plain metric counts as seams; this
    isolates what tiling adds. Returns (seam_sum, seam_n, ref_sum, ref_n)."""
    acc = metrics.SeamAccumulator()
    acc.add(img, list(bounds_y), list(bounds_x), period=scale)
    return acc.seam_sum, acc.seam_n, acc.inner_sum, acc.inner_n


def seams(methods: dict[str, Callable[[], Any]], s: EvalSetup, log=print) -> dict[str, Any]:
    """Seam metric with the whole of each raster as low-res input (no truth needed): the plain metric
    (:func:`geosr.metrics.seam_metric`) and the phase-aligned ratio (:func:`aligned_seam_ratio`)."""
    res: dict[str, float] = {}
    aligned: dict[str, float] = {}
    imgs = [read_reflectance(f, s.bands, s.dn_scale) for f in s.files]
    for name, make in methods.items():
        up = make()
        acc = metrics.SeamAccumulator()
        tot = np.zeros(4)
        for img in imgs:
            c, h, w = img.shape
            sr = upsample_image(up, img, scale=s.scale, tile=s.seam_tile, overlap=s.seam_overlap, seed=s.seed)
            by, bx = scene_boundaries(h, w, s.seam_tile, min(s.seam_overlap, s.seam_tile // 2), s.scale)
            acc.add(sr, by, bx)
            tot += np.array(aligned_seam_ratio(sr, by, bx, s.scale))
        res[name] = acc.value()
        aligned[name] = float((tot[0] / tot[1]) / (tot[2] / tot[3])) if tot[1] and tot[3] and tot[2] else float("nan")
        log(f"seams {name}: {res[name]:.4f} (phase-aligned {aligned[name]:.4f})")
    return {"seam": res, "seam_aligned": aligned, "seam_tiling": {"tile": s.seam_tile, "overlap": s.seam_overlap},
            "seam_scenes": [list(i.shape) for i in imgs]}


class BackProjected:
    """A classic interpolation (``bicubic``, ``lanczos``, ...) back-projected onto its input (iterative
    back-projection, then the exact block-average step): the honest baseline — it reproduces the input
    exactly, as the model does, so a model must beat it on detail, not on consistency."""

    version = "1"

    def __init__(self, scale: int, mode: str = "bicubic", iterations: int = 3, operator: str = "average") -> None:
        self.name, self.scale, self.bands, self.batch_size, self.device = f"{mode}+bp", scale, None, 16, "cpu"
        self.mode, self.iterations, self.operator = mode, iterations, operator
        self._up = build_upsampler(mode, scale=scale, device="cpu")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "scale": self.scale, "mode": self.mode, "iterations": self.iterations}

    def project_blended(self, hr: np.ndarray, lowres: np.ndarray) -> np.ndarray:
        """The blended block re-projected onto its input (:class:`~geosr.upsamplers.ProjectsBlended`), as the model."""
        from .consistency import project_blended

        return project_blended(hr, lowres, self.scale, self.operator)

    def __call__(self, batch: TileBatch) -> np.ndarray:
        import torch

        from .consistency import project

        with torch.no_grad():
            lr = torch.from_numpy(np.ascontiguousarray(batch.pixels, dtype=np.float32))
            up = torch.from_numpy(np.ascontiguousarray(self._up(batch), dtype=np.float32))
            return project(up, lr, self.scale, "average", self.iterations).numpy()


def BackProjectedBicubic(scale: int, iterations: int = 3, operator: str = "average") -> BackProjected:  # noqa: N802
    return BackProjected(scale, "bicubic", iterations, operator)


def hf_energy_ratio(sr: np.ndarray, truth: np.ndarray, scale: int) -> float:
    """Energy of the detail a ``scale``-times coarser image cannot hold (x minus its block average, spread
    back), of the output over the truth's: 1 = as much fine detail as the truth; interpolation << 1; a
    conditional-mean (regression) estimate < 1; a sample of the posterior ~ 1."""
    def detail(x: np.ndarray) -> np.ndarray:
        c, h, w = x.shape
        lo = x.reshape(c, h // scale, scale, w // scale, scale).mean(axis=(2, 4))
        return x - np.repeat(np.repeat(lo, scale, axis=1), scale, axis=2)

    h, w = (truth.shape[1] // scale) * scale, (truth.shape[2] // scale) * scale
    a, b = detail(sr[:, :h, :w].astype(np.float64)), detail(truth[:, :h, :w].astype(np.float64))
    return float((a * a).sum() / max((b * b).sum(), 1e-20))


@dataclass(frozen=True)
class HeldoutScene:
    name: str
    sensor: str
    lowres: np.ndarray  # (C, h, w) reflectance, the truth degraded by the operator
    truth: np.ndarray  # (C, s*h, s*w)
    present: tuple[bool, ...] = ()  # bands the scene really has (metrics use only those); () = all


def manifest_heldout(manifest: str, band_names: tuple[str, ...], scale: int, operator: str = "average",
                     max_side: int = 0) -> list[HeldoutScene]:
    """The corpus' held-out scenes (whole files never used in training) as (lowres, truth) pairs: for a fixed-band
    model in its band order (a band a scene lacks, nir of an RGB camera, is filled as in training and left out
    of the metrics); for a band-shared model (``band_names`` empty) with the scene's own bands."""
    from .data import manifest_scenes, read_scene

    out = []
    for sc in manifest_scenes(manifest, "heldout"):
        img, have = read_scene(sc, tuple(band_names) or None)
        if max_side:
            img = img[:, :max_side, :max_side]
        h, w = (img.shape[1] // scale) * scale, (img.shape[2] // scale) * scale
        hr = np.ascontiguousarray(img[:, :h, :w])
        if not np.isfinite(hr).all():
            hr = np.nan_to_num(hr, nan=0.0)
        out.append(HeldoutScene(sc["name"], str(sc.get("sensor", "")), metrics.degrade(hr, scale, operator)
                                .astype(np.float32), hr, tuple(bool(v) for v in have)))
    return out


def evaluate_scenes(methods: dict[str, Callable[[], Any]], scenes: list[HeldoutScene], *, scale: int,
                    tile: int = 64, overlap: int = 16, operator: str = "average", seed: int = 0,
                    log=print, opensr: bool = False) -> dict[str, dict[str, dict[str, float]]]:
    """Per method, per held-out scene: PSNR, SSIM, LR L1, high-frequency energy ratio, phase-aligned seam ratio
    (at this tiling, so tile boundaries fall inside every scene), seconds; with ``opensr`` also opensr-test's
    scores (:func:`geosr.metrics_opensr.opensr_scores`). ``methods``: name -> factory."""
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for name, make in methods.items():
        up = make()
        rows[name] = {}
        for sc in scenes:
            c, h, w = sc.lowres.shape
            t0 = time.perf_counter()
            sr = upsample_image(up, sc.lowres, scale=scale, tile=tile, overlap=overlap, seed=seed)
            secs = time.perf_counter() - t0
            by, bx = scene_boundaries(h, w, tile, min(overlap, tile // 2), scale)
            keep = [i for i, v in enumerate(sc.present or (True,) * c) if v]
            sr, truth, lowres = sr[keep], sc.truth[keep], sc.lowres[keep]
            seam = aligned_seam_ratio(sr, by, bx, scale)
            r = {"psnr": metrics.psnr(sr, truth), "ssim": metrics.ssim(sr, truth),
                 "lr_l1": metrics.lr_consistency(sr, lowres, scale, operator)["lr_l1"],
                 "hf_ratio": hf_energy_ratio(sr, truth, scale),
                 "seam_ratio": float((seam[0] / seam[1]) / (seam[2] / seam[3])) if seam[1] and seam[3] and seam[2]
                 else float("nan"),
                 "seconds": secs}
            if opensr:
                from ..metrics_opensr import opensr_scores

                r.update(opensr_scores(lowres, sr, truth))
            rows[name][sc.name] = r
            log(f"{name} | {sc.name}: " + " ".join(f"{k}={v:.4f}" for k, v in r.items()))
    return rows


def scenes_table(rows: dict[str, dict[str, dict[str, float]]], baseline: str | None = None) -> str:
    """Markdown: one line per (scene, method); with ``baseline``, PSNR/SSIM differences against it. The seam
    ratio is also given relative to bicubic's on the same scene (bicubic tiles agree exactly in overlaps, so
    its ratio is what the scene and the metric give without any seam: on small scenes few boundary lines make
    the raw ratio noisy)."""
    head = "| scene | method | PSNR (dB) | SSIM | LR L1 | HF energy ratio | seam ratio | seam / bicubic's | s |"
    if baseline:
        head += f" ΔPSNR vs {baseline} | ΔSSIM |"
    if any("opensr_improvement" in r for per in rows.values() for r in per.values()):
        head += " opensr-test improvement / omission / hallucination |"
    lines = [head, "|" + " --- |" * 2 + " ---: |" * (head.count("|") - 3)]
    scenes = list(next(iter(rows.values())).keys()) if rows else []
    for sc in scenes:
        for name, per in rows.items():
            r = per[sc]
            ref = rows.get("bicubic", {}).get(sc, {}).get("seam_ratio", float("nan"))
            line = (f"| {sc} | {name} | {r['psnr']:.3f} | {r['ssim']:.4f} | {r['lr_l1']:.1e} | {r['hf_ratio']:.3f} | "
                    f"{r['seam_ratio']:.3f} | {r['seam_ratio'] / ref if ref else float('nan'):.3f} | "
                    f"{r['seconds']:.1f} |")
            if baseline:
                b = rows[baseline][sc]
                line += f" {r['psnr'] - b['psnr']:+.3f} | {r['ssim'] - b['ssim']:+.4f} |"
            if "opensr_improvement" in r:
                line += (f" {r['opensr_improvement']:.3f} / {r['opensr_omission']:.3f} / "
                         f"{r['opensr_hallucination']:.3f} |")
            lines.append(line)
    return "\n".join(lines)


def summary_table(rows: dict[str, dict[str, dict[str, float]]], model: str = "ldm", baseline: str = "lanczos+bp",
                  others: tuple[str, ...] = (), goal_db: float = 0.5) -> str:
    """Markdown: one line per scene — the baseline's and the model's PSNR / SSIM, their difference, the PSNR
    difference of each row in ``others`` (ablations), the high-frequency energy ratio and the seam ratio
    relative to bicubic's — then a line saying on how many scenes the model beats the baseline by
    ``goal_db`` dB with a higher SSIM."""
    others = tuple(o for o in others if o in rows)
    head = (f"| held-out scene | {baseline} PSNR / SSIM | **{model}** PSNR / SSIM | Δ vs {baseline} |"
            + "".join(f" {o} Δ |" for o in others) + f" HF energy (truth = 1): {baseline} → {model} | seam / bicubic's |")
    lines = [head, "| --- |" + " ---: |" * (head.count("|") - 2)]
    met, scenes = 0, list(rows[model])
    for sc in scenes:
        b, m = rows[baseline][sc], rows[model][sc]
        dp, ds = m["psnr"] - b["psnr"], m["ssim"] - b["ssim"]
        met += dp >= goal_db and ds > 0
        ref = rows.get("bicubic", {}).get(sc, {}).get("seam_ratio", float("nan"))
        seam = m["seam_ratio"] / ref if ref and np.isfinite(m["seam_ratio"]) else float("nan")
        lines.append(f"| {sc} | {b['psnr']:.3f} / {b['ssim']:.4f} | {m['psnr']:.3f} / {m['ssim']:.4f} | "
                     f"{dp:+.3f} dB / {ds:+.4f} |" + "".join(f" {rows[o][sc]['psnr'] - b['psnr']:+.3f} dB |" for o in others)
                     + f" {b['hf_ratio']:.2f} → {m['hf_ratio']:.2f} | {'n/a (1 tile)' if np.isnan(seam) else f'{seam:.3f}'} |")
    lines.append(f"\n{model} beats {baseline} by >= {goal_db} dB PSNR with a higher SSIM on {met} of {len(scenes)} "
                 "held-out scenes.")
    return "\n".join(lines)


def classic(name: str, scale: int):
    return lambda: build_upsampler(name, scale=scale, device="cpu")


def markdown_table(quality: dict[str, dict[str, float]], seam: dict[str, float] | None = None) -> str:
    lines = ["| method | PSNR (dB) | SSIM | LR L1 | LR spectral angle (deg) | seam metric |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in quality.items():
        sm = seam.get(name) if seam else None
        lines.append(f"| {name} | {r['psnr']:.3f} | {r['ssim']:.4f} | {r['lr_l1']:.2e} | {r['lr_angle_deg']:.3f} | "
                     f"{'' if sm is None else f'{sm:.3f}'} |")
    return "\n".join(lines)
