"""The STAC item beside a finished store, and ``geosr info``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pystac
import pytest
from pyproj import CRS, Transformer
from pystac.extensions.projection import ProjectionExtension
from pystac.validation import validate_dict

from geosr.cli import main
from geosr.io.storage import StorageEnv
from geosr.store import OutputSpec, ZarrOutput, stac_item_uri
from geosr.store.stac import read_stac_item

ENV = StorageEnv()
SPEC = OutputSpec(shape=(3, 520, 600), chunk=128, block=256, band_names=("B02", "B03", "B04"),
                  crs_wkt=CRS.from_epsg(32633).to_wkt(), transform=(2.5, 0.0, 500000.0, 0.0, -2.5, 5000000.0), compressor="zstd", level=3)
PROVENANCE = {"input_uri": "s3://in/S2A_T33TWM.tif", "input_checksum": '"etag-42"', "geosr_version": "0.1.0",
              "model": {"name": "bicubic", "version": "1"}, "config_hash": "c0ffee", "plan_hash": "plan-9",
              "start_time": "2024-06-02T08:00:00+00:00", "end_time": "2024-06-02T08:05:00+00:00",
              "datetime": "2024-06-01T10:20:30Z", "metrics": {"seam_metric": 0.01}}


def write_store(path: Path, spec: OutputSpec = SPEC, blocks: int | None = None, finalize: bool = True) -> ZarrOutput:
    out = ZarrOutput.create(str(path), spec, ENV, "plan-9")
    rng = np.random.default_rng(1)
    for b in list(spec.blocks())[:blocks]:
        h, w = b.shape
        out.write_block(b, rng.uniform(0, 0.5, (spec.bands, h, w)).astype(np.float32), np.ones((h, w), bool))
        out.mark_done(b, {})
    if finalize:
        out.finalize(PROVENANCE)
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stac") / "scene.zarr"
    write_store(path)
    return path


def test_item_uri_is_beside_the_store():
    assert stac_item_uri("s3://b/out/scene.zarr") == "s3://b/out/scene.stac-item.json"
    assert stac_item_uri("/data/scene.zarr/") == "/data/scene.stac-item.json"
    assert stac_item_uri("/data/scene") == "/data/scene.stac-item.json"


def test_stac_item_lies_beside_the_store_with_projection_fields(store):
    item_path = store.parent / "scene.stac-item.json"
    assert item_path.is_file()
    item = pystac.Item.from_file(str(item_path))
    assert item.id == "scene"
    assert item.datetime.isoformat() == "2024-06-01T10:20:30+00:00"
    proj = ProjectionExtension.ext(item)
    assert proj.code == "EPSG:32633" and proj.epsg == 32633
    assert CRS.from_wkt(proj.wkt2) == CRS.from_epsg(32633)
    assert proj.shape == [520, 600]
    assert proj.transform == list(SPEC.transform)
    assert proj.bbox == [500000.0, 5000000.0 - 1300.0, 501500.0, 5000000.0]
    # bbox/geometry in EPSG:4326 enclose the corners of the output, transformed independently
    t = Transformer.from_crs(32633, 4326, always_xy=True)
    for x, y in [(500000.0, 5000000.0), (501500.0, 4998700.0), (501500.0, 5000000.0), (500000.0, 4998700.0)]:
        lon, lat = t.transform(x, y)
        assert item.bbox[0] - 1e-7 <= lon <= item.bbox[2] + 1e-7 and item.bbox[1] - 1e-7 <= lat <= item.bbox[3] + 1e-7
    ring = item.geometry["coordinates"][0]
    assert item.geometry["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) > 5
    from shapely.geometry import LinearRing

    assert LinearRing(ring).is_ccw, "RFC 7946 3.1.6: an exterior ring is counterclockwise"
    assert proj.centroid["lat"] == pytest.approx(45.147, abs=1e-3) and proj.centroid["lon"] == pytest.approx(15.0095, abs=1e-3)
    asset = item.assets["data"]
    assert asset.href == "./scene.zarr" and asset.get_absolute_href() == str(store) and asset.media_type == "application/vnd+zarr" and asset.roles == ["data"]
    assert [b["name"] for b in asset.extra_fields["bands"]] == ["B02", "B03", "B04"]
    assert item.properties["geosr:plan_hash"] == "plan-9" and item.properties["geosr:model"] == "bicubic"
    assert read_stac_item(str(store), ENV).to_dict() == item.to_dict()


def test_stac_item_validates_against_the_core_item_schema_offline(store):
    doc = json.loads((store.parent / "scene.stac-item.json").read_text())
    doc["stac_extensions"] = []  # extension schemas are remote; the core schema ships with pystac
    assert validate_dict(doc) == ["https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json"]


def test_stac_item_validates_against_the_extension_schemas_offline(store):
    """pystac validates the Item against the core, projection and raster schemas with no network: the extension
    schemas ship with geosr. The bundled schemas do reject what their extensions forbid."""
    from pystac.errors import STACValidationError

    from geosr.store.stac import BUNDLED_SCHEMAS, offline_validator

    item = pystac.Item.from_file(str(store.parent / "scene.stac-item.json"))
    validated = item.validate(validator=offline_validator())
    assert set(BUNDLED_SCHEMAS) <= set(validated)
    assert "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json" in validated
    doc = item.to_dict(include_self_link=False)
    for path, bad in ((("properties", "proj:shape"), [520]), (("properties", "proj:centroid"), {"lat": 95, "lon": 0}),
                      (("properties", "proj:transform"), [1.0, 0.0, 2.0, 0.0, -1.0]),
                      (("assets", "data", "raster:bands"), [{"data_type": "uint17"}]),
                      (("assets", "data", "raster:bands"), [{"spatial_resolution": 0}])):
        broken = json.loads(json.dumps(doc))
        target = broken
        for k in path[:-1]:
            target = target[k]
        target[path[-1]] = bad
        with pytest.raises(STACValidationError):
            pystac.Item.from_dict(broken).validate(validator=offline_validator())


def test_finalize_without_stac_writes_no_item(tmp_path):
    out = write_store(tmp_path / "nostac.zarr", finalize=False)
    out.finalize(PROVENANCE, stac=False)
    assert not (tmp_path / "nostac.stac-item.json").exists()
    assert out.is_complete()


def test_info_prints_geometry_encoding_overviews_completeness_and_provenance(store, capsys):
    assert main(["info", str(store)]) == 0
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    info = {k.strip(): v.strip() for k, v in lines.items()}
    assert info["store"] == f"{store} (Zarr v2, variable 'reflectance')"
    assert info["state"] == "complete: 9/9 blocks done"
    assert info["shape"] == "3 bands x 520 rows x 600 columns"
    assert info["dtype"].startswith("uint16 (uint16 = round(reflectance * 10000)")
    assert info["crs"] == "EPSG:32633 (WGS 84 / UTM zone 33N)"
    assert info["resolution"] == "2.5 x 2.5 metre"
    assert info["bounds"] == "500000, 4998700, 501500, 5000000"
    assert info["bands"] == "B02, B03, B04"
    assert info["chunks"] == "1 x 128 x 128, zstd level 3"
    assert info["overviews"] == "2 levels: 1: 260 x 300, 2: 130 x 150"
    assert info["input"] == "s3://in/S2A_T33TWM.tif" and info["checksum"] == '"etag-42"'
    assert info["model"] == "bicubic" and info["model version"] == "1" and info["plan hash"] == "plan-9"
    assert info["stac item"] == str(store.parent / "scene.stac-item.json")


def test_info_json_for_an_incomplete_store(tmp_path, capsys):
    spec = OutputSpec(**{**SPEC.to_dict(), "zarr_format": 3, "shard": 256, "block": 512, "dtype": "float32"})
    write_store(tmp_path / "half.zarr", spec, blocks=1, finalize=False)
    assert main(["info", str(tmp_path / "half.zarr"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["state"] == "incomplete" and d["blocks"] == {"done": 1, "total": 4, "size": 512}
    assert d["shape"] == [3, 520, 600] and d["dtype"] == "float32" and d["nodata"] == "nan"
    assert d["chunks"] == [1, 128, 128] and d["shards"] == [3, 256, 256] and d["zarr_format"] == 3
    assert d["crs"]["code"] == "EPSG:32633" and d["resolution"] == [2.5, 2.5]
    assert [o["written"] for o in d["overviews"]] == ["per block", "per block"]
    assert d["provenance"]["plan_hash"] == "plan-9" and d["stac_item"] is None


def test_info_on_a_path_without_a_store_fails_with_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.zarr")]) == 2
    err = capsys.readouterr().err
    assert "not a geosr output store" in err and err.count("\n") == 1


# -- the footprint across the antimeridian and the poles (issue 18 #6; RFC 7946 sections 3.1.6, 3.1.9, 5.2) --------
def _item_doc(tmp_path: Path, name: str, crs: int, transform: tuple[float, ...], shape=(3, 256, 256)) -> dict:
    spec = OutputSpec(**{**SPEC.to_dict(), "shape": shape, "crs_wkt": CRS.from_epsg(crs).to_wkt(),
                         "transform": transform})
    write_store(tmp_path / f"{name}.zarr", spec)
    text = (tmp_path / f"{name}.stac-item.json").read_text()

    def refuse(token: str):
        raise AssertionError(f"bare {token} in the STAC Item: not JSON")

    doc = json.loads(text, parse_constant=refuse)
    pystac.Item.from_dict(doc).validate(validator=_offline())
    return doc


def _offline():
    from geosr.store.stac import offline_validator

    return offline_validator()


def _polygons(geom: dict) -> list:
    import shapely.geometry

    shape = shapely.geometry.shape(geom)
    return list(shape.geoms) if geom["type"] == "MultiPolygon" else [shape]


def _wrapped(lon: float) -> float:
    return (lon + 180.0) % 360.0 - 180.0


def test_a_utm_scene_across_the_antimeridian_gets_a_split_geometry_and_a_west_east_bbox(tmp_path):
    """Issue 18 #6: a UTM zone 60 scene east of Fiji crosses 180 deg. The bbox spanned the whole globe ([-180, .., 180])
    and the polygon jumped across +-180. Now: two polygons meeting at +-180, bbox west > east."""
    transform = (300.0, 0.0, 780000.0, 0.0, -300.0, 8120000.0)  # x 780 .. 856.8 km: 179.63 E .. 179.61 W
    doc = _item_doc(tmp_path, "fiji", 32760, transform)
    west, south, east, north = doc["bbox"]
    assert west > east, "RFC 7946 5.2: a bbox across the antimeridian has west > east"
    assert 179.6 < west < 179.7 and -179.7 < east < -179.5 and -17.8 < south < north < -16.9
    assert doc["geometry"]["type"] == "MultiPolygon"
    parts = _polygons(doc["geometry"])
    assert len(parts) == 2 and all(p.is_valid and p.exterior.is_ccw for p in parts)
    lons = [x for p in parts for x, _ in p.exterior.coords]
    assert all(-180.0 <= x <= 180.0 for x in lons)
    assert sorted([max(x for x, _ in p.exterior.coords) for p in parts])[0] < 0 and 180.0 in lons and -180.0 in lons
    # every corner of the grid, transformed on its own, lies in the geometry; together the parts are the scene's area
    import shapely
    import shapely.geometry

    whole = shapely.union_all(parts).buffer(1e-7)  # coordinates are rounded to 1e-8
    t = Transformer.from_crs(32760, 4326, always_xy=True)
    x0, y1 = transform[2], transform[5]
    x1, y0 = x0 + 300.0 * 256, y1 - 300.0 * 256
    corners = [t.transform(x, y) for x, y in ((x0, y1), (x1, y1), (x1, y0), (x0, y0))]
    for lon, lat in corners:
        assert whole.contains(shapely.geometry.Point(_wrapped(lon), lat)), (lon, lat)
    unwrapped = shapely.geometry.Polygon([(lon % 360.0, lat) for lon, lat in corners])
    assert sum(p.area for p in parts) == pytest.approx(unwrapped.area, rel=1e-3)
    assert -180.0 <= doc["properties"]["proj:centroid"]["lon"] <= 180.0


def test_a_geographic_grid_past_180_has_no_longitude_beyond_180(tmp_path):
    """Issue 18 #6: an EPSG:4326 grid from 179.6 to 180.6 E wrote lon 180.6 (and a centroid at 180.1)."""
    doc = _item_doc(tmp_path, "past180", 4326, (0.01, 0.0, 179.6, 0.0, -0.01, -16.0), shape=(3, 100, 100))
    assert doc["bbox"] == pytest.approx([179.6, -17.0, -179.4, -16.0])
    parts = _polygons(doc["geometry"])
    assert doc["geometry"]["type"] == "MultiPolygon" and len(parts) == 2
    assert all(-180.0 <= x <= 180.0 for p in parts for x, _ in p.exterior.coords)
    assert sum(p.area for p in parts) == pytest.approx(1.0, rel=1e-6)
    assert doc["properties"]["proj:centroid"] == {"lat": -16.5, "lon": pytest.approx(-179.9)}
    # wholly past 180: one polygon, moved into [-180, 180]
    doc = _item_doc(tmp_path, "beyond", 4326, (0.01, 0.0, 190.0, 0.0, -0.01, 10.0), shape=(3, 100, 100))
    assert doc["geometry"]["type"] == "Polygon" and doc["bbox"] == pytest.approx([-170.0, 9.0, -169.0, 10.0])


@pytest.mark.parametrize("west", [-180.0, 0.0])
def test_a_global_geographic_grid_is_the_band_between_its_latitudes(tmp_path, west):
    """A grid over every longitude (-180..180, or 0..360): bbox -180..180, not 0..360, and a valid polygon."""
    doc = _item_doc(tmp_path, f"global{int(west)}", 4326, (1.0, 0.0, west, 0.0, -1.0, 60.0), shape=(3, 120, 360))
    assert doc["bbox"] == [-180.0, -60.0, 180.0, 60.0]
    (part,) = _polygons(doc["geometry"])
    assert part.is_valid and part.exterior.is_ccw and part.area == pytest.approx(360.0 * 120.0)


def test_a_polar_scene_encloses_its_pole(tmp_path):
    """An Antarctic polar stereographic scene around the South Pole: one polygon reaching -90, bbox all longitudes."""
    doc = _item_doc(tmp_path, "pole", 3031, (4000.0, 0.0, -512000.0, 0.0, -4000.0, 512000.0))
    (part,) = _polygons(doc["geometry"])
    assert part.is_valid and part.exterior.is_ccw
    assert doc["bbox"][0] == -180.0 and doc["bbox"][2] == 180.0 and doc["bbox"][1] == -90.0 and -83.4 < doc["bbox"][3] < -83.3


def test_an_outline_off_the_earth_gives_a_null_geometry_not_infinity(tmp_path):
    """A grid outside its CRS's domain (UTM eastings of 10^8 m) transformed to inf, which json.dumps wrote as a bare
    Infinity. The Item says it has no geometry (STAC allows null, without a bbox), and stays strict JSON."""
    doc = _item_doc(tmp_path, "nowhere", 32633, (10.0, 0.0, 1e8, 0.0, -10.0, 5e6))
    assert doc["geometry"] is None and "bbox" not in doc and "proj:centroid" not in doc["properties"]
