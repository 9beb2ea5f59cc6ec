"""Sentinel-2 L2A straight from a STAC Item (geosr/io/stac_item.py), end to end through ``geosr run``: the Item and
its per-band COGs (tests/s2_item.py, shaped like Earth Search's) on local disk, in a static catalog on SeaweedFS
(s3://, hrefs relative to the Item) and served over plain HTTP by SeaweedFS (absolute hrefs, as Earth Search
publishes them); outputs read back by GDAL. Bad Items fail with one line naming the Item and the band, before
anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geosr.cli import main
from tests import s2_item
from tests.conftest import PUBLIC_BUCKET

RUN = ["--model", "nearest", "--scale", "2", "--tile", "32", "--overlap", "8", "--chunk", "128", "--block", "128",
       "--no-progress", "--workers", "1"]
BANDS = ("red", "green", "blue", "nir")  # B04, B03, B02, B08: the default stack


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return s2_item.write_scene(tmp_path_factory.mktemp("s2") / "S2B_32TMT")


def read_gdal(store: Path | str) -> tuple[np.ndarray, object, object]:
    with rasterio.open(f'ZARR:"{store}":/reflectance') as ds:
        return ds.read(), ds.transform, ds.crs


def expected_nearest(keys=BANDS, scl_mask: bool = False) -> np.ndarray:
    """What ``--model nearest --scale 2`` must write: DN - 1000 (the baseline-04.00 offset, as uint16 reflectance
    x 10000), 0 where the band is nodata or (with the SCL mask) cloud/shadow, each pixel repeated 2 x 2."""
    dn = np.stack([s2_item.dn_pattern(k, s2_item.SIZE).astype(np.int64) for k in keys])
    valid = np.all(dn > 0, axis=0)
    if scl_mask:
        scl = s2_item.scl_pattern(s2_item.SIZE // 2).repeat(2, 0).repeat(2, 1)
        valid &= ~np.isin(scl, (0, 1, 3, 8, 9, 10))
    out = np.where(valid, dn - 1000, 0).astype(np.uint16)
    return out.repeat(2, 1).repeat(2, 2)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


def test_local_item_stacks_the_default_bands_on_the_10m_grid_with_offset_and_scl_mask(scene, tmp_path, capsys):
    out = tmp_path / "out" / "s.zarr"
    assert main(["run", str(scene), str(out), *RUN, "--set", "input.stac.scl_mask=true"]) == 0
    data, transform, crs = read_gdal(out)
    assert crs.to_epsg() == s2_item.EPSG
    assert transform == from_origin(*s2_item.ORIGIN, 5.0, 5.0), "the 10 m grid's georeferencing, at 2x"
    np.testing.assert_array_equal(data, expected_nearest(scl_mask=True))
    assert (data == 0).any() and (data[:, 40:80, 120:180] == 0).all(), "the SCL cloud block is nodata"

    # the output's STAC Item: the store relative to it, derived_from the source Item, gsd, platform; valid offline
    import pystac

    from geosr.store.stac import offline_validator

    item = pystac.Item.from_file(str(out.parent / "s.stac-item.json"))
    assert item.assets["data"].href == "./s.zarr" and item.assets["data"].get_absolute_href() == str(out)
    src = item.get_single_link("derived_from")
    assert src is not None and Path(src.get_absolute_href()) == scene.resolve()
    assert not Path(src.href).is_absolute(), "local source: a relative href"
    p = item.properties
    assert p["gsd"] == 5.0 and p["platform"] == "sentinel-2b" and p["constellation"] == "sentinel-2"
    assert p["instruments"] == ["msi"] and item.datetime.isoformat().startswith("2024-06-11T10:36:29")
    item.validate(validator=offline_validator())


def test_20m_band_is_refused_unless_resampling_is_asked_for(scene, tmp_path, capsys):
    out = tmp_path / "o.zarr"
    assert main(["run", str(scene), str(out), *RUN, "--bands", "B04,B05"]) == 2
    err = one_line_error(capsys)
    assert "S2B_32TMT_20240611_0_L2A" in err and "band B05" in err and "input.stac.resampling" in err
    assert not out.exists()
    assert main(["run", str(scene), str(out), *RUN, "--bands", "B04,rededge1",
                 "--set", "input.stac.resampling=bilinear"]) == 0
    data, transform, _ = read_gdal(out)
    assert transform == from_origin(*s2_item.ORIGIN, 5.0, 5.0)
    np.testing.assert_array_equal(data[0], expected_nearest(("red",))[0])
    # B05 (20 m) resampled bilinearly onto the 10 m grid: each 10 m pixel lies between its 20 m neighbours
    b05 = (s2_item.dn_pattern("rededge1", s2_item.SIZE // 2).astype(np.float64) - 1000)
    inner = data[1, 20:300:4, 20:300:4].astype(np.float64)
    lo, hi = b05.min(), b05.max()
    assert lo - 1 <= inner.min() and inner.max() <= hi + 1 and inner.std() > 10


@pytest.mark.parametrize("breakage", ["missing band", "asset 404", "mixed CRS"])
def test_bad_items_fail_in_one_line_naming_item_and_band_and_leave_nothing(breakage, tmp_path, capsys):
    scene = s2_item.write_scene(tmp_path / "scene", **({"red_epsg": 32633} if breakage == "mixed CRS" else {}))
    args = list(RUN)
    band = "B04"
    if breakage == "missing band":
        args += ["--bands", "B04,B03,B02,B8A"]
        band = "B8A"
    elif breakage == "asset 404":
        moved = scene.parent / "cogs" / "RED.tif"
        shutil.move(moved, tmp_path / "RED.tif")
    out = tmp_path / "out" / "s.zarr"
    assert main(["run", str(scene), str(out), *args]) == 2
    err = one_line_error(capsys)
    assert "S2B_32TMT_20240611_0_L2A" in err and f"band {band}" in err, err
    assert not out.exists() and not (out.parent / "s.stac-item.json").exists()
    assert not out.parent.exists() or not any(out.parent.iterdir()), "nothing half-written"
    if breakage == "asset 404":  # fixed, the same command succeeds: nothing left over trips it
        shutil.move(tmp_path / "RED.tif", moved)
        assert main(["run", str(scene), str(out), *args]) == 0
        np.testing.assert_array_equal(read_gdal(out)[0], expected_nearest())


def test_static_catalog_on_seaweedfs_s3_with_relative_hrefs(scene, s3_bucket, tmp_path):
    root = scene.parent
    for f in sorted(root.rglob("*")):
        if f.is_file():
            s3_bucket.upload(f, "catalog/S2B_32TMT/" + f.relative_to(root).as_posix())
    out = s3_bucket.uri("products/s.zarr")
    endpoint = ["--endpoint-url", s3_bucket.server.endpoint_url, "--set", "storage.region=us-east-1"]
    assert main(["run", s3_bucket.uri("catalog/S2B_32TMT/item.json"), out, *RUN, *endpoint]) == 0
    env = s3_bucket.env
    from geosr.io.storage import rasterio_env

    with rasterio_env(out, env):
        data, transform, crs = read_gdal("/vsis3/" + out[len("s3://"):])
    assert transform == from_origin(*s2_item.ORIGIN, 5.0, 5.0) and crs.to_epsg() == s2_item.EPSG
    np.testing.assert_array_equal(data, expected_nearest())
    item = json.loads(s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="products/s.stac-item.json")["Body"].read())
    link = [lk for lk in item["links"] if lk["rel"] == "derived_from"]
    assert link and link[0]["href"] == s3_bucket.uri("catalog/S2B_32TMT/item.json")
    assert item["assets"]["data"]["href"] == "./s.zarr"


def test_item_over_http_with_absolute_hrefs_like_earth_search(scene, s3_server, tmp_path):
    """The Item fetched by URL and its COGs read over plain HTTP (GDAL /vsicurl/), from SeaweedFS's public bucket."""
    client = s3_server.client()
    try:
        client.create_bucket(Bucket=PUBLIC_BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    base = f"{s3_server.endpoint_url}/{PUBLIC_BUCKET}/sentinel-cogs/32/T/MT/S2B_32TMT"
    hrefs = {}
    for f in sorted((scene.parent / "cogs").iterdir()):
        key = f"sentinel-cogs/32/T/MT/S2B_32TMT/{f.name}"
        client.put_object(Bucket=PUBLIC_BUCKET, Key=key, Body=f.read_bytes())
        hrefs[f.stem.lower()] = f"{base}/{f.name}"
    doc = s2_item.item_dict(hrefs)
    client.put_object(Bucket=PUBLIC_BUCKET, Key="v1/items/S2B_32TMT", Body=json.dumps(doc).encode())
    url = f"{s3_server.endpoint_url}/{PUBLIC_BUCKET}/v1/items/S2B_32TMT"
    try:
        out = tmp_path / "http.zarr"
        assert main(["run", url, str(out), *RUN]) == 0
        data, transform, _ = read_gdal(out)
        assert transform == from_origin(*s2_item.ORIGIN, 5.0, 5.0)
        np.testing.assert_array_equal(data, expected_nearest())
        item = json.loads((tmp_path / "http.stac-item.json").read_text())
        assert [lk["href"] for lk in item["links"] if lk["rel"] == "derived_from"] == [url]
    finally:
        for o in client.list_objects_v2(Bucket=PUBLIC_BUCKET).get("Contents", []):
            client.delete_object(Bucket=PUBLIC_BUCKET, Key=o["Key"])


def test_scheduled_discovery_reads_a_per_band_item_as_the_scene(scene, tmp_path):
    """The scheduled flow's STAC discovery: an Item with one COG per band becomes one scene whose input is the Item
    (its self link), not one of its assets (before: one band, or the 8-bit visual asset)."""
    from geosr.io.storage import StorageEnv
    from geosr.orchestration.query import SceneQuery
    from geosr.orchestration.stac_source import from_item_collection

    doc = json.loads(scene.read_text())
    doc["links"] = [{"rel": "self", "href": str(scene), "type": "application/geo+json"}]
    doc["assets"]["visual"] = {"href": "cogs/TCI.tif", "type": "image/tiff; application=geotiff", "roles": ["visual"]}
    coll = tmp_path / "items.json"
    coll.write_text(json.dumps({"type": "FeatureCollection", "features": [doc]}))
    refs = from_item_collection(SceneQuery(source=str(coll)), StorageEnv())
    assert [r.input_uri for r in refs] == [str(scene)]
    refs = from_item_collection(SceneQuery(source=str(coll), asset="red"), StorageEnv())
    assert [r.input_uri for r in refs] == [str(scene.parent / "cogs" / "RED.tif")]
