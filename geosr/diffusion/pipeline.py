"""Tiles in, super-resolved tiles out: the sampling pipeline around :class:`LatentSR`.

For a batch of low-res tiles ``(B, C, h, w)`` with global origins:

1. ``base`` = bicubic upsample back-projected onto the input (cheap, consistent), plus the mean predictor's
   residual when the model has one (:meth:`LatentSR.base`);
2. ``cond`` = the normalised low-res tile at latent resolution;
3. ``x_T`` = position-keyed noise (:mod:`geosr.diffusion.noise`), so overlapping tiles share it;
4. a sampler (:mod:`geosr.diffusion.samplers`) integrates the v-prediction denoiser from ``x_T`` to ``z_0``
   — optionally fusing overlapping tiles' predictions in latent space at every step (MultiDiffusion);
5. the autoencoder decodes ``z_0`` to the high-res residual; ``base + residual`` is projected so that it
   reproduces the input under the sensor operator (:mod:`geosr.diffusion.consistency`).

Each tile's result depends only on (tile, seed, global position, parameters) unless ``fuse`` is on (then
also on the other tiles of its batch that overlap it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .consistency import OPERATORS, area_resample, project
from .mean import ENSEMBLES
from .model import LatentSR
from .noise import keyed_noise, sample_seed, tile_coords
from .samplers import MAX_STEPS, get_sampler


@dataclass(frozen=True)
class SamplingOptions:
    steps: int = 2
    sampler: str = "dpmpp"
    eta: float = 0.0  # 0: deterministic ODE sampler; > 0: stochastic (DDIM eta / SDE-DPM++)
    keyed_noise: bool = True  # False: independent noise per tile (LDSR-S2 behaviour, for comparison)
    fuse: bool = False  # MultiDiffusion-style latent fusion of overlapping tiles of one batch
    operator: str = "average"  # sensor operator of the consistency projection
    projection: bool = True
    projection_iterations: int = 3
    diffusion: bool = True  # False: the mean predictor's estimate alone (an ablation; no denoiser, no noise)
    dtype: str = "auto"  # auto (bf16 autocast on CUDA, float32 on CPU), float32, bfloat16, float16
    ensemble: int = 1  # mean predictor averaged over 1, 2, 4 or 8 flips/rotations (geometric self-ensemble)
    project_x0: bool = False  # keep the measurement inside sampling: project every step's predicted clean
    #                           latent onto the LR input (shuffle latents), not only the final image
    noise_sigma: float | str = 0.0  # the input's noise std (reflectance) told to band-shared models (0: clean;
    #                                 "auto": estimated per tile and band, geosr.diffusion.noise_estimate)

    def __post_init__(self) -> None:
        get_sampler(self.sampler)
        if not 1 <= int(self.steps) <= MAX_STEPS:
            raise ConfigError(f"steps={self.steps}: choose 1..{MAX_STEPS}")
        if not 0.0 <= float(self.eta) <= 1.0:
            raise ConfigError(f"eta={self.eta}: choose 0..1")
        if self.operator not in OPERATORS:
            raise ConfigError(f"operator={self.operator!r}: choose one of {', '.join(OPERATORS)}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype={self.dtype!r}: choose auto, float32, bfloat16 or float16")
        if self.projection_iterations < 0:
            raise ConfigError("projection_iterations must be >= 0")
        if self.ensemble not in ENSEMBLES:
            raise ConfigError(f"ensemble={self.ensemble}: choose one of {', '.join(map(str, ENSEMBLES))}")
        if self.noise_sigma != "auto" and not (isinstance(self.noise_sigma, (int, float))
                                                and 0.0 <= float(self.noise_sigma) < 1.0):
            raise ConfigError(f"noise_sigma={self.noise_sigma!r}: the input noise std in reflectance (0 <= sigma < 1) "
                              "or auto")

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        if device.type != "cuda" or self.dtype == "float32":
            return None
        return torch.float16 if self.dtype == "float16" else torch.bfloat16


def fused(model, rows: torch.Tensor, cols: torch.Tensor):
    """Wrap ``model`` so that overlapping tiles' outputs are averaged over their shared global latent
    pixels (MultiDiffusion, Bar-Tal et al. 2023). ``rows`` (B, h), ``cols`` (B, w) are global latent coords."""
    r0, c0 = int(rows.min()), int(cols.min())
    H, W = int(rows.max()) - r0 + 1, int(cols.max()) - c0 + 1
    ri = (rows - r0)  # (B, h)
    ci = (cols - c0)  # (B, w)
    b, h = ri.shape
    w = ci.shape[1]
    flat = (ri[:, :, None] * W + ci[:, None, :]).reshape(b, -1)  # (B, h*w)

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = model(x, t)
        ch = out.shape[1]
        vals = out.float().permute(1, 0, 2, 3).reshape(ch, -1)
        idx = flat.reshape(-1).to(out.device)
        acc = torch.zeros((ch, H * W), device=out.device, dtype=torch.float32).index_add_(1, idx, vals)
        cnt = torch.zeros((H * W,), device=out.device, dtype=torch.float32).index_add_(
            0, idx, torch.ones_like(idx, dtype=torch.float32))
        mean = acc / cnt.clamp_min(1.0)
        return mean[:, idx].reshape(ch, b, h, w).permute(1, 0, 2, 3).to(out.dtype)

    return call


def x0_projected(model, spec, device):
    """Wrap a denoiser so that the clean latent it implies at every step is projected onto the measurement
    (measurement-consistent sampling, as in DPS/InverseSR's projection variant, but exact): with a residual
    target over a base that already reproduces the input, and the lossless space-to-depth latent, the
    consistent residuals are exactly those whose ``scale x scale`` sub-pixels average to zero in every band, so
    the projection subtracts each band's mean over its ``factor**2`` latent channels. The model output is
    rewritten to the v (or epsilon) that yields the projected clean latent."""
    ae = spec.autoencoder
    if ae.kind != "shuffle" or ae.factor != spec.scale or getattr(spec, "target", "residual") != "residual":
        raise ConfigError("project_x0 needs a residual model with the space-to-depth latent (autoencoder.kind: "
                          "shuffle, factor = scale)")
    from diffusers import DDPMScheduler

    ac = DDPMScheduler(**spec.schedule.scheduler_config()).alphas_cumprod.to(device)
    per = ae.factor ** 2
    v_pred = spec.schedule.prediction_type == "v_prediction"

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = model(x, t)
        a = ac[t].sqrt().view(-1, 1, 1, 1).to(x.dtype)
        sg = (1 - ac[t]).sqrt().view(-1, 1, 1, 1).to(x.dtype)
        x0 = a * x - sg * out if v_pred else (x - sg * out) / a.clamp_min(1e-6)
        b, cl, h, w = x0.shape
        z = x0.reshape(b, cl // per, per, h, w)
        x0p = (z - z.mean(dim=2, keepdim=True)).reshape(b, cl, h, w)
        return (a * x - x0p) / sg.clamp_min(1e-6) if v_pred else (x - a * x0p) / sg.clamp_min(1e-6)

    return call


def _pad_to(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (0, 0)
    mode = "reflect" if (ph < h and pw < w) else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (ph, pw)


def scale_stages(model_scale: int, scale: int) -> list[int]:
    """How a x``model_scale`` model makes x``scale``: a list of stage factors, run in order on the previous
    stage's output. A factor ``r`` below the model's (a *read-out*) is the model's x``model_scale`` output
    area-averaged to x``r``: under the block-average sensor model the conditional mean at x``r`` is exactly that
    average of the conditional mean at x``model_scale``. Products of the model's scale are *cascades*: the
    read-out first (on the smallest image), then full stages. x4 model: 2, 3, 4, 8, 12, 16, ..."""
    got = _stages(model_scale, scale)
    if got is None:
        raise ConfigError(f"scale={scale}: the x{model_scale} model makes x2..x{model_scale} and products of "
                          f"x{model_scale} with them (e.g. {', '.join(map(str, supported_scales(model_scale)))})")
    return got


def _stages(m: int, scale: int) -> list[int] | None:
    s, full = int(scale), 0
    if s < 1:
        return None
    while s % m == 0 and s > 1:
        s //= m
        full += 1
    if s != 1 and not 1 < s < m:
        return None
    return ([s] if s > 1 else []) + [m] * full


def supported_scales(model_scale: int, limit: int = 16) -> list[int]:
    """The scales up to ``limit`` a x``model_scale`` model makes (:func:`scale_stages`)."""
    return [s for s in range(2, limit + 1) if _stages(model_scale, s) is not None]


@torch.no_grad()
def super_resolve(model: LatentSR, lowres: torch.Tensor, origins: np.ndarray, *, seed: int = 0, sample: int = 0,
                  options: SamplingOptions = SamplingOptions(), generator: torch.Generator | None = None,
                  scale: int | None = None) -> torch.Tensor:
    """(B, C, h, w) float32 low-res reflectance on the model's device -> (B, C, s*h, s*w) float32, ``s`` the
    model's scale or ``scale`` (:func:`scale_stages`: read-outs and cascades; every stage is projected onto its
    own input, so the result reproduces ``lowres``). ``origins`` are in ``lowres`` pixels; each stage's noise is
    keyed on its own grid and stage."""
    m = model.spec.scale
    y, org = lowres.float(), np.asarray(origins, dtype=np.int64)
    for k, f in enumerate(scale_stages(m, scale or m)):
        x = y
        y = _stage(model, x, org, seed, sample + 1_000_003 * k, options, generator)
        if f != m:
            y = project(area_resample(y, f, m), x, f, "average", 0)
        org = org * f
    return y


def _stage(model: LatentSR, lowres: torch.Tensor, origins: np.ndarray, seed: int, sample: int,
           options: SamplingOptions, generator: torch.Generator | None) -> torch.Tensor:
    """One x(model scale) pass. A band-shared model runs on each tile normalised per band
    (:meth:`LatentSR.tile_stats`) and its result is mapped back; every step (interpolation, projections, the
    networks' residuals) commutes with that map."""
    from .noise_estimate import noise_sigma

    spec = model.spec
    dev = lowres.device
    b, c, h, w = lowres.shape
    if not spec.band_shared and c != spec.bands:
        raise ConfigError(f"the model takes {spec.bands} bands; the input has {c}")
    stats = model.tile_stats(lowres)
    if stats is None:
        return _super_resolve(model, lowres, origins, None, seed, sample, options, generator)
    mu, sd = stats
    if options.noise_sigma == "auto":
        noise = noise_sigma(lowres) / sd[:, :, 0, 0]
    elif options.noise_sigma:
        noise = torch.full((b, c), float(options.noise_sigma), device=dev) / sd[:, :, 0, 0]
    else:
        noise = None
    out = _super_resolve(model, (lowres - mu) / sd, origins, noise, seed, sample, options, generator)
    return out * sd + mu


def _super_resolve(model: LatentSR, lowres: torch.Tensor, origins: np.ndarray, noise: torch.Tensor | None,
                   seed: int, sample: int, options: SamplingOptions, generator: torch.Generator | None
                   ) -> torch.Tensor:
    spec = model.spec
    s = spec.scale
    dev = lowres.device
    b, c, h, w = lowres.shape
    residual = getattr(spec, "target", "residual") == "residual"
    base = model.base(lowres, options.ensemble, noise) if residual else None
    if not options.diffusion:
        if base is None:
            raise ConfigError("diffusion=false needs a residual model (the base is its estimate without diffusion)")
        # the base already reproduces the input exactly under the block average (its last step is the exact
        # projection); another operator asks for its own projection
        if options.projection and options.operator != "average":
            return project(base, lowres, s, options.operator, options.projection_iterations)
        return base
    f = spec.latent_per_lowres
    lh, lw = h * f, w * f
    cond = model.condition(lowres, (lh, lw), base, noise) if model.shared else model.condition(lowres, (lh, lw), base)
    rows, cols = tile_coords(origins, (lh, lw), f, dev)
    key = sample_seed(seed, sample)
    lc = model.latent_channels_for(c)
    x = keyed_noise(key, 0, lc, rows, cols, keyed=options.keyed_noise, generator=generator)

    def noise(k: int) -> torch.Tensor:
        return keyed_noise(key, k, lc, rows, cols, keyed=options.keyed_noise, generator=generator)

    mult = spec.denoiser.multiple
    cond_p, (ph, pw) = _pad_to(cond, mult)
    amp = options.autocast_dtype(dev)

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        xp, _ = _pad_to(x_t, mult)
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            out = model.denoise(xp, t, cond_p)
        return out[..., : x_t.shape[-2], : x_t.shape[-1]].float()

    fn = fused(denoise, rows, cols) if (options.fuse and b > 1) else denoise
    if options.project_x0:
        fn = x0_projected(fn, spec, dev)
    z0 = get_sampler(options.sampler)(fn, x, schedule=spec.schedule.scheduler_config(), steps=options.steps,
                                      noise=noise, eta=options.eta)
    with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
        resid = model.decode(z0)
    out = base + resid.float() if residual else resid.float()
    if options.projection:
        out = project(out, lowres, s, options.operator, options.projection_iterations)
    return out


def describe_options(options: SamplingOptions) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(options)
