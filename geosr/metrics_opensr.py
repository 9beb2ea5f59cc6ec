"""opensr-test's metrics (Aybar et al., "A comprehensive benchmark for optical remote sensing image
super-resolution", IEEE GRSL 2024; ``opensr-test`` on PyPI) for one (LR, SR, HR) triplet, as plain floats.

None of these needs a pretrained network (the LPIPS/CLIP distances, which do, are not used), so the install is
light: the ``opensr`` extra plus ``pip install --no-deps opensr-test==1.3.3 satalign==0.1.12`` (their declared
requirements would pull those networks in; see pyproject.toml and docs/model.md).

:func:`opensr_scores` runs ``opensr_test.Metrics`` with its defaults (pixel aggregation, a 16 px HR border
ignored, SR harmonised to HR by histogram matching and phase-correlation alignment before the synthesis and
correctness scores, the 'nd' normalised difference as the correctness distance, softmin at temperature 0.25) and
returns:

=====================  ==============================================================================================
``opensr_reflectance``  consistency: mean L1 between LR and the SR brought back to LR resolution (lower is better)
``opensr_spectral``     consistency: mean spectral angle (degrees) between the same two
``opensr_spatial``      consistency: LR-to-SR misregistration in LR pixels (phase correlation; NaN if unreliable)
``opensr_synthesis``    mean L1 between the harmonised SR and the LR upsampled to HR: the high frequencies the model
                        added (0 = it added none)
``opensr_improvement``  correctness ('nd'): share of pixels (softmin-weighted) where the SR moved towards the HR
``opensr_omission``     share where it kept the LR's blur, adding nothing the HR has
``opensr_hallucination`` share where it added detail the HR does not have
=====================  ==============================================================================================

The three correctness scores sum to 1 over the pixels that have detail to recover. A diffusion stage that
earns its place raises improvement without raising hallucination.
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError

INSTALL = ('pip install "geosr[opensr]" && pip install --no-deps opensr-test==1.3.3 satalign==0.1.12 '
           "(bash scripts/setup.sh does both)")
KEYS = {"reflectance": "opensr_reflectance", "spectral": "opensr_spectral", "spatial": "opensr_spatial",
        "synthesis": "opensr_synthesis", "im_metric": "opensr_improvement", "om_metric": "opensr_omission",
        "ha_metric": "opensr_hallucination"}


def _chw(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 3:
        raise ValueError(f"{name} must be (C, H, W); got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} has NaN or infinite values; compare valid pixels only (crop or fill them)")
    return np.ascontiguousarray(a, dtype=np.float32)


def opensr_scores(lr: np.ndarray, sr: np.ndarray, hr: np.ndarray, *, border: int = 16) -> dict[str, float]:
    """opensr-test's consistency, synthesis and correctness scores for reflectance arrays ``lr`` (C, h, w), ``sr``
    and ``hr`` (C, s*h, s*w) with the same bands (the first three taken as RGB where it needs RGB); ``border`` HR
    pixels at each edge are ignored. Returns the dict described in the module docstring (floats)."""
    lr, sr, hr = _chw("lr", lr), _chw("sr", sr), _chw("hr", hr)
    if sr.shape != hr.shape or sr.shape[0] != lr.shape[0]:
        raise ValueError(f"sr {sr.shape} and hr {hr.shape} must have one shape, with lr's {lr.shape[0]} bands")
    scale = sr.shape[-1] / lr.shape[-1]
    if not scale.is_integer() or sr.shape[-2] != lr.shape[-2] * scale:
        raise ValueError(f"sr {sr.shape[1:]} must be an integer multiple of lr {lr.shape[1:]}")
    if min(sr.shape[1:]) <= 2 * border + 8:
        raise ValueError(f"the images ({sr.shape[1:]} px) are too small for a {border} px border; give larger ones")
    try:
        import opensr_test
        import torch
    except ImportError as e:
        raise ConfigError(f"opensr-test's metrics need {e.name}: {INSTALL}") from None
    metrics = opensr_test.Metrics(device="cpu", border_mask=border, correctness_distance="nd",
                                  rgb_bands=[0, 1, 2] if lr.shape[0] >= 3 else None)
    with torch.no_grad():
        res = metrics.compute(lr=torch.from_numpy(lr), sr=torch.from_numpy(sr), hr=torch.from_numpy(hr))
    return {KEYS[k]: float(v) for k, v in res.items() if k in KEYS}
