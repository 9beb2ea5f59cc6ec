"""The checks ``open_source`` makes before a scene is read: north-up georeference, the band selection, how
the valid mask is computed, and that the file is not truncated (its block index and two pixels)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from ..config import InputConfig
from ..errors import BandError, GeoreferenceError, NotARasterError

log = logging.getLogger(__name__)

MAX_BLOCKS_CHECKED = 250_000
"""Above this many (band, block) pairs the truncation check samples blocks instead of checking all."""


@dataclass(frozen=True)
class MaskPlan:
    nodata: tuple[float | None, ...] | None  # per selected band: pixels equal to it are invalid
    gdal_mask: bool  # apply GDAL's mask bands (internal mask, 2/4-band alpha, or nodata)
    alpha_band: int | None  # an alpha band GDAL does not use as a mask: alpha == 0 is invalid


def check_georeference(ds: Any, uri: str) -> None:
    t = ds.transform
    gcps, _ = ds.gcps
    if t.is_identity:
        if gcps or ds.rpcs:
            kind = "ground control points" if gcps else "RPCs"
            raise GeoreferenceError(
                f"{uri} is georeferenced by {kind} only; warp it to a north-up grid first: "
                "gdalwarp -t_srs EPSG:XXXX in.tif out.tif"
            )
        raise GeoreferenceError(
            f"{uri} has no geotransform; assign one (gdal_edit.py -a_ullr ULX ULY LRX LRY) or warp it with gdalwarp"
        )
    if ds.crs is None:
        raise GeoreferenceError(f"{uri} has no CRS; assign one with gdal_edit.py -a_srs EPSG:XXXX {uri}")
    if t.b != 0 or t.d != 0:
        raise GeoreferenceError(
            f"{uri} has a rotated or sheared geotransform {tuple(t)[:6]}; geosr needs north-up rasters: "
            f"warp it first with gdalwarp -t_srs {ds.crs.to_string()} in.tif out_northup.tif"
        )
    if t.a <= 0 or t.e >= 0:
        raise GeoreferenceError(
            f"{uri} is not north-up (pixel size {t.a}, {t.e}: flipped or mirrored); "
            f"warp it first with gdalwarp -t_srs {ds.crs.to_string()} in.tif out_northup.tif"
        )


def default_names(ds: Any) -> list[str]:
    return [d if d else f"B{i}" for i, d in enumerate(ds.descriptions, start=1)]


def select_bands(ds: Any, cfg: InputConfig, uri: str) -> tuple[int, ...]:
    from rasterio.enums import ColorInterp

    n = ds.count
    names = default_names(ds)
    if cfg.bands is None:
        alpha = [i for i in range(1, n + 1) if ds.colorinterp[i - 1] == ColorInterp.alpha]
        idx = tuple(i for i in range(1, n + 1) if i not in alpha)
        if alpha and idx:
            log.warning(
                "%s: band(s) %s flagged as alpha are used as the valid mask, not as data; "
                "list them in input.bands to read them as data",
                uri,
                alpha,
            )
        return idx or tuple(range(1, n + 1))
    lowered: dict[str, list[int]] = {}
    for i, name in enumerate(names, start=1):
        lowered.setdefault(name.strip().lower(), []).append(i)
    chosen: list[int] = []
    for b in cfg.bands:
        if isinstance(b, int):
            if not 1 <= b <= n:
                raise BandError(
                    f"band {b} is out of range: {uri} has {n} band(s), numbered 1..{n}; fix input.bands"
                )
            chosen.append(b)
            continue
        hits = lowered.get(str(b).strip().lower(), [])
        if not hits:
            raise BandError(
                f"no band named {b!r} in {uri}; its bands are {', '.join(repr(x) for x in names)} "
                "(or use 1-based numbers) in input.bands"
            )
        if len(hits) > 1:
            raise BandError(f"band name {b!r} is ambiguous in {uri} (bands {hits}); select by number in input.bands")
        chosen.append(hits[0])
    dup = sorted({i for i in chosen if chosen.count(i) > 1})
    if dup:
        raise BandError(f"input.bands selects band(s) {dup} of {uri} more than once; list each band once")
    return tuple(chosen)


def mask_plan(ds: Any, indexes: tuple[int, ...], cfg: InputConfig) -> MaskPlan:
    """How to compute the valid mask for the selected bands.

    ``input.nodata`` replaces the file's nodata value but not an internal mask or alpha band; without
    an override, bands whose only mask is their nodata value are checked by value (no mask read).
    GDAL only uses an alpha band as the mask of 2- and 4-band files, so any other unselected alpha
    band is read and applied here.
    """
    from rasterio.enums import ColorInterp, MaskFlags

    alpha = [i for i in range(1, ds.count + 1) if ds.colorinterp[i - 1] == ColorInterp.alpha and i not in indexes]
    flags = [set(ds.mask_flag_enums[i - 1]) for i in indexes]
    alpha_band = None
    if alpha and not any(MaskFlags.alpha in f for f in flags):
        alpha_band = alpha[0]
    if cfg.nodata is not None:
        nd = float(cfg.nodata)
        explicit_mask = any(f & {MaskFlags.per_dataset, MaskFlags.alpha} for f in flags)
        return MaskPlan(tuple(nd for _ in indexes), explicit_mask, alpha_band)
    if all(f == {MaskFlags.all_valid} for f in flags):
        return MaskPlan(None, False, alpha_band)
    nodatavals = [ds.nodatavals[i - 1] for i in indexes]
    if all(MaskFlags.nodata in f for f in flags) and all(v is not None for v in nodatavals):
        return MaskPlan(tuple(float(v) for v in nodatavals), False, alpha_band)
    return MaskPlan(None, True, alpha_band)


def first_nodata(ds: Any, indexes: tuple[int, ...]) -> float | None:
    v = ds.nodatavals[indexes[0] - 1]
    return None if v is None else float(v)


def _block_ids(nby: int, nbx: int, budget: int) -> list[tuple[int, int]]:
    """All (bx, by) blocks if within budget; else the last row and column plus an even sample."""
    if nby * nbx <= budget:
        return [(bx, by) for by in range(nby) for bx in range(nbx)]
    ids = {(bx, nby - 1) for bx in range(nbx)} | {(nbx - 1, by) for by in range(nby)}
    step = max(1, (nby * nbx) // max(1, budget - len(ids)))
    ids |= {(k % nbx, k // nbx) for k in range(0, nby * nbx, step)}
    return sorted(ids)


def check_integrity(ds: Any, indexes: tuple[int, ...], size: int | None, uri: str) -> None:
    """Refuse truncated files (tile/strip data beyond the end) and undecodable first/last blocks."""
    from rasterio.enums import Interleaving
    from rasterio.windows import Window

    if ds.driver == "GTiff" and size is not None:
        bands = indexes if ds.interleaving == Interleaving.band else indexes[:1]
        bh, bw = ds.block_shapes[indexes[0] - 1]
        nby, nbx = math.ceil(ds.height / bh), math.ceil(ds.width / bw)
        budget = max(1, MAX_BLOCKS_CHECKED // len(bands))
        end = 0
        for b in bands:
            for bx, by in _block_ids(nby, nbx, budget):
                off = ds.get_tag_item(f"BLOCK_OFFSET_{bx}_{by}", "TIFF", bidx=b)
                cnt = ds.get_tag_item(f"BLOCK_SIZE_{bx}_{by}", "TIFF", bidx=b)
                if off and cnt:
                    end = max(end, int(off) + int(cnt))
        if end > size:
            raise NotARasterError(
                f"{uri} is truncated: its image data runs to byte {end} but it has {size} bytes; "
                "re-download or re-create the file"
            )
    idx = list(indexes)
    for row, col in ((0, 0), (ds.height - 1, ds.width - 1)):
        w = Window(col, row, 1, 1)
        ds.read(idx, window=w)
        ds.read_masks(idx, window=w)
