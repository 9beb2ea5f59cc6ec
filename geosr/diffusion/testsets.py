"""Test splits of image folders (e.g. UC Merced images 60-79 of every class) and the two ways of scoring them.

* **geosr's protocol** (what the model is for): the low-res input is the truth block-averaged by the scale
  (the sensor operator the registry scenes are evaluated with too); PSNR and SSIM on reflectance (data range 1)
  over all bands, a ``border`` of ``scale`` px cropped, averaged over the images.
* **the field's protocol** (how remote-sensing SR papers report UC Merced): the low-res input is the 8-bit image
  downsampled by bicubic interpolation (antialiased, as MATLAB's ``imresize`` and PIL's ``resize`` do) and
  stored as 8 bits; the output is rounded to 8 bits; PSNR and SSIM per RGB channel, averaged, border cropped.

An image's test membership comes from the recipe's ``test`` regular expression (:class:`FolderSource`), so the
files that score a model are exactly the ones its training never read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .. import metrics
from .data import DataSpec, FolderSource, folder_files, read_reflectance

PROTOCOLS = ("average", "bicubic-uint8")


@dataclass(frozen=True)
class TestImage:
    name: str  # folder/relative path
    group: str  # the class (parent folder) or the folder
    lowres: np.ndarray  # (C, h, w) float32 model input (reflectance, or 8-bit / 255)
    truth: np.ndarray  # (C, s*h, s*w) float32 on the same scale


def _bicubic_down_uint8(img01: np.ndarray, scale: int) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (C, H/s, W/s) 8-bit bicubic (antialiased) downsample, as the field makes LR."""
    from PIL import Image

    u8 = np.clip(np.round(img01 * 255.0), 0, 255).astype(np.uint8)
    h, w = u8.shape[1] // scale, u8.shape[2] // scale
    out = [np.asarray(Image.fromarray(b).resize((w, h), Image.Resampling.BICUBIC)) for b in u8]
    return np.stack(out).astype(np.float32) / 255.0


def folder_test_images(data: DataSpec, scale: int, protocol: str = "average", limit: int = 0) -> list[TestImage]:
    """Every image in the ``test`` split of the recipe's folders, cropped to a multiple of ``scale``, with its
    low-res input made by ``protocol`` (``average``: block mean; ``bicubic-uint8``: the field's)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    out: list[TestImage] = []
    for src in data.folders:
        if not src.test:
            continue
        for f in folder_files(src, data.corpus_root, "test"):
            img = read_reflectance(f, None, src.value_scale, src.nodata)
            h, w = (img.shape[1] // scale) * scale, (img.shape[2] // scale) * scale
            hr = np.ascontiguousarray(np.nan_to_num(img[:, :h, :w], nan=0.0))
            if protocol == "average":
                lr = metrics.degrade(hr, scale).astype(np.float32)
            else:
                hr = np.clip(np.round(hr * 255.0), 0, 255).astype(np.float32) / 255.0
                lr = _bicubic_down_uint8(hr, scale)
            rel = f.relative_to(_folder_root(src, data.corpus_root)).as_posix()
            group = rel.split("/")[0] if "/" in rel else src.path
            out.append(TestImage(f"{src.path}/{rel}", group, lr, hr))
            if limit and len(out) >= limit:
                return out
    return out


def _folder_root(src: FolderSource, root) -> Any:
    from pathlib import Path

    base = Path(src.path).expanduser()
    return base if base.is_absolute() else Path(root).expanduser() / base


def score(sr: np.ndarray, truth: np.ndarray, border: int, protocol: str = "average") -> dict[str, float]:
    """PSNR / SSIM of one image with ``border`` px cropped; ``bicubic-uint8`` rounds the output to 8 bits and
    averages the per-channel scores (the field's way); ``average`` scores all bands together on reflectance."""
    b = border
    s, t = sr[:, b: sr.shape[1] - b, b: sr.shape[2] - b], truth[:, b: truth.shape[1] - b, b: truth.shape[2] - b]
    if protocol == "bicubic-uint8":
        s = np.clip(np.round(s * 255.0), 0, 255) / 255.0
        ps = [metrics.psnr(s[i:i + 1], t[i:i + 1]) for i in range(s.shape[0])]
        return {"psnr": float(np.mean(ps)), "ssim": metrics.ssim(s, t)}
    return {"psnr": metrics.psnr(s, t), "ssim": metrics.ssim(s, t)}


def evaluate_images(methods: dict[str, Callable[[], Any]], images: list[TestImage], *, scale: int,
                    upsample: Callable[..., np.ndarray], border: int | None = None, protocol: str = "average",
                    log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Per method: the mean PSNR / SSIM over ``images`` (each image's score with a ``border`` cropped, default
    ``scale``), per group (class) means, and seconds. ``upsample(up, lowres)`` super-resolves one image through
    the production path (tiles, blending, projection)."""
    border = scale if border is None else border
    res: dict[str, dict[str, Any]] = {}
    for name, make in methods.items():
        import time

        up = make()
        per: list[dict[str, float]] = []
        t0 = time.perf_counter()
        for im in images:
            sr = upsample(up, im.lowres)
            per.append({**score(sr, im.truth, border, protocol), "group": im.group})
        secs = time.perf_counter() - t0
        groups = sorted({p["group"] for p in per})
        res[name] = {
            "psnr": float(np.mean([p["psnr"] for p in per])), "ssim": float(np.mean([p["ssim"] for p in per])),
            "images": len(per), "seconds": secs,
            "per_group": {g: {"psnr": float(np.mean([p["psnr"] for p in per if p["group"] == g])),
                              "ssim": float(np.mean([p["ssim"] for p in per if p["group"] == g]))} for g in groups},
            "per_image_psnr": [p["psnr"] for p in per],
        }
        log(f"{protocol} | {name}: PSNR {res[name]['psnr']:.3f} dB, SSIM {res[name]['ssim']:.4f} "
            f"({len(per)} images, {secs:.0f} s)")
    return res


def images_table(res: dict[str, dict[str, Any]], baseline: str = "lanczos+bp", also: str = "bicubic") -> str:
    """Markdown: one line per method — mean PSNR / SSIM and the differences against ``baseline`` and ``also``."""
    lines = [f"| method | PSNR (dB) | SSIM | Δ PSNR vs {baseline} | Δ SSIM vs {baseline} | Δ PSNR vs {also} |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    b, a = res.get(baseline), res.get(also)
    for name, r in res.items():
        dp = f"{r['psnr'] - b['psnr']:+.3f}" if b else ""
        ds = f"{r['ssim'] - b['ssim']:+.4f}" if b else ""
        da = f"{r['psnr'] - a['psnr']:+.3f}" if a else ""
        lines.append(f"| {name} | {r['psnr']:.3f} | {r['ssim']:.4f} | {dp} | {ds} | {da} |")
    return "\n".join(lines)


def upsample_image(up, lowres: np.ndarray, tile: int = 64, overlap: int = 16, seed: int = 0) -> np.ndarray:
    """One (C, h, w) image super-resolved on the global tile grid with blending and, for models that keep the
    measurement, the block re-projection — the engine's tile, blend and projection steps."""
    from .evaluate import upsample_image as production_path

    return production_path(up, lowres, scale=up.scale, tile=tile, overlap=overlap, seed=seed)
