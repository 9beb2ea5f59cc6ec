"""ZarrOutput on object storage (the session's SeaweedFS server): write, resume, read back with xarray
and GDAL (/vsis3/), STAC beside the store, and the typed bucket/credential errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from pyproj import CRS

from geosr.errors import BucketNotFoundError, OutputExistsError, StorageAuthError
from geosr.store import OutputSpec, ZarrOutput, stac_item_uri, store_status
from geosr.store.encode import encode
from geosr.store.stac import read_stac_item

pytestmark = pytest.mark.s3

SPEC = OutputSpec(shape=(2, 300, 260), chunk=128, block=256, band_names=("B04", "B08"),
                  crs_wkt=CRS.from_epsg(32631).to_wkt(), transform=(2.5, 0.0, 600000.0, 0.0, -2.5, 4500000.0))


def scene(spec: OutputSpec) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    valid = rng.random(spec.shape[1:]) > 0.1
    return rng.uniform(0, 0.5, spec.shape).astype(np.float32), valid


def write(out: ZarrOutput, data: np.ndarray, valid: np.ndarray, blocks) -> None:
    for b in blocks:
        out.write_block(b, data[:, b.y0:b.y1, b.x0:b.x1], valid[b.y0:b.y1, b.x0:b.x1])
        out.mark_done(b, {"key": b.key})


@pytest.mark.parametrize("fmt", [dict(zarr_format=2), dict(zarr_format=3, shard=256)], ids=["v2", "v3-sharded"])
def test_store_on_s3_resumes_finalizes_and_reads_back(s3_bucket, fmt):
    uri, env = s3_bucket.uri("runs/scene.zarr"), s3_bucket.env
    spec = OutputSpec(**{**SPEC.to_dict(), **fmt})
    data, valid = scene(spec)
    blocks = list(spec.blocks())
    assert store_status(uri, env).state == "absent"
    out = ZarrOutput.create(uri, spec, env, "plan-s3")
    write(out, data, valid, blocks[:2])
    st = store_status(uri, env)
    assert (st.state, st.plan_hash, st.done, st.total) == ("incomplete", "plan-s3", 2, 4)

    again = ZarrOutput.open(uri, env, plan_hash="plan-s3")
    assert set(again.done_blocks()) == {b.key for b in blocks[:2]}
    write(again, data, valid, again.missing_blocks())
    again.finalize({"input_uri": "s3://in/x.tif"})
    st = store_status(uri, env)
    assert (st.state, st.done) == ("complete", 4)

    keys = set(s3_bucket.keys())
    metadata = "runs/scene.zarr/.zmetadata" if spec.zarr_format == 2 else "runs/scene.zarr/zarr.json"
    assert {metadata, "runs/scene.zarr/.geosr/plan.json", "runs/scene.zarr/.geosr/complete.json",
            "runs/scene.zarr/.geosr/blocks/1_1.json", "runs/scene.stac-item.json"} <= keys
    assert not any("creating" in k for k in keys)

    raw = encode(data, valid, "uint16")
    ds = xr.open_zarr(uri, storage_options=env.s3_kwargs())
    np.testing.assert_allclose(ds.reflectance.values, np.where(raw == 0, np.nan, raw * 1e-4), equal_nan=True)
    assert ds.attrs["geosr"]["complete"] is True and ds.attrs["proj:code"] == "EPSG:32631"

    item = read_stac_item(uri, env)
    assert item.assets["data"].get_absolute_href() == uri and item.get_self_href() == stac_item_uri(uri)
    assert item.properties["proj:code"] == "EPSG:32631"


def test_gdal_reads_the_store_through_vsis3(s3_bucket):
    uri, env = s3_bucket.uri("g/scene.zarr"), s3_bucket.env
    data, valid = scene(SPEC)
    out = ZarrOutput.create(uri, SPEC, env, "plan-g")
    write(out, data, valid, SPEC.blocks())
    out.finalize({})
    with rasterio.Env(**env.gdal_options()):
        with rasterio.open(f'ZARR:"{env.gdal_path(uri)}":/reflectance') as ds:
            assert ds.crs.to_epsg() == 32631 and ds.transform == Affine(*SPEC.transform)
            np.testing.assert_array_equal(ds.read(), encode(data, valid, "uint16"))


def test_overwrite_on_s3_replaces_the_store_and_its_item(s3_bucket):
    uri, env = s3_bucket.uri("o/scene.zarr"), s3_bucket.env
    data, valid = scene(SPEC)
    out = ZarrOutput.create(uri, SPEC, env, "plan-1")
    write(out, data, valid, SPEC.blocks())
    out.finalize({})
    with pytest.raises(OutputExistsError):
        ZarrOutput.create(uri, SPEC, env, "plan-2")
    ZarrOutput.create(uri, SPEC, env, "plan-2", overwrite=True)
    st = store_status(uri, env)
    assert (st.state, st.plan_hash, st.done) == ("incomplete", "plan-2", 0)
    keys = s3_bucket.keys()
    assert "o/scene.stac-item.json" not in keys and not any("/.geosr/blocks/" in k for k in keys)
    assert not any(k.startswith("o/scene.zarr/reflectance/0.") for k in keys)


def test_missing_bucket_is_bucket_not_found(s3_bucket):
    uri = f"s3://{s3_bucket.name}-missing/scene.zarr"
    with pytest.raises(BucketNotFoundError, match="does not exist"):
        ZarrOutput.create(uri, SPEC, s3_bucket.env, "p")
    with pytest.raises(BucketNotFoundError):
        store_status(uri, s3_bucket.env)


def test_bad_credentials_are_storage_auth_errors(s3_bucket, monkeypatch):
    import s3fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "not-a-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-secret")
    s3fs.S3FileSystem.clear_instance_cache()  # cached filesystems hold the good session
    try:
        with pytest.raises(StorageAuthError, match="refused the credentials"):
            ZarrOutput.create(s3_bucket.uri("auth/scene.zarr"), SPEC, s3_bucket.env, "p")
        with pytest.raises(StorageAuthError):
            store_status(s3_bucket.uri("auth/scene.zarr"), s3_bucket.env)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert s3_bucket.keys() == []


def test_block_markers_are_single_json_objects(s3_bucket):
    uri, env = s3_bucket.uri("m/scene.zarr"), s3_bucket.env
    data, valid = scene(SPEC)
    out = ZarrOutput.create(uri, SPEC, env, "plan-m")
    b = SPEC.block_at(1, 0)
    write(out, data, valid, [b])
    body = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="m/scene.zarr/.geosr/blocks/1_0.json")["Body"].read()
    doc = json.loads(body)
    assert doc["key"] == "1_0" and doc["region"] == [256, 300, 0, 256] and doc["stats"] == {"key": "1_0"}
