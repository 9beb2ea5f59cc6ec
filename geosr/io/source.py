"""Lazy, thread-safe, picklable windowed reading of a GeoTIFF/COG (local path or s3://) as reflectance.

``open_source(uri, cfg, env)`` checks everything that can be checked up front and raises the typed
errors of :mod:`geosr.errors` with one-line messages: a missing file/object/bucket, refused
credentials, a file that is not a raster or is truncated/corrupt, a missing or non north-up
georeference, an unknown band. It reads only a few pixels to do so (never the whole scene).

``GdalSource.read(rows, cols)`` returns ``(C,h,w)`` float32 reflectance and an ``(h,w)`` valid mask
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
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import InputConfig
from ..errors import GeosrError, InputError, InputNotFoundError, NotARasterError
from .gdal_errors import gdal_error, is_gdal_error, open_dataset
from .radiometry import Radiometry, resolve_radiometry
from .source_checks import (
    MaskPlan,
    check_georeference,
    check_integrity,
    default_names,
    first_nodata,
    mask_plan,
    select_bands,
)
from .storage import StorageEnv, is_remote, is_s3, rasterio_env, rasterio_session, s3_object_info, strip_protocol

log = logging.getLogger(__name__)

SHA256_MAX_BYTES = 2 * 1024**3
"""Local files up to this size are identified by their sha256; larger ones by size and mtime."""


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
    stac: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    """For a STAC Item input: what the output's STAC Item says about it (:func:`~geosr.io.stac_item.source_item_summary`)."""

    @property
    def count(self) -> int:
        return len(self.band_indexes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(bands, height, width) of what ``read`` returns for the whole scene."""
        return self.count, self.height, self.width

@dataclass(frozen=True)
class _ReadPlan:
    """Everything a fresh process needs to read windows like the original (no handles, no secrets)."""

    uri: str
    gdal_path: str
    env: StorageEnv
    indexes: tuple[int, ...]
    radiometry: Radiometry
    mask: MaskPlan
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


class GdalSource:
    """A scene opened for windowed reading through GDAL (rasterio): the production
    :class:`~geosr.rasters.RasterSource`. Thread-safe and picklable; see the module docstring."""

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
        return f"GdalSource({m.uri!r}, {m.count}x{m.height}x{m.width} {m.dtype}, bands={m.band_names})"

    def __enter__(self) -> GdalSource:
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
            dataset = open_dataset(plan.gdal_path, plan.uri)
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
            if not is_gdal_error(e):
                raise
            raise gdal_error(e, plan.uri, f"reading rows {r0}:{r1}, cols {c0}:{c1}") from None
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


# -- opening ---------------------------------------------------------------------------------------
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
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode) or \
            stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file"
        raise NotARasterError(f"{uri} is {kind}, not a raster file; give the path of a GeoTIFF (a regular file)")
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

def _scene_checks(
    ds: Any, cfg: InputConfig, uri: str, located: _Located, env: StorageEnv
) -> tuple[SourceMeta, _ReadPlan]:
    if ds.count == 0:
        subs = list(getattr(ds, "subdatasets", []) or [])
        hint = f"open one of its subdatasets, e.g. {subs[0]}" if subs else "give a file with raster bands"
        raise NotARasterError(f"{uri} has no raster bands; {hint}")
    check_georeference(ds, uri)
    indexes = select_bands(ds, cfg, uri)
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
    mask = mask_plan(ds, indexes, cfg)
    if cfg.preset == "sentinel2-l2a" and mask == MaskPlan(None, False, None):
        log.info("%s: no nodata value or mask; using the Sentinel-2 L2A NO_DATA value 0", uri)
        mask = MaskPlan(tuple(0.0 for _ in indexes), False, None)
    nodata = mask.nodata[0] if mask.nodata else first_nodata(ds, indexes)
    check_integrity(ds, indexes, located.size, uri)
    names = default_names(ds)
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


def open_source(uri: str, cfg: InputConfig, env: StorageEnv) -> GdalSource:
    """Open ``uri`` (local path, ``file://`` or ``s3://``) for windowed reading; raise typed errors.

    Reads only the file's header, its block index and two pixels; checksums a local file (sha256 up
    to 2 GiB) or takes an object's ETag. A STAC Item (``.json``, or an http(s) URL) opens as the stack of the
    bands ``cfg`` names (:mod:`geosr.io.stac_item`), with the same interface.
    """
    uri = str(uri)
    from .stac_item import is_stac_item_uri, open_stac_item

    if is_stac_item_uri(uri):
        return open_stac_item(uri, cfg, env)  # type: ignore[return-value]
    located = _locate(uri, env)
    session = rasterio_session(uri, env)
    with rasterio_env(uri, env, session):
        ds = open_dataset(located.gdal_path, uri)
        try:
            meta, plan = _scene_checks(ds, cfg, uri, located, env)
        except GeosrError:
            raise
        except Exception as e:
            if not is_gdal_error(e):
                raise
            raise gdal_error(e, uri, "checking the first and last blocks") from None
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
    return GdalSource(meta, plan)
