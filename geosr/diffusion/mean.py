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


def macs_per_lowres_pixel(bands: int, scale: int, features: int, blocks: int) -> int:
    """Multiply-accumulates per low-res pixel (for speed estimates in benchmarks and the model card)."""
    k = 9
    return k * (bands * features + (2 * blocks + 1) * features * features + features * bands * scale * scale)
