"""``ModelRecipe``: what to build, as a small picklable value (an executor builds the model where its blocks
run: in this process, or once per Dask GPU worker)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .base import Upsampler

if TYPE_CHECKING:
    from ..config import RunConfig


@dataclass(frozen=True)
class ModelRecipe:
    """The registry's ``build_upsampler`` arguments. The batch size is not part of :attr:`key`: it adapts at
    run time (:class:`geosr.upsample.BatchSize`)."""

    name: str
    params_json: str
    scale: int
    device: str
    seed: int
    bands: int
    batch_size: int

    @classmethod
    def from_config(cls, cfg: RunConfig, bands: int) -> ModelRecipe:
        m = cfg.model
        return cls(m.name, json.dumps(m.params_dict(), sort_keys=True, default=str), cfg.tiling.scale, m.device,
                   m.seed, bands, m.batch_size)

    @property
    def params(self) -> dict[str, Any]:
        return dict(json.loads(self.params_json))

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.name, self.params_json, self.scale, self.device, self.seed, self.bands)

    def build(self) -> Upsampler:
        from . import build_upsampler

        return build_upsampler(self.name, scale=self.scale, batch_size=self.batch_size, device=self.device,
                               bands=self.bands, seed=self.seed, params=self.params)
