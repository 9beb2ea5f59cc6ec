"""The upsampler interface every model plugs into.

An upsampler maps a batch of low-resolution tiles ``(B, C, h, w)`` float32 reflectance to
``(B, C, scale*h, scale*w)`` float32. Alongside the pixels it receives what a stochastic model needs to
be reproducible and seamless: a run seed and each tile's global low-res position (row, col of its
top-left pixel in the scene), so noise can be keyed on (seed, global pixel) rather than drawn from a
running RNG. Deterministic upsamplers ignore both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class TileBatch:
    """A batch of low-res tiles and where they sit in the scene."""

    pixels: np.ndarray  # (B, C, h, w) float32 reflectance
    origins: np.ndarray  # (B, 2) int64 global low-res (row, col) of each tile's top-left pixel
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pixels.ndim != 4:
            raise ValueError(f"tiles must be (B, C, h, w); got shape {self.pixels.shape}")
        if self.origins.shape != (self.pixels.shape[0], 2):
            raise ValueError(f"origins must be (B, 2); got {self.origins.shape} for {self.pixels.shape[0]} tiles")

    def __len__(self) -> int:
        return self.pixels.shape[0]


@runtime_checkable
class Upsampler(Protocol):
    """What the engine needs from a model. ``describe()`` goes into provenance and the config hash."""

    name: str
    version: str
    scale: int
    bands: int | None  # None: any band count
    batch_size: int
    device: str

    def __call__(self, batch: TileBatch) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


# -- abilities: what a model may offer beyond the contract above. The engine asks ``isinstance(up, Ability)``
# (structural: any class with the method has the ability), never for a model's class or name.
@runtime_checkable
class ProjectsBlended(Protocol):
    """Re-imposes low-resolution consistency on a blended block: ``project_blended(hr (C,sH,sW), lowres (C,H,W))``
    -> (C,sH,sW) float32, local to each low-res pixel (so aligned block partitions give identical bytes)."""

    def project_blended(self, hr: np.ndarray, lowres: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class DrawsSamples(Protocol):
    """A stochastic model: ``sample_with_std(batch, n)`` -> (mean, std) over ``n`` samples, each of the batch's
    output shape (``output.uncertainty_samples``)."""

    def sample_with_std(self, batch: TileBatch, n: int) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class UpsamplesWindows(Protocol):
    """A model that can upsample a block's whole low-res window at once and give the tiled path's exact bytes
    (the classic kernels, :mod:`geosr.upsamplers.window_path`). Returns None when it cannot for this window
    (then the engine uses the tiles)."""

    def upsample_block_window(self, grid: Any, block: Any, window: np.ndarray, window_valid: np.ndarray,
                              window_origin: tuple[int, int], ramp: str,
                              out: np.ndarray | None = None) -> np.ndarray | None: ...


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else is returned checked.
    ``cpu`` is returned as is, without importing torch (seconds of start-up the classic kernels skip)."""
    if device == "cpu":
        return device
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        from ..errors import ConfigError

        raise ConfigError(f"device={device!r} but no CUDA device is visible; use device=cpu or auto")
    return device


def check_output(batch: TileBatch, out: np.ndarray, scale: int) -> np.ndarray:
    b, c, h, w = batch.pixels.shape
    if out.shape != (b, c, h * scale, w * scale):
        raise RuntimeError(f"upsampler returned {out.shape}; expected {(b, c, h * scale, w * scale)}")
    return out


def check_samples(batch: TileBatch, mean: np.ndarray, std: np.ndarray, scale: int) -> None:
    """Raise unless ``sample_with_std`` returned (mean, std), each of the batch's output shape."""
    b, c, h, w = batch.pixels.shape
    want = (b, c, h * scale, w * scale)
    if np.shape(mean) != want or np.shape(std) != want:
        raise RuntimeError(f"sample_with_std returned {np.shape(mean)} and {np.shape(std)}; expected {want} each")
