"""A STAC Item of per-band COGs (Sentinel-2 L2A from Earth Search, the Planetary Computer, or a static catalog) as
one multi-band input scene: ``geosr run item.json out.zarr`` or ``geosr run https://.../items/ID out.zarr``.

What it builds (``open_stac_item``), from the Item alone plus each band's COG header:

* **Bands.** ``input.bands`` names them (default ``B04, B03, B02, B08``: red, green, blue, NIR). A name matches an
  asset by its key, its ``eo:bands``/``bands`` name or common name, or the Sentinel-2 alias of either (``B04`` is
  Earth Search's ``red`` asset and the Planetary Computer's ``B04``); only GeoTIFF assets count (not ``*-jp2``).
* **Grid.** The finest named band's own grid (its CRS, transform and shape, read from the COG): a 10 m scene keeps
  the 10 m grid exactly. Coarser bands (20 m) are resampled onto it only when ``input.stac.resampling`` asks for a
  method; otherwise they are refused. All bands must share one CRS.
* **Reading.** Each window is loaded with odc-stac (``odc.stac.load`` on the window's sub-geobox): it reads the
  COGs with GDAL and resamples; nothing is mosaicked here.
* **Reflectance.** ``reflectance = DN * scale + offset`` with, most explicit first: ``input.scale_factor`` /
  ``input.add_offset``; the assets' ``raster:bands`` ``scale`` and ``offset`` (Earth Search publishes
  ``scale 0.0001, offset -0.1`` for processing baseline >= 04.00); a ``scale`` alone, or Sentinel-2 L2A without
  ``raster:bands``: ``1e-4`` and the processing-baseline offset (-1000 DN from baseline 04.00, read from
  ``s2:processing_baseline`` or ``input.processing_baseline``) unless ``earthsearch:boa_offset_applied`` says the
  DNs already carry it. The bands must agree.
* **Validity.** A pixel is nodata where any band holds its nodata value (``raster:bands`` ``nodata``, else the COG's,
  else 0 for Sentinel-2) and, with ``input.stac.scl_mask``, where the scene classification (``SCL``, resampled with
  nearest) is in ``input.stac.scl_classes``.

Errors are one line naming the Item and the band (:class:`StacItemError`): a named band the Item lacks, an asset
that cannot be read (404, refused), bands in different CRSs, a coarser band without ``resampling``. They are raised
before any output is created.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import InputConfig
from ..errors import InputError, InputNotFoundError
from .radiometry import Radiometry, resolve_radiometry
from .storage import StorageEnv, is_remote, is_s3, rasterio_env, rasterio_session, resolve_href, strip_protocol

log = logging.getLogger(__name__)

DEFAULT_BANDS: tuple[str, ...] = ("B04", "B03", "B02", "B08")

S2_ALIASES: dict[str, str] = {
    "B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2",
    "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09", "B10": "cirrus", "B11": "swir16",
    "B12": "swir22", "SCL": "scl",
}
"""Sentinel-2 band -> Earth Search asset key / STAC common name (``rededge``/``nir08`` style)."""

_TIFF = ("image/tiff", "image/geotiff", "image/vnd.stac.geotiff")


class StacItemError(InputError):
    """A STAC Item cannot be used as an input scene: a band is missing or unreadable, or the bands do not fit."""


def is_stac_item_uri(uri: str) -> bool:
    """Whether ``uri`` names a STAC Item rather than a raster: a ``.json`` document, or an http(s) URL (a STAC API
    item endpoint such as ``.../collections/C/items/ID``; geosr reads rasters from local paths and s3:// only)."""
    u = str(uri).split("?", 1)[0].rstrip("/")
    return u.lower().endswith((".json", ".geojson")) or u.startswith(("http://", "https://"))


@dataclass(frozen=True)
class BandAsset:
    """One named band of the Item and the COG that holds it."""

    name: str  # as the configuration names it (B04)
    key: str  # asset key (red)
    href: str  # absolute
    raster: dict[str, Any]  # the asset's raster:bands[0] (may be empty)


@dataclass(frozen=True)
class _Grid:
    crs_wkt: str
    transform: tuple[float, ...]
    height: int
    width: int
    dtype: str
    nodata: float | None

    @property
    def res(self) -> float:
        return abs(self.transform[0])


# -- the Item -------------------------------------------------------------------------------------------------------
def _absolute(uri: str) -> str:
    if is_remote(uri):
        return uri
    return str(Path(strip_protocol(uri)).expanduser().resolve())


def read_item_document(uri: str, env: StorageEnv) -> bytes:
    """The Item's JSON bytes from a local path, s3:// or http(s) URL; typed one-line errors."""
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        req = urllib.request.Request(uri, headers={"Accept": "application/geo+json, application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310 (the user's own URL)
                return r.read()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise InputNotFoundError(f"STAC Item {uri} does not exist (HTTP 404); check the URL") from None
            raise InputError(f"cannot read STAC Item {uri}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            raise InputError(f"cannot reach {uri} to read the STAC Item ({getattr(e, 'reason', e)})") from None
    if is_s3(uri):
        from .storage import s3_object_info

        s3_object_info(uri, env)  # typed errors for a missing bucket/key or refused credentials
        return env.filesystem(uri).cat_file(strip_protocol(uri))
    path = Path(strip_protocol(uri)).expanduser()
    if not path.is_file():
        raise InputNotFoundError(f"STAC Item {uri} does not exist; check the path (relative to {Path.cwd()})")
    return path.read_bytes()


def load_item(uri: str, env: StorageEnv) -> tuple[Any, bytes]:
    """(pystac.Item with its self href set, the document's bytes)."""
    import pystac

    raw = read_item_document(uri, env)
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{uri} is not JSON ({e}); give a STAC Item (a GeoJSON Feature)") from None
    if not isinstance(doc, dict) or doc.get("type") != "Feature":
        what = doc.get("type") if isinstance(doc, dict) else type(doc).__name__
        raise InputError(f"{uri} is not a STAC Item (type {what!r}, expected 'Feature'); give one Item, not a "
                         "collection (a backfill or the scheduled flow takes ItemCollections)")
    try:
        item = pystac.Item.from_dict(doc, preserve_dict=True)
    except Exception as e:  # pystac raises several types for malformed Items
        raise InputError(f"{uri} is not a valid STAC Item ({e})".replace("\n", " ")) from None
    item.set_self_href(_absolute(uri))
    return item, raw


def _band_names(asset: Any) -> set[str]:
    """Every name an asset answers to (lower case): key aliases, eo:bands / bands names and common names."""
    names: set[str] = set()
    for entry in (asset.extra_fields.get("eo:bands") or []) + (asset.extra_fields.get("bands") or []):
        if isinstance(entry, dict):
            for k in ("name", "common_name", "eo:common_name"):
                if entry.get(k):
                    names.add(str(entry[k]).lower())
    return names


def _is_tiff(key: str, asset: Any) -> bool:
    mt = (asset.media_type or "").lower()
    if mt:
        return mt.startswith(_TIFF)
    return asset.href.lower().split("?", 1)[0].endswith((".tif", ".tiff"))


def find_band(item: Any, name: str) -> tuple[str, Any] | None:
    """(asset key, asset) of band ``name`` in ``item``: by asset key, then by band name/common name, each also by
    its Sentinel-2 alias; GeoTIFF assets only. None when the Item has no such band."""
    want = {name.lower()}
    alias = S2_ALIASES.get(name.upper())
    if alias:
        want.add(alias)
    want |= {b.lower() for b, a in S2_ALIASES.items() if a == name.lower()}
    tiffs = [(k, a) for k, a in item.assets.items() if _is_tiff(k, a)]
    for k, a in tiffs:
        if k.lower() == name.lower():
            return k, a
    for k, a in tiffs:
        if k.lower() in want:
            return k, a
    for k, a in tiffs:
        if _band_names(a) & want and len(a.extra_fields.get("eo:bands") or a.extra_fields.get("bands") or [1]) == 1:
            return k, a
    return None


def is_per_band_item(item: Any) -> bool:
    """Whether the Item publishes one GeoTIFF per band (so it is read as a stack, not through one asset)."""
    single = 0
    for k, a in item.assets.items():
        bands = a.extra_fields.get("eo:bands") or a.extra_fields.get("bands") or a.extra_fields.get("raster:bands")
        if _is_tiff(k, a) and isinstance(bands, list) and len(bands) == 1:
            single += 1
    return single >= 2


# -- opening --------------------------------------------------------------------------------------------------------
def _fail(item: Any, uri: str, band: str, what: str) -> StacItemError:
    return StacItemError(f"STAC Item {item.id} ({uri}): band {band} {what}")


def _header(band: BandAsset, item: Any, uri: str, env: StorageEnv) -> _Grid:
    """The COG's grid, read from its header; one-line errors naming the Item and band."""
    from .gdal_errors import is_gdal_error

    path = env.gdal_path(band.href) if is_s3(band.href) else (
        "/vsicurl/" + band.href if band.href.startswith(("http://", "https://")) else band.href)
    try:
        import rasterio

        with rasterio_env(band.href, env):
            with rasterio.open(path) as ds:
                if ds.crs is None or ds.transform.is_identity:
                    raise _fail(item, uri, band.name, f"(asset {band.key}, {band.href}) has no georeference")
                t = ds.transform
                if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
                    raise _fail(item, uri, band.name, f"(asset {band.key}) is not on a north-up grid")
                return _Grid(ds.crs.to_wkt(), tuple(float(v) for v in tuple(t)[:6]), ds.height, ds.width,
                             ds.dtypes[0], ds.nodata)
    except StacItemError:
        raise
    except Exception as e:
        if not is_gdal_error(e) and not isinstance(e, OSError):
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        missing = any(s in msg for s in ("404", "No such file", "does not exist", "not recognized"))
        kind = "does not exist" if missing else "cannot be read"
        raise _fail(item, uri, band.name, f"(asset {band.key}): {band.href} {kind} ({msg})") from None


def _same_crs(a: str, b: str) -> bool:
    from pyproj import CRS

    return a == b or CRS.from_wkt(a) == CRS.from_wkt(b)


def _radiometry(cfg: InputConfig, item: Any, bands: list[BandAsset], dtype: str, uri: str) -> Radiometry:
    """DN -> reflectance for the stacked bands; the precedence is in the module docstring."""
    props = item.properties
    scales = {b.raster.get("scale") for b in bands}
    offsets = {b.raster.get("offset") for b in bands}
    if len(scales) > 1 or len(offsets) > 1:
        raise StacItemError(f"STAC Item {item.id} ({uri}): the bands' raster:bands scale/offset differ "
                            f"({sorted(map(str, scales))} / {sorted(map(str, offsets))}); name bands that share "
                            "them, or set input.scale_factor and input.add_offset")
    scale, offset = scales.pop(), offsets.pop()
    baseline = props.get("s2:processing_baseline")
    sentinel2 = cfg.preset == "sentinel2-l2a" or baseline is not None
    plain = cfg.model_copy(update={"scale_factor": None, "add_offset": None})
    if scale is not None and offset is not None and cfg.processing_baseline is None:
        rad = Radiometry(float(scale), float(offset), "raster:bands scale/offset")
    elif sentinel2 and dtype in ("uint16", "int16") and scale in (None, 1e-4):
        tags = {}
        if props.get("earthsearch:boa_offset_applied") is True:
            tags["BOA_ADD_OFFSET"] = "0"  # the DNs already carry the offset
        elif baseline is not None:
            tags["PROCESSING_BASELINE"] = str(baseline)
        rad = resolve_radiometry(plain.model_copy(update={"preset": "sentinel2-l2a"}), dtype=dtype, tags=tags,
                                 band_tags=[{} for _ in bands], uri=uri)
    else:
        rad = resolve_radiometry(plain, dtype=dtype, tags={}, band_tags=[{} for _ in bands], uri=uri)
        if scale is not None:
            rad = Radiometry(float(scale), rad.add_offset, "raster:bands scale")
    if cfg.scale_factor is not None:
        rad = Radiometry(float(cfg.scale_factor), rad.add_offset, rad.origin + ", input.scale_factor")
    if cfg.add_offset is not None:
        rad = Radiometry(rad.scale_factor, float(cfg.add_offset), rad.origin + ", input.add_offset")
    return rad


@dataclass(frozen=True)
class _Plan:
    """What a fresh process needs to read windows (no handles, no secrets)."""

    uri: str
    item: dict[str, Any]  # absolute hrefs
    keys: tuple[str, ...]  # asset keys of the named bands, in order
    scl_key: str | None
    scl_classes: tuple[int, ...]
    resampling: str  # odc-stac's name for how coarser bands are resampled
    grid: _Grid
    nodata: tuple[float | None, ...]
    radiometry: Radiometry
    env: StorageEnv
    session_uri: str  # an href whose storage decides the GDAL session (s3 credentials or none)


class StacItemSource:
    """The stacked bands of a STAC Item, read by window: the interface of :class:`~geosr.io.source.RasterSource`
    (``meta``, ``read(rows, cols)``, ``close()``, picklable without credentials)."""

    def __init__(self, meta: Any, plan: _Plan) -> None:
        self.meta = meta
        self._plan = plan
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._item = None
        self._geobox = None

    def __getstate__(self) -> dict[str, Any]:
        return {"meta": self.meta, "plan": self._plan}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.meta, self._plan = state["meta"], state["plan"]
        self._init_runtime()

    def __repr__(self) -> str:
        m = self.meta
        return f"StacItemSource({m.uri!r}, {m.count}x{m.height}x{m.width} {m.dtype}, bands={m.band_names})"

    def __enter__(self) -> StacItemSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: each window opens (and closes) what it reads."""

    def _parts(self) -> tuple[Any, Any]:
        if self._item is None:
            import pystac
            from odc.geo.geobox import GeoBox
            from rasterio.transform import Affine

            g = self._plan.grid
            self._geobox = GeoBox((g.height, g.width), Affine(*g.transform), g.crs_wkt)
            self._item = pystac.Item.from_dict(self._plan.item, preserve_dict=True)
        return self._item, self._geobox

    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(C,h,w) float32 reflectance and (h,w) bool valid mask for the window [r0,r1) x [c0,c1); invalid pixels
        (nodata in any band, masked by SCL, non-finite) are 0."""
        from .source import _check_range

        r0, r1 = _check_range("rows", rows, self.meta.height)
        c0, c1 = _check_range("cols", cols, self.meta.width)
        dn, scl = self._load(r0, r1, c0, c1)
        p = self._plan
        valid = np.ones(dn.shape[1:], dtype=bool)
        for band, nd in zip(dn, p.nodata):
            if nd is not None and not (isinstance(nd, float) and math.isnan(nd)):
                valid &= band != band.dtype.type(nd)
        if dn.dtype.kind == "f":
            valid &= np.all(np.isfinite(dn), axis=0)
        if scl is not None:
            valid &= ~np.isin(scl, np.asarray(p.scl_classes, dtype=scl.dtype))
        return p.radiometry.apply(dn, valid), valid

    def _load(self, r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray | None]:
        import odc.stac

        item, geobox = self._parts()
        p = self._plan
        keys = list(p.keys) + ([p.scl_key] if p.scl_key else [])
        resampling = {k: p.resampling for k in p.keys}
        if p.scl_key:
            resampling[p.scl_key] = "nearest"
        try:
            with rasterio_env(p.session_uri, p.env, rasterio_session(p.session_uri, p.env)):
                ds = odc.stac.load([item], bands=keys, geobox=geobox[r0:r1, c0:c1], resampling=resampling,
                                   groupby=None, fail_on_error=True)
        except Exception as e:
            from .gdal_errors import is_gdal_error

            if not is_gdal_error(e) and not isinstance(e, OSError):
                raise
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise StacItemError(f"STAC Item {item.id} ({p.uri}): reading rows {r0}:{r1}, cols {c0}:{c1} failed "
                                f"({msg})") from None
        dn = np.stack([ds[k].values[0] for k in p.keys])
        scl = ds[p.scl_key].values[0] if p.scl_key else None
        return dn, scl


def _odc_resampling(method: str) -> str:
    return {"none": "nearest", "nearest": "nearest", "bilinear": "bilinear", "cubic": "cubic",
            "average": "average"}[method]


def open_stac_item(uri: str, cfg: InputConfig, env: StorageEnv) -> StacItemSource:
    """Open the STAC Item at ``uri`` as a stacked scene; see the module docstring. Reads the Item and each named
    band's COG header (not its pixels)."""
    from .source import SourceMeta

    uri = str(uri)
    item, raw = load_item(uri, env)
    self_href = item.get_self_href() or uri
    names = [str(b) for b in (cfg.bands or DEFAULT_BANDS)]
    bands: list[BandAsset] = []
    for n in names:
        if n.isdigit():
            raise StacItemError(f"STAC Item {item.id} ({uri}): band {n}: name bands of a STAC Item by name or "
                                f"asset key (e.g. {','.join(DEFAULT_BANDS)}), not by index")
        found = find_band(item, n)
        if found is None:
            have = ", ".join(sorted(k for k, a in item.assets.items() if _is_tiff(k, a))) or "none"
            raise _fail(item, uri, n, f"is not in the Item (GeoTIFF assets: {have}); name bands that it has in "
                        "input.bands / --bands")
        key, asset = found
        rb = (asset.extra_fields.get("raster:bands") or [{}])[0]
        bands.append(BandAsset(n, key, resolve_href(self_href, asset.href), rb if isinstance(rb, dict) else {}))
    scl = None
    if cfg.stac.scl_mask:
        found = find_band(item, "SCL")
        if found is None:
            raise _fail(item, uri, "SCL", "is not in the Item, so input.stac.scl_mask cannot be applied; turn it off")
        scl = BandAsset("SCL", found[0], resolve_href(self_href, found[1].href), {})
    grids = {b.name: _header(b, item, uri, env) for b in bands + ([scl] if scl else [])}
    first = bands[0]
    for b in bands[1:] + ([scl] if scl else []):
        if not _same_crs(grids[b.name].crs_wkt, grids[first.name].crs_wkt):
            raise _fail(item, uri, b.name, f"is in another CRS than band {first.name}; all bands must share one CRS")
    target = min((grids[b.name] for b in bands), key=lambda g: g.res)
    for b in bands:
        g = grids[b.name]
        if g.transform != target.transform or (g.height, g.width) != (target.height, target.width):
            if cfg.stac.resampling == "none":
                raise _fail(item, uri, b.name, f"is on a {g.res:g} m grid, not the {target.res:g} m grid of the "
                            "finest band; set input.stac.resampling (e.g. bilinear) to resample it")
    dtypes = {grids[b.name].dtype for b in bands}
    if len(dtypes) > 1:
        raise StacItemError(f"STAC Item {item.id} ({uri}): the bands have different data types {sorted(dtypes)}; "
                            "name bands of one type")
    dtype = dtypes.pop()
    rad = _radiometry(cfg, item, bands, dtype, uri)
    nodata = []
    for b in bands:
        nd = cfg.nodata if cfg.nodata is not None else b.raster.get("nodata", grids[b.name].nodata)
        if nd is None and item.properties.get("s2:processing_baseline") is not None:
            nd = 0.0  # Sentinel-2 L2A NO_DATA
        nodata.append(None if nd is None or nd == "nan" else float(nd))
    doc = item.to_dict(include_self_link=False, transform_hrefs=False)
    for a in doc["assets"].values():  # odc-stac resolves every asset, not only the named ones
        a["href"] = resolve_href(self_href, a["href"])
    for b in bands + ([scl] if scl else []):
        rbs = doc["assets"][b.key].get("raster:bands")
        if isinstance(rbs, list) and rbs and isinstance(rbs[0], dict) and nodata and b is not scl:
            rbs[0].setdefault("nodata", nodata[bands.index(b)])
    meta = SourceMeta(
        uri=uri, height=target.height, width=target.width, band_indexes=tuple(range(1, len(bands) + 1)),
        band_names=tuple(names), dtype=dtype, crs_wkt=target.crs_wkt, transform=target.transform,
        nodata=nodata[0], scale_factor=rad.scale_factor, add_offset=rad.add_offset,
        checksum="stac-item:sha256:" + hashlib.sha256(raw).hexdigest(),
        stac=source_item_summary(item, self_href),
    )
    plan = _Plan(uri=uri, item=doc, keys=tuple(b.key for b in bands), scl_key=scl.key if scl else None,
                 scl_classes=tuple(cfg.stac.scl_classes), resampling=_odc_resampling(cfg.stac.resampling),
                 grid=target, nodata=tuple(nodata), radiometry=rad, env=env, session_uri=first.href)
    log.info("opened STAC Item %s: %d x %d at %g m, bands %s (assets %s), reflectance = DN * %g + %g [%s]%s",
             item.id, meta.height, meta.width, target.res, ",".join(names), ",".join(plan.keys), rad.scale_factor,
             rad.add_offset, rad.origin, f", SCL classes {list(plan.scl_classes)} masked" if scl else "")
    return StacItemSource(meta, plan)


def source_item_summary(item: Any, href: str) -> dict[str, Any]:
    """What the output's STAC Item says about its source Item (``derived_from``, platform, ...)."""
    p = item.properties
    out: dict[str, Any] = {"href": href, "id": item.id, "collection": item.collection_id,
                           "datetime": item.datetime.isoformat() if item.datetime else p.get("start_datetime")}
    for k in ("platform", "constellation", "instruments", "gsd", "s2:processing_baseline", "eo:cloud_cover"):
        if p.get(k) is not None:
            out[k] = p[k]
    return out

