"""The STAC Item written beside a finished store (``.../scene.zarr`` -> ``.../scene.stac-item.json``).

Its hrefs resolve from the Item's own location: the ``data`` asset is ``./scene.zarr`` (the store lies beside the
Item), and a ``derived_from`` link points at the source STAC Item when the input was one (relative when both are
local files, else the source's absolute URL). ``gsd`` is the output's pixel size; ``platform``, ``constellation``
and ``instruments`` come from the source Item when it has them, and so does ``datetime`` unless the run gives one.
``offline_validator()`` validates an Item with pystac without network access: the core schemas ship with pystac,
the projection and raster extension schemas with geosr (``geosr/data/stac-schemas``).

The Item carries the projection extension (``proj:code``, ``proj:wkt2``, ``proj:shape``,
``proj:transform``, ``proj:bbox``, ``proj:centroid``), a bbox and footprint in EPSG:4326 (edges
densified, so a projected rectangle's curved outline is followed; split at the antimeridian as RFC 7946 says, see
:func:`footprint`), and one ``data`` asset pointing at
the store with media type ``application/vnd+zarr`` (``pystac.MediaType.ZARR``), role ``data``, STAC 1.1
``bands`` (name, data type, nodata) and the raster extension's ``raster:bands`` (data type, nodata,
scale/offset from stored values to reflectance, spatial resolution). A store with an uncertainty
variable says so in ``geosr:uncertainty`` (variable name, samples per tile). The Item is strict JSON
(:mod:`geosr.jsonio`): no bare NaN or Infinity.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timezone
from typing import Any

import pystac
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterBand, RasterExtension

from .. import jsonio
from ..io.storage import StorageEnv
from .backend import StoreLocation, storage_errors
from .encode import SCALE, nodata
from .georef import bbox as native_bbox
from .georef import crs_code, crs_wkt2
from .spec import OutputSpec

log = logging.getLogger(__name__)

ZARR_MEDIA_TYPE = pystac.MediaType.ZARR  # "application/vnd+zarr"
_DENSIFY = 21  # points per footprint edge


def stac_item_uri(uri: str) -> str:
    """Where the Item of store ``uri`` lives: beside it, ``scene.zarr`` -> ``scene.stac-item.json``."""
    u = str(uri).rstrip("/")
    return (u[: -len(".zarr")] if u.endswith(".zarr") else u) + ".stac-item.json"


def item_id(uri: str) -> str:
    name = str(uri).rstrip("/").rsplit("/", 1)[-1]
    return name[: -len(".zarr")] if name.endswith(".zarr") else name


def footprint(spec: OutputSpec) -> tuple[list[float] | None, dict[str, Any] | None]:
    """(bbox, GeoJSON geometry) of the output's outline in EPSG:4326 (lon/lat), as STAC and RFC 7946 want them.

    The outline is the grid's edges, densified and transformed, wound counterclockwise (the right-hand rule) with
    longitudes in [-180, 180]. An outline that crosses the antimeridian is split there into a MultiPolygon and its
    bbox has west > east (RFC 7946 section 5.2); one around a pole encloses it; one that spans every longitude (a
    global geographic grid) is the band between its latitudes. Splitting and the bbox are the ``antimeridian``
    package's. (None, None) when the outline cannot be placed on the Earth (the grid lies outside its CRS's
    domain): STAC's null geometry, with no bbox."""
    import antimeridian
    from pyproj import CRS, Transformer
    from shapely.geometry import Polygon, mapping

    xmin, ymin, xmax, ymax = native_bbox(spec.transform, spec.height, spec.width)
    crs = CRS.from_wkt(spec.crs_wkt)
    t = Transformer.from_crs(crs, CRS.from_epsg(4326), always_xy=True)
    ring: list[tuple[float, float]] = []
    n = _DENSIFY - 1
    # west edge down, south edge east, east edge up, north edge west: counterclockwise on a north-up grid
    edges = [((xmin, ymax), (xmin, ymin)), ((xmin, ymin), (xmax, ymin)), ((xmax, ymin), (xmax, ymax)),
             ((xmax, ymax), (xmin, ymax))]
    for (x0, y0), (x1, y1) in edges:
        for k in range(n):
            ring.append((x0 + (x1 - x0) * k / n, y0 + (y1 - y0) * k / n))
    lon, lat = t.transform([p[0] for p in ring], [p[1] for p in ring])
    if not all(math.isfinite(v) for v in (*lon, *lat)) or not all(-90.0 <= v <= 90.0 for v in lat):
        log.warning("the outline of %s x %s px at %s in %s is not on the Earth; the STAC Item has no geometry",
                    spec.height, spec.width, spec.transform[2::3][:2], crs.name)
        return None, None
    if crs.is_geographic and max(lon) - min(lon) >= 360.0:  # every longitude: the band between the latitudes
        s_, n_ = min(lat), max(lat)
        band = [[-180.0, n_], [-180.0, s_], [180.0, s_], [180.0, n_], [-180.0, n_]]
        return [-180.0, s_, 180.0, n_], {"type": "Polygon", "coordinates": [band]}
    coords = list(zip(lon, lat))
    coords.append(coords[0])
    fixed = antimeridian.fix_polygon(Polygon(coords), fix_winding=False, great_circle=False)
    geom = _rounded(mapping(fixed))
    return [float(v) for v in antimeridian.bbox(geom)], geom


def _rounded(geom: dict[str, Any]) -> dict[str, Any]:
    """A shapely GeoJSON mapping as plain lists, coordinates rounded to 1e-8 degree (about a millimetre)."""
    def ring(r: Any) -> list[list[float]]:
        return [[round(float(x), 8), round(float(y), 8)] for x, y, *_ in r]

    if geom["type"] == "Polygon":
        return {"type": "Polygon", "coordinates": [ring(r) for r in geom["coordinates"]]}
    return {"type": "MultiPolygon", "coordinates": [[ring(r) for r in p] for p in geom["coordinates"]]}


def build_stac_item(uri: str, spec: OutputSpec, provenance: dict[str, Any] | None = None,
                    when: datetime | None = None) -> pystac.Item:
    """The Item describing store ``uri``. Its datetime is ``provenance["datetime"]`` (the acquisition
    time, ISO 8601) when given, else ``when`` (default: now, UTC)."""
    prov = provenance or {}
    source = prov.get("source_item") if isinstance(prov.get("source_item"), dict) else {}
    now = when or datetime.now(timezone.utc)
    dt = _parse_datetime(prov.get("datetime")) or _parse_datetime(source.get("datetime")) or now
    box, geom = footprint(spec)
    props: dict[str, Any] = {"created": now.isoformat(),
                             "gsd": float(min(abs(spec.transform[0]), abs(spec.transform[4])))}
    for key in ("platform", "constellation", "instruments"):
        if source.get(key):
            props[key] = source[key]
    for key, name in (("plan_hash", "geosr:plan_hash"), ("geosr_version", "geosr:version"),
                      ("input_uri", "geosr:input"), ("config_hash", "geosr:config_hash")):
        if prov.get(key) is not None:
            props[name] = prov[key]
    model = prov.get("model")
    if isinstance(model, dict) and model.get("name"):
        props["geosr:model"] = model.get("name")
    if spec.std_variable:
        props["geosr:uncertainty"] = {"variable": spec.std_variable, "samples": spec.uncertainty_samples}
    item = pystac.Item(id=item_id(uri), geometry=geom, bbox=box, datetime=dt, properties=props)
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    a, _, c, _, e, f = spec.transform
    cx, cy = c + a * spec.width / 2, f + e * spec.height / 2
    proj.apply(
        code=crs_code(spec.crs_wkt),
        wkt2=crs_wkt2(spec.crs_wkt),
        shape=[spec.height, spec.width],
        transform=[float(v) for v in spec.transform],
        bbox=native_bbox(spec.transform, spec.height, spec.width),
        centroid=_centroid(spec, cx, cy),
    )
    nd = nodata(spec.dtype)
    nd_json = nd if nd == nd else "nan"  # JSON has no NaN; STAC spells it "nan"
    if source.get("href"):
        item.add_link(pystac.Link("derived_from", _relative_href(str(source["href"]), stac_item_uri(uri)),
                                  media_type=pystac.MediaType.GEOJSON, title=f"source STAC Item {source.get('id')}"))
    asset = pystac.Asset(
        href="./" + str(uri).rstrip("/").rsplit("/", 1)[-1],
        media_type=ZARR_MEDIA_TYPE,
        roles=["data"],
        title=f"super-resolved {spec.variable} (Zarr v{spec.zarr_format})",
        extra_fields={"bands": [{"name": n, "data_type": spec.dtype, "nodata": nd_json} for n in spec.band_names]},
    )
    item.add_asset("data", asset)
    scale = 1.0 / SCALE if spec.dtype == "uint16" else 1.0
    res = float(min(abs(spec.transform[0]), abs(spec.transform[4])))
    RasterExtension.ext(asset, add_if_missing=True).apply(bands=[
        RasterBand.create(nodata=nd_json, data_type=spec.dtype, scale=scale, offset=0.0, spatial_resolution=res)
        for _ in spec.band_names
    ])
    return item


def write_stac_item(uri: str, env: StorageEnv, item: pystac.Item) -> str:
    """Write ``item`` beside store ``uri``; returns the Item's URI."""
    target = stac_item_uri(uri)
    doc = item.to_dict(include_self_link=False, transform_hrefs=False)
    loc = StoreLocation(target, env)
    loc.write_bytes(loc.root, jsonio.dumps(doc, indent=1).encode())
    return target


def read_stac_item(uri: str, env: StorageEnv) -> pystac.Item | None:
    """The Item beside store ``uri``, or None when there is none."""
    loc = StoreLocation(stac_item_uri(uri), env)
    with storage_errors(loc.uri, "read"):
        try:
            data = loc.fs.cat_file(loc.root)
        except FileNotFoundError:
            return None
    item = pystac.Item.from_dict(json.loads(data))
    item.set_self_href(loc.uri)
    return item


def _relative_href(target: str, item_uri: str) -> str:
    """``target`` as seen from the Item at ``item_uri``: a relative path when both are local files, else absolute."""
    import os

    if "://" in target or "://" in item_uri:
        return target
    base = os.path.dirname(os.path.abspath(item_uri))
    return os.path.relpath(os.path.abspath(target), base).replace(os.sep, "/")


STAC_SCHEMA_DIR = "data/stac-schemas"
BUNDLED_SCHEMAS = {
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json": "projection-v2.0.0.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json": "raster-v1.1.0.json",
}
"""Extension schema URI -> geosr's offline copy (package data), for :func:`offline_validator`."""


def offline_validator() -> Any:
    """A pystac validator that needs no network for geosr's Items: pystac's own core schemas plus the bundled
    projection and raster extension schemas. Use it as ``item.validate(validator=offline_validator())``."""
    from importlib.resources import files

    from pystac.validation import JsonSchemaSTACValidator

    v = JsonSchemaSTACValidator()
    root = files("geosr").joinpath(STAC_SCHEMA_DIR)
    for uri, name in BUNDLED_SCHEMAS.items():
        v.schema_cache[uri] = json.loads(root.joinpath(name).read_text())
    return v


def _centroid(spec: OutputSpec, x: float, y: float) -> dict[str, float] | None:
    from pyproj import CRS, Transformer

    t = Transformer.from_crs(CRS.from_wkt(spec.crs_wkt), CRS.from_epsg(4326), always_xy=True)
    lon, lat = t.transform(x, y)
    if not (math.isfinite(lon) and math.isfinite(lat) and -90.0 <= lat <= 90.0):
        return None
    return {"lat": round(float(lat), 7), "lon": round(_wrap(float(lon)), 7)}


def _wrap(lon: float) -> float:
    """A longitude in [-180, 180] (180.034 -> -179.966; -180 and 180 stay)."""
    return lon if -180.0 <= lon <= 180.0 else (lon + 180.0) % 360.0 - 180.0


def _parse_datetime(v: Any) -> datetime | None:
    if v is None:
        return None
    if isinstance(v, datetime):
        return v if v.tzinfo else v.replace(tzinfo=timezone.utc)
    try:
        d = datetime.fromisoformat(str(v).replace("Z", "+00:00"))
    except ValueError:
        return None
    return d if d.tzinfo else d.replace(tzinfo=timezone.utc)
