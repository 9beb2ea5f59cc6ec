"""Upsampler registry. Built-ins are the classic kernels; models register under the entry-point
group ``geosr.upsamplers`` (a callable ``factory(scale=, batch_size=, device=, bands=, seed=, **params)``)."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, Callable

from ..errors import ConfigError
from .base import DrawsSamples, ProjectsBlended, TileBatch, Upsampler, UpsamplesWindows, resolve_device
from .classic import KINDS, ClassicUpsampler

__all__ = ["TileBatch", "Upsampler", "DrawsSamples", "ProjectsBlended", "UpsamplesWindows", "resolve_device",
           "build_upsampler", "available", "register", "sampling_models", "require_sampling"]

_EXTRA: dict[str, Callable[..., Upsampler]] = {}


def register(name: str, factory: Callable[..., Upsampler]) -> None:
    """Register a factory under ``name`` (tests and plugins)."""
    _EXTRA[name] = factory


# name -> ("module:factory", whether its upsampler draws samples); imported only when asked for, so
# torch/diffusers load lazily (and the abilities of a built-in model are known without importing it)
_BUILTIN: dict[str, tuple[str, bool]] = {"ldm": ("geosr.diffusion.upsampler:build", True),
                                         "ldsr": ("geosr.diffusion.ldsr:build", False)}


def _builtin_models() -> dict[str, str]:
    return {name: target for name, (target, _) in _BUILTIN.items()}


def sampling_models() -> list[str]:
    """Models known to draw several samples per tile (:class:`DrawsSamples`): the built-in ones, plus
    registered factories whose product class says so (``register`` of a class with ``sample_with_std``)."""
    names = {name for name, (_, samples) in _BUILTIN.items() if samples}
    names |= {n for n, f in _EXTRA.items() if isinstance(f, DrawsSamples)}
    return sorted(names)


def require_sampling(upsampler: Upsampler, samples: int) -> None:
    """Raise :class:`ConfigError` when ``samples`` (``output.uncertainty_samples``) asks for uncertainty
    and ``upsampler`` cannot draw samples. Call it once the model is built, before anything is written."""
    if samples and not isinstance(upsampler, DrawsSamples):
        name = getattr(upsampler, "name", type(upsampler).__name__)
        raise ConfigError(
            f"output.uncertainty_samples={samples} needs a model that draws samples (sample_with_std); model "
            f"{name!r} is deterministic: use {' or '.join(sampling_models())} (or a plugin model with "
            "sample_with_std(batch, n)), or set output.uncertainty_samples: 0"
        )


def available() -> list[str]:
    names = set(KINDS) | set(_EXTRA) | set(_builtin_models())
    names |= {ep.name for ep in entry_points(group="geosr.upsamplers")}
    return sorted(names)


def build_upsampler(name: str, *, scale: int, batch_size: int = 16, device: str = "auto",
                    bands: int | None = None, seed: int = 0, params: dict[str, Any] | None = None) -> Upsampler:
    params = dict(params or {})
    if name in KINDS:
        return ClassicUpsampler(name, scale=scale, batch_size=batch_size, device=device, bands=bands, **params)
    factory = _EXTRA.get(name)
    if factory is None and name in _builtin_models():
        import importlib

        mod, attr = _builtin_models()[name].split(":")
        factory = getattr(importlib.import_module(mod), attr)
    if factory is None:
        for ep in entry_points(group="geosr.upsamplers"):
            if ep.name == name:
                factory = ep.load()
                break
    if factory is None:
        raise ConfigError(f"model.name={name!r} is unknown; available: {', '.join(available())}")
    return factory(scale=scale, batch_size=batch_size, device=device, bands=bands, seed=seed, **params)
