"""The noise level of a low-res image, from the image alone.

:func:`noise_sigma` is Immerkær's estimator (Fast Noise Variance Estimation, CVIU 1996) made robust: the
image is filtered with the 3x3 mask ``[[1,-2,1],[-2,4,-2],[1,-2,1]]`` (the difference of two Laplacians, blind
to planes and to most smooth structure, L2 norm 6), and the noise std is the *median* absolute response over
the 0.6745 of a unit Gaussian's median, divided by 6 — the median rather than Immerkær's mean, so that edges
and texture (the response's heavy tail) bias it little. Per band, in the image's own units.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MASK = ((1.0, -2.0, 1.0), (-2.0, 4.0, -2.0), (1.0, -2.0, 1.0))
MAD_TO_SIGMA = 1.0 / 0.6744897501960817


def noise_sigma(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C) estimated std of white Gaussian noise in each band (H, W >= 3)."""
    b, c, h, w = x.shape
    k = torch.tensor(MASK, dtype=x.dtype, device=x.device).view(1, 1, 3, 3)
    r = F.conv2d(x.reshape(b * c, 1, h, w), k).abs().reshape(b, c, -1)
    return r.median(dim=-1).values * (MAD_TO_SIGMA / 6.0)
