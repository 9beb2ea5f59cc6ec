"""``ScenePlan``: everything that fixes a scene's output bytes, plus where it goes -- the first step of the
data's path, shared by every executor."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .config import RunConfig
from .grid import BlockGrid, TileGrid
from .io.source import SourceMeta
from .store import OutputSpec


def output_transform(transform: tuple[float, ...], scale: int) -> tuple[float, ...]:
    """Low-res affine (a, b, c, d, e, f) -> the output's: same origin, pixels ``scale`` times smaller."""
    a, b, c, d, e, f = transform[:6]
    return (a / scale, b / scale, c, d / scale, e / scale, f)


@dataclass(frozen=True)
class ScenePlan:
    """Everything that fixes a scene's output bytes, plus where it goes.

    ``model`` is the model's ``describe()`` (empty while the model is not built yet: such a plan fixes the
    geometry only). ``tiles_on_read`` says whether the read step cuts the tiles at once (every model but one
    with a window path, :class:`geosr.upsamplers.UpsamplesWindows`, needs them)."""

    input_uri: str
    output_uri: str
    config: RunConfig
    meta: SourceMeta
    model: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    tiles_on_read: bool = field(default=True, compare=False)

    @property
    def grid(self) -> TileGrid:
        t = self.config.tiling
        return TileGrid(self.meta.height, self.meta.width, t.tile, t.overlap, t.scale)

    @property
    def blocks(self) -> BlockGrid:
        t = self.config.tiling
        return BlockGrid(self.grid, t.block, t.chunk)

    @property
    def bands(self) -> int:
        return len(self.meta.band_indexes)

    def made_from(self) -> dict[str, Any]:
        """What the output is made from, part by part (recorded in the store; compared on every rerun)."""
        return {
            "input_checksum": self.meta.checksum,
            "config": self.config.config_hash(),
            "model": self.model,
            "geosr": __version__,
        }

    def parameters(self) -> dict[str, Any]:
        """Every parameter of the product (provenance; named when a rerun differs): not the storage endpoint and
        not the run's limits."""
        return self.config.model_dump(mode="json", exclude={"storage": True, "output": {"max_size_gb"}})

    def record(self) -> dict[str, Any]:
        """:meth:`made_from` plus the input's URI and the parameters, as the store keeps it (``plan.json``)."""
        return {**self.made_from(), "input_uri": self.input_uri, "parameters": self.parameters()}

    @property
    def plan_hash(self) -> str:
        """Changes whenever the output's bytes could: input, config, model, geosr version."""
        doc = self.made_from()
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:20]

    def output_spec(self) -> OutputSpec:
        h, w = self.grid.out_shape
        t = self.config.tiling
        return OutputSpec.from_config(
            self.config.output, shape=(self.bands, h, w), chunk=t.chunk, block=t.block,
            band_names=tuple(self.meta.band_names), crs_wkt=self.meta.crs_wkt,
            transform=output_transform(self.meta.transform, t.scale))

    def estimated_bytes(self) -> int:
        """Uncompressed size of the output at full resolution (every band, every overview level, the std
        variable when there is one): what :attr:`geosr.config.OutputConfig.max_bytes` limits."""
        h, w = self.grid.out_shape
        itemsize = 2 if self.config.output.dtype == "uint16" else 4
        level0 = self.bands * h * w * itemsize
        variables = 2 if self.config.output.uncertainty_samples else 1
        return int(level0 * variables + level0 / 3)  # overviews: 1/4 + 1/16 + ... < 1/3
