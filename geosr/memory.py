"""In-memory fakes of :class:`~geosr.rasters.RasterSource` and :class:`~geosr.rasters.RasterSink`, and
:func:`super_resolve_array`: an image in, the super-resolved image out, through the production path
(the read and model steps every executor runs: tiles on the scene's global grid, nodata filled per tile,
the tile stream's batching, blending with the global weights, projection) -- with no file anywhere.
``geosr eval`` super-resolves through it; tests use it to run the engine on arrays."""

from __future__ import annotations

import hashlib
import math
from typing import Any, Literal

import numpy as np

from .config import RunConfig, TilingConfig
from .grid import Block
from .io.source import SourceMeta
from .local_executor import LocalExecutor
from .plan import ScenePlan
from .retry import NO_RETRY
from .upsamplers import Upsampler, UpsamplesWindows

# a north-up pixel grid in a projected CRS: metadata only, never used for pixels
_WKT = ('PROJCS["WGS 84 / UTM zone 33N",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
        'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],'
        'PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",15],PARAMETER["scale_factor",0.9996],'
        'PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1],AUTHORITY["EPSG","32633"]]')


class MemorySource:
    """A scene held in memory: (C, H, W) float32 reflectance and an optional (H, W) valid mask."""

    def __init__(self, image: np.ndarray, valid: np.ndarray | None = None, *, uri: str = "memory://scene",
                 band_names: tuple[str, ...] | None = None,
                 transform: tuple[float, ...] = (1.0, 0.0, 500000.0, 0.0, -1.0, 0.0), crs_wkt: str = _WKT) -> None:
        img = np.ascontiguousarray(image, dtype=np.float32)
        if img.ndim != 3:
            raise ValueError(f"image must be (bands, height, width); got {img.shape}")
        c, h, w = img.shape
        self.image = img
        self.valid = np.ones((h, w), bool) if valid is None else np.asarray(valid, dtype=bool)
        names = band_names or tuple(f"B{i + 1}" for i in range(c))
        self._meta = SourceMeta(uri=uri, height=h, width=w, band_indexes=tuple(range(1, c + 1)), band_names=names,
                                dtype="float32", crs_wkt=crs_wkt, transform=tuple(transform), nodata=None,
                                scale_factor=1.0, add_offset=0.0,
                                checksum="sha256:" + hashlib.sha256(img.tobytes()).hexdigest())

    @property
    def meta(self) -> SourceMeta:
        return self._meta

    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        (r0, r1), (c0, c1) = rows, cols
        return self.image[:, r0:r1, c0:c1].copy(), self.valid[r0:r1, c0:c1].copy()


class MemorySink:
    """The blocks of one scene in memory: ``data`` (C, sH, sW) float32 (NaN where not valid), ``valid``,
    ``std`` (when given) and the stats of every block marked done."""

    def __init__(self, bands: int, height: int, width: int) -> None:
        self.data = np.full((bands, height, width), np.nan, np.float32)
        self.valid = np.zeros((height, width), bool)
        self.std: np.ndarray | None = None
        self.done: dict[str, dict[str, Any]] = {}

    def write_block(self, block: Block, data: np.ndarray, valid: np.ndarray, std: np.ndarray | None = None) -> None:
        region = (slice(None), slice(block.y0, block.y1), slice(block.x0, block.x1))
        self.data[region] = np.where(valid[None], data, np.nan)
        self.valid[region[1:]] = valid
        if std is not None:
            if self.std is None:
                self.std = np.full_like(self.data, np.nan)
            self.std[region] = np.where(valid[None], std, np.nan)

    def mark_done(self, block: Block, stats: dict[str, Any]) -> None:
        self.done[block.key] = stats


def one_block_tiling(height: int, width: int, *, scale: int, tile: int, overlap: int,
                     ramp: Literal["cosine", "linear", "uniform"] = "cosine") -> TilingConfig:
    """Tiling for an in-memory scene: ``tile``/``overlap`` as given, one block (of whole chunks) for the whole
    output -- any block partition gives the same bytes, one block is the fastest in memory."""
    unit = 64 * scale  # a chunk is at least 64 px and a multiple of the scale
    side = max(unit, math.ceil(max(height, width) * scale / unit) * unit)
    return TilingConfig(scale=scale, tile=tile, overlap=overlap, ramp=ramp, chunk=side, block=side)


def super_resolve_array(upsampler: Upsampler, image: np.ndarray, cfg: RunConfig,
                        valid: np.ndarray | None = None) -> MemorySink:
    """Super-resolve ``image`` (C, H, W) reflectance with ``upsampler`` exactly as ``geosr run`` would with
    ``cfg`` (its tiling, seed, ramp and uncertainty samples), block by block through the executors' read and
    model steps, into a :class:`MemorySink`."""
    source = MemorySource(image, valid)
    plan = ScenePlan(source.meta.uri, "memory://output", cfg, source.meta, upsampler.describe(),
                     tiles_on_read=not isinstance(upsampler, UpsamplesWindows))
    h, w = plan.grid.out_shape
    sink = MemorySink(plan.bands, h, w)
    executor = LocalExecutor(workers=1, upsampler=upsampler)
    executor.load_model(None, cfg.output.uncertainty_samples)
    executor.run_blocks(plan, source, sink, list(plan.blocks), lambda stats: None, NO_RETRY)
    return sink
