"""``OutputSpec``: everything that fixes the layout of an output store, validated once.

A spec is a pure value (frozen, hashable, JSON round-trippable through :meth:`OutputSpec.to_dict` /
:meth:`OutputSpec.from_dict`); the store records it at creation so that a resumed run can check it is
writing into the store it planned. Every invalid value raises :class:`~geosr.errors.ConfigError`
naming the field and what it accepts.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import ConfigError
from ..grid import Block

if TYPE_CHECKING:
    from ..config import OutputConfig

DTYPES = ("uint16", "float32")
COMPRESSORS = ("zstd", "blosc", "none")
ZARR_FORMATS = (2, 3)
# names the store uses next to the data variable (coordinates, CRS, overview group); overview levels
# also use x_<l>/y_<l> (_LEVEL_COORD)
RESERVED_NAMES = ("band", "x", "y", "spatial_ref", "overviews")
_LEVEL_COORD = re.compile(r"^[xy]_[0-9]+$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class OutputSpec:
    """Layout of one output store (see ``docs/architecture.md``, Store contract).

    ``shape`` is (bands, H, W) at output resolution; ``chunk`` and ``block`` are output pixels, with
    ``block`` a multiple of ``chunk`` (and of ``shard`` when sharding); ``transform`` is the rasterio
    affine (a, b, c, d, e, f) of the output grid, north-up (b = d = 0). ``dtype`` "uint16" stores
    reflectance x 10000 with nodata 0, "float32" stores reflectance with NaN nodata. ``overviews`` is
    the number of 2x overview levels; None picks levels until the longer side is under 256 px.
    ``uncertainty_samples`` (0 = off, else >= 2) adds :attr:`std_variable` (``<variable>_std``): the
    per-pixel standard deviation over that many model samples, at level 0 only, encoded like ``variable``.
    """

    shape: tuple[int, int, int]
    chunk: int
    block: int
    band_names: tuple[str, ...]
    crs_wkt: str
    transform: tuple[float, ...]
    variable: str = "reflectance"
    dtype: str = "uint16"
    zarr_format: int = 2
    shard: int | None = None
    compressor: str = "zstd"
    level: int = 3
    overviews: int | None = None
    uncertainty_samples: int = 0

    def __post_init__(self) -> None:
        def _set(name: str, value: Any) -> None:  # normalise types on a frozen instance
            object.__setattr__(self, name, value)

        try:
            shape = tuple(int(v) for v in self.shape)
        except (TypeError, ValueError):
            raise ConfigError(f"output shape {self.shape!r}: expected (bands, height, width) integers") from None
        if len(shape) != 3 or min(shape) < 1:
            raise ConfigError(f"output shape {self.shape!r}: expected (bands, height, width), each at least 1")
        _set("shape", shape)
        _set("chunk", _positive_int("chunk", self.chunk))
        _set("block", _positive_int("block", self.block))
        if self.block % self.chunk:
            raise ConfigError(
                f"block={self.block} must be a multiple of chunk={self.chunk} so that every output chunk "
                "is written by exactly one block"
            )
        names = tuple(str(n) for n in self.band_names)
        if len(names) != shape[0]:
            raise ConfigError(f"{len(names)} band names {names} for {shape[0]} bands; give one name per band")
        if any(not n for n in names) or len(set(names)) != len(names):
            raise ConfigError(f"band names {names} must be non-empty and unique")
        _set("band_names", names)
        _check_crs(self.crs_wkt)
        try:
            transform = tuple(float(v) for v in tuple(self.transform)[:6])
        except (TypeError, ValueError):
            raise ConfigError(f"transform {self.transform!r}: expected 6 numbers (a, b, c, d, e, f)") from None
        if len(transform) != 6 or not all(math.isfinite(v) for v in transform):
            raise ConfigError(f"transform {self.transform!r}: expected 6 finite numbers (a, b, c, d, e, f)")
        a, b, _, d, e, _ = transform
        if b != 0.0 or d != 0.0:
            raise ConfigError(
                f"transform {transform} is rotated or sheared (b={b}, d={d}); 1-D x/y coordinates need a "
                "north-up grid: warp the input to a north-up grid first (e.g. gdalwarp)"
            )
        if a == 0.0 or e == 0.0:
            raise ConfigError(f"transform {transform} has a zero pixel size")
        _set("transform", transform)
        if (not isinstance(self.variable, str) or not _NAME.match(self.variable) or self.variable in RESERVED_NAMES
                or _LEVEL_COORD.match(self.variable)):
            raise ConfigError(
                f"variable {self.variable!r}: use a name of letters, digits, '_', '-' or '.', starting with a "
                f"letter, and none of {', '.join(RESERVED_NAMES)}, x_<n>, y_<n>"
            )
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if self.zarr_format not in ZARR_FORMATS:
            raise ConfigError(f"zarr_format {self.zarr_format!r}: use 2 or 3")
        _set("zarr_format", int(self.zarr_format))
        if self.compressor not in COMPRESSORS:
            raise ConfigError(f"compressor {self.compressor!r}: use one of {', '.join(COMPRESSORS)}")
        if not 0 <= int(self.level) <= 22:
            raise ConfigError(f"level={self.level}: compression level must be within 0..22")
        _set("level", int(self.level))
        if self.shard is not None:
            _set("shard", _positive_int("shard", self.shard))
            if self.zarr_format != 3:
                raise ConfigError("shard needs zarr_format 3 (Zarr v2 has no sharding); set zarr_format: 3 or drop shard")
            if self.shard % self.chunk or self.block % self.shard:
                raise ConfigError(
                    f"shard={self.shard} must be a multiple of chunk={self.chunk} and divide block={self.block}, "
                    "so that every block writes whole shards"
                )
        if self.overviews is not None:
            n = int(self.overviews)
            most = max_overview_levels(shape[1], shape[2])
            if not 0 <= n <= most:
                raise ConfigError(
                    f"overviews={self.overviews}: a {shape[1]} x {shape[2]} output has room for 0..{most} 2x levels"
                )
            _set("overviews", n)
        try:
            samples = int(self.uncertainty_samples)
        except (TypeError, ValueError):
            samples = -1
        if samples != self.uncertainty_samples or samples < 0 or samples == 1:
            raise ConfigError(
                f"uncertainty_samples={self.uncertainty_samples!r}: use 0 (no uncertainty variable) or the number "
                "of samples per tile, at least 2"
            )
        _set("uncertainty_samples", samples)

    @property
    def std_variable(self) -> str | None:
        """Name of the per-pixel standard deviation variable (``<variable>_std``), None without uncertainty."""
        return f"{self.variable}_std" if self.uncertainty_samples else None

    @property
    def variables(self) -> tuple[str, ...]:
        """The data variables at level 0: ``variable``, then ``std_variable`` when there is one."""
        return (self.variable, self.std_variable) if self.std_variable else (self.variable,)

    # -- geometry ---------------------------------------------------------------------------------
    @property
    def bands(self) -> int:
        return self.shape[0]

    @property
    def height(self) -> int:
        return self.shape[1]

    @property
    def width(self) -> int:
        return self.shape[2]

    @property
    def resolution(self) -> tuple[float, float]:
        """Pixel size (x, y), positive."""
        return abs(self.transform[0]), abs(self.transform[4])

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of the pixel edges, in the output CRS."""
        a, _, c, _, e, f = self.transform
        xs = (c, c + a * self.width)
        ys = (f, f + e * self.height)
        return min(xs), min(ys), max(xs), max(ys)

    @property
    def overview_levels(self) -> int:
        """Number of 2x overview levels (``overviews``, or until the longer side is under 256 px)."""
        if self.overviews is not None:
            return self.overviews
        return auto_overview_levels(self.height, self.width)

    @property
    def block_grid_shape(self) -> tuple[int, int]:
        return math.ceil(self.height / self.block), math.ceil(self.width / self.block)

    @property
    def n_blocks(self) -> int:
        ny, nx = self.block_grid_shape
        return ny * nx

    def block_at(self, by: int, bx: int) -> Block:
        """The block (by, bx) of this output, exactly as :class:`geosr.grid.BlockGrid` cuts it."""
        ny, nx = self.block_grid_shape
        if not (0 <= by < ny and 0 <= bx < nx):
            raise IndexError(f"block ({by}, {bx}) outside the {ny} x {nx} block grid")
        y0, x0 = by * self.block, bx * self.block
        return Block(by, bx, y0, min(y0 + self.block, self.height), x0, min(x0 + self.block, self.width))

    def blocks(self) -> Iterator[Block]:
        ny, nx = self.block_grid_shape
        for by in range(ny):
            for bx in range(nx):
                yield self.block_at(by, bx)

    @cached_property
    def block_keys(self) -> frozenset[str]:
        return frozenset(b.key for b in self.blocks())

    def check_block(self, block: Block) -> None:
        """Raise ``ValueError`` unless ``block`` is exactly one of this output's blocks (whole chunks)."""
        try:
            expected = self.block_at(block.by, block.bx)
        except IndexError as e:
            raise ValueError(f"{block}: {e}") from None
        if (block.y0, block.y1, block.x0, block.x1) != (expected.y0, expected.y1, expected.x0, expected.x1):
            raise ValueError(
                f"{block} is not aligned to this output's block grid (block={self.block}, chunk={self.chunk}); "
                f"expected {expected}: the store writes whole chunks only, never part of one"
            )

    # -- serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["band_names"] = list(self.band_names)
        d["transform"] = list(self.transform)
        if not self.uncertainty_samples:
            del d["uncertainty_samples"]  # off: the plan of a store without it reads as before the option existed
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OutputSpec":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ConfigError(
                f"output spec has unknown fields {sorted(unknown)}; the store was written by a newer geosr"
            )
        return cls(**d)

    @classmethod
    def from_config(cls, output: "OutputConfig", *, shape: tuple[int, int, int], chunk: int, block: int,
                    band_names: tuple[str, ...], crs_wkt: str, transform: tuple[float, ...]) -> "OutputSpec":
        """Build a spec from a :class:`geosr.config.OutputConfig` plus the scene's output geometry."""
        return cls(
            shape=shape, chunk=chunk, block=block, band_names=band_names, crs_wkt=crs_wkt, transform=transform,
            variable=output.variable, dtype=output.dtype, zarr_format=output.zarr_format, shard=output.shard,
            compressor=output.compressor, level=output.level, overviews=output.overviews,
            uncertainty_samples=output.uncertainty_samples,
        )


def auto_overview_levels(height: int, width: int, smallest: int = 256) -> int:
    """Levels 1..L, each 2x smaller, until the longer side of level L is under ``smallest`` px."""
    n, side = 0, max(height, width)
    while side >= smallest:
        side = math.ceil(side / 2)
        n += 1
    return n


def max_overview_levels(height: int, width: int) -> int:
    """Levels until the longer side reaches 1 px."""
    n, side = 0, max(height, width)
    while side > 1:
        side = math.ceil(side / 2)
        n += 1
    return n


def _positive_int(name: str, value: Any) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r}: expected a positive number of output pixels") from None
    if v < 1 or v != value:
        raise ConfigError(f"{name}={value!r}: expected a positive number of output pixels")
    return v


def _check_crs(wkt: str) -> None:
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    if not isinstance(wkt, str) or not wkt.strip():
        raise ConfigError("crs_wkt is empty; the output needs the input's CRS as WKT")
    try:
        CRS.from_wkt(wkt)
    except CRSError as e:
        raise ConfigError(f"crs_wkt is not a valid WKT CRS ({e}); pass the input CRS as WKT") from None
