"""Finding scenes: under an object-store or local prefix (a glob), in a STAC API (pystac-client), or in
a static STAC ItemCollection (a JSON file, local or s3://), filtered by collection, bbox, datetime and
cloud cover; and telling which of them have no complete output yet.

Filters by source kind:

* STAC API: sent to the server (collections, bbox, datetime, cloud cover as CQL2 ``filter`` or the
  ``query`` extension, whichever the API conforms to) and checked again here.
* ItemCollection: applied here to each Item (``collection``, ``bbox``, ``datetime`` or
  ``start_datetime``/``end_datetime``, ``eo:cloud_cover``).
* Prefix: ``bbox`` against each raster's bounds (its header is read); ``datetime`` against a date in the
  file name (``YYYYMMDD`` or ``YYYY-MM-DD``; files without one are left out when a datetime filter is
  set); ``collection`` only names the output folder; cloud cover is unknown (a filter on it is refused).
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from typing import Any, Literal

from ..io.storage import StorageEnv, is_remote, strip_protocol
from .errors import DiscoveryError
from .jobs import scene_id_from_uri, scene_output_uri
from .retry import RetryPolicy, call_with_retry

log = logging.getLogger(__name__)

SourceKind = Literal["auto", "prefix", "stac-api", "item-collection"]
BBox = tuple[float, float, float, float]
_TIFF_TYPES = ("image/tiff", "image/geotiff", "image/tiff; application=geotiff")


@dataclass(frozen=True)
class SceneRef:
    """A scene found in a source."""

    scene_id: str
    input_uri: str
    collection: str | None = None
    datetime: str | None = None  # ISO 8601, UTC
    bbox: BBox | None = None  # lon/lat
    cloud_cover: float | None = None
    properties: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def output_uri(self, output_prefix: str) -> str:
        return scene_output_uri(output_prefix, self.collection, self.scene_id)


@dataclass(frozen=True)
class SceneQuery:
    source: str
    kind: SourceKind = "auto"
    glob: str = "*.tif"
    collection: str | None = None
    bbox: BBox | None = None
    datetime: str | None = None  # "2024-01-01/2024-02-01", "2024-01-01/..", "../2024-02-01", "2024-01-05"
    max_cloud_cover: float | None = None
    asset: str | None = None  # STAC asset key; default: the first GeoTIFF data asset
    limit: int | None = None

    def resolved_kind(self) -> SourceKind:
        if self.kind != "auto":
            return self.kind
        s = self.source.lower().split("?", 1)[0]
        if s.endswith((".json", ".geojson")):
            return "item-collection"
        if s.startswith(("http://", "https://")):
            return "stac-api"
        return "prefix"


# -- parsing helpers ------------------------------------------------------------------------------------
def parse_bbox(value: Any) -> BBox | None:
    """``"w,s,e,n"`` or a 4-sequence -> (w, s, e, n) floats; :class:`DiscoveryError` if malformed."""
    if value is None or value == "":
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        w, s, e, n = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise DiscoveryError(f"bbox={value!r}: expected west,south,east,north in degrees, e.g. 11.0,46.0,12.0,47.0") from None
    if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= n <= 90):
        raise DiscoveryError(f"bbox={value!r}: need -180<=west,east<=180 and -90<=south<=north<=90 (degrees)")
    return (w, s, e, n)


def _parse_instant(text: str, end: bool) -> datetime | None:
    text = text.strip()
    if text in ("", ".."):
        return None
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            d = datetime.fromisoformat(text).date()
            return datetime.combine(d, time.max if end else time.min, tzinfo=timezone.utc)
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise DiscoveryError(f"datetime {text!r}: expected ISO 8601, e.g. 2024-01-05 or 2024-01-05T10:30:00Z") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def parse_interval(value: str | None) -> tuple[datetime | None, datetime | None]:
    """STAC-style ``start/end`` (either side may be ``..``) or a single date/instant -> (start, end)."""
    if not value:
        return None, None
    if "/" in value:
        a, b = value.split("/", 1)
        start, end = _parse_instant(a, False), _parse_instant(b, True)
    else:
        start, end = _parse_instant(value, False), _parse_instant(value, True)
    if start and end and start > end:
        raise DiscoveryError(f"datetime={value!r}: the start is after the end")
    return start, end


def interval_text(start: str | None, end: str | None) -> str | None:
    """CLI ``--start/--end`` -> a STAC interval string (None when both are open)."""
    if not start and not end:
        return None
    return f"{start or '..'}/{end or '..'}"


def lookback_interval(days: float | None, now: datetime | None = None) -> str | None:
    """The interval from ``days`` ago until now (open-ended), for scheduled runs; None without ``days``."""
    if not days:
        return None
    start = (now or datetime.now(timezone.utc)) - timedelta(days=float(days))
    return f"{_iso(start)}/.."


def _iso(dt: datetime | None) -> str | None:
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if dt else None


def _intersects(a: BBox | None, b: BBox | None) -> bool:
    if a is None or b is None:
        return True
    return not (a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1])


def _in_interval(start: datetime | None, end: datetime | None, lo: datetime | None, hi: datetime | None) -> bool:
    """Does the scene's [lo, hi] time span overlap the query's [start, end]?"""
    if start is None and end is None:
        return True
    if lo is None and hi is None:
        return False
    lo = lo or hi
    hi = hi or lo
    return not ((start and hi < start) or (end and lo > end))


def resolve_href(base_uri: str, href: str) -> str:
    """An asset href made absolute against the document it came from (URLs, s3:// and paths)."""
    if "://" in href or href.startswith("/"):
        return href
    if is_remote(base_uri):
        scheme, rest = base_uri.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(posixpath.dirname(rest), href))}"
    return posixpath.normpath(posixpath.join(posixpath.dirname(strip_protocol(base_uri)), href))


# -- sources ---------------------------------------------------------------------------------------------
def discover(query: SceneQuery, env: StorageEnv, retry: RetryPolicy = RetryPolicy()) -> list[SceneRef]:
    """The scenes of ``query.source`` that pass its filters, sorted by (datetime, scene id)."""
    kind = query.resolved_kind()
    if kind == "prefix":
        refs = call_with_retry(lambda: _from_prefix(query, env), retry, f"listing {query.source}")
    elif kind == "item-collection":
        refs = call_with_retry(lambda: _from_item_collection(query, env), retry, f"reading {query.source}")
    elif kind == "stac-api":
        refs = call_with_retry(lambda: _from_stac_api(query), retry, f"searching {query.source}")
    else:
        raise DiscoveryError(f"source kind {kind!r}: use prefix, stac-api or item-collection")
    refs.sort(key=lambda r: (r.datetime or "", r.scene_id))
    if query.limit is not None:
        refs = refs[: query.limit]
    log.info("found %d scene(s) in %s", len(refs), query.source)
    return refs


_DATE_IN_NAME = re.compile(r"(?<!\d)(\d{4})-?(\d{2})-?(\d{2})(?!\d)")


def date_from_name(name: str) -> datetime | None:
    for m in _DATE_IN_NAME.finditer(name):
        try:
            return datetime(int(m.group(1)), int(m.group(2)), int(m.group(3)), tzinfo=timezone.utc)
        except ValueError:
            continue
    return None


def _from_prefix(q: SceneQuery, env: StorageEnv) -> list[SceneRef]:
    if q.max_cloud_cover is not None:
        raise DiscoveryError("max_cloud_cover needs a STAC source (API or ItemCollection): a prefix of GeoTIFFs has "
                             "no cloud cover")
    fs = env.filesystem(q.source)
    root = strip_protocol(q.source).rstrip("/")
    if not is_remote(q.source):
        import os

        root = os.path.abspath(root)
        if not os.path.isdir(root):
            raise DiscoveryError(f"{q.source} is not a directory; give the folder that holds the scenes")
    scheme = q.source.split("://", 1)[0] + "://" if is_remote(q.source) else ""
    if is_remote(q.source):
        fs.invalidate_cache(root)
    paths = sorted(fs.glob(f"{root}/{q.glob}"))
    start, end = parse_interval(q.datetime)
    refs = []
    for p in paths:
        uri = scheme + str(p)
        sid = scene_id_from_uri(uri)
        when = date_from_name(sid)
        if (start or end) and not _in_interval(start, end, when, when):
            continue
        refs.append(SceneRef(sid, uri, q.collection, _iso(when), None, None))
    if q.bbox is not None:
        refs = [r for r in _with_bounds(refs, env) if _intersects(q.bbox, r.bbox)]
    return refs


def _with_bounds(refs: list[SceneRef], env: StorageEnv) -> list[SceneRef]:
    from rasterio.warp import transform_bounds

    from ..io.storage import rasterio_env, rasterio_session

    def bounds(r: SceneRef) -> SceneRef:
        import rasterio

        with rasterio_env(r.input_uri, env, rasterio_session(r.input_uri, env)):
            with rasterio.open(env.gdal_path(r.input_uri)) as ds:
                b = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds, densify_pts=21)
        return SceneRef(r.scene_id, r.input_uri, r.collection, r.datetime, tuple(b), r.cloud_cover, r.properties)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(bounds, refs))


def _read_json(uri: str, env: StorageEnv) -> Any:
    fs = env.filesystem(uri)
    try:
        data = fs.cat_file(strip_protocol(uri) if is_remote(uri) else strip_protocol(uri))
    except FileNotFoundError:
        raise DiscoveryError(f"{uri} does not exist; give the path or s3:// URI of a STAC ItemCollection") from None
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DiscoveryError(f"{uri} is not JSON ({e}); give a STAC ItemCollection (GeoJSON FeatureCollection)") from None


def _from_item_collection(q: SceneQuery, env: StorageEnv) -> list[SceneRef]:
    import pystac

    doc = _read_json(q.source, env)
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
        raise DiscoveryError(f"{q.source} is not a STAC ItemCollection (a GeoJSON FeatureCollection of Items)")
    try:
        items = list(pystac.ItemCollection.from_dict(doc, preserve_dict=False))
    except Exception as e:  # pystac raises several types for malformed items
        raise DiscoveryError(f"{q.source}: invalid STAC Items ({e})") from None
    start, end = parse_interval(q.datetime)
    refs = []
    for item in items:
        ref = _item_ref(item, q, base=q.source)
        if ref is None:
            continue
        if q.collection and item.collection_id != q.collection:
            continue
        if not _passes(ref, item, q, start, end):
            continue
        refs.append(ref)
    return refs


def _item_span(item: Any) -> tuple[datetime | None, datetime | None]:
    p = item.properties
    if item.datetime is not None:
        dt = item.datetime if item.datetime.tzinfo else item.datetime.replace(tzinfo=timezone.utc)
        return dt, dt
    lo = _parse_instant(p["start_datetime"], False) if p.get("start_datetime") else None
    hi = _parse_instant(p["end_datetime"], True) if p.get("end_datetime") else None
    return lo, hi


def _passes(ref: SceneRef, item: Any, q: SceneQuery, start: datetime | None, end: datetime | None) -> bool:
    if q.bbox is not None and not _intersects(q.bbox, ref.bbox):
        return False
    lo, hi = _item_span(item)
    if (start or end) and not _in_interval(start, end, lo, hi):
        return False
    if q.max_cloud_cover is not None:
        cc = ref.cloud_cover
        if cc is None or cc > q.max_cloud_cover:
            return False
    return True


def _pick_asset(item: Any, key: str | None) -> Any | None:
    if key:
        return item.assets.get(key)
    for a in item.assets.values():
        mt = (a.media_type or "").lower()
        roles = a.roles or []
        if any(mt.startswith(t) for t in _TIFF_TYPES) and (not roles or "data" in roles or "visual" in roles):
            return a
    for a in item.assets.values():
        if a.href.lower().split("?", 1)[0].endswith((".tif", ".tiff")):
            return a
    return None


def _item_ref(item: Any, q: SceneQuery, base: str | None) -> SceneRef | None:
    asset = _pick_asset(item, q.asset)
    if asset is None:
        log.warning("STAC item %s has no %s; skipping it", item.id,
                    f"asset {q.asset!r}" if q.asset else "GeoTIFF data asset (set asset= to choose one)")
        return None
    href = asset.href
    if base is not None and not item.get_self_href():
        href = resolve_href(base, href)
    elif item.get_self_href() and "://" not in href and not href.startswith("/"):
        href = resolve_href(item.get_self_href(), href)
    lo, _ = _item_span(item)
    cc = item.properties.get("eo:cloud_cover")
    bbox = tuple(float(v) for v in item.bbox[:4]) if item.bbox and len(item.bbox) >= 4 else None
    if item.bbox and len(item.bbox) == 6:  # 3D bbox: w, s, zmin, e, n, zmax
        bbox = (float(item.bbox[0]), float(item.bbox[1]), float(item.bbox[3]), float(item.bbox[4]))
    return SceneRef(item.id, href, q.collection or item.collection_id, _iso(lo), bbox,
                    float(cc) if cc is not None else None,
                    {k: v for k, v in item.properties.items() if isinstance(v, (str, int, float, bool))})


def stac_search_parameters(q: SceneQuery, conforms_filter: bool, conforms_query: bool) -> dict[str, Any]:
    """The keyword arguments for ``pystac_client.Client.search`` that express ``q``."""
    params: dict[str, Any] = {}
    if q.collection:
        params["collections"] = [q.collection]
    if q.bbox is not None:
        params["bbox"] = list(q.bbox)
    if q.datetime:
        start, end = parse_interval(q.datetime)
        params["datetime"] = f"{_iso(start) or '..'}/{_iso(end) or '..'}"
    if q.max_cloud_cover is not None:
        if conforms_filter:
            params["filter"] = {"op": "<=", "args": [{"property": "eo:cloud_cover"}, q.max_cloud_cover]}
            params["filter_lang"] = "cql2-json"
        elif conforms_query:
            params["query"] = {"eo:cloud_cover": {"lte": q.max_cloud_cover}}
    if q.limit is not None:
        params["max_items"] = q.limit
    return params


def _from_stac_api(q: SceneQuery) -> list[SceneRef]:
    from pystac_client import Client
    from pystac_client.conformance import ConformanceClasses
    from pystac_client.exceptions import APIError

    try:
        client = Client.open(q.source)
        params = stac_search_parameters(q, client.conforms_to(ConformanceClasses.FILTER),
                                        client.conforms_to(ConformanceClasses.QUERY))
        items = list(client.search(**params).items())
    except APIError as e:
        raise DiscoveryError(f"STAC API {q.source} refused the search ({e})") from None
    start, end = parse_interval(q.datetime)
    refs = []
    for item in items:
        ref = _item_ref(item, q, base=None)
        if ref is not None and _passes(ref, item, q, start, end):
            refs.append(ref)
    return refs


def explicit_scenes(uris: list[str], collection: str | None) -> list[SceneRef]:
    """Scenes named one by one (a backfill's ``--scene``), in the order given, duplicates dropped."""
    seen, refs = set(), []
    for u in uris:
        if u in seen:
            continue
        seen.add(u)
        sid = scene_id_from_uri(u)
        refs.append(SceneRef(sid, u, collection, _iso(date_from_name(sid)), None, None))
    return refs


# -- what is left to do ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SceneState:
    ref: SceneRef
    output_uri: str
    state: str  # absent | incomplete | complete | error
    done: int = 0
    total: int = 0
    error: str | None = None


def scene_states(refs: list[SceneRef], output_prefix: str, env: StorageEnv, *,
                 retry: RetryPolicy = RetryPolicy(), threads: int = 8) -> list[SceneState]:
    """The store state of each scene's output (read concurrently; an unreadable one is ``error``)."""
    from ..errors import GeosrError
    from ..store import store_status

    def one(r: SceneRef) -> SceneState:
        out = r.output_uri(output_prefix)
        try:
            st = call_with_retry(lambda: store_status(out, env), retry, f"checking {out}")
        except GeosrError as e:
            return SceneState(r, out, "error", error=str(e))
        return SceneState(r, out, st.state, st.done, st.total)

    if not refs:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(refs)))) as pool:
        return list(pool.map(one, refs))


def pending(refs: list[SceneRef], output_prefix: str, env: StorageEnv, *, overwrite: bool = False,
            retry: RetryPolicy = RetryPolicy()) -> list[SceneState]:
    """The scenes whose output is not complete (all of them with ``overwrite``)."""
    states = scene_states(refs, output_prefix, env, retry=retry)
    return [s for s in states if overwrite or s.state != "complete"]
