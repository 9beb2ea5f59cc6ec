"""Checkpoint directories: ``config.json`` + one safetensors file per network. No pickle anywhere.

Layout::

    <dir>/config.json                 ModelSpec (architecture, numerics, training provenance)
    <dir>/autoencoder.safetensors     autoencoder state dict
    <dir>/denoiser.safetensors        denoiser state dict (the EMA weights for trained models)
    <dir>/mean.safetensors            mean predictor state dict (only when config.json has ``mean``)

Training state (optimiser moments, step counters, RNG) lives in ``<dir>/train/`` as safetensors + JSON.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelError
from .model import LatentSR
from .spec import ModelSpec

CONFIG = "config.json"
AE_FILE = "autoencoder.safetensors"
DENOISER_FILE = "denoiser.safetensors"
MEAN_FILE = "mean.safetensors"


def bundled_dir() -> Path:
    """The default model shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "data" / "models" / "geosr-ldm-x4"


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    tmp = Path(str(path) + ".tmp")
    save_file(clean, str(tmp), metadata=metadata)
    tmp.replace(path)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"weights file {p} does not exist")
    try:
        return load_file(str(p))
    except Exception as e:  # safetensors raises its own SafetensorError / OSError
        raise ModelError(f"cannot read weights {p}: {e}") from None


def save_model(model: LatentSR, directory: str | Path, spec: ModelSpec | None = None) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (spec or model.spec).save(d / CONFIG)
    save_tensors(model.autoencoder.state_dict(), d / AE_FILE, {"format": "pt"})
    save_tensors(model.denoiser.state_dict(), d / DENOISER_FILE, {"format": "pt"})
    if model.mean is not None:
        save_tensors(model.mean.state_dict(), d / MEAN_FILE, {"format": "pt"})
    return d


def _load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str, path: Path) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise ModelError(f"{path}: {what} weights do not match config.json "
                         f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                         f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})")
    for k, v in tensors.items():
        if own[k].shape != v.shape:
            raise ModelError(f"{path}: {what} weight {k} has shape {tuple(v.shape)}; config.json expects {tuple(own[k].shape)}")
    module.load_state_dict(tensors)


def load_model(directory: str | Path, device: str | torch.device = "cpu", denoiser: bool = True) -> LatentSR:
    """A checkpoint directory -> :class:`LatentSR` in eval mode; ``denoiser=False`` skips the denoiser (the
    mean predictor alone; no diffusers import)."""
    d = Path(directory)
    if not d.is_dir():
        raise ModelError(f"model directory {d} does not exist (expected config.json + *.safetensors)")
    spec = ModelSpec.load(d / CONFIG)
    model = LatentSR(spec, denoiser=denoiser)
    _load_into(model.autoencoder, load_tensors(d / AE_FILE), "autoencoder", d)
    if denoiser:
        _load_into(model.denoiser, load_tensors(d / DENOISER_FILE), "denoiser", d)
    if model.mean is not None:
        _load_into(model.mean, load_tensors(d / MEAN_FILE), "mean predictor", d)
    return model.to(device).eval()


def attach_denoiser(model: LatentSR, directory: str | Path, device: str | torch.device = "cpu") -> LatentSR:
    """Build and load the denoiser of a model loaded with ``denoiser=False`` (in place; returns the model)."""
    from .model import build_denoiser

    d = Path(directory)
    ref = LatentSR.denoiser_shape(model.spec)
    net = build_denoiser(model.spec.denoiser, *ref)
    _load_into(net, load_tensors(d / DENOISER_FILE), "denoiser", d)
    model.denoiser = net.to(device).eval()
    return model
