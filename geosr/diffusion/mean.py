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


def macs_per_lowres_pixel(bands: int, scale: int, features: int, blocks: int) -> int:
    """Multiply-accumulates per low-res pixel (for speed estimates in benchmarks and the model card)."""
    k = 9
    return k * (bands * features + (2 * blocks + 1) * features * features + features * bands * scale * scale)
