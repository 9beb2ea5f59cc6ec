"""What the lifecycle reads from and writes to, as Protocols: a :class:`RasterSource` (a scene: its
:class:`~geosr.io.source.SourceMeta` and windowed reads) and a :class:`RasterSink` (where the blocks go).

Production: :class:`geosr.io.source.GdalSource` (GeoTIFF/COG, local or S3) and :class:`geosr.store.ZarrOutput`.
In memory: :class:`geosr.memory.MemorySource` and :class:`geosr.memory.MemorySink`, so ``geosr eval`` and tests
run the production path -- tiles, batching, blending, nodata fill, projection -- without files.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from .grid import Block
from .io.source import SourceMeta


class RasterSource(Protocol):
    @property
    def meta(self) -> SourceMeta: ...

    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(C,h,w) float32 reflectance and (h,w) bool valid mask for the window [r0,r1) x [c0,c1)."""
        ...


class RasterSink(Protocol):
    def write_block(self, block: Block, data: np.ndarray, valid: np.ndarray, std: np.ndarray | None = None) -> None:
        """Store exactly ``block``'s region: (C,h,w) float32 reflectance, (h,w) valid mask, optional std."""
        ...

    def mark_done(self, block: Block, stats: dict[str, Any]) -> None:
        """Record ``block`` as done (after :meth:`write_block` returned)."""
        ...
