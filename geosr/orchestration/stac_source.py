"""Scenes from STAC: a static ItemCollection (a JSON file, local or s3://) filtered here, or a STAC API
searched with pystac-client (the filters go to the server and are checked again here)."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

from ..io.storage import StorageEnv, is_remote, resolve_href, strip_protocol
from .errors import DiscoveryError
from .query import SceneQuery, SceneRef, in_interval, intersects, iso, parse_instant, parse_interval

log = logging.getLogger(__name__)

_TIFF_TYPES = ("image/tiff", "image/geotiff", "image/tiff; application=geotiff")


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


def from_item_collection(q: SceneQuery, env: StorageEnv) -> list[SceneRef]:
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
    lo = parse_instant(p["start_datetime"], False) if p.get("start_datetime") else None
    hi = parse_instant(p["end_datetime"], True) if p.get("end_datetime") else None
    return lo, hi


def _passes(ref: SceneRef, item: Any, q: SceneQuery, start: datetime | None, end: datetime | None) -> bool:
    if q.bbox is not None and not intersects(q.bbox, ref.bbox):
        return False
    lo, hi = _item_span(item)
    if (start or end) and not in_interval(start, end, lo, hi):
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
    from ..io.stac_item import is_per_band_item

    if q.asset == "item" or (q.asset is None and is_per_band_item(item)):
        # one COG per band (Sentinel-2 L2A on Earth Search, the Planetary Computer): the scene is the Item itself,
        # stacked by geosr.io.stac_item from the bands the config names
        href = item.get_self_href()
        if not href:
            log.warning("STAC item %s publishes one COG per band but has no self link to read it from; skipping "
                        "it (give the Item a rel=self link, or set asset= to read one asset)", item.id)
            return None
    else:
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
    return SceneRef(item.id, href, q.collection or item.collection_id, iso(lo), bbox,
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
        params["datetime"] = f"{iso(start) or '..'}/{iso(end) or '..'}"
    if q.max_cloud_cover is not None:
        if conforms_filter:
            params["filter"] = {"op": "<=", "args": [{"property": "eo:cloud_cover"}, q.max_cloud_cover]}
            params["filter_lang"] = "cql2-json"
        elif conforms_query:
            params["query"] = {"eo:cloud_cover": {"lte": q.max_cloud_cover}}
    if q.limit is not None:
        params["max_items"] = q.limit
    return params


def from_stac_api(q: SceneQuery) -> list[SceneRef]:
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

