"""LR/HR training pairs from high-res imagery: GeoTIFF lists, the registry corpus manifest and image folders.

Three kinds of source, any mix (:class:`DataSpec`):

* ``files``: GeoTIFFs; the east ``holdout`` fraction of each is kept out of training;
* ``manifest``: the registry corpus (``scripts/fetch_corpus.py``): its ``train`` scenes train (their east
  ``val_fraction`` validates), its ``holdout`` scenes are never read here;
* ``folders``: folders of images (PNG or GeoTIFF) under ``corpus_root`` — e.g. ``../shared/corpus`` with UC
  Merced (0.3 m RGB) and NAIP (5 m RGBN) — each with regular expressions that put a file in the *test*
  split (never read for training or validation), in the *validation* split (checkpoint choice) or, by
  default, in training; or an east ``val_fraction`` strip per image.

Every image keeps its own bands (3 for RGB, 4 for RGBN, ...): the band-shared model takes any count, and each
batch draws one band count (``band_counts``) from the images that have that many, with a random subset of
their bands. Patches are random ``patch``-sized crops with flips, 90-degree rotations and a random gain; the LR
tile is the HR crop degraded by the sensor operator plus optional Gaussian noise. The normalisation
statistics of each patch (per band mean and standard deviation, :func:`geosr.diffusion.mean.band_stats`)
come from the LR of a ``context``-sized window around it: what the model computes on a whole production tile.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import ConfigError, InputError, InputNotFoundError
from .consistency import OPERATORS, degrade, gaussian_blur
from .mean import STATS_EPS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Degradation(_Strict):
    """How a training LR tile is made from its HR crop."""

    operator: str = "average"  # average | gaussian (blur sigma 0.5*scale, centre decimation)
    blur_sigma: tuple[float, float] = (0.0, 0.0)  # extra HR Gaussian blur, sigma drawn uniformly (HR px)
    blur_prob: float = 1.0  # share of batches that get the extra blur (the rest: the operator alone)
    noise_std: tuple[float, float] = (0.0, 0.0)  # LR Gaussian noise std (reflectance), drawn uniformly
    noise_rel: tuple[float, float] = (0.0, 0.0)  # or: LR noise std relative to the patch's mean band std
    noise_prob: float = 1.0  # share of patches that get noise

    @field_validator("operator")
    @classmethod
    def _op(cls, v: str) -> str:
        if v not in OPERATORS:
            raise ValueError(f"degradation.operator={v!r}: choose one of {', '.join(OPERATORS)}")
        return v

    def blur(self, hr: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        lo, hi = self.blur_sigma
        if hi > 0 and rng.random() < self.blur_prob:
            sig = float(rng.uniform(lo, hi))
            if sig > 0.05:
                return gaussian_blur(hr, sig)
        return hr

    def noise_sigma(self, n: int, sigma: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(n,) absolute noise std per patch; ``sigma`` (n, C) the patches' band standard deviations."""
        a = rng.uniform(*self.noise_std, size=n) if self.noise_std[1] > 0 else np.zeros(n)
        if self.noise_rel[1] > 0:
            a = a + rng.uniform(*self.noise_rel, size=n) * sigma.mean(axis=1)
        a = a * (rng.random(n) < self.noise_prob)
        return a.astype(np.float32)

    def apply(self, hr: torch.Tensor, scale: int, rng: np.random.Generator) -> torch.Tensor:
        """HR (B, C, sH, sW) -> LR (B, C, H, W): blur, operator and *absolute* noise (``noise_std``)."""
        lr = degrade(self.blur(hr, rng), scale, self.operator)
        sd = self.noise_sigma(lr.shape[0], np.zeros((lr.shape[0], 1), np.float32), rng)
        if sd.any():
            g = torch.from_numpy(rng.standard_normal(lr.shape).astype(np.float32))
            lr = lr + torch.from_numpy(sd)[:, None, None, None] * g
        return lr


class FolderSource(_Strict):
    """A folder of high-res images (PNG, GeoTIFF) that all have the same bands."""

    path: str  # relative to DataSpec.corpus_root, or absolute
    glob: str = "*.tif"
    bands: tuple[str, ...]  # band names in file order, e.g. [red, green, blue]
    value_scale: float = 1.0 / 255.0  # stored value * value_scale -> ~[0, 1] reflectance
    nodata: float | None = None  # stored value that marks no data (besides the file's own nodata)
    test: str | None = None  # regex on the path relative to ``path``: never trains, never validates
    val: str | None = None  # regex: the validation split (checkpoint choice)
    val_fraction: float = 0.0  # else: the east fraction of every training image validates (0: none)
    weight: float = 1.0  # this folder's share of the draws (relative to the other sources)
    gsd_m: float | None = None  # for the record


class DataSpec(_Strict):
    files: tuple[str, ...] = ()
    manifest: str | None = None  # a corpus manifest.json (scripts/fetch_corpus.py)
    manifest_weight: float = 1.0  # the manifest scenes' share of the draws
    corpus_root: str = "../shared/corpus"  # folders' paths are relative to this
    folders: tuple[FolderSource, ...] = ()
    band_names: tuple[str, ...] = ("red", "green", "blue", "nir")  # band names for ``files`` (in order)
    band_counts: dict[int, float] = Field(default_factory=lambda: {3: 1.0})  # band count of a batch -> share
    min_side: int = 0  # skip manifest scenes smaller than this (HR px)
    size_power: float = 0.5  # within a source, images are drawn ~ pixels**size_power
    pyramid: tuple[int, ...] = (1,)  # also train on each image block-averaged by these factors
    bands: tuple[int, ...] | None = None  # 1-based band indices of ``files``; default all
    dn_scale: float = 1.0 / 255.0  # ``files``: stored value * dn_scale
    holdout: float = 0.25  # ``files``: east fraction kept out of training
    val_fraction: float = 0.15  # manifest: east fraction of each training scene validates
    patch: int = 128  # HR patch (multiple of scale)
    context: int = 512  # HR window whose LR gives the patch's normalisation statistics (a production tile)
    gain: tuple[float, float] = (0.5, 1.2)  # random reflectance gain
    degradation: Degradation = Field(default_factory=Degradation)

    @model_validator(mode="after")
    def _check(self) -> "DataSpec":
        if not 0.0 <= self.val_fraction < 0.5:
            raise ValueError(f"val_fraction={self.val_fraction}: choose 0 (none) up to 0.5 (exclusive)")
        if any(k < 1 for k in self.band_counts) or not any(v > 0 for v in self.band_counts.values()):
            raise ValueError(f"band_counts={self.band_counts}: band counts >= 1 with positive shares")
        return self


# -- reading ----------------------------------------------------------------------------------------------
def read_reflectance(path: str | Path, bands: tuple[int, ...] | None, dn_scale: float,
                     nodata: float | None = None) -> np.ndarray:
    """(C, H, W) float32 ``value * dn_scale``, NaN where the file (or ``nodata``) says no data. PNG and JPEG
    read through GDAL too (no georeferencing needed)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    p = Path(path)
    if not p.is_file():
        raise InputNotFoundError(f"training raster {p} does not exist")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(p) as ds:
            idx = list(bands) if bands else list(range(1, ds.count + 1))
            if max(idx) > ds.count:
                raise InputError(f"{p} has {ds.count} bands; asked for {idx}")
            raw = ds.read(idx)
            nd = ds.nodata if nodata is None else nodata
    a = raw.astype(np.float32)
    if nd is not None:
        a[(raw == nd).all(axis=0, keepdims=True).repeat(a.shape[0], 0)] = np.nan
    a *= np.float32(dn_scale)
    return a


def manifest_scenes(path: str | Path, part: str) -> list[dict]:
    """The scenes of a corpus manifest for ``part`` ("train" or "heldout"); each with an absolute ``path``."""
    p = Path(path).expanduser()
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


def scene_value_scale(scene: dict) -> float:
    return float(scene.get("value_scale") or scene.get("scale") or scene.get("dn_scale") or 1.0)


def read_scene(scene: dict, band_names: tuple[str, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A manifest scene as (C, H, W) float32 and the (C,) mask of bands it really has. With ``band_names``
    (a fixed-band model) the bands come in that order and a band the scene lacks is filled with the mean
    of those it has; without, the scene's own bands in its own order."""
    names = [str(b).lower() for b in scene["bands"]]
    img = read_reflectance(scene["path"], None, scene_value_scale(scene))
    if img.shape[0] != len(names):
        raise InputError(f"{scene['path']}: manifest lists {len(names)} bands, the file has {img.shape[0]}")
    if band_names is None:
        return img, np.ones(len(names), dtype=np.float32)
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


# -- the image pool --------------------------------------------------------------------------------------
PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Image:
    name: str
    source: str  # which source it came from (its draws share the source's weight)
    pixels: np.ndarray  # (C, H, W) float32, NaN = no data
    bands: tuple[str, ...]


def folder_files(src: FolderSource, root: str | Path, part: str) -> list[Path]:
    """The files of ``src`` in ``part``: ``test`` (regex ``src.test``), ``val`` (regex ``src.val``; with
    ``val_fraction`` instead, the training files, whose east strip validates) or ``train`` (the rest)."""
    base = Path(src.path).expanduser()
    base = base if base.is_absolute() else Path(root).expanduser() / base
    if not base.is_dir():
        raise InputNotFoundError(f"training folder {base} does not exist (data.corpus_root={root!s}, "
                                 f"path={src.path}); point data.corpus_root or --corpus-root at it")
    files = sorted(base.glob(src.glob))
    if not files:
        raise InputError(f"training folder {base} has no files matching {src.glob!r}")
    rel = [f.relative_to(base).as_posix() for f in files]
    is_test = [bool(src.test and re.search(src.test, r)) for r in rel]
    is_val = [bool(src.val and re.search(src.val, r)) and not t for r, t in zip(rel, is_test)]
    if part == "test":
        return [f for f, t in zip(files, is_test) if t]
    if part == "val" and src.val:
        return [f for f, v in zip(files, is_val) if v]
    return [f for f, t, v in zip(files, is_test, is_val) if not t and not v]


def load_images(spec: DataSpec, part: str) -> list[Image]:
    """Every image of ``part`` ("train", "val" or "test") from the spec's sources, at full resolution."""
    if part not in PARTS:
        raise ConfigError(f"part={part!r}: choose one of {', '.join(PARTS)}")
    out: list[Image] = []
    if part != "test":
        for f in spec.files:
            tr, ho = split(read_reflectance(f, spec.bands, spec.dn_scale), spec.holdout)
            names = tuple(spec.band_names[: tr.shape[0]]) if len(spec.band_names) >= tr.shape[0] else \
                tuple(f"B{i + 1}" for i in range(tr.shape[0]))
            out.append(Image(Path(f).name, "files", tr if part == "train" else ho, names))
        if spec.manifest:
            for sc in manifest_scenes(spec.manifest, "train"):
                img, _ = read_scene(sc)
                if min(img.shape[1:]) < spec.min_side:
                    continue
                if spec.val_fraction > 0:
                    img = split(img, spec.val_fraction)[part == "val"]
                elif part == "val":
                    continue
                out.append(Image(sc["name"], "manifest", img, tuple(str(b).lower() for b in sc["bands"])))
    for k, src in enumerate(spec.folders):
        use_strip = part != "test" and not src.val and src.val_fraction > 0
        for f in folder_files(src, spec.corpus_root, part):
            img = read_reflectance(f, None, src.value_scale, src.nodata)
            if img.shape[0] != len(src.bands):
                raise InputError(f"{f}: folder {src.path} lists {len(src.bands)} bands, the file has {img.shape[0]}")
            if use_strip:
                img = split(img, src.val_fraction)[part == "val"]
            elif part == "val" and not src.val:
                continue
            out.append(Image(f"{Path(src.path).name}/{f.name}", f"folder{k}", img, tuple(src.bands)))
    return out


def with_pyramid(images: list[Image], factors: tuple[int, ...], min_side: int) -> list[Image]:
    """``images`` plus each one block-averaged by ``factors`` (> 1): the same ground at coarser sampling
    distances, kept where at least ``min_side`` px remain and the image has no gaps."""
    from ..metrics import degrade as degrade_np

    out = list(images)
    for im in images:
        for k in factors:
            if k <= 1:
                continue
            h, w = (im.pixels.shape[1] // k) * k, (im.pixels.shape[2] // k) * k
            if min(h, w) // k < min_side or not np.isfinite(im.pixels).all():
                continue
            out.append(Image(f"{im.name}/{k}", im.source, degrade_np(im.pixels[:, :h, :w], k).astype(np.float32),
                             im.bands))
    return out


@dataclass
class Batch:
    lr: torch.Tensor  # (n, C, p/s, p/s) reflectance
    hr: torch.Tensor  # (n, C, p, p)
    mu: torch.Tensor  # (n, C) normalisation offset (the LR context's band means)
    sigma: torch.Tensor  # (n, C) normalisation scale (the LR context's band std, noise included)
    noise: torch.Tensor  # (n, C) the LR noise std in units of ``sigma``

    def to(self, dev) -> "Batch":
        return Batch(*(t.to(dev) for t in (self.lr, self.hr, self.mu, self.sigma, self.noise)))


class PatchSampler:
    """Random :class:`Batch` es from one part ("train" or "val") of the data."""

    def __init__(self, spec: DataSpec, scale: int, part: str = "train") -> None:
        if spec.patch % scale or spec.context % scale:
            raise ConfigError(f"patch={spec.patch} and context={spec.context} must be multiples of scale={scale}")
        if spec.context < spec.patch:
            raise ConfigError(f"context={spec.context} must be at least patch={spec.patch}")
        self.spec, self.scale, self.part = spec, scale, part
        images = [im for im in load_images(spec, part) if min(im.pixels.shape[1:]) >= spec.patch]
        if part == "train":
            images = with_pyramid(images, spec.pyramid, spec.patch)
        if not images:
            raise InputError(f"no {part} image of {list(spec.files) or spec.manifest or spec.corpus_root} is at "
                             f"least {spec.patch} px on each side")
        self.images = images
        self.names = [im.name for im in images]
        self.pixels = int(sum(im.pixels.shape[1] * im.pixels.shape[2] for im in images))
        self.max_bands = max(im.pixels.shape[0] for im in images)
        share = {"files": 1.0, "manifest": spec.manifest_weight}
        share.update({f"folder{k}": f.weight for k, f in enumerate(spec.folders)})
        self._share = share

    def band_count(self, rng: np.random.Generator) -> int:
        """A band count for the next batch, drawn from ``band_counts`` (counts no image has are left out)."""
        ks = [k for k in self.spec.band_counts if any(im.pixels.shape[0] >= k for im in self.images)]
        if not ks:
            raise InputError(f"no {self.part} image has {sorted(self.spec.band_counts)} bands")
        p = np.array([self.spec.band_counts[k] for k in ks], dtype=np.float64)
        return int(rng.choice(ks, p=p / p.sum()))

    def weights(self, bands: int, exact: bool = False, source: str | None = None) -> np.ndarray:
        """Draw probabilities over the images that have at least (``exact``: exactly) ``bands`` bands (of
        ``source`` only, if given): each source gets its share, split within it ~ pixels**size_power."""
        nb = np.array([im.pixels.shape[0] for im in self.images])
        ok = nb == bands if exact else nb >= bands
        if source is not None:
            ok &= np.array([im.source == source for im in self.images])
        size = np.array([im.pixels.shape[1] * im.pixels.shape[2] for im in self.images], np.float64)
        w = np.where(ok, size ** self.spec.size_power, 0.0)
        src = np.array([im.source for im in self.images])
        for s in set(src[ok]):
            m = (src == s) & ok
            w[m] = w[m] / w[m].sum() * self._share.get(s, 1.0)
        if w.sum() <= 0:
            raise InputError(f"no {self.part} image has {bands} bands")
        return w / w.sum()

    def _crop(self, img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
        """(context LR stats source (C, ch, cw), patch (C, p, p)) from a random place, or None over a gap."""
        p, c = self.spec.patch, self.spec.context
        _, H, W = img.shape
        ch, cw = min(c, H - H % self.scale), min(c, W - W % self.scale)
        y0 = int(rng.integers(0, H - ch + 1))
        x0 = int(rng.integers(0, W - cw + 1))
        ctx = img[:, y0 : y0 + ch, x0 : x0 + cw]
        py = int(rng.integers(0, (ch - p) // self.scale + 1)) * self.scale
        px = int(rng.integers(0, (cw - p) // self.scale + 1)) * self.scale
        patch = ctx[:, py : py + p, px : px + p]
        if not np.isfinite(patch).all():
            return None
        return ctx, patch

    def batch(self, n: int, rng: np.random.Generator, bands: int | None = None, exact: bool = False,
              source: str | None = None, clean: bool = False) -> Batch:
        """``n`` patches with one band count (``bands``, or drawn from ``band_counts``); images with more bands
        give a random subset of theirs unless ``exact``; from ``source`` only if given; ``clean``: no blur, no
        noise (the operator alone)."""
        from ..metrics import degrade as degrade_np

        k = self.band_count(rng) if bands is None else bands
        w = self.weights(k, exact, source)
        s = self.scale
        hrs, mus, sds = [], [], []
        while len(hrs) < n:
            im = self.images[int(rng.choice(len(self.images), p=w))]
            got = self._crop(im.pixels, rng)
            if got is None:
                continue
            ctx, patch = got
            sel = np.sort(rng.choice(ctx.shape[0], size=k, replace=False)) if k < ctx.shape[0] else np.arange(k)
            gain = np.float32(rng.uniform(*self.spec.gain))
            lrc = degrade_np(np.nan_to_num(ctx[sel], nan=np.nanmean(ctx[sel])), s)
            mus.append(lrc.mean(axis=(1, 2)) * gain)
            sds.append(lrc.std(axis=(1, 2)) * gain)
            t = int(rng.integers(0, 4))
            crop = np.rot90(patch[sel], t, axes=(1, 2))
            if rng.integers(0, 2):
                crop = crop[:, :, ::-1]
            hrs.append(np.ascontiguousarray(crop) * gain)
        hr = torch.from_numpy(np.stack(hrs).astype(np.float32))
        deg = Degradation(operator=self.spec.degradation.operator) if clean else self.spec.degradation
        lr = degrade(deg.blur(hr, rng), s, deg.operator)
        sd = np.stack(sds).astype(np.float32)
        nz = deg.noise_sigma(n, sd, rng)
        if nz.any():
            lr = lr + torch.from_numpy(nz)[:, None, None, None] * torch.from_numpy(
                rng.standard_normal(lr.shape).astype(np.float32))
        sigma = np.sqrt(sd ** 2 + nz[:, None] ** 2 + STATS_EPS ** 2).astype(np.float32)
        return Batch(lr, hr, torch.from_numpy(np.stack(mus).astype(np.float32)), torch.from_numpy(sigma),
                     torch.from_numpy((nz[:, None] / sigma).astype(np.float32)))

    def fixed(self, n: int, seed: int, bands: int | None = None) -> dict[str, list[Batch]]:
        """A fixed set of about ``n`` patches per source (each image with all its bands, batched by band count;
        only images with exactly ``bands`` bands if given), for validation: source -> batches."""
        rng = np.random.default_rng(seed)
        out: dict[str, list[Batch]] = {}
        for src in sorted({im.source for im in self.images}):
            counts = sorted({im.pixels.shape[0] for im in self.images if im.source == src
                             and (bands is None or im.pixels.shape[0] == bands)})
            if not counts:
                continue
            per = max(1, n // len(counts))
            out[src] = [self.batch(per, rng, bands=c, exact=True, source=src, clean=True) for c in counts]
        return out
