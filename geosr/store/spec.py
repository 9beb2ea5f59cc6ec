"""``OutputSpec``: everything that fixes the layout of an output store, validated once.

A spec is a pure value (a frozen pydantic model, hashable, JSON round-trippable through
:meth:`OutputSpec.to_dict` / :meth:`OutputSpec.from_dict`) built from the output configuration
(:meth:`OutputSpec.from_config`); the store records it at creation so that a resumed run can check it is
writing into the store it planned. Every invalid value raises :class:`~geosr.errors.ConfigError`
naming the field and what it accepts.
"""

from __future__ import annotations

import math
import re
from functools import cached_property
from typing import Any, Iterator

from pydantic import ValidationError, field_validator, model_validator

from ..config import OutputLayout, format_errors
from ..errors import ConfigError
from ..grid import Block

# names the store uses next to the data variable (coordinates, CRS, overview group); overview levels
# also use x_<l>/y_<l> (_LEVEL_COORD)
RESERVED_NAMES = ("band", "x", "y", "spatial_ref", "overviews")
_LEVEL_COORD = re.compile(r"^[xy]_[0-9]+$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


class OutputSpec(OutputLayout):
    """Layout of one output store (see ``docs/architecture.md``, Store contract): the output configuration's
    layout fields (:class:`geosr.config.OutputLayout`: the same fields, defaults and checks) plus the scene's
    output geometry.

    ``shape`` is (bands, H, W) at output resolution; ``chunk`` and ``block`` are output pixels, with
    ``block`` a multiple of ``chunk`` (and of ``shard`` when sharding); ``transform`` is the rasterio
    affine (a, b, c, d, e, f) of the output grid, north-up (b = d = 0). ``dtype`` "uint16" stores
    reflectance x 10000 with nodata 0, "float32" stores reflectance with NaN nodata. ``overviews`` is
    the number of 2x overview levels; None picks levels until the longer side is under 256 px.
    ``uncertainty_samples`` (0 = off, else >= 2) adds :attr:`std_variable` (``<variable>_std``): the
    per-pixel standard deviation over that many model samples, at level 0 only, encoded like ``variable``.
    Invalid values raise :class:`~geosr.errors.ConfigError` naming the field and what it accepts.
    """

    shape: tuple[int, int, int]
    chunk: int
    block: int
    band_names: tuple[str, ...]
    crs_wkt: str
    transform: tuple[float, float, float, float, float, float]

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigError(format_errors(e, "output spec")) from None

    @field_validator("shape", mode="before")
    @classmethod
    def _shape(cls, v: Any) -> tuple[int, int, int]:
        try:
            shape = tuple(int(x) for x in v)
        except (TypeError, ValueError):
            raise ValueError(f"expected (bands, height, width) integers, got {v!r}") from None
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"{v!r}: expected (bands, height, width), each at least 1")
        return shape  # type: ignore[return-value]

    @field_validator("chunk", "block", mode="before")
    @classmethod
    def _pixels(cls, v: Any) -> int:
        try:
            n = int(v)
        except (TypeError, ValueError):
            raise ValueError(f"{v!r}: expected a positive number of output pixels") from None
        if n < 1 or n != v:
            raise ValueError(f"{v!r}: expected a positive number of output pixels")
        return n

    @field_validator("band_names", mode="before")
    @classmethod
    def _names(cls, v: Any) -> tuple[str, ...]:
        names = tuple(str(n) for n in v)
        if any(not n for n in names) or len(set(names)) != len(names):
            raise ValueError(f"band names {names} must be non-empty and unique")
        return names

    @field_validator("crs_wkt")
    @classmethod
    def _crs(cls, v: str) -> str:
        _check_crs(v)
        return v

    @field_validator("transform", mode="before")
    @classmethod
    def _transform(cls, v: Any) -> tuple[float, ...]:
        try:
            t = tuple(float(x) for x in tuple(v)[:6])
        except (TypeError, ValueError):
            raise ValueError(f"{v!r}: expected 6 numbers (a, b, c, d, e, f)") from None
        if len(t) != 6 or not all(math.isfinite(x) for x in t):
            raise ValueError(f"{v!r}: expected 6 finite numbers (a, b, c, d, e, f)")
        a, b, _, d, e, _ = t
        if b != 0.0 or d != 0.0:
            raise ValueError(f"{t} is rotated or sheared (b={b}, d={d}); 1-D x/y coordinates need a north-up grid: "
                             "warp the input to a north-up grid first (e.g. gdalwarp)")
        if a == 0.0 or e == 0.0:
            raise ValueError(f"{t} has a zero pixel size")
        return t

    @field_validator("variable")
    @classmethod
    def _variable(cls, v: str) -> str:
        if not _NAME.match(v) or v in RESERVED_NAMES or _LEVEL_COORD.match(v):
            raise ValueError(f"{v!r}: use a name of letters, digits, '_', '-' or '.', starting with a letter, and "
                             f"none of {', '.join(RESERVED_NAMES)}, x_<n>, y_<n>")
        return v

    @model_validator(mode="after")
    def _geometry(self) -> OutputSpec:
        if self.block % self.chunk:
            raise ValueError(f"block={self.block} must be a multiple of chunk={self.chunk} so that every output "
                             "chunk is written by exactly one block")
        if len(self.band_names) != self.shape[0]:
            raise ValueError(f"{len(self.band_names)} band names {self.band_names} for {self.shape[0]} bands; give "
                             "one name per band")
        if self.shard is not None and (self.shard % self.chunk or self.block % self.shard):
            raise ValueError(f"shard={self.shard} must be a multiple of chunk={self.chunk} and divide "
                             f"block={self.block}, so that every block writes whole shards")
        if self.overviews is not None:
            most = max_overview_levels(self.shape[1], self.shape[2])
            if self.overviews > most:
                raise ValueError(f"overviews={self.overviews}: a {self.shape[1]} x {self.shape[2]} output has room "
                                 f"for 0..{most} 2x levels")
        return self

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
        d = self.model_dump(mode="json")
        if not self.uncertainty_samples:
            del d["uncertainty_samples"]  # off: the plan of a store without it reads as before the option existed
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OutputSpec":
        unknown = set(d) - set(cls.model_fields)
        if unknown:
            raise ConfigError(
                f"output spec has unknown fields {sorted(unknown)}; the store was written by a newer geosr"
            )
        return cls(**d)

    @classmethod
    def from_config(cls, output: OutputLayout, *, shape: tuple[int, int, int], chunk: int, block: int,
                    band_names: tuple[str, ...], crs_wkt: str, transform: tuple[float, ...]) -> "OutputSpec":
        """Build a spec from the output configuration (its layout fields) plus the scene's output geometry."""
        layout = {k: getattr(output, k) for k in OutputLayout.model_fields}
        return cls(shape=shape, chunk=chunk, block=block, band_names=band_names, crs_wkt=crs_wkt,
                   transform=transform, **layout)


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


def _check_crs(wkt: str) -> None:
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    if not isinstance(wkt, str) or not wkt.strip():
        raise ConfigError("crs_wkt is empty; the output needs the input's CRS as WKT")
    try:
        CRS.from_wkt(wkt)
    except CRSError as e:
        raise ConfigError(f"crs_wkt is not a valid WKT CRS ({e}); pass the input CRS as WKT") from None
