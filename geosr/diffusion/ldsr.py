"""LDSR-S2 (ESA OpenSR, ``opensr-ldsrs2_v1_0_0.ckpt``, CompVis LDM layout) -> geosr's format.

The checkpoint is a torch pickle: it is opened with ``torch.load(weights_only=True)`` only (tensors and
plain containers, no code), converted to diffusers module layouts and written as safetensors + config
JSON, after which nothing pickled is ever read again.

Architecture (opensr-model ``config_10m.yaml``): a CompVis ``AutoencoderKL`` (4 bands, ch 128, mult
1-2-4, 2 res blocks, mid attention, 4-channel latent, 4x) -> diffusers ``AutoencoderKL``; an openaimodel
``UNetModel`` (8 in = noisy latent + encoded condition, 4 out, 160 channels, mult 1-2-2-4, 2 res blocks,
attention at 8x with 32-channel heads, legacy QKV order) -> diffusers ``UNet2DModel``. Eps-prediction,
1000 steps, CompVis "linear" betas (= diffusers ``scaled_linear``) from ``linear_start`` to ``linear_end``.
The condition is the low-res tile upsampled 4x bilinearly and encoded by the autoencoder (posterior mode).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import ModelError
from .model import LatentSR
from .spec import AutoencoderSpec, DenoiserSpec, ModelSpec, ScheduleSpec
from .weights_io import save_model

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."


def ldsr_spec(linear_start: float = 0.0001, linear_end: float = 0.015, band_names=("red", "green", "blue", "nir"),
              model_channels: int = 160, channel_mult=(1, 2, 2, 4), attention_levels=(3,), num_res_blocks: int = 2,
              head_channels: int = 32, ae_ch: int = 128, ae_mult=(1, 2, 4), ae_res_blocks: int = 2) -> ModelSpec:
    """The LDSR-S2 v1 architecture as a :class:`ModelSpec` (v1.0 checkpoints: betas 0.0001 -> 0.015;
    pre-1.0: 0.0015 -> 0.0155)."""
    n = len(channel_mult)
    down = tuple("AttnDownBlock2D" if i in attention_levels else "DownBlock2D" for i in range(n))
    up = tuple("AttnUpBlock2D" if (n - 1 - i) in attention_levels else "UpBlock2D" for i in range(n))
    return ModelSpec(
        bands=len(band_names), scale=4, band_names=tuple(band_names), target="image", condition="encoded_bilinear",
        residual_scale=1.0, cond_offset=0.0, cond_scale=1.0,
        autoencoder=AutoencoderSpec(kind="kl", latent_channels=4, encoder_block_out_channels=tuple(ae_ch * m for m in ae_mult),
                                    decoder_block_out_channels=tuple(ae_ch * m for m in ae_mult),
                                    num_encoder_blocks=(1,) * len(ae_mult), num_decoder_blocks=(1,) * len(ae_mult),
                                    layers_per_block=ae_res_blocks, norm_num_groups=32, mid_block_add_attention=True),
        denoiser=DenoiserSpec(block_out_channels=tuple(model_channels * m for m in channel_mult),
                              layers_per_block=num_res_blocks, down_block_types=down, up_block_types=up,
                              mid_block_type="UNetMidBlock2D", add_attention=True, attention_head_dim=head_channels,
                              norm_num_groups=32),
        schedule=ScheduleSpec(beta_schedule="scaled_linear", beta_start=linear_start, beta_end=linear_end,
                              prediction_type="epsilon", rescale_betas_zero_snr=False),
    )


class CheckpointMetadata:
    """Stands in for every non-tensor object a Lightning checkpoint pickles beside its weights (hyper-parameters as
    omegaconf configs, callback classes keying the callbacks' states, paths, numpy scalars): the unpickler builds
    this inert object instead, so no class of the checkpoint's is imported and none of its code runs. geosr keeps
    only the tensors of ``state_dict``."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass


_DICT_METADATA = ("pytorch_lightning.utilities.parsing.AttributeDict", "lightning_fabric.utilities.data.AttributeDict",
                  "lightning.fabric.utilities.data.AttributeDict", "lightning.pytorch.utilities.parsing.AttributeDict")
"""dict subclasses of Lightning's hyper-parameters: read as plain dicts (the unpickler fills only real dicts)."""

_CALLBACKS = ("model_checkpoint.ModelCheckpoint", "early_stopping.EarlyStopping", "lr_monitor.LearningRateMonitor",
              "progress.tqdm_progress.TQDMProgressBar", "stochastic_weight_avg.StochasticWeightAveraging",
              "model_summary.ModelSummary", "timer.Timer", "finetuning.BaseFinetuning")
METADATA_GLOBALS: tuple[str, ...] = (
    # omegaconf: LDM-style modules save their configs as hyper-parameters
    "omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig", "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata", "omegaconf.nodes.AnyNode", "omegaconf.nodes.StringNode", "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.FloatNode", "omegaconf.nodes.BooleanNode", "omegaconf.nodes.EnumNode", "omegaconf.nodes.PathNode",
    "omegaconf.nodes.BytesNode", "typing.Any", "builtins.dict", "builtins.list", "builtins.tuple", "builtins.str",
    "builtins.int", "builtins.float", "builtins.bool", "builtins.object", "collections.defaultdict",
    # Lightning < 1.5 keyed the callbacks' states by the callback class
    *(f"{pkg}.callbacks.{c}" for pkg in ("pytorch_lightning", "lightning.pytorch") for c in _CALLBACKS),
    # paths, argparse hyper-parameters, numpy scalars and arrays in callback and loop states
    "pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.PurePosixPath", "pathlib.PureWindowsPath", "argparse.Namespace",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype", "numpy.ndarray",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    *(f"numpy.dtypes.{t}DType" for t in ("Float64", "Float32", "Float16", "Int64", "Int32", "Int16", "Int8", "UInt8",
                                         "UInt16", "UInt32", "UInt64", "Bool")),
)
"""The allow-list: what a Lightning checkpoint may pickle besides tensors and plain containers. Each is read as an
inert :class:`CheckpointMetadata` (the AttributeDicts as plain dicts); anything else is refused."""


def _safe_globals() -> list:
    return [(CheckpointMetadata, name) for name in METADATA_GLOBALS] + [(dict, name) for name in _DICT_METADATA]


def read_ckpt(path: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict, read without executing pickled code: ``torch.load(weights_only=True)`` with
    the metadata types of a Lightning checkpoint (:data:`METADATA_GLOBALS`) allow-listed as inert stand-ins."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"checkpoint {p} does not exist")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for anything that is neither tensors nor allow-listed metadata
        try:
            unknown = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(str(p))
                       if g not in METADATA_GLOBALS and g not in _DICT_METADATA]
        except Exception:
            unknown = []
        what = (f"it pickles {', '.join(unknown[:4])}, which is neither a tensor nor known checkpoint metadata"
                if unknown else str(e).splitlines()[0])
        raise ModelError(f"cannot read {p} safely (weights_only=True, nothing is unpickled but tensors and "
                         f"allow-listed metadata): {what}") from None
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not any(k.startswith(UNET_PREFIX) for k in sd):
        raise ModelError(f"{p} is not an LDSR-S2 / CompVis LDM checkpoint (no {UNET_PREFIX}* weights)")
    return {k: v for k, v in sd.items() if torch.is_tensor(v)}


def _resnet(src: dict, s: str, dst: dict, d: str) -> None:
    m = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj", "out_layers.0": "norm2",
         "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
    for a, b in m.items():
        for p in ("weight", "bias"):
            k = f"{s}.{a}.{p}"
            if k in src:
                dst[f"{d}.{b}.{p}"] = src[k]


def _attention(src: dict, s: str, dst: dict, d: str, head_channels: int) -> None:
    c = src[f"{s}.norm.weight"].shape[0]
    heads = c // head_channels
    dst[f"{d}.group_norm.weight"] = src[f"{s}.norm.weight"]
    dst[f"{d}.group_norm.bias"] = src[f"{s}.norm.bias"]
    w = src[f"{s}.qkv.weight"].reshape(heads, 3, head_channels, c)  # legacy order: per head [q, k, v]
    b = src[f"{s}.qkv.bias"].reshape(heads, 3, head_channels)
    for i, name in enumerate(("to_q", "to_k", "to_v")):
        dst[f"{d}.{name}.weight"] = w[:, i].reshape(c, c).clone()
        dst[f"{d}.{name}.bias"] = b[:, i].reshape(c).clone()
    dst[f"{d}.to_out.0.weight"] = src[f"{s}.proj_out.weight"].reshape(c, c)
    dst[f"{d}.to_out.0.bias"] = src[f"{s}.proj_out.bias"]


def convert_unet(sd: dict[str, torch.Tensor], spec: DenoiserSpec) -> dict[str, torch.Tensor]:
    """openaimodel ``UNetModel`` state dict (prefix stripped) -> diffusers ``UNet2DModel`` state dict."""
    out: dict[str, torch.Tensor] = {}
    for a, b in (("time_embed.0", "time_embedding.linear_1"), ("time_embed.2", "time_embedding.linear_2"),
                 ("input_blocks.0.0", "conv_in"), ("out.0", "conv_norm_out"), ("out.2", "conv_out")):
        out[f"{b}.weight"], out[f"{b}.bias"] = sd[f"{a}.weight"], sd[f"{a}.bias"]
    n, r, hc = len(spec.block_out_channels), spec.layers_per_block, spec.attention_head_dim
    k = 1
    for i in range(n):
        for j in range(r):
            _resnet(sd, f"input_blocks.{k}.0", out, f"down_blocks.{i}.resnets.{j}")
            if f"input_blocks.{k}.1.qkv.weight" in sd:
                _attention(sd, f"input_blocks.{k}.1", out, f"down_blocks.{i}.attentions.{j}", hc)
            k += 1
        if i < n - 1:
            for p in ("weight", "bias"):
                out[f"down_blocks.{i}.downsamplers.0.conv.{p}"] = sd[f"input_blocks.{k}.0.op.{p}"]
            k += 1
    _resnet(sd, "middle_block.0", out, "mid_block.resnets.0")
    _attention(sd, "middle_block.1", out, "mid_block.attentions.0", hc)
    _resnet(sd, "middle_block.2", out, "mid_block.resnets.1")
    k = 0
    for i in range(n):
        for j in range(r + 1):
            _resnet(sd, f"output_blocks.{k}.0", out, f"up_blocks.{i}.resnets.{j}")
            if f"output_blocks.{k}.1.qkv.weight" in sd:
                _attention(sd, f"output_blocks.{k}.1", out, f"up_blocks.{i}.attentions.{j}", hc)
            if j == r and i < n - 1:
                idx = 2 if f"output_blocks.{k}.2.conv.weight" in sd else 1
                for p in ("weight", "bias"):
                    out[f"up_blocks.{i}.upsamplers.0.conv.{p}"] = sd[f"output_blocks.{k}.{idx}.conv.{p}"]
            k += 1
    return out


def convert_autoencoder(sd: dict[str, torch.Tensor], ae: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CompVis ``AutoencoderKL`` (``first_stage_model.*``) -> diffusers ``AutoencoderKL`` state dict."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae = {k: v for k, v in sd.items() if k.startswith(VAE_PREFIX)}
    out = convert_ldm_vae_checkpoint(vae, dict(ae.config))
    own = ae.state_dict()
    for k, v in list(out.items()):  # CompVis attention q/k/v/proj_out are 1x1 convs; diffusers uses Linear
        if k in own and own[k].ndim == 2 and v.ndim == 4:
            out[k] = v[:, :, 0, 0]
    return out


def _ema_unet(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LitEma stores ``model.diffusion_model.a.b.c`` as ``model_ema.diffusion_modelabc``."""
    ema = {k[len("model_ema."):]: v for k, v in sd.items() if k.startswith("model_ema.") and k not in
           ("model_ema.decay", "model_ema.num_updates")}
    names = [k[len(UNET_PREFIX):] for k in sd if k.startswith(UNET_PREFIX)]
    out = {}
    for n in names:
        flat = "diffusion_model" + n.replace(".", "")
        if flat not in ema:
            raise ModelError("checkpoint has no complete EMA weights; import without --ema")
        out[n] = ema[flat]
    return out


def convert_ldsr(sd: dict[str, torch.Tensor], spec: ModelSpec | None = None, use_ema: bool = False) -> LatentSR:
    """An LDSR-S2 state dict -> :class:`LatentSR` with those weights (strict: every tensor accounted for)."""
    spec = spec or ldsr_spec()
    model = LatentSR(spec)
    unet_sd = _ema_unet(sd) if use_ema else {k[len(UNET_PREFIX):]: v for k, v in sd.items() if k.startswith(UNET_PREFIX)}
    unet = convert_unet(unet_sd, spec.denoiser)
    ae = convert_autoencoder(sd, model.autoencoder)
    for name, module, tensors in (("denoiser", model.denoiser, unet), ("autoencoder", model.autoencoder, ae)):
        own = module.state_dict()
        missing = sorted(set(own) - set(tensors))
        extra = sorted(set(tensors) - set(own))
        bad = [k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape]
        if missing or extra or bad:
            raise ModelError(f"LDSR {name} conversion does not match the architecture: missing {missing[:4]}, "
                             f"unexpected {extra[:4]}, wrong shape {bad[:4]}")
        module.load_state_dict(tensors)
    return model.eval()


def import_ldsr(ckpt: str | Path, out_dir: str | Path, *, linear_start: float = 0.0001, linear_end: float = 0.015,
                use_ema: bool = False) -> Path:
    sd = read_ckpt(ckpt)
    spec = ldsr_spec(linear_start, linear_end)
    model = convert_ldsr(sd, spec, use_ema=use_ema)
    from dataclasses import replace

    spec = replace(spec, trained={"imported_from": Path(ckpt).name, "format": "CompVis LDM (opensr-model LDSR-S2)",
                                  "ema": use_ema})
    return save_model(model, out_dir, spec)


_UNUSED = re.compile(r"^(model_ema\.|betas|alphas|sqrt_|log_one|posterior|loss)")


# -- sampling as opensr-model samples ---------------------------------------------------------------------------------
CORRECTIONS = ("histogram", "projection", "none")


def ddim_scheduler(spec: ModelSpec) -> "DDIMScheduler":  # noqa: F821 (diffusers is imported lazily)
    """diffusers' DDIM configured as CompVis' ``DDIMSampler`` with ``ddim_discretize="uniform"``, which opensr-model
    uses: timesteps ``0, c, 2c, ... + 1`` with ``c = 1000 // steps``, and the last step's "previous" alpha the
    first training alpha (not 1). Identical for step counts that divide 1000 (opensr-model's loop misindexes others)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**spec.schedule.scheduler_config(), timestep_spacing="leading", steps_offset=1,
                         set_alpha_to_one=False, clip_sample=False)


def match_histograms(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-band histogram matching of ``image`` (C, H, W) to ``reference`` (C, h, w): each value becomes the
    reference value at the same quantile (interpolated), as scikit-image's ``match_histograms``, which opensr-model
    applies to its output against the low-res input."""
    import numpy as np

    out = np.empty(tuple(image.shape), dtype=np.float64)
    img = image.detach().cpu().double().numpy()
    ref = reference.detach().cpu().double().numpy()
    for c in range(img.shape[0]):
        src_values, src_lookup, src_counts = np.unique(img[c].ravel(), return_inverse=True, return_counts=True)
        tmpl_values, tmpl_counts = np.unique(ref[c].ravel(), return_counts=True)
        src_q = np.cumsum(src_counts) / img[c].size
        tmpl_q = np.cumsum(tmpl_counts) / ref[c].size
        out[c] = np.interp(src_q, tmpl_q, tmpl_values)[src_lookup].reshape(img[c].shape)
    return torch.from_numpy(out).to(image.device, image.dtype)


@torch.no_grad()
def sample_opensr(model: LatentSR, lowres: torch.Tensor, *, steps: int = 100, eta: float = 0.0,
                  temperature: float = 1.0, correction: str = "histogram", projection_iterations: int = 3,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Super-resolve low-res reflectance tiles (B, 4, h, w) the way opensr-model 1.0.8's ``SRLatentDiffusion``
    does with a v1.x LDSR-S2 checkpoint (``config_10m.yaml``: no normalisation, encoded conditioning, DDIM 100 steps,
    eta 0, temperature 1, histogram matching), returning (B, 4, 4h, 4w):

    1. the condition is the autoencoder's posterior *sample* of the 4x bilinear upsample;
    2. DDIM (:func:`ddim_scheduler`) from Gaussian noise, eps-prediction, ``eta`` scaling the per-step noise
       variance, ``temperature`` the injected noise;
    3. decode; ``correction``: ``histogram`` matches each tile's bands to the input's histograms (opensr-model),
       ``projection`` back-projects onto the input (geosr's block-average consistency), ``none`` leaves it;
       negative values are set to 0 (before the projection, after the others).

    Random numbers are drawn in opensr-model's order (posterior sample, initial latent, one draw per step) from
    ``generator``, so a generator seeded like ``torch.manual_seed`` before opensr-model's call gives the same noise.
    """
    from .consistency import project
    from .samplers import MAX_STEPS

    if not 1 <= int(steps) <= MAX_STEPS:
        from ..errors import ConfigError

        raise ConfigError(f"steps={steps}: choose 1..{MAX_STEPS} (opensr-model uses 100)")
    if correction not in CORRECTIONS:
        from ..errors import ConfigError

        raise ConfigError(f"correction={correction!r}: choose one of {', '.join(CORRECTIONS)}")
    spec = model.spec
    lowres = lowres.float()
    dev = lowres.device
    up = torch.nn.functional.interpolate(lowres, scale_factor=spec.scale, mode="bilinear", align_corners=False)
    ae = model.autoencoder
    moments = ae.quant_conv(ae.encoder(up)) if ae.quant_conv is not None else ae.encoder(up)
    mean, logvar = moments.chunk(2, dim=1)
    std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))

    def randn(shape) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device="cpu" if generator is None else generator.device).to(dev)

    cond = (mean + std * randn(mean.shape)) * spec.autoencoder.scaling_factor
    x = randn(cond.shape)
    sched = ddim_scheduler(spec)
    sched.set_timesteps(int(steps), device=dev)
    for t in sched.timesteps:
        eps = model.denoise(x, torch.full((x.shape[0],), int(t), device=dev, dtype=torch.long), cond)
        noise = randn(x.shape) * float(temperature)
        x = sched.step(eps, t, x, eta=float(eta), variance_noise=noise).prev_sample
    out = model.decode(x).float()
    if correction == "histogram":
        out = torch.stack([match_histograms(o, lr) for o, lr in zip(out, lowres)])
    elif correction == "projection":  # clamp first: the projection then reproduces the (non-negative) input
        return project(out.clamp_min(0.0), lowres, spec.scale, "average", projection_iterations)
    return out.clamp_min(0.0)


class LdsrUpsampler:
    """LDSR-S2 weights (``geosr import-weights``) sampled as opensr-model samples them (:func:`sample_opensr`).
    Registered as ``ldsr``. Each tile's noise comes from a generator seeded by (seed, the tile's global position),
    so its output does not depend on how the scene is cut; overlapping tiles draw different noise, as in LDSR-S2."""

    name = "ldsr"

    def __init__(self, model: LatentSR, *, scale: int, device: str, weights: str, steps: int, eta: float,
                 temperature: float, correction: str, projection_iterations: int) -> None:
        from ..errors import ConfigError

        if scale != model.spec.scale:
            raise ConfigError(f"tiling.scale={scale} but LDSR-S2 upsamples x{model.spec.scale}; set tiling.scale: 4")
        self.model = model.to(device).eval()
        self.scale, self.bands, self.device, self.weights = model.spec.scale, model.spec.bands, device, weights
        self.options = {"steps": int(steps), "eta": float(eta), "temperature": float(temperature),
                        "correction": correction, "projection_iterations": int(projection_iterations)}

    def describe(self) -> dict:
        from .. import __version__

        return {"name": self.name, "version": __version__, "scale": self.scale, "bands": self.bands,
                "weights": self.weights, "model_digest": self.model.spec.digest(), "sampling": dict(self.options)}

    def __call__(self, batch) -> "np.ndarray":  # noqa: F821
        import numpy as np

        from ..errors import ConfigError
        from ..upsamplers.base import check_output

        if batch.pixels.shape[1] != self.bands:
            raise ConfigError(f"LDSR-S2 takes {self.bands} bands (red, green, blue, NIR); the input has "
                              f"{batch.pixels.shape[1]}: select them with input.bands")
        outs = []
        for px, (r, c) in zip(batch.pixels, batch.origins):
            gen = torch.Generator().manual_seed((int(batch.seed) * 1_000_003 + int(r)) * 1_000_033 + int(c))
            lr = torch.from_numpy(np.nan_to_num(np.ascontiguousarray(px[None], dtype=np.float32))).to(self.device)
            outs.append(sample_opensr(self.model, lr, generator=gen, **self.options).cpu().numpy())
        return check_output(batch, np.concatenate(outs), self.scale)


def build(*, scale: int, batch_size: int = 16, device: str = "auto", bands: int | None = None, seed: int = 0,
          weights: str | None = None, steps: int = 100, eta: float = 0.0, temperature: float = 1.0,
          correction: str = "histogram", projection_iterations: int = 3) -> LdsrUpsampler:
    """Registry factory (``model.name: ldsr``, ``model.params.weights: DIR`` from ``geosr import-weights``)."""
    from ..errors import ConfigError
    from ..upsamplers.base import resolve_device
    from .weights_io import load_model

    if not weights:
        raise ConfigError("model ldsr needs model.params.weights: the directory geosr import-weights wrote "
                          "(docs/model.md says how to get LDSR-S2's checkpoint)")
    if correction not in CORRECTIONS:
        raise ConfigError(f"model.params.correction={correction!r}: choose one of {', '.join(CORRECTIONS)}")
    dev = resolve_device(device)
    model = load_model(Path(weights), dev)
    if bands is not None and bands != model.spec.bands:
        raise ConfigError(f"the input has {bands} bands but LDSR-S2 takes {model.spec.bands} (red, green, blue, NIR): "
                          "select them with --bands")
    return LdsrUpsampler(model, scale=scale, device=dev, weights=str(weights), steps=steps, eta=eta,
                         temperature=temperature, correction=correction, projection_iterations=projection_iterations)
