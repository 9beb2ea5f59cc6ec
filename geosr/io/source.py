"""Lazy, thread-safe, picklable windowed reading of a GeoTIFF/COG (local path or s3://) as reflectance.

``open_source(uri, cfg, env)`` checks everything that can be checked up front and raises the typed
errors of :mod:`geosr.errors` with one-line messages: a missing file/object/bucket, refused
credentials, a file that is not a raster or is truncated/corrupt, a missing or non north-up
georeference, an unknown band. It reads only a few pixels to do so (never the whole scene).

``RasterSource.read(rows, cols)`` returns ``(C,h,w)`` float32 reflectance and an ``(h,w)`` valid mask
for one window. Each thread gets its own dataset handle, opened on first use inside the right
``rasterio.Env``; pickling carries only the plan (URI, bands, radiometry, storage config), so a copy
in another process reopens the file itself. Credentials are never part of the pickle.
"""

from __future__ import annotations

import hashlib
import logging
import math
import operator
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import InputConfig
from ..errors import (
    BandError,
    GeoreferenceError,
    GeosrError,
    InputError,
    InputNotFoundError,
    NotARasterError,
    StorageAuthError,
)
from .radiometry import Radiometry, resolve_radiometry
from .storage import StorageEnv, is_remote, is_s3, rasterio_env, rasterio_session, s3_object_info, strip_protocol

log = logging.getLogger(__name__)

SHA256_MAX_BYTES = 2 * 1024**3
"""Local files up to this size are identified by their sha256; larger ones by size and mtime."""

_MAX_BLOCKS_CHECKED = 250_000
"""Above this many (band, block) pairs the truncation check samples blocks instead of checking all."""


@dataclass(frozen=True)
class SourceMeta:
    """What the engine and the store need to know about an input scene (low-res, on-disk terms)."""

    uri: str
    height: int
    width: int
    band_indexes: tuple[int, ...]
    band_names: tuple[str, ...]
    dtype: str
    crs_wkt: str
    transform: tuple[float, ...]
    nodata: float | None
    scale_factor: float
    add_offset: float
    checksum: str

    @property
    def count(self) -> int:
        return len(self.band_indexes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(bands, height, width) of what ``read`` returns for the whole scene."""
        return self.count, self.height, self.width


@dataclass(frozen=True)
class _MaskPlan:
    nodata: tuple[float | None, ...] | None  # per selected band: pixels equal to it are invalid
    gdal_mask: bool  # apply GDAL's mask bands (internal mask, 2/4-band alpha, or nodata)
    alpha_band: int | None  # an alpha band GDAL does not use as a mask: alpha == 0 is invalid


@dataclass(frozen=True)
class _ReadPlan:
    """Everything a fresh process needs to read windows like the original (no handles, no secrets)."""

    uri: str
    gdal_path: str
    env: StorageEnv
    indexes: tuple[int, ...]
    radiometry: Radiometry
    mask: _MaskPlan
    check_finite: bool  # float data: NaN/inf are invalid


@dataclass
class _ThreadState:
    dataset: Any
    session: Any
    generation: int


@dataclass(frozen=True)
class _Located:
    """Where the input is and how to identify its content."""

    gdal_path: str
    size: int | None
    checksum: str


class RasterSource:
    """A scene opened for windowed reading. Thread-safe and picklable; see the module docstring."""

    meta: SourceMeta

    def __init__(self, meta: SourceMeta, plan: _ReadPlan) -> None:
        self.meta = meta
        self._plan = plan
        self._init_runtime()

    # -- runtime state (never pickled) -----------------------------------------------------------
    def _init_runtime(self) -> None:
        self._pid = os.getpid()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._handles: list[Any] = []
        self._generation = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"meta": self.meta, "plan": self._plan}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.meta = state["meta"]
        self._plan = state["plan"]
        self._init_runtime()

    def __repr__(self) -> str:
        m = self.meta
        return f"RasterSource({m.uri!r}, {m.count}x{m.height}x{m.width} {m.dtype}, bands={m.band_names})"

    def __enter__(self) -> RasterSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every thread's dataset handle. Call it when no read is in flight; a later read reopens."""
        with self._lock:
            handles, self._handles = self._handles, []
            self._generation += 1
        for ds in handles:
            ds.close()

    def _state(self) -> _ThreadState:
        if self._pid != os.getpid():  # forked: inherited handles share file offsets with the parent
            self._init_runtime()
        st: _ThreadState | None = getattr(self._local, "state", None)
        if st is not None and st.generation == self._generation:
            return st
        plan = self._plan
        session = st.session if st is not None else rasterio_session(plan.uri, plan.env)
        with rasterio_env(plan.uri, plan.env, session):
            dataset = _open_dataset(plan.gdal_path, plan.uri)
        with self._lock:
            self._handles.append(dataset)
            st = _ThreadState(dataset=dataset, session=session, generation=self._generation)
        self._local.state = st
        return st

    # -- reading -------------------------------------------------------------------------------
    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(C,h,w) float32 reflectance and (h,w) bool valid mask for the window [r0,r1) x [c0,c1).

        Invalid pixels (nodata in any selected band, masked, or non-finite) are 0 in the reflectance.
        """
        r0, r1 = _check_range("rows", rows, self.meta.height)
        c0, c1 = _check_range("cols", cols, self.meta.width)
        from rasterio.windows import Window

        st = self._state()
        window = Window(c0, r0, c1 - c0, r1 - r0)
        plan = self._plan
        try:
            # local files too: GDAL reads its block-cache limit (GDAL_CACHEMAX) when the cache is first
            # used, and an unbounded cache would grow with the scene (the whole input, eventually)
            with rasterio_env(plan.uri, plan.env, st.session):
                dn, valid = _read_window(st.dataset, window, plan)
        except GeosrError:
            raise
        except Exception as e:
            if not _is_gdal_error(e):
                raise
            raise _gdal_error(e, plan.uri, f"reading rows {r0}:{r1}, cols {c0}:{c1}") from None
        return plan.radiometry.apply(dn, valid), valid


def _check_range(name: str, span: tuple[int, int], n: int) -> tuple[int, int]:
    try:
        a, b = (operator.index(v) for v in span)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={span!r}: expected a (start, stop) pair of integers") from None
    if not 0 <= a < b <= n:
        raise ValueError(f"{name}=({a}, {b}) is not a non-empty range inside [0, {n})")
    return a, b


def _read_window(ds: Any, window: Any, plan: _ReadPlan) -> tuple[np.ndarray, np.ndarray]:
    idx = list(plan.indexes)
    dn = ds.read(idx, window=window)
    valid = np.ones(dn.shape[1:], dtype=bool)
    mask = plan.mask
    if mask.nodata is not None:
        for band, nd in zip(dn, mask.nodata):
            hit = _equals_nodata(band, nd)
            if hit is not None:
                valid &= ~hit
    if mask.gdal_mask:
        valid &= np.all(ds.read_masks(idx, window=window) > 0, axis=0)
    if mask.alpha_band is not None:
        valid &= ds.read(mask.alpha_band, window=window) > 0
    if plan.check_finite:
        valid &= np.all(np.isfinite(dn), axis=0)
    return dn, valid


def _equals_nodata(band: np.ndarray, nodata: float | None) -> np.ndarray | None:
    """Where ``band`` holds ``nodata``; None when it cannot hold it (e.g. -9999 in uint16)."""
    if nodata is None:
        return None
    if math.isnan(nodata):
        return np.isnan(band) if band.dtype.kind == "f" else None
    if band.dtype.kind in "ui":
        info = np.iinfo(band.dtype)
        if not float(nodata).is_integer() or not info.min <= nodata <= info.max:
            return None
        return band == band.dtype.type(int(nodata))
    return band == band.dtype.type(nodata)


# -- errors ------------------------------------------------------------------------------------------
def _is_gdal_error(exc: BaseException) -> bool:
    from rasterio._err import CPLE_BaseError
    from rasterio.errors import RasterioError

    return isinstance(exc, (RasterioError, CPLE_BaseError))


def _gdal_message(exc: BaseException) -> str:
    """The most specific GDAL message in an exception chain, on one line."""
    msgs = []
    e: BaseException | None = exc
    while e is not None and len(msgs) < 8:
        msgs.append(str(e))
        e = e.__cause__ or e.__context__
    useful = [m for m in msgs if m and "See previous exception" not in m]
    text = useful[-1] if useful else (msgs[0] if msgs else type(exc).__name__)
    return " ".join(text.split())


_AUTH_MARKERS = (
    "HTTP response code: 403",
    "AccessDenied",
    "Access Denied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
)
_NETWORK_MARKERS = ("HTTP response code", "Couldn't connect", "Could not resolve", "timed out", "curl")


def _gdal_error(exc: BaseException, uri: str, doing: str) -> GeosrError:
    msg = _gdal_message(exc)
    full = " ".join(_chain_text(exc).split())
    if is_remote(uri):
        if any(m in full for m in _AUTH_MARKERS):
            return StorageAuthError(
                f"{uri}: storage refused access while {doing} ({msg}); check the AWS credentials and endpoint"
            )
        if any(m in full for m in _NETWORK_MARKERS):
            return InputError(
                f"{uri}: storage error while {doing} ({msg}); check storage.endpoint_url and the network"
            )
    return NotARasterError(
        f"{uri} is corrupt or truncated: {doing} failed ({msg}); re-download or re-create the file"
    )


def _chain_text(exc: BaseException) -> str:
    parts, e, n = [], exc, 0
    while e is not None and n < 8:
        parts.append(str(e))
        e, n = e.__cause__ or e.__context__, n + 1
    return " | ".join(parts)


# -- opening ---------------------------------------------------------------------------------------
def _open_dataset(gdal_path: str, uri: str) -> Any:
    import rasterio

    try:
        return rasterio.open(gdal_path)
    except Exception as e:
        if not _is_gdal_error(e):
            raise
        msg = _gdal_message(e)
        if is_remote(uri):
            err = _gdal_error(e, uri, "opening")
            if not isinstance(err, NotARasterError):
                raise err from None
        elif not Path(gdal_path).exists():
            raise InputNotFoundError(f"{uri} does not exist; check the path") from None
        raise NotARasterError(
            f"{uri} is not a raster GDAL can read ({msg}); give a GeoTIFF/COG, or re-download it if it is truncated"
        ) from None


def _locate(uri: str, env: StorageEnv) -> _Located:
    if is_s3(uri):
        info = s3_object_info(uri, env)
        checksum = f"etag:{info.etag}" if info.etag else f"size:{info.size}"
        return _Located(gdal_path=env.gdal_path(uri), size=info.size, checksum=checksum)
    if is_remote(uri):
        scheme = uri.split("://", 1)[0]
        raise InputError(f"{uri}: the {scheme}:// scheme is not supported; use a local path or s3://BUCKET/KEY")
    path = Path(strip_protocol(uri)).expanduser()
    if not path.exists():
        raise InputNotFoundError(f"{uri} does not exist; check the path (relative to {Path.cwd()})")
    if path.is_dir():
        raise NotARasterError(f"{uri} is a directory, not a raster file; give the path of the GeoTIFF inside it")
    st = path.stat()
    return _Located(gdal_path=str(path), size=st.st_size, checksum=local_checksum(path))


def local_checksum(path: str | Path) -> str:
    """``sha256:<hex>`` for files up to 2 GiB, else ``size-mtime:<bytes>-<mtime_ns>``."""
    p = Path(path)
    st = p.stat()
    if st.st_size > SHA256_MAX_BYTES:
        return f"size-mtime:{st.st_size}-{st.st_mtime_ns}"
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def _check_georeference(ds: Any, uri: str) -> None:
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


def _default_names(ds: Any) -> list[str]:
    return [d if d else f"B{i}" for i, d in enumerate(ds.descriptions, start=1)]


def _select_bands(ds: Any, cfg: InputConfig, uri: str) -> tuple[int, ...]:
    from rasterio.enums import ColorInterp

    n = ds.count
    names = _default_names(ds)
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


def _mask_plan(ds: Any, indexes: tuple[int, ...], cfg: InputConfig) -> _MaskPlan:
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
        return _MaskPlan(tuple(nd for _ in indexes), explicit_mask, alpha_band)
    if all(f == {MaskFlags.all_valid} for f in flags):
        return _MaskPlan(None, False, alpha_band)
    nodatavals = [ds.nodatavals[i - 1] for i in indexes]
    if all(MaskFlags.nodata in f for f in flags) and all(v is not None for v in nodatavals):
        return _MaskPlan(tuple(float(v) for v in nodatavals), False, alpha_band)
    return _MaskPlan(None, True, alpha_band)


def _first_nodata(ds: Any, indexes: tuple[int, ...]) -> float | None:
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


def _check_integrity(ds: Any, indexes: tuple[int, ...], size: int | None, uri: str) -> None:
    """Refuse truncated files (tile/strip data beyond the end) and undecodable first/last blocks."""
    from rasterio.enums import Interleaving
    from rasterio.windows import Window

    if ds.driver == "GTiff" and size is not None:
        bands = indexes if ds.interleaving == Interleaving.band else indexes[:1]
        bh, bw = ds.block_shapes[indexes[0] - 1]
        nby, nbx = math.ceil(ds.height / bh), math.ceil(ds.width / bw)
        budget = max(1, _MAX_BLOCKS_CHECKED // len(bands))
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


def _scene_checks(
    ds: Any, cfg: InputConfig, uri: str, located: _Located, env: StorageEnv
) -> tuple[SourceMeta, _ReadPlan]:
    if ds.count == 0:
        subs = list(getattr(ds, "subdatasets", []) or [])
        hint = f"open one of its subdatasets, e.g. {subs[0]}" if subs else "give a file with raster bands"
        raise NotARasterError(f"{uri} has no raster bands; {hint}")
    _check_georeference(ds, uri)
    indexes = _select_bands(ds, cfg, uri)
    dtypes = {ds.dtypes[i - 1] for i in indexes}
    if len(dtypes) > 1:
        raise InputError(
            f"{uri}: the selected bands have different data types {sorted(dtypes)}; select bands of one type"
        )
    dtype = dtypes.pop()
    radiometry = resolve_radiometry(
        cfg,
        dtype=dtype,
        tags=ds.tags(),
        band_tags=[ds.tags(i) for i in indexes],
        uri=uri,
    )
    mask = _mask_plan(ds, indexes, cfg)
    if cfg.preset == "sentinel2-l2a" and mask == _MaskPlan(None, False, None):
        log.info("%s: no nodata value or mask; using the Sentinel-2 L2A NO_DATA value 0", uri)
        mask = _MaskPlan(tuple(0.0 for _ in indexes), False, None)
    nodata = mask.nodata[0] if mask.nodata else _first_nodata(ds, indexes)
    _check_integrity(ds, indexes, located.size, uri)
    names = _default_names(ds)
    meta = SourceMeta(
        uri=uri,
        height=ds.height,
        width=ds.width,
        band_indexes=indexes,
        band_names=tuple(names[i - 1] for i in indexes),
        dtype=dtype,
        crs_wkt=ds.crs.to_wkt(),
        transform=tuple(float(v) for v in tuple(ds.transform)[:6]),
        nodata=nodata,
        scale_factor=radiometry.scale_factor,
        add_offset=radiometry.add_offset,
        checksum=located.checksum,
    )
    plan = _ReadPlan(
        uri=uri,
        gdal_path=located.gdal_path,
        env=env,
        indexes=indexes,
        radiometry=radiometry,
        mask=mask,
        check_finite=dtype.startswith("float"),
    )
    return meta, plan


def open_source(uri: str, cfg: InputConfig, env: StorageEnv) -> RasterSource:
    """Open ``uri`` (local path, ``file://`` or ``s3://``) for windowed reading; raise typed errors.

    Reads only the file's header, its block index and two pixels; checksums a local file (sha256 up
    to 2 GiB) or takes an object's ETag.
    """
    uri = str(uri)
    located = _locate(uri, env)
    session = rasterio_session(uri, env)
    with rasterio_env(uri, env, session):
        ds = _open_dataset(located.gdal_path, uri)
        try:
            meta, plan = _scene_checks(ds, cfg, uri, located, env)
        except GeosrError:
            raise
        except Exception as e:
            if not _is_gdal_error(e):
                raise
            raise _gdal_error(e, uri, "checking the first and last blocks") from None
        finally:
            ds.close()
    log.info(
        "opened %s: %d x %d, bands %s (%s), reflectance = DN * %g + %g [%s], nodata %s",
        uri,
        meta.height,
        meta.width,
        ",".join(meta.band_names),
        meta.dtype,
        meta.scale_factor,
        meta.add_offset,
        plan.radiometry.origin,
        meta.nodata,
    )
    return RasterSource(meta, plan)
