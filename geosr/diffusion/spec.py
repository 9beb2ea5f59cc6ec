"""The model's architecture and numerics as one JSON-serialisable record, saved beside the weights.

A checkpoint directory holds ``config.json`` (a :class:`ModelSpec`) and ``autoencoder.safetensors`` +
``denoiser.safetensors``; nothing is pickled. Every field here changes the output's bytes, so
:meth:`ModelSpec.digest` goes into the upsampler's ``describe()`` and from there into the run's config hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ModelError

FORMAT_VERSION = 1


@dataclass(frozen=True)
class AutoencoderSpec:
    """diffusers ``AutoencoderTiny`` (``kind="tiny"``), ``AutoencoderKL`` (``kind="kl"``) hyper-parameters, or
    the lossless space-to-depth code (``kind="shuffle"``: ``pixel_unshuffle`` by ``factor``, no weights).

    The autoencoder maps the high-res *residual* over the base (divided by ``ModelSpec.residual_scale``) to a
    latent ``2**(len(block_out_channels)-1)`` (or ``factor``) times smaller. A learned autoencoder caps what
    the residual can hold (16x fewer numbers for a 4-channel latent at x4); ``shuffle`` keeps every value, so
    the diffusion model works on the exact residual at low-res resolution."""

    kind: str = "tiny"
    factor: int = 4  # shuffle only: spatial downsampling; latent_channels must be bands * factor**2
    latent_channels: int = 4
    encoder_block_out_channels: tuple[int, ...] = (32, 32, 32)
    decoder_block_out_channels: tuple[int, ...] = (32, 32, 32)
    num_encoder_blocks: tuple[int, ...] = (1, 1, 1)
    num_decoder_blocks: tuple[int, ...] = (1, 1, 1)
    # AutoencoderKL only
    layers_per_block: int = 1
    norm_num_groups: int = 32
    mid_block_add_attention: bool = False
    scaling_factor: float = 1.0  # latent = encoder(x) * scaling_factor (unit variance for the denoiser)

    @property
    def downsample(self) -> int:
        if self.kind == "shuffle":
            return self.factor
        chans = self.encoder_block_out_channels
        return 2 ** (len(chans) - 1)


@dataclass(frozen=True)
class DenoiserSpec:
    """diffusers ``UNet2DModel`` hyper-parameters; the input is ``[noisy latent, condition]`` concatenated."""

    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "DownBlock2D")
    up_block_types: tuple[str, ...] = ("UpBlock2D", "UpBlock2D", "UpBlock2D")
    mid_block_type: str | None = "UNetMidBlock2D"
    add_attention: bool = False
    attention_head_dim: int = 8
    norm_num_groups: int = 16

    @property
    def multiple(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass(frozen=True)
class ScheduleSpec:
    """Training noise schedule (a diffusers scheduler config); v-prediction, zero terminal SNR so that one
    step from pure noise returns the conditional mean."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    prediction_type: str = "v_prediction"
    rescale_betas_zero_snr: bool = True

    def scheduler_config(self) -> dict[str, Any]:
        return asdict(self)


MEAN_KINDS = ("joint", "band_shared")


@dataclass(frozen=True)
class MeanSpec:
    """The regression mean predictor (:mod:`geosr.diffusion.mean`) run before diffusion (absent: none).

    ``joint``: one network over a fixed set of bands (:class:`~geosr.diffusion.mean.MeanPredictor`);
    ``band_shared``: a guide trunk once per tile plus a branch shared by every band, any band count
    (:class:`~geosr.diffusion.mean.BandSharedMeanPredictor`; ``band_features`` x ``band_blocks``)."""

    features: int = 48
    blocks: int = 8
    res_scale: float = 0.2
    kind: str = "joint"
    band_features: int = 32
    band_blocks: int = 2


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the model and reproduce its numerics."""

    bands: int = 4  # 0: any band count (band-shared networks, per-tile normalisation)
    scale: int = 4
    band_names: tuple[str, ...] = ("red", "green", "blue", "nir")
    residual_scale: float = 0.05  # residual reflectance / residual_scale -> autoencoder input
    cond_offset: float = 0.15  # condition = (lowres - cond_offset) / cond_scale
    cond_scale: float = 0.15
    base: str = "bicubic"  # base image the residual is added to (back-projected to the low-res input)
    base_iterations: int = 3  # back-projection iterations (block-average operator) applied to the base
    target: str = "residual"  # what the autoencoder codes: "residual" over the base, or the "image" (LDSR-S2)
    condition: str = "lowres"  # "lowres": the normalised tile at latent size; "encoded_bilinear": LDSR-S2's
    #                            bilinear 4x upsample encoded by the autoencoder (posterior mode)
    autoencoder: AutoencoderSpec = field(default_factory=AutoencoderSpec)
    denoiser: DenoiserSpec = field(default_factory=DenoiserSpec)
    mean: MeanSpec | None = None  # regression mean predictor; the diffusion then models what it leaves
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    sampling: dict[str, Any] = field(default_factory=dict)  # recommended SamplingOptions (model.params override)
    format_version: int = FORMAT_VERSION
    trained: dict[str, Any] = field(default_factory=dict)  # provenance of the weights (data, steps, time)

    def __post_init__(self) -> None:
        if self.bands < 0:
            raise ModelError(f"model bands={self.bands}: 0 (any band count) or the number of bands")
        if self.mean is not None and self.mean.kind not in MEAN_KINDS:
            raise ModelError(f"mean.kind={self.mean.kind!r}: choose one of {', '.join(MEAN_KINDS)}")
        if self.bands == 0:
            object.__setattr__(self, "band_names", ())
            if self.mean is None or self.mean.kind != "band_shared" or self.autoencoder.kind != "shuffle":
                raise ModelError("bands=0 (any band count) needs mean.kind=band_shared and autoencoder.kind=shuffle")
            if self.autoencoder.latent_channels != self.autoencoder.factor ** 2:
                raise ModelError(f"bands=0: autoencoder.latent_channels must be factor**2 = "
                                 f"{self.autoencoder.factor ** 2} (one band's latent)")
        elif self.mean is not None and self.mean.kind == "band_shared":
            raise ModelError("mean.kind=band_shared takes any band count: set bands: 0")
        elif len(self.band_names) != self.bands:
            object.__setattr__(self, "band_names", tuple(f"B{i + 1}" for i in range(self.bands)))
        if self.scale % self.autoencoder.downsample:
            raise ModelError(
                f"scale={self.scale} is not a multiple of the autoencoder's downsampling "
                f"{self.autoencoder.downsample}; change autoencoder.encoder_block_out_channels"
            )
        if self.target not in ("residual", "image"):
            raise ModelError(f"target={self.target!r}: choose residual or image")
        if self.condition not in ("lowres", "encoded_bilinear"):
            raise ModelError(f"condition={self.condition!r}: choose lowres or encoded_bilinear")
        if self.autoencoder.kind not in ("tiny", "kl", "shuffle"):
            raise ModelError(f"autoencoder.kind={self.autoencoder.kind!r}: choose tiny, kl or shuffle")
        if self.autoencoder.kind == "shuffle" and self.bands and \
                self.autoencoder.latent_channels != self.bands * self.autoencoder.factor ** 2:
            raise ModelError(f"autoencoder.kind=shuffle with factor {self.autoencoder.factor} needs latent_channels="
                             f"{self.bands * self.autoencoder.factor ** 2} (bands * factor**2), "
                             f"not {self.autoencoder.latent_channels}")

    @property
    def band_shared(self) -> bool:
        """Any band count: networks shared across bands, tiles normalised per band (:func:`band_stats`)."""
        return self.bands == 0

    @property
    def latent_per_lowres(self) -> int:
        """Latent pixels per low-res pixel (1 for a 4x autoencoder at scale 4)."""
        return self.scale // self.autoencoder.downsample

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self) -> str:
        d = self.to_dict()
        d.pop("trained", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        try:
            d = dict(d)
            ver = int(d.get("format_version", FORMAT_VERSION))
            if ver > FORMAT_VERSION:
                raise ModelError(f"model config format_version={ver} is newer than this geosr ({FORMAT_VERSION}); upgrade geosr")
            sub = {"autoencoder": AutoencoderSpec, "denoiser": DenoiserSpec, "schedule": ScheduleSpec,
                   "mean": MeanSpec}
            for key, typ in sub.items():
                if key in d and d[key] is not None:
                    d[key] = _build(typ, d[key])
            return _build(cls, d)
        except (TypeError, ValueError) as e:
            raise ModelError(f"invalid model config: {e}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ModelSpec":
        p = Path(path)
        if not p.is_file():
            raise ModelError(f"model config {p} does not exist")
        try:
            return cls.from_dict(json.loads(p.read_text()))
        except json.JSONDecodeError as e:
            raise ModelError(f"model config {p} is not valid JSON: {e}") from None


def _build(typ, d: dict[str, Any]):
    if not isinstance(d, dict):
        raise TypeError(f"{typ.__name__} expects a mapping, got {type(d).__name__}")
    names = {f.name: f for f in fields(typ)}
    unknown = set(d) - set(names)
    if unknown:
        raise ValueError(f"{typ.__name__}: unknown keys {sorted(unknown)}")
    out = {}
    for k, v in d.items():
        out[k] = tuple(v) if isinstance(v, list) else v
    return typ(**out)


def spec_from_yaml(path: str | Path) -> ModelSpec:
    """A ``configs/model-*.yaml`` file -> :class:`ModelSpec` (its ``model:`` mapping)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"model config {p} does not exist")
    data = yaml.safe_load(p.read_text()) or {}
    return ModelSpec.from_dict(data.get("model", data))
