"""LR/HR training pairs from high-res GeoTIFFs.

Each source raster is read whole (training rasters are small) as float32 reflectance
``DN * dn_scale``, split into a training part and a geographically separate held-out part (the last
``holdout`` fraction of columns, east side), and sampled as random ``patch``-sized HR crops with flips,
90-degree rotations and a random gain. The LR tile is the HR crop degraded by the configured
operator (optionally blurred first) plus Gaussian read noise — the same operators as
:mod:`geosr.diffusion.consistency` and :func:`geosr.metrics.degrade`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, InputError, InputNotFoundError
from .consistency import OPERATORS, degrade, gaussian_blur


@dataclass(frozen=True)
class Degradation:
    operator: str = "average"  # average | gaussian (blur sigma 0.5*scale, centre decimation)
    blur_sigma: tuple[float, float] = (0.0, 0.0)  # extra HR Gaussian blur, sigma drawn uniformly (HR px)
    noise_std: tuple[float, float] = (0.0, 0.002)  # LR Gaussian noise std, drawn uniformly (reflectance)
    blur_prob: float = 1.0  # share of batches that get the extra blur (the rest: the operator alone)

    def __post_init__(self) -> None:
        if self.operator not in OPERATORS:
            raise ConfigError(f"degradation.operator={self.operator!r}: choose one of {', '.join(OPERATORS)}")

    def apply(self, hr: torch.Tensor, scale: int, rng: np.random.Generator) -> torch.Tensor:
        x = hr
        lo, hi = self.blur_sigma
        if hi > 0 and rng.random() < self.blur_prob:
            sig = float(rng.uniform(lo, hi))
            if sig > 0.05:
                x = gaussian_blur(x, sig)
        lr = degrade(x, scale, self.operator)
        nlo, nhi = self.noise_std
        if nhi > 0:
            std = torch.from_numpy(rng.uniform(nlo, nhi, size=(lr.shape[0], 1, 1, 1)).astype(np.float32))
            g = torch.from_numpy(rng.standard_normal(lr.shape).astype(np.float32))
            lr = lr + std * g
        return lr


@dataclass(frozen=True)
class DataSpec:
    files: tuple[str, ...] = ()
    manifest: str | None = None  # a corpus manifest.json (scripts/fetch_corpus.py): its "train"/"holdout" scenes
    band_names: tuple[str, ...] = ("red", "green", "blue", "nir")  # model band order (manifest scenes)
    min_side: int = 0  # skip manifest scenes smaller than this (HR px)
    size_power: float = 1.0  # scenes are drawn with probability ~ pixels**size_power (0.5: small scenes count more)
    pyramid: tuple[int, ...] = (1,)  # also train on each scene block-averaged by these factors (coarser GSDs)
    bands: tuple[int, ...] | None = None  # 1-based; default all
    dn_scale: float = 1.0 / 255.0
    holdout: float = 0.25  # east fraction of every raster kept out of training
    val_fraction: float = 0.0  # manifest: east fraction of each *training* scene kept for validation (0 = none:
    # validate on the held-out scenes). With it, the held-out scenes stay untouched until the final evaluation.
    patch: int = 128  # HR patch (multiple of scale)
    gain: tuple[float, float] = (0.5, 1.2)  # random reflectance gain (robustness to brightness)
    degradation: Degradation = field(default_factory=Degradation)


def read_reflectance(path: str, bands: tuple[int, ...] | None, dn_scale: float) -> np.ndarray:
    import rasterio

    p = Path(path)
    if not p.is_file():
        raise InputNotFoundError(f"training raster {p} does not exist")
    with rasterio.open(p) as ds:
        idx = list(bands) if bands else list(range(1, ds.count + 1))
        if max(idx) > ds.count:
            raise InputError(f"{p} has {ds.count} bands; asked for {idx}")
        a = ds.read(idx).astype(np.float32)
        if ds.nodata is not None:
            a[a == ds.nodata] = np.nan
    a *= np.float32(dn_scale)
    return a


def manifest_scenes(path: str | Path, part: str) -> list[dict]:
    """The scenes of a corpus manifest for ``part`` ("train" or "heldout"); each with an absolute ``path``."""
    import json

    p = Path(path)
    if not p.is_file():
        raise InputNotFoundError(f"corpus manifest {p} does not exist; build it with scripts/fetch_corpus.py")
    data = json.loads(p.read_text())
    scenes = data["scenes"] if isinstance(data, dict) else data
    want = "train" if part == "train" else "holdout"
    out = []
    for sc in scenes:
        if sc.get("split") != want:
            continue
        f = Path(sc.get("path") or sc.get("file") or f"scenes/{sc['name']}.tif")
        out.append({**sc, "path": str(f if f.is_absolute() else p.parent / f)})
    return out


def read_scene(scene: dict, band_names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A manifest scene as (C, H, W) float32 in the model's band order, and the (C,) mask of bands it really
    has; a band it lacks (e.g. nir of an RGB orthophoto) is filled with the mean of the bands it has."""
    names = [str(b).lower() for b in scene["bands"]]
    img = read_reflectance(scene["path"], None, float(scene.get("value_scale") or scene.get("scale") or scene.get("dn_scale") or 1.0))
    if img.shape[0] != len(names):
        raise InputError(f"{scene['path']}: manifest lists {len(names)} bands, the file has {img.shape[0]}")
    have = np.array([b in names for b in band_names], dtype=np.float32)
    if not have.any():
        raise InputError(f"{scene['path']}: none of the bands {list(band_names)} (it has {names})")
    present = [img[names.index(b)] for b in band_names if b in names]
    fill = np.mean(present, axis=0)
    out = np.stack([img[names.index(b)] if b in names else fill for b in band_names]).astype(np.float32)
    return out, have


def split(img: np.ndarray, holdout: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, heldout) by columns: the held-out part is the east ``holdout`` fraction."""
    w = img.shape[-1]
    cut = int(round(w * (1.0 - holdout)))
    return img[..., :cut], img[..., cut:]


PARTS = ("train", "val", "heldout")


class PairSampler:
    """Random (lr, hr) batches from one part of the rasters: ``train``; ``val`` (with ``val_fraction``, the east
    part of each manifest training scene, else the same as ``heldout``); ``heldout`` (the manifest's held-out
    scenes and the east ``holdout`` part of ``files``)."""

    def __init__(self, spec: DataSpec, scale: int, part: str = "train") -> None:
        if spec.patch % scale:
            raise ConfigError(f"patch={spec.patch} must be a multiple of scale={scale}")
        if part not in PARTS:
            raise ConfigError(f"part={part!r}: choose one of {', '.join(PARTS)}")
        if not 0.0 <= spec.val_fraction < 0.5:
            raise ConfigError(f"val_fraction={spec.val_fraction}: choose 0 (none) up to 0.5 (exclusive)")
        carve = spec.val_fraction > 0 and bool(spec.manifest)
        if part == "val" and not carve:
            part = "heldout"
        self.spec, self.scale = spec, scale
        self.images, self.masks, self.names = [], [], []
        for f in spec.files:
            tr, ho = split(read_reflectance(f, spec.bands, spec.dn_scale), spec.holdout)
            img = tr if part == "train" else ho
            if min(img.shape[1:]) >= spec.patch:
                self.images.append(img)
                self.masks.append(np.ones(img.shape[0], dtype=np.float32))
                self.names.append(Path(f).name)
        if spec.manifest:
            for sc in manifest_scenes(spec.manifest, "train" if part == "val" else part):
                img, have = read_scene(sc, spec.band_names)
                if carve and part != "heldout":
                    img = split(img, spec.val_fraction)[part == "val"]
                if min(img.shape[1:]) >= max(spec.patch, spec.min_side):
                    self.images.append(img)
                    self.masks.append(have)
                    self.names.append(sc["name"])
        if part == "train":
            self._add_pyramid()
        if not self.images:
            raise InputError(f"no {part} region of {list(spec.files) or spec.manifest} is at least "
                             f"{spec.patch} px on each side")
        if len({i.shape[0] for i in self.images}) > 1:
            raise InputError(f"training rasters have different band counts: {[i.shape[0] for i in self.images]}")
        sizes = np.array([i.shape[1] * i.shape[2] for i in self.images], dtype=np.float64)
        draw = sizes ** float(spec.size_power)
        self.weights = draw / draw.sum()
        self.pixels = int(sizes.sum())
        self.bands = self.images[0].shape[0]

    def _add_pyramid(self) -> None:
        """Each training scene block-averaged by the ``pyramid`` factors, as extra scenes: the same ground at
        coarser sampling distances (a 0.1 m orthophoto also teaches what 0.4 m or 0.8 m imagery looks like)."""
        from ..metrics import degrade

        extra = []
        for img, mask, name in zip(self.images, self.masks, self.names):
            for k in self.spec.pyramid:
                if k <= 1:
                    continue
                h, w = (img.shape[1] // k) * k, (img.shape[2] // k) * k
                if min(h, w) // k < self.spec.patch or not np.isfinite(img).all():
                    continue
                extra.append((degrade(img[:, :h, :w], k).astype(np.float32), mask, f"{name}/{k}"))
        for img, mask, name in extra:
            self.images.append(img)
            self.masks.append(mask)
            self.names.append(name)

    def batch(self, n: int, rng: np.random.Generator, with_mask: bool = False):
        """(lr, hr) — or (lr, hr, band mask (n, C)) with ``with_mask`` — for ``n`` random patches."""
        p = self.spec.patch
        out = np.empty((n, self.bands, p, p), dtype=np.float32)
        mask = np.empty((n, self.bands), dtype=np.float32)
        k = 0
        while k < n:
            i = rng.choice(len(self.images), p=self.weights)
            img = self.images[i]
            y = int(rng.integers(0, img.shape[1] - p + 1))
            x = int(rng.integers(0, img.shape[2] - p + 1))
            crop = img[:, y : y + p, x : x + p]
            if not np.isfinite(crop).all():
                continue
            crop = np.rot90(crop, int(rng.integers(0, 4)), axes=(1, 2))
            if rng.integers(0, 2):
                crop = crop[:, :, ::-1]
            out[k] = crop * np.float32(rng.uniform(*self.spec.gain))
            mask[k] = self.masks[i]
            k += 1
        hr = torch.from_numpy(out)
        lr = self.spec.degradation.apply(hr, self.scale, rng)
        return (lr, hr, torch.from_numpy(mask)) if with_mask else (lr, hr)
