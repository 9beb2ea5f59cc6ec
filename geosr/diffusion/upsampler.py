"""The latent-diffusion model behind geosr's :class:`~geosr.upsamplers.Upsampler` interface.

Registered as ``ldm``. ``model.params`` (config) -> :func:`build` keywords:

``weights``      checkpoint directory (config.json + safetensors); default: the bundled model
``steps``        sampler steps, 1..100 (default: the model's ``sampling`` defaults in config.json, else 2)
``sampler``      ``dpmpp`` (DPM-Solver++) or ``ddim``
``eta``          0 (deterministic) .. 1 (stochastic; noise injected per step, position-keyed)
``keyed_noise``  true (seamless, default) / false (independent noise per tile, LDSR-S2 behaviour)
``fuse``         MultiDiffusion latent fusion of overlapping tiles within a batch (default false)
``operator``     ``average`` (block mean, exact projection) or ``gaussian`` (blur + decimation, IBP)
``projection``   enforce LR consistency (default true); ``projection_iterations`` (default 3)
``diffusion``    false: the mean predictor's estimate alone (models with a mean predictor; the bundled model
                 recommends it — see its MODEL_CARD.md)
``dtype``        auto / float32 / bfloat16 / float16 (autocast on CUDA only; CPU is always float32)
``channels_last``, ``compile``  CUDA speed options
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..errors import ConfigError, ModelError
from ..upsamplers.base import TileBatch, check_output, resolve_device
from .consistency import project_blended
from .model import LatentSR
from .pipeline import SamplingOptions, super_resolve
from .weights_io import attach_denoiser, bundled_dir, load_model

NAME = "ldm"


class LatentDiffusionUpsampler:
    """Latent-diffusion SR: one tile's output depends only on (tile, seed, global position, params)."""

    version = __version__

    def __init__(self, model: LatentSR, *, scale: int, batch_size: int = 16, device: str = "cpu",
                 options: SamplingOptions = SamplingOptions(), weights: str = "bundled",
                 channels_last: bool = True, compile: bool = False) -> None:
        spec = model.spec
        from .pipeline import scale_stages, supported_scales

        try:
            scale_stages(spec.scale, scale)
        except ConfigError:
            which = "the bundled model" if weights == "bundled" else f"the model at {weights}"
            raise ConfigError(f"tiling.scale={scale}: {which} makes x{spec.scale} and, by read-out and cascade, "
                              f"x{', x'.join(map(str, supported_scales(spec.scale)))}; pick one of those, or "
                              f"--model lanczos for x{scale}") from None
        self.name = NAME
        self.scale = int(scale)
        self.bands = spec.bands or None  # None: any band count (band-shared model)
        self.batch_size = int(batch_size)
        self.device = device
        self.options = options
        self.weights = weights
        self.model = model.to(device).eval()
        dev = torch.device(device)
        if dev.type == "cuda" and channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if compile and self.model.denoiser is not None:
            self.model.denoiser = torch.compile(self.model.denoiser)
            if hasattr(self.model.autoencoder, "decoder"):
                self.model.autoencoder.decoder = torch.compile(self.model.autoencoder.decoder)

    @property
    def spec(self):
        return self.model.spec

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "scale": self.scale, "bands": self.bands,
                "weights": self.weights, "model_digest": self.spec.digest(), "sampling": asdict(self.options)}

    def _ensure_denoiser(self) -> None:
        """Load the denoiser now if the model was loaded without it (mean-only sampling)."""
        if self.model.denoiser is None:
            path = bundled_dir() if self.weights == "bundled" else Path(self.weights)
            attach_denoiser(self.model, path, self.device)

    def _run(self, batch: TileBatch, sample: int, options: SamplingOptions | None = None) -> np.ndarray:
        opts = options or self.options
        if opts.diffusion:
            self._ensure_denoiser()
        if self.bands is not None and batch.pixels.shape[1] != self.bands:
            raise ConfigError(f"the model takes {self.bands} bands; the input has {batch.pixels.shape[1]}: "
                              "select bands with input.bands")
        dev = torch.device(self.device)
        gen = None
        if not opts.keyed_noise:  # independent noise per call, seeded per batch (LDSR-S2-style)
            gen = torch.Generator(device=dev).manual_seed(int(batch.seed) * 1_000_003 + int(batch.origins.sum()))
        outs = []
        # On CPU one tile per call: oneDNN picks kernels by batch size, so batching would make a tile's bytes
        # depend on which other tiles share its block (and so on the block partition); per-tile calls cost
        # little on CPU. On CUDA batches are what makes it fast (values agree to float tolerance).
        step = 1 if dev.type == "cpu" and not opts.fuse else self.batch_size  # fuse: tiles of a batch interact
        for i in range(0, len(batch), step):
            px = np.ascontiguousarray(batch.pixels[i : i + step], dtype=np.float32)
            px = np.nan_to_num(px, nan=0.0)
            lr = torch.from_numpy(px).to(dev)
            try:
                y = super_resolve(self.model, lr, batch.origins[i : i + step], seed=batch.seed,
                                  sample=sample, options=opts, generator=gen, scale=self.scale)
            except torch.OutOfMemoryError as e:
                raise ModelError(f"out of GPU memory at batch_size={self.batch_size}; lower model.batch_size") from e
            outs.append(y.float().cpu().numpy())
        return np.concatenate(outs, axis=0)

    def __call__(self, batch: TileBatch) -> np.ndarray:
        return check_output(batch, self._run(batch, 0), self.scale)

    def project_blended(self, hr: np.ndarray, lowres: np.ndarray) -> np.ndarray:
        """For the engine, after blending a block: re-project the blend (C, sH, sW) onto its low-res window
        (C, H, W) so the block-average consistency is exact again (local per low-res pixel, so block
        partitions aligned to the scale give identical bytes). Identity for other operators or with
        ``projection=False``."""
        if not self.options.projection:
            return hr
        return project_blended(hr, lowres, self.scale, self.options.operator)

    def sample_with_std(self, batch: TileBatch, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean and per-pixel standard deviation over ``n`` independent samples (each position-keyed, so
        still seamless). Sampling is made stochastic (eta=1 if it was 0, and the diffusion stage on even where
        the model recommends the mean predictor alone) so that samples differ."""
        if n < 1:
            raise ConfigError(f"n={n}: need at least one sample")
        opts = SamplingOptions(**{**asdict(self.options), "eta": self.options.eta or 1.0, "diffusion": True})
        self._ensure_denoiser()
        acc = np.zeros((len(batch), batch.pixels.shape[1], batch.pixels.shape[2] * self.scale,
                        batch.pixels.shape[3] * self.scale), dtype=np.float64)
        acc2 = np.zeros_like(acc)
        for k in range(n):
            y = self._run(batch, k, opts).astype(np.float64)
            acc += y
            acc2 += y * y
        mean = acc / n
        var = np.maximum(acc2 / n - mean * mean, 0.0)
        return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


_OPTION_KEYS = {f for f in SamplingOptions.__dataclass_fields__}


def build(*, scale: int, batch_size: int = 16, device: str = "auto", bands: int | None = None, seed: int = 0,
          weights: str | None = None, channels_last: bool = True, compile: bool = False,
          **params: Any) -> LatentDiffusionUpsampler:
    """Registry factory (``model.name: ldm``)."""
    unknown = set(params) - _OPTION_KEYS
    if unknown:
        raise ConfigError(f"model.params {sorted(unknown)} are not used by ldm; known: "
                          f"{sorted(_OPTION_KEYS | {'weights', 'channels_last', 'compile'})}")
    dev = resolve_device(device)
    path = Path(weights) if weights else bundled_dir()
    from .spec import ModelSpec

    spec = ModelSpec.load(path / "config.json") if (path / "config.json").is_file() else None
    # the denoiser (and diffusers) are loaded only when sampling uses them (sample_with_std loads it on demand)
    needs_denoiser = bool({**(spec.sampling if spec else {}), **params}.get("diffusion", True))
    model = load_model(path, dev, denoiser=needs_denoiser)
    if bands is not None and model.spec.bands and bands != model.spec.bands:
        raise ConfigError(f"the input has {bands} bands but the model at {path} takes {model.spec.bands} "
                          f"({','.join(model.spec.band_names)}): select them with --bands (input.bands), "
                          "or use --model bicubic / lanczos for any band count")
    bad = set(model.spec.sampling) - _OPTION_KEYS
    if bad:
        raise ModelError(f"{path}/config.json: sampling keys {sorted(bad)} are unknown")
    opts = SamplingOptions(**{**model.spec.sampling, **params})  # the model's recommended defaults, then config
    return LatentDiffusionUpsampler(model, scale=scale, batch_size=batch_size, device=dev,
                                    options=opts, weights=str(weights or "bundled"),
                                    channels_last=channels_last, compile=compile)
