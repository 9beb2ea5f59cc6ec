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


def read_ckpt(path: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict, read without executing pickled code."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"checkpoint {p} does not exist")
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for anything that is not plain tensors/containers
        raise ModelError(f"cannot read {p} safely (weights_only=True): {str(e).splitlines()[0]}") from None
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
