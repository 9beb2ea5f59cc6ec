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

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..io.storage import StorageEnv, is_remote, strip_protocol
from ..retry import RetryPolicy, call_with_retry
from .errors import DiscoveryError
from .jobs import scene_id_from_uri
from .query import SceneQuery, SceneRef, date_from_name, in_interval, intersects, iso, parse_interval
from .stac_source import from_item_collection, from_stac_api

log = logging.getLogger(__name__)


# -- sources ---------------------------------------------------------------------------------------------
def discover(query: SceneQuery, env: StorageEnv, retry: RetryPolicy = RetryPolicy()) -> list[SceneRef]:
    """The scenes of ``query.source`` that pass its filters, sorted by (datetime, scene id)."""
    kind = query.resolved_kind()
    if kind == "prefix":
        refs = call_with_retry(lambda: _from_prefix(query, env), retry, f"listing {query.source}")
    elif kind == "item-collection":
        refs = call_with_retry(lambda: from_item_collection(query, env), retry, f"reading {query.source}")
    elif kind == "stac-api":
        refs = call_with_retry(lambda: from_stac_api(query), retry, f"searching {query.source}")
    else:
        raise DiscoveryError(f"source kind {kind!r}: use prefix, stac-api or item-collection")
    refs.sort(key=lambda r: (r.datetime or "", r.scene_id))
    if query.limit is not None:
        refs = refs[: query.limit]
    log.info("found %d scene(s) in %s", len(refs), query.source)
    return refs



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
        if (start or end) and not in_interval(start, end, when, when):
            continue
        refs.append(SceneRef(sid, uri, q.collection, iso(when), None, None))
    if q.bbox is not None:
        refs = [r for r in _with_bounds(refs, env) if intersects(q.bbox, r.bbox)]
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



def explicit_scenes(uris: list[str], collection: str | None) -> list[SceneRef]:
    """Scenes named one by one (a backfill's ``--scene``), in the order given, duplicates dropped."""
    seen, refs = set(), []
    for u in uris:
        if u in seen:
            continue
        seen.add(u)
        sid = scene_id_from_uri(u)
        refs.append(SceneRef(sid, u, collection, iso(date_from_name(sid)), None, None))
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
        states = list(pool.map(one, refs))
    return refuse_shared_outputs(states)


def refuse_shared_outputs(states: list[SceneState]) -> list[SceneState]:
    """Scenes whose outputs collide (names that differ only in characters a store name cannot hold, e.g.
    ``scene a.tif`` and ``scene-a.tif``, both ``scene-a.zarr``) become errors naming each other: one output
    per scene, never one silently kept for two."""
    by_output: dict[str, list[SceneState]] = {}
    for st in states:
        by_output.setdefault(st.output_uri, []).append(st)
    out = []
    for st in states:
        shared = by_output[st.output_uri]
        if len(shared) > 1:
            others = ", ".join(repr(o.ref.input_uri) for o in shared if o is not st)
            st = SceneState(st.ref, st.output_uri, "error", error=(
                f"{st.ref.input_uri} and {others} would both be written to {st.output_uri}; rename the inputs so "
                "their names differ in letters, digits, '.', '_' or '-', or run them one by one with an output URI"))
        out.append(st)
    return out


def pending(refs: list[SceneRef], output_prefix: str, env: StorageEnv, *, overwrite: bool = False,
            retry: RetryPolicy = RetryPolicy()) -> list[SceneState]:
    """The scenes whose output is not complete (all of them with ``overwrite``)."""
    states = scene_states(refs, output_prefix, env, retry=retry)
    return [s for s in states if overwrite or s.state != "complete"]

