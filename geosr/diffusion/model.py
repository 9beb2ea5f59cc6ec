"""The two networks, built from diffusers components according to a :class:`ModelSpec`.

* autoencoder: ``AutoencoderTiny`` (default; TAESD-style, deterministic, cheap decoder) or ``AutoencoderKL``
  (its posterior mode is used). It codes the C-band high-res *residual* over the consistent bicubic base.
  or ``shuffle`` (lossless space-to-depth, no weights). It codes the C-band high-res *residual* over the base.
* mean (optional): :class:`~geosr.diffusion.mean.MeanPredictor`, a low-res-resolution regression CNN whose
  pixel-shuffled output, added to the consistent bicubic and projected, is the base: the conditional mean.
  The diffusion then models only what the mean cannot know, and sees the mean as extra condition channels.
* denoiser: ``UNet2DModel`` on ``[noisy latent, condition]``; the condition is the normalised low-res tile
  itself (already at latent resolution for a 4x autoencoder at scale 4: no autoencoder pass, no upsample),
  resized to the latent grid otherwise (plus the encoded mean when there is a mean predictor).

:class:`LatentSR` holds both; the samplers only ever see :meth:`LatentSR.denoise` as a callable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .consistency import consistent_base, project
from .mean import GUIDE_CHANNELS, BandSharedMeanPredictor, MeanPredictor, band_guide, band_stats, self_ensemble
from .spec import AutoencoderSpec, DenoiserSpec, ModelSpec


class ShuffleCode(nn.Module):
    """The lossless "autoencoder": ``pixel_unshuffle`` / ``pixel_shuffle`` by ``factor`` (no weights)."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, self.factor)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(z, self.factor)


def build_autoencoder(spec: AutoencoderSpec, bands: int) -> nn.Module:
    if spec.kind == "shuffle":
        return ShuffleCode(spec.factor)
    from diffusers import AutoencoderKL, AutoencoderTiny

    if spec.kind == "tiny":
        if len(spec.encoder_block_out_channels) != len(spec.num_encoder_blocks) or \
                len(spec.decoder_block_out_channels) != len(spec.num_decoder_blocks):
            raise ModelError("autoencoder: block_out_channels and num_*_blocks must have the same length")
        if len(spec.encoder_block_out_channels) != len(spec.decoder_block_out_channels):
            raise ModelError("autoencoder: encoder and decoder need the same number of levels")
        return AutoencoderTiny(
            in_channels=bands, out_channels=bands, latent_channels=spec.latent_channels,
            encoder_block_out_channels=tuple(spec.encoder_block_out_channels),
            decoder_block_out_channels=tuple(spec.decoder_block_out_channels),
            num_encoder_blocks=tuple(spec.num_encoder_blocks), num_decoder_blocks=tuple(spec.num_decoder_blocks),
            upsampling_scaling_factor=2, scaling_factor=spec.scaling_factor,
        )
    n = len(spec.encoder_block_out_channels)
    return AutoencoderKL(
        in_channels=bands, out_channels=bands, latent_channels=spec.latent_channels,
        block_out_channels=tuple(spec.encoder_block_out_channels),
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        layers_per_block=spec.layers_per_block, norm_num_groups=spec.norm_num_groups,
        mid_block_add_attention=spec.mid_block_add_attention, scaling_factor=spec.scaling_factor,
    )


def build_denoiser(spec: DenoiserSpec, latent_channels: int, cond_channels: int) -> nn.Module:
    from diffusers import UNet2DModel

    if not (len(spec.block_out_channels) == len(spec.down_block_types) == len(spec.up_block_types)):
        raise ModelError("denoiser: block_out_channels, down_block_types and up_block_types need the same length")
    return UNet2DModel(
        in_channels=latent_channels + cond_channels, out_channels=latent_channels,
        block_out_channels=tuple(spec.block_out_channels), layers_per_block=spec.layers_per_block,
        down_block_types=tuple(spec.down_block_types), up_block_types=tuple(spec.up_block_types),
        mid_block_type=spec.mid_block_type, add_attention=spec.add_attention,
        attention_head_dim=spec.attention_head_dim, norm_num_groups=spec.norm_num_groups,
    )


class LatentSR(nn.Module):
    """Autoencoder + conditional denoiser (+ mean predictor). Tensors in and out; no sampling logic here.

    A *band-shared* model (``spec.bands == 0``) takes any band count: the caller normalises each tile per band
    (:meth:`tile_stats`; every method below then works in those units), the mean predictor and the denoiser
    run every band through the same weights (bands folded into the batch) beside a guide of statistics over
    the bands, and the latent of C bands is C stacked one-band latents."""

    def __init__(self, spec: ModelSpec, denoiser: bool = True) -> None:
        """``denoiser=False`` leaves the denoiser out (``self.denoiser is None``): enough for the mean predictor
        alone (``diffusion: false``), without importing diffusers."""
        super().__init__()
        self.spec = spec
        self.shared = spec.band_shared
        self.autoencoder = build_autoencoder(spec.autoencoder, max(spec.bands, 1))
        m = spec.mean
        if m is None:
            self.mean = None
        elif m.kind == "band_shared":
            self.mean = BandSharedMeanPredictor(spec.scale, m.features, m.blocks, m.band_features, m.band_blocks,
                                                m.res_scale)
        else:
            self.mean = MeanPredictor(spec.bands, spec.scale, m.features, m.blocks, m.res_scale)
        self.denoiser = build_denoiser(spec.denoiser, *self.denoiser_shape(spec)) if denoiser else None

    @staticmethod
    def denoiser_shape(spec: ModelSpec) -> tuple[int, int]:
        """(latent channels, condition channels) of the denoiser's input."""
        L = spec.autoencoder.latent_channels
        if spec.band_shared:  # per band: its LR, its noise level, the guide and its encoded mean residual
            return L, 2 + GUIDE_CHANNELS + L
        return L, spec.bands + (L if spec.mean is not None else 0)

    @property
    def latent_channels(self) -> int:
        """Latent channels per band (band-shared) or of the whole tile."""
        return self.spec.autoencoder.latent_channels

    def latent_channels_for(self, bands: int) -> int:
        return self.latent_channels * bands if self.shared else self.latent_channels

    def tile_stats(self, lowres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mean, std) per tile and band (B, C, 1, 1) for a band-shared model, whose methods take and return
        ``(x - mean) / std``; None for a fixed-band model (it normalises inside, see :meth:`normalise`)."""
        return band_stats(lowres) if self.shared else None

    def normalise(self, lowres: torch.Tensor) -> torch.Tensor:
        if self.shared:
            return lowres  # already normalised per tile by the caller
        return (lowres - self.spec.cond_offset) / self.spec.cond_scale

    def _mean_net(self, noise: torch.Tensor | None):
        if not self.shared:
            return self.mean
        return lambda x: self.mean(x, noise)

    def base(self, lowres: torch.Tensor, ensemble: int = 1, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The high-res estimate the diffusion residual is added to: the back-projected interpolation, plus
        the mean predictor's residual (projected again, so the base reproduces the input exactly), averaged
        over ``ensemble`` symmetries of the square (:func:`~geosr.diffusion.mean.self_ensemble`). ``noise``
        (B, C): the input's noise std in normalised units (band-shared models; None: 0)."""
        s = self.spec
        b = consistent_base(lowres, s.scale, s.base, "average", s.base_iterations)
        if self.mean is None:
            return b
        mean = self_ensemble(self._mean_net(noise), self.normalise(lowres), ensemble)
        return project(b + mean * s.residual_scale, lowres, s.scale, "average", 0)

    def condition(self, lowres: torch.Tensor, latent_hw: tuple[int, int],
                  base: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The denoiser's conditioning channels for low-res tiles, at latent size ``latent_hw``; with a mean
        predictor also the encoded mean residual (``base`` minus the bicubic base), computed if not given.
        Band-shared: (B, C * (2 + guide + L), h, w), each band's block in band order."""
        c = self.normalise(lowres)
        if self.shared:
            return self._shared_condition(c, latent_hw, base, noise)
        if self.mean is not None:
            if base is None:
                base = self.base(lowres)
            s = self.spec
            plain = consistent_base(lowres, s.scale, s.base, "average", s.base_iterations)
            m = self.encode(base - plain)
            if tuple(c.shape[-2:]) != tuple(latent_hw):
                c = F.interpolate(c, size=latent_hw, mode="bilinear", align_corners=False)
            return torch.cat([c, m], dim=1)
        if self.spec.condition == "encoded_bilinear":  # LDSR-S2: a full autoencoder pass on an upsample
            up = F.interpolate(c, scale_factor=self.spec.scale, mode="bilinear", align_corners=False)
            return self.encode(up * self.spec.residual_scale) / self.spec.autoencoder.scaling_factor
        if tuple(c.shape[-2:]) != tuple(latent_hw):
            c = F.interpolate(c, size=latent_hw, mode="bilinear", align_corners=False)
        return c

    def _shared_condition(self, x: torch.Tensor, latent_hw: tuple[int, int], base: torch.Tensor | None,
                          noise: torch.Tensor | None) -> torch.Tensor:
        b, c, h, w = x.shape
        s = self.spec
        if base is None:
            base = self.base(x, noise=noise)
        plain = consistent_base(x, s.scale, s.base, "average", s.base_iterations)
        m = self.encode(base - plain)  # (B, C*L, lh, lw)
        lh, lw = latent_hw
        if (h, w) != (lh, lw):
            x = F.interpolate(x, size=latent_hw, mode="bilinear", align_corners=False)
        g = band_guide(x)
        nz = torch.zeros((b, c), dtype=x.dtype, device=x.device) if noise is None else noise.to(x.dtype)
        per = [x[:, :, None], nz[:, :, None, None, None].expand(b, c, 1, lh, lw),
               g[:, None].expand(b, c, GUIDE_CHANNELS, lh, lw), m.reshape(b, c, -1, lh, lw)]
        return torch.cat(per, dim=2).reshape(b, -1, lh, lw)

    def encode(self, residual: torch.Tensor) -> torch.Tensor:
        """High-res residual (or image, for ``target="image"``) reflectance (B, C, sH, sW) -> scaled latent
        (B, L, sH/d, sW/d)."""
        x = residual / self.spec.residual_scale
        ae = self.autoencoder
        if self.spec.autoencoder.kind == "shuffle":
            z = ae.encode(x)
        elif self.spec.autoencoder.kind == "tiny":
            z = ae.encoder(x)
        else:
            z = ae.quant_conv(ae.encoder(x)) if ae.quant_conv is not None else ae.encoder(x)
            z = z.chunk(2, dim=1)[0]  # posterior mode
        return z * self.spec.autoencoder.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> high-res residual (or image) reflectance."""
        z = z / self.spec.autoencoder.scaling_factor
        ae = self.autoencoder
        if self.spec.autoencoder.kind == "shuffle":
            x = ae.decode(z)
        elif self.spec.autoencoder.kind == "tiny":
            x = ae.decoder(z)
        else:
            if ae.post_quant_conv is not None:
                z = ae.post_quant_conv(z)
            x = ae.decoder(z)
        return x * self.spec.residual_scale

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Model output (v) for noisy latents ``x_t`` at integer timesteps ``t`` given the condition."""
        t = t.expand(x_t.shape[0]) if t.ndim == 1 and t.numel() == 1 else t
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        if not self.shared:
            return self.denoiser(torch.cat([x_t, cond.to(x_t.dtype)], dim=1), t).sample
        b, cl, h, w = x_t.shape
        L = self.latent_channels
        c = cl // L
        x = x_t.reshape(b * c, L, h, w)
        cond = cond.reshape(b * c, -1, h, w).to(x_t.dtype)
        out = self.denoiser(torch.cat([x, cond], dim=1), t.repeat_interleave(c)).sample
        return out.reshape(b, cl, h, w)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
