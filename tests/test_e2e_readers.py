"""What users open: the output of a real run, read back by GDAL (through rasterio) and by
xarray/rioxarray, locally and on S3, with the input's CRS and its geotransform scaled."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from geosr.config import load_config
from geosr.io.sample import sample_path
from geosr.lifecycle import run_scene
from geosr.store import stac_item_uri
from tests.data.synthetic import make_geotiff

CFG = {"tiling.scale": 4, "tiling.tile": 64, "tiling.overlap": 8, "tiling.chunk": 256, "tiling.block": 512,
       "model.name": "bicubic", "model.device": "cpu"}


def _assert_georef_matches(src_tf, src_crs, gdal_ds, scale):
    assert gdal_ds.crs == src_crs
    want = src_tf @ src_tf.scale(1 / scale)
    assert np.allclose(tuple(gdal_ds.transform)[:6], tuple(want)[:6], rtol=0, atol=1e-6 * abs(want.a))


@pytest.mark.parametrize("crs", ["EPSG:32633", "EPSG:4326", "EPSG:3857"])
def test_gdal_and_xarray_read_the_output(tmp_path, crs):
    from rasterio.transform import from_origin

    tf = from_origin(0.5, 45.25, 0.0001, 0.0001) if crs == "EPSG:4326" else from_origin(600000, 5100000, 10, 10)
    src = make_geotiff(tmp_path / "in.tif", height=100, width=130, bands=4, crs=crs, transform=tf, nodata=0,
                       nodata_layout="corner", band_descriptions=["red", "green", "blue", "nir"])
    out = tmp_path / "out.zarr"
    run_scene(str(src), str(out), load_config(None, CFG))
    with rasterio.open(src) as s:
        s_tf, s_crs, dn = s.transform, s.crs, s.read()
    with rasterio.open(f'ZARR:"{out}":/reflectance') as g:
        _assert_georef_matches(s_tf, s_crs, g, 4)
        assert (g.count, g.height, g.width) == (4, 400, 520)
        assert g.nodata == 0
        gd = g.read()
    ds = xr.open_zarr(out)
    da = ds["reflectance"]
    assert list(da["band"].values) == ["red", "green", "blue", "nir"]
    assert ds.rio.crs == s_crs
    assert np.allclose(tuple(ds.rio.transform())[:6], tuple(s_tf @ s_tf.scale(0.25))[:6])
    # pixel-centre coordinates
    assert np.isclose(float(ds.x[0]), s_tf.c + s_tf.a / 8) and np.isclose(float(ds.y[0]), s_tf.f + s_tf.e / 8)
    refl = da.values
    assert np.array_equal(np.isnan(refl), gd == 0), "GDAL and xarray agree on nodata"
    assert np.allclose(refl[gd > 0], gd[gd > 0] * 1e-4, atol=1e-7)
    # nodata at output resolution exactly where the input had it
    assert np.array_equal(gd[0] == 0, (dn[0] == 0).repeat(4, 0).repeat(4, 1))
    # the overviews are readable too
    with rasterio.open(f'ZARR:"{out}":/overviews/1/reflectance') as o1:
        assert (o1.height, o1.width) == (200, 260)
        _assert_georef_matches(s_tf, s_crs, o1, 2)


def test_bundled_sample_through_gdal(tmp_path):
    out = tmp_path / "sample.zarr"
    rep = run_scene(str(sample_path("rgbn")), str(out), load_config(None, CFG))
    assert rep.state == "written"
    with rasterio.open(sample_path("rgbn")) as s, rasterio.open(f'ZARR:"{out}":/reflectance') as g:
        _assert_georef_matches(s.transform, s.crs, g, 4)
    assert (tmp_path / "sample.stac-item.json").exists()


@pytest.mark.s3
def test_s3_in_s3_out(tmp_path, s3_server, s3_bucket):
    src = make_geotiff(tmp_path / "in.tif", height=80, width=96, bands=3, nodata=0, nodata_layout="stripe")
    s3_bucket.upload(src, "scenes/in.tif")
    cfg = load_config(None, {**CFG, "storage.endpoint_url": s3_server.endpoint_url})
    out = s3_bucket.uri("geosr/in.zarr")
    rep = run_scene(s3_bucket.uri("scenes/in.tif"), out, cfg)
    assert rep.state == "written"
    local = tmp_path / "local.zarr"
    run_scene(str(src), str(local), load_config(None, CFG))
    env = s3_bucket.env
    fs = env.filesystem(out)
    assert fs.exists(stac_item_uri(out))
    ds = xr.open_zarr(fs.get_mapper(out.split("://", 1)[1]))
    assert np.array_equal(ds["reflectance"].values, xr.open_zarr(local)["reflectance"].values, equal_nan=True), \
        "S3 and local outputs hold the same pixels"
    tree = xr.open_datatree(fs.get_mapper(out.split("://", 1)[1]), engine="zarr")
    assert tree.groups == xr.open_datatree(local, engine="zarr").groups and "/overviews/1" in tree.groups
    # GDAL reads the store on S3 through /vsis3/ with the same explicit environment
    from geosr.io.storage import rasterio_env

    with rasterio_env(out, env):
        with rasterio.open(f'ZARR:"{env.gdal_path(out)}":/reflectance') as g, rasterio.open(src) as s:
            _assert_georef_matches(s.transform, s.crs, g, 4)
            assert g.read().shape == (3, 320, 384)
