"""The mean predictor: a regression network that estimates E[high-res | low-res] before diffusion.

Diffusion SR spends most of its capacity re-learning the conditional mean; a small residual CNN at
*low-res* resolution does that far cheaper (every conv runs on h x w, the upsampling is one pixel shuffle
at the end). It predicts the high-res residual over the consistent bicubic base; the latent diffusion
model then only has to model what is left (texture the mean cannot know). Architecture: EDSR-style
residual blocks without normalisation (Lim et al. 2017), reflect padding so tile borders see plausible
context, and a zero-initialised tail so an untrained predictor returns the base unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ModelError


class ResBlock(nn.Module):
    def __init__(self, ch: int, res_scale: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1, padding_mode="reflect")
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1, padding_mode="reflect")
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.conv2(F.silu(self.conv1(x)))


class MeanPredictor(nn.Module):
    """(B, C, h, w) normalised low-res -> (B, C, s*h, s*w) residual (in units of ``residual_scale``)."""

    def __init__(self, bands: int, scale: int, features: int, blocks: int, res_scale: float = 0.2) -> None:
        super().__init__()
        if features < 1 or blocks < 0:
            raise ModelError(f"mean predictor: features={features}, blocks={blocks} must be >= 1 and >= 0")
        self.scale = scale
        self.head = nn.Conv2d(bands, features, 3, padding=1, padding_mode="reflect")
        self.body = nn.Sequential(*[ResBlock(features, res_scale) for _ in range(blocks)])
        self.fuse = nn.Conv2d(features, features, 3, padding=1, padding_mode="reflect")
        self.tail = nn.Conv2d(features, bands * scale * scale, 3, padding=1, padding_mode="reflect")
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        h = h + self.fuse(self.body(h))
        return F.pixel_shuffle(self.tail(F.silu(h)), self.scale)


GUIDE_CHANNELS = 4  # mean, standard deviation, maximum and minimum over bands
STATS_EPS = 1e-3  # floor of a band's standard deviation in the per-tile normalisation (reflectance)


def band_stats(lowres: torch.Tensor, eps: float = STATS_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tile and band: mean and standard deviation over the pixels, (B, C, 1, 1) each; the deviation is
    ``sqrt(var + eps**2)``, so a flat band is not blown up. A band-shared model sees ``(x - mean) / std``
    and its output is mapped back, so the whole model is equivariant to any positive gain and offset per
    band: 8-bit aerial RGB and 16-bit reflectance look alike to it."""
    x = lowres.double()
    mu = x.mean(dim=(-2, -1), keepdim=True)
    var = (x - mu).pow(2).mean(dim=(-2, -1), keepdim=True)
    return mu.to(lowres.dtype), (var + eps * eps).sqrt().to(lowres.dtype)



def band_guide(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, 4, h, w): statistics over the band axis (mean, std, max, min). Symmetric in the
    bands, so a network that sees each band beside this guide is equivariant to any band order and takes any
    band count (one band: the band itself, 0, itself, itself)."""
    mean = x.mean(dim=1, keepdim=True)
    std = (x - mean).pow(2).mean(dim=1, keepdim=True).clamp_min(0).sqrt()
    return torch.cat([mean, std, x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True)], dim=1)


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, padding_mode="reflect")


class BandSharedMeanPredictor(nn.Module):
    """Any band count, one set of weights: (B, C, h, w) normalised low-res -> (B, C, s*h, s*w) residual.

    A *guide trunk* runs once per tile on the band statistics (:func:`band_guide`) and holds most of the
    capacity (``features`` x ``blocks``); a light *band branch* (``band_features`` x ``band_blocks``), shared by
    every band, sees its own band, the guide and the trunk's features, and predicts that band's x``scale``
    residual through a pixel shuffle. Cost per low-res pixel: trunk + C x branch. Each band also gets the
    input noise level (in units of the band's own standard deviation) as a constant channel, so a noisy input
    is told apart from texture. The tail starts at zero: an untrained predictor returns the base unchanged."""

    def __init__(self, scale: int, features: int = 48, blocks: int = 8, band_features: int = 32,
                 band_blocks: int = 2, res_scale: float = 0.2) -> None:
        super().__init__()
        if min(features, band_features) < 1 or min(blocks, band_blocks) < 0:
            raise ModelError(f"band-shared mean predictor: features={features}, band_features={band_features} "
                             f"must be >= 1; blocks={blocks}, band_blocks={band_blocks} >= 0")
        self.scale = scale
        self.head = _conv(GUIDE_CHANNELS, features)
        self.body = nn.Sequential(*[ResBlock(features, res_scale) for _ in range(blocks)])
        self.fuse = _conv(features, features)
        self.to_band = nn.Conv2d(features, band_features, 1)
        self.band_head = _conv(2 + GUIDE_CHANNELS, band_features)
        self.band_body = nn.Sequential(*[ResBlock(band_features, res_scale) for _ in range(band_blocks)])
        self.tail = _conv(band_features, scale * scale)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, C, h, w) normalised bands; ``noise`` (B, C) input noise std in the same units (or None: 0)."""
        b, c, h, w = x.shape
        g = band_guide(x)
        t = self.head(g)
        t = self.to_band(F.silu(t + self.fuse(self.body(t))))  # (B, Fb, h, w), shared by the bands
        xb = x.reshape(b * c, 1, h, w)
        nz = torch.zeros_like(xb) if noise is None else noise.reshape(b * c, 1, 1, 1).to(x.dtype).expand_as(xb)
        u = self.band_head(torch.cat([xb, nz, g.repeat_interleave(c, dim=0)], dim=1)) + t.repeat_interleave(c, dim=0)
        u = self.band_body(u)
        return F.pixel_shuffle(self.tail(F.silu(u)), self.scale).reshape(b, c, h * self.scale, w * self.scale)


ENSEMBLES = (1, 2, 4, 8)


def dihedral(x: torch.Tensor, k: int, inverse: bool = False) -> torch.Tensor:
    """The ``k``-th of the 8 symmetries of the square (k % 4 quarter turns, then a left-right flip for
    k >= 4) applied to the last two axes of ``x``; ``inverse`` undoes it."""
    turns, flip = k % 4, k >= 4
    if not inverse:
        x = torch.rot90(x, turns, dims=(-2, -1))
        return torch.flip(x, dims=(-1,)) if flip else x
    if flip:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, -turns, dims=(-2, -1))


def self_ensemble(net, x: torch.Tensor, n: int) -> torch.Tensor:
    """The mean of ``net`` over ``n`` of the square's symmetries (1, 2, 4 or 8; Lim et al. 2017's
    "geometric self-ensemble"): each symmetry is applied to the input and undone on the output. The
    transforms come in a fixed order and are summed in it, so the result is deterministic."""
    if n not in ENSEMBLES:
        raise ModelError(f"ensemble={n}: choose one of {', '.join(map(str, ENSEMBLES))}")
    ks = {1: (0,), 2: (0, 4), 4: (0, 1, 2, 3), 8: tuple(range(8))}[n]
    out = None
    for k in ks:
        y = dihedral(net(dihedral(x, k)), k, inverse=True)
        out = y if out is None else out + y
    return out / len(ks) if len(ks) > 1 else out


def macs_per_lowres_pixel(bands: int, scale: int, features: int, blocks: int, band_features: int = 0,
                          band_blocks: int = 0) -> int:
    """Multiply-accumulates per low-res pixel (for speed estimates in benchmarks and the model card); with
    ``band_features`` the band-shared design (trunk once, the band branch ``bands`` times)."""
    k = 9
    if not band_features:
        return k * (bands * features + (2 * blocks + 1) * features * features + features * bands * scale * scale)
    trunk = k * (GUIDE_CHANNELS * features + (2 * blocks + 1) * features * features) + features * band_features
    branch = k * ((2 + GUIDE_CHANNELS) * band_features + 2 * band_blocks * band_features ** 2
                  + band_features * scale * scale)
    return trunk + bands * branch
