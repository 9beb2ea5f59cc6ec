"""Source contract: metadata, windowed reflectance, radiometry, nodata, bands, typed errors, laziness,
threads, pickling, bundled samples, and the same over a real S3 server (SeaweedFS)."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import pickle
import socket
import sys
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.transform import Affine

from geosr.config import InputConfig
from geosr.errors import (
    BandError,
    BucketNotFoundError,
    ConfigError,
    GeoreferenceError,
    InputError,
    InputNotFoundError,
    NotARasterError,
    StorageAuthError,
)
from geosr.io.radiometry import parse_processing_baseline
from geosr.io.sample import available_samples, sample_path
from geosr.io.source import local_checksum, open_source
from geosr.io.storage import StorageEnv
from geosr.rasters import RasterSource
from tests.data.synthetic import (
    make_corrupt_block_geotiff,
    make_geotiff,
    make_truncated_geotiff,
    make_ungeoreferenced_tiff,
    nodata_layout_mask,
    truncate_file,
    write_not_a_raster,
)

LOCAL = StorageEnv()
REPO = Path(__file__).resolve().parents[1]


def _open(path, env: StorageEnv = LOCAL, **cfg) -> RasterSource:
    return open_source(str(path), InputConfig(**cfg), env)


def _message(excinfo: pytest.ExceptionInfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, f"error messages are one line: {msg!r}"
    return msg


def _dn(path, indexes=None, window=None) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(indexes, window=window)


# -- metadata and windowed reads -----------------------------------------------------------------------
@pytest.mark.parametrize("crs", ["EPSG:32633", "EPSG:4326", "EPSG:3857"])
def test_meta_describes_the_file(tmp_path, crs):
    p = make_geotiff(tmp_path / "s.tif", height=70, width=90, bands=4, crs=crs)
    src = _open(p)
    m = src.meta
    with rasterio.open(p) as ds:
        assert (m.height, m.width) == (70, 90)
        assert m.transform == tuple(ds.transform)[:6]
        assert CRS.from_wkt(m.crs_wkt) == ds.crs
    assert m.band_indexes == (1, 2, 3, 4)
    assert m.band_names == ("B1", "B2", "B3", "B4")
    assert m.dtype == "uint16" and m.nodata is None
    assert (m.scale_factor, m.add_offset) == (1e-4, 0.0)
    assert m.checksum == "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
    assert m.shape == (4, 70, 90) and m.uri == str(p)


def test_band_names_come_from_descriptions(tmp_path):
    p = make_geotiff(tmp_path / "s.tif", height=20, width=20, bands=3, band_descriptions=["Red", None, "NIR"])
    assert _open(p).meta.band_names == ("Red", "B2", "NIR")


@pytest.mark.parametrize(
    "rows,cols", [((0, 70), (0, 90)), ((0, 1), (0, 1)), ((69, 70), (89, 90)), ((13, 47), (30, 90)), ((5, 6), (0, 90))]
)
def test_read_window_is_the_scaled_file_window(tmp_path, rows, cols):
    p = make_geotiff(tmp_path / "s.tif", height=70, width=90, bands=3, blocksize=32)
    refl, valid = _open(p).read(rows, cols)
    want = _dn(p, window=(rows, cols)).astype(np.float32) * np.float32(1e-4)
    assert refl.dtype == np.float32 and refl.shape == want.shape
    assert valid.dtype == bool and valid.shape == want.shape[1:] and valid.all()
    np.testing.assert_array_equal(refl, want)


@pytest.mark.parametrize("rows,cols", [((0, 0), (0, 5)), ((-1, 5), (0, 5)), ((0, 71), (0, 5)), ((5, 2), (0, 5))])
def test_read_refuses_windows_outside_the_scene(tmp_path, rows, cols):
    src = _open(make_geotiff(tmp_path / "s.tif", height=70, width=90, bands=1))
    with pytest.raises(ValueError, match="inside"):
        src.read(rows, cols)


def test_striped_and_band_interleaved_files_read_the_same(tmp_path):
    a = make_geotiff(tmp_path / "a.tif", height=50, width=60, tiled=False, blocksize=7, seed=4)
    b = make_geotiff(tmp_path / "b.tif", height=50, width=60, interleave="band", blocksize=16, seed=4)
    ra, va = _open(a).read((3, 50), (10, 60))
    rb, vb = _open(b).read((3, 50), (10, 60))
    np.testing.assert_array_equal(ra, rb)
    np.testing.assert_array_equal(va, vb)


# -- radiometry --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "dtype,scale", [("uint8", 1.0 / 255.0), ("uint16", 1e-4), ("int16", 1e-4), ("float32", 1.0)]
)
def test_default_scale_per_dtype(tmp_path, dtype, scale):
    p = make_geotiff(tmp_path / "s.tif", height=30, width=40, bands=2, dtype=dtype)
    src = _open(p)
    assert src.meta.dtype == dtype and src.meta.scale_factor == pytest.approx(scale) and src.meta.add_offset == 0
    refl, _ = src.read((0, 30), (0, 40))
    np.testing.assert_allclose(refl, _dn(p).astype(np.float64) * scale, rtol=1e-6, atol=1e-7)
    assert 0.0 < refl.mean() < 0.7, "synthetic data is reflectance-like in every dtype"


def test_config_scale_and_offset_override_the_default(tmp_path):
    p = make_geotiff(tmp_path / "s.tif", height=30, width=40, bands=2)
    src = _open(p, scale_factor=2e-5, add_offset=-0.1)
    assert (src.meta.scale_factor, src.meta.add_offset) == (2e-5, -0.1)
    refl, _ = src.read((0, 30), (0, 40))
    np.testing.assert_allclose(refl, _dn(p) * 2e-5 - 0.1, atol=1e-6)


def test_unsupported_dtype_is_refused(tmp_path):
    p = tmp_path / "i32.tif"
    with rasterio.open(p, "w", driver="GTiff", height=8, width=8, count=1, dtype="int32", crs="EPSG:32633",
                       transform=Affine(10, 0, 0, 0, -10, 0)) as ds:
        ds.write(np.ones((1, 8, 8), dtype="int32"))
    with pytest.raises(InputError) as e:
        _open(p)
    assert "int32" in _message(e) and "uint16" in str(e.value)


@pytest.mark.parametrize(
    "tags,band_tags,baseline,offset_dn",
    [
        ({"PROCESSING_BASELINE": "05.10"}, None, None, -1000.0),
        ({"PROCESSING_BASELINE": "04.00"}, None, None, -1000.0),
        ({"PROCESSING_BASELINE": "03.01"}, None, None, 0.0),
        ({"BOA_ADD_OFFSET": "-1000"}, None, None, -1000.0),
        (None, [{"BOA_ADD_OFFSET": "-1000"}] * 4, None, -1000.0),
        ({"PROCESSING_BASELINE": "05.10"}, None, "02.14", 0.0),
        (None, None, "N0509", -1000.0),
    ],
)
def test_sentinel2_preset_offset(tmp_path, tags, band_tags, baseline, offset_dn):
    p = make_geotiff(tmp_path / "s2.tif", height=30, width=30, tags=tags, band_tags=band_tags)
    src = _open(p, preset="sentinel2-l2a", processing_baseline=baseline)
    assert src.meta.scale_factor == 1e-4
    assert src.meta.add_offset == pytest.approx(offset_dn / 10000)
    refl, _ = src.read((0, 30), (0, 30))
    np.testing.assert_allclose(refl, (_dn(p).astype(np.float64) + offset_dn) / 10000, atol=2e-7)


def test_sentinel2_preset_without_baseline_assumes_04_and_warns(tmp_path, caplog):
    p = make_geotiff(tmp_path / "s2.tif", height=20, width=20)
    with caplog.at_level(logging.WARNING, logger="geosr.io.radiometry"):
        src = _open(p, preset="sentinel2-l2a")
    assert src.meta.add_offset == pytest.approx(-0.1)
    assert any("04.00" in r.getMessage() and "processing_baseline" in r.getMessage() for r in caplog.records)


def test_sentinel2_preset_treats_zero_as_nodata(tmp_path):
    p = make_geotiff(tmp_path / "s2.tif", height=40, width=40, nodata=0, nodata_layout="corner")
    with rasterio.open(p, "r+") as ds:  # drop the declared nodata: L2A files often have none
        ds.nodata = None
    src = _open(p, preset="sentinel2-l2a", processing_baseline="05.00")
    refl, valid = src.read((0, 40), (0, 40))
    assert src.meta.nodata == 0.0
    np.testing.assert_array_equal(valid, ~nodata_layout_mask("corner", bands=4, height=40, width=40).any(0))
    assert (refl[:, ~valid] == 0).all()


def test_sentinel2_preset_refuses_float_data(tmp_path):
    p = make_geotiff(tmp_path / "f.tif", height=10, width=10, dtype="float32")
    with pytest.raises(InputError) as e:
        _open(p, preset="sentinel2-l2a")
    assert "preset: none" in _message(e)


def test_processing_baseline_parsing():
    assert parse_processing_baseline("05.10") == (5, 10)
    assert parse_processing_baseline("4.0") == (4, 0)
    assert parse_processing_baseline("N0400") == (4, 0)
    assert parse_processing_baseline(" 4 ") == (4, 0)
    with pytest.raises(ValueError):
        parse_processing_baseline("baseline four")


def test_bad_processing_baseline_in_config_is_a_config_error(tmp_path):
    p = make_geotiff(tmp_path / "s2.tif", height=10, width=10)
    with pytest.raises(ConfigError) as e:
        _open(p, preset="sentinel2-l2a", processing_baseline="four")
    assert "processing_baseline" in _message(e)


# -- nodata and masks --------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["corner", "stripe", "random"])
def test_valid_mask_is_no_selected_band_at_nodata(tmp_path, layout):
    p = make_geotiff(tmp_path / "n.tif", height=60, width=70, bands=4, nodata=0, nodata_layout=layout, seed=2)
    invalid = nodata_layout_mask(layout, bands=4, height=60, width=70, seed=2)
    for bands in (None, (2, 4)):
        src = _open(p, bands=bands)
        refl, valid = src.read((0, 60), (0, 70))
        sel = [b - 1 for b in src.meta.band_indexes]
        np.testing.assert_array_equal(valid, ~invalid[sel].any(0))
        assert (refl[:, ~valid] == 0).all() and (refl[:, valid] > 0).all()
        assert src.meta.nodata == 0.0


def test_all_nodata_scene_reads_as_all_invalid(tmp_path):
    p = make_geotiff(tmp_path / "n.tif", height=20, width=20, nodata=0, nodata_layout="all")
    refl, valid = _open(p).read((0, 20), (0, 20))
    assert not valid.any() and not refl.any()


def test_config_nodata_overrides_the_files(tmp_path):
    p = make_geotiff(tmp_path / "r.tif", height=10, width=10, bands=1, pattern="ramp", nodata=0,
                     nodata_layout="corner")
    dn = _dn(p)[0]
    refl, valid = _open(p, nodata=float(dn[5, 5])).read((0, 10), (0, 10))
    np.testing.assert_array_equal(valid, dn != dn[5, 5])  # the file's 0 no longer counts
    assert refl[0, 5, 5] == 0 and refl[0, 0, 0] == 0 and valid[0, 0]


def test_config_nodata_that_the_dtype_cannot_hold_masks_nothing(tmp_path):
    p = make_geotiff(tmp_path / "r.tif", height=10, width=10, bands=2)
    _, valid = _open(p, nodata=-9999).read((0, 10), (0, 10))
    assert valid.all()


@pytest.mark.parametrize("mask,bands,dtype", [("internal", 4, "uint8"), ("alpha", 3, "uint8"), ("alpha", 4, "uint8"),
                                              ("alpha", 2, "uint16")])
def test_internal_mask_and_alpha_band(tmp_path, mask, bands, dtype):
    p = make_geotiff(tmp_path / "m.tif", height=40, width=50, bands=bands, dtype=dtype, nodata_layout="stripe",
                     mask=mask)
    src = _open(p)
    assert src.meta.band_indexes == tuple(range(1, bands + 1)), "an alpha band is a mask, not data"
    refl, valid = src.read((0, 40), (0, 50))
    np.testing.assert_array_equal(valid, ~nodata_layout_mask("stripe", bands=bands, height=40, width=50).any(0))
    assert (refl[:, ~valid] == 0).all()


def test_float_nan_nodata(tmp_path):
    p = make_geotiff(tmp_path / "f.tif", height=30, width=30, dtype="float32", nodata=float("nan"),
                     nodata_layout="stripe")
    src = _open(p)
    refl, valid = src.read((0, 30), (0, 30))
    assert math.isnan(src.meta.nodata)
    np.testing.assert_array_equal(valid, ~nodata_layout_mask("stripe", bands=4, height=30, width=30).any(0))
    assert np.isfinite(refl).all() and (refl[:, ~valid] == 0).all()


# -- band selection --------------------------------------------------------------------------------------------
def test_bands_by_index_in_the_given_order(tmp_path):
    p = make_geotiff(tmp_path / "b.tif", height=20, width=20, bands=4)
    src = _open(p, bands=(3, 1))
    assert src.meta.band_indexes == (3, 1) and src.meta.band_names == ("B3", "B1")
    refl, _ = src.read((0, 20), (0, 20))
    np.testing.assert_array_equal(refl, _dn(p, [3, 1]).astype(np.float32) * np.float32(1e-4))


def test_bands_by_description_case_insensitive_mixed_with_indexes(tmp_path):
    p = make_geotiff(tmp_path / "b.tif", height=20, width=20, bands=4,
                     band_descriptions=["Blue", "Green", "Red", "NIR"])
    src = _open(p, bands=("nir", " RED ", 2))
    assert src.meta.band_indexes == (4, 3, 2) and src.meta.band_names == ("NIR", "Red", "Green")


def test_default_band_names_can_be_selected(tmp_path):
    p = make_geotiff(tmp_path / "b.tif", height=20, width=20, bands=3)
    assert _open(p, bands=("b3", "B1")).meta.band_indexes == (3, 1)


def test_band_out_of_range(tmp_path):
    p = make_geotiff(tmp_path / "b.tif", height=20, width=20, bands=4)
    with pytest.raises(BandError) as e:
        _open(p, bands=(1, 5))
    assert "band 5" in _message(e) and "1..4" in str(e.value)
    assert isinstance(e.value, IndexError)


def test_unknown_band_description(tmp_path):
    p = make_geotiff(tmp_path / "b.tif", height=20, width=20, bands=2, band_descriptions=["red", "nir"])
    with pytest.raises(BandError) as e:
        _open(p, bands=("swir",))
    assert "'swir'" in _message(e) and "'red', 'nir'" in str(e.value)


def test_band_selected_twice(tmp_path):
    p = make_geotiff(tmp_path / "b.tif", height=20, width=20, bands=2, band_descriptions=["red", "nir"])
    with pytest.raises(BandError) as e:
        _open(p, bands=("red", 1))
    assert "more than once" in _message(e)


# -- bad inputs -----------------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(InputNotFoundError) as e:
        _open(tmp_path / "nope.tif")
    assert "does not exist" in _message(e) and isinstance(e.value, FileNotFoundError)


def test_directory_is_not_a_raster(tmp_path):
    with pytest.raises(NotARasterError) as e:
        _open(tmp_path)
    assert "directory" in _message(e)


def test_text_file_is_not_a_raster(tmp_path):
    with pytest.raises(NotARasterError) as e:
        _open(write_not_a_raster(tmp_path / "x.tif"))
    assert "not a raster" in _message(e)


def test_truncated_image_data_is_refused_at_open(tmp_path):
    p = make_truncated_geotiff(tmp_path / "t.tif", fraction=0.7)
    with rasterio.open(p) as ds:  # GDAL itself opens it happily
        assert ds.count == 4
    with pytest.raises(NotARasterError) as e:
        _open(p)
    assert "truncated" in _message(e) and "re-download" in str(e.value)


def test_truncated_header_is_not_a_raster(tmp_path):
    p = truncate_file(make_geotiff(tmp_path / "t.tif", height=64, width=64), keep_bytes=100)
    with pytest.raises(NotARasterError) as e:
        _open(p)
    _message(e)


def test_corrupt_tile_fails_at_read_time_with_a_typed_error(tmp_path):
    p = make_corrupt_block_geotiff(tmp_path / "c.tif", block=(1, 1))  # 512x512 in 128 px tiles
    src = _open(p)  # first and last tiles are fine
    refl, _ = src.read((0, 128), (0, 128))
    assert refl.shape == (4, 128, 128)
    with pytest.raises(NotARasterError) as e:
        src.read((100, 300), (100, 300))
    assert "corrupt" in _message(e) and "rows 100:300" in str(e.value)


def test_no_crs(tmp_path):
    p = make_geotiff(tmp_path / "c.tif", height=20, width=20, crs=None)
    with pytest.raises(GeoreferenceError) as e:
        _open(p)
    assert "no CRS" in _message(e) and "gdal_edit" in str(e.value)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_no_geotransform(tmp_path):
    p = make_ungeoreferenced_tiff(tmp_path / "u.tif")
    with pytest.raises(GeoreferenceError) as e:
        _open(p)
    assert "no geotransform" in _message(e)


@pytest.mark.parametrize(
    "transform",
    [
        Affine(10, 0, 400000, 0, -10, 5000000) @ Affine.rotation(15),
        Affine(10, 2.5, 400000, 0, -10, 5000000),  # sheared
    ],
)
def test_rotated_or_sheared_transform_is_refused(tmp_path, transform):
    p = make_geotiff(tmp_path / "r.tif", height=20, width=20, transform=transform)
    with pytest.raises(GeoreferenceError) as e:
        _open(p)
    assert "rotated or sheared" in _message(e) and "gdalwarp" in str(e.value)


def test_south_up_transform_is_refused(tmp_path):
    p = make_geotiff(tmp_path / "r.tif", height=20, width=20, transform=Affine(10, 0, 400000, 0, 10, 5000000))
    with pytest.raises(GeoreferenceError) as e:
        _open(p)
    assert "north-up" in _message(e) and "gdalwarp" in str(e.value)


def test_unsupported_scheme(tmp_path):
    with pytest.raises(InputError) as e:
        _open("gs://bucket/scene.tif")
    assert "s3://" in _message(e)


# -- laziness, threads, pickling -------------------------------------------------------------------------------
def test_open_and_read_touch_only_small_windows(tmp_path, monkeypatch):
    """A 20000 x 20000 scene: opening reads single pixels, ``read`` reads exactly its window."""
    p = tmp_path / "big.tif"
    with rasterio.open(p, "w", driver="GTiff", height=20000, width=20000, count=3, dtype="uint16",
                       crs="EPSG:32633", transform=Affine(10, 0, 0, 0, -10, 0), tiled=True, blockxsize=256,
                       blockysize=256, compress="deflate", sparse_ok=True) as ds:
        ds.write(np.full((3, 64, 64), 1234, dtype="uint16"), window=((1000, 1064), (2000, 2064)))
    assert p.stat().st_size < 2_000_000
    seen: list[tuple[int, int]] = []
    real_read = rasterio.io.DatasetReader.read

    def spy(self, indexes=None, window=None, **kw):
        assert window is not None, "never read a whole scene"
        seen.append((int(window.height), int(window.width)))
        return real_read(self, indexes, window=window, **kw)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", spy)
    src = _open(p)
    assert seen and all(hw == (1, 1) for hw in seen)
    seen.clear()
    refl, valid = src.read((1000, 1064), (2000, 2064))
    assert seen == [(64, 64)]
    assert valid.all() and np.allclose(refl, 0.1234)


def test_concurrent_reads_use_one_handle_per_thread(tmp_path):
    p = make_geotiff(tmp_path / "t.tif", height=200, width=230, bands=3, nodata=0, nodata_layout="random",
                     blocksize=64)
    src = _open(p)
    rng = np.random.default_rng(0)
    windows = []
    for _ in range(64):
        r0, c0 = int(rng.integers(0, 190)), int(rng.integers(0, 220))
        windows.append(((r0, int(rng.integers(r0 + 1, 201))), (c0, int(rng.integers(c0 + 1, 231)))))
    serial = [_open(p).read(*w) for w in windows]
    barrier = threading.Barrier(6)

    def work(chunk):
        barrier.wait()
        return [(i, src.read(*windows[i])) for i in chunk]

    with ThreadPoolExecutor(6) as pool:
        results = [r for part in pool.map(work, [range(k, 64, 6) for k in range(6)]) for r in part]
    for i, (refl, valid) in results:
        np.testing.assert_array_equal(refl, serial[i][0])
        np.testing.assert_array_equal(valid, serial[i][1])
    assert len(src._handles) == 6, "one dataset handle per thread"
    src.close()
    assert src._handles == []
    np.testing.assert_array_equal(src.read(*windows[0])[0], serial[0][0])  # reopens after close


def test_pickled_source_reads_the_same(tmp_path):
    p = make_geotiff(tmp_path / "p.tif", height=50, width=50, bands=2, nodata=0, nodata_layout="corner")
    src = _open(p)
    first = src.read((0, 50), (0, 50))
    copy = pickle.loads(pickle.dumps(src))
    assert copy.meta == src.meta
    got = copy.read((0, 50), (0, 50))
    np.testing.assert_array_equal(got[0], first[0])
    np.testing.assert_array_equal(got[1], first[1])


def _read_in_child(src: RasterSource, rows, cols):
    return src.read(rows, cols)


def test_source_reads_in_a_spawned_process(tmp_path):
    p = make_geotiff(tmp_path / "p.tif", height=40, width=40, bands=2)
    src = _open(p)
    src.read((0, 8), (0, 8))  # the parent holds a handle; the child must open its own
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        refl, valid = pool.submit(_read_in_child, src, (0, 40), (0, 40)).result(timeout=120)
    np.testing.assert_array_equal(refl, src.read((0, 40), (0, 40))[0])


def test_checksum_of_big_local_files_is_size_and_mtime(tmp_path, monkeypatch):
    p = make_geotiff(tmp_path / "s.tif", height=10, width=10)
    assert local_checksum(p) == "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
    monkeypatch.setattr("geosr.io.source.SHA256_MAX_BYTES", 100)
    st = p.stat()
    assert local_checksum(p) == f"size-mtime:{st.st_size}-{st.st_mtime_ns}"


# -- bundled samples ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,bands,dtype", [("rgbn", ("red", "green", "blue", "nir"), "uint8"),
                                              ("landsat8", ("red", "green", "blue"), "uint16")])
def test_bundled_samples_open(name, bands, dtype):
    assert name in available_samples()
    src = _open(sample_path(name))
    assert src.meta.band_names == bands and src.meta.dtype == dtype
    assert (src.meta.height, src.meta.width) == (256, 256)
    refl, valid = src.read((0, 256), (0, 256))
    assert valid.all() and 0.0 < float(refl.mean()) < 1.0


def test_sample_path_default_and_unknown():
    assert sample_path() == sample_path("rgbn")
    with pytest.raises(ValueError, match="landsat8"):
        sample_path("sentinel")


def test_bundled_samples_match_their_recorded_checksums(monkeypatch):
    spec = importlib.util.spec_from_file_location("fetch_sample", REPO / "scripts" / "fetch_sample.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "fetch_sample", mod)  # dataclasses look their module up
    spec.loader.exec_module(mod)
    assert mod.check(mod.DEFAULT_OUT) == []
    total = sum(p.stat().st_size for p in mod.DEFAULT_OUT.iterdir())
    assert total < 3_000_000 and (mod.DEFAULT_OUT / "NOTICE").read_text().count("MIT License") >= 1


# -- S3 (SeaweedFS) -------------------------------------------------------------------------------------------
@pytest.fixture
def s3_scene(tmp_path, s3_bucket):
    p = make_geotiff(tmp_path / "scene.tif", height=90, width=110, bands=4, nodata=0, nodata_layout="corner",
                     band_descriptions=["blue", "green", "red", "nir"], blocksize=32)
    return p, s3_bucket.upload(p, "scenes/scene.tif")


def test_s3_source_matches_local(s3_bucket, s3_scene):
    local, uri = s3_scene
    a, b = _open(local), _open(uri, s3_bucket.env)
    etag = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key="scenes/scene.tif")["ETag"].strip('"')
    assert b.meta.checksum == f"etag:{etag}"
    assert b.meta.uri == uri
    for field in ("height", "width", "band_indexes", "band_names", "dtype", "crs_wkt", "transform", "nodata",
                  "scale_factor", "add_offset"):
        assert getattr(a.meta, field) == getattr(b.meta, field), field
    for rows, cols in (((0, 90), (0, 110)), ((31, 64), (7, 99))):
        ra, va = a.read(rows, cols)
        rb, vb = b.read(rows, cols)
        np.testing.assert_array_equal(ra, rb)
        np.testing.assert_array_equal(va, vb)


def test_s3_concurrent_and_pickled_reads(s3_bucket, s3_scene):
    local, uri = s3_scene
    src = _open(uri, s3_bucket.env)
    want = _open(local).read((0, 90), (0, 110))[0]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda k: src.read((k * 20, k * 20 + 10), (0, 110))[0], range(4)))
    for k, out in enumerate(outs):
        np.testing.assert_array_equal(out, want[:, k * 20 : k * 20 + 10])
    blob = pickle.dumps(src)
    server = s3_bucket.server
    assert server.secret_key.encode() not in blob and server.access_key.encode() not in blob
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        refl, _ = pool.submit(_read_in_child, src, (0, 90), (0, 110)).result(timeout=120)
    np.testing.assert_array_equal(refl, want)


def test_s3_missing_bucket(s3_server):
    with pytest.raises(BucketNotFoundError) as e:
        _open("s3://geosr-no-such-bucket/scene.tif", s3_server.storage_env())
    assert "geosr-no-such-bucket" in _message(e) and "create the bucket" in str(e.value)


def test_s3_missing_key(s3_bucket):
    with pytest.raises(InputNotFoundError) as e:
        _open(s3_bucket.uri("nope/scene.tif"), s3_bucket.env)
    assert "does not exist" in _message(e)


@pytest.mark.parametrize("which", ["secret", "access_key"])
def test_s3_wrong_credentials(s3_bucket, s3_scene, monkeypatch, which):
    _, uri = s3_scene
    if which == "secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    else:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDNOTKNOWN")
    with pytest.raises(StorageAuthError) as e:
        _open(uri, s3_bucket.env)
    assert "credentials" in _message(e) and "not-the-secret" not in str(e.value)
    assert isinstance(e.value, PermissionError)


def test_s3_no_credentials(s3_bucket, s3_scene, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageAuthError) as e:
        _open(s3_scene[1], s3_bucket.env)
    assert "no AWS credentials" in _message(e)


def test_s3_anonymous_access_to_a_private_bucket(s3_bucket, s3_scene, s3_server):
    with pytest.raises(StorageAuthError) as e:
        _open(s3_scene[1], s3_server.storage_env(anon=True))
    _message(e)


def test_s3_unknown_profile(s3_bucket, s3_scene, s3_server):
    with pytest.raises(StorageAuthError) as e:
        _open(s3_scene[1], s3_server.storage_env(profile="geosr-no-such-profile"))
    assert "geosr-no-such-profile" in _message(e)


def test_s3_unreachable_endpoint():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = StorageEnv(StorageEnv().config.model_copy(update={"endpoint_url": f"http://127.0.0.1:{port}"}))
    with pytest.raises(InputError) as e:
        _open("s3://bucket/scene.tif", env)
    assert "endpoint_url" in _message(e)


def test_s3_truncated_object(tmp_path, s3_bucket):
    p = make_truncated_geotiff(tmp_path / "t.tif", fraction=0.7)
    with pytest.raises(NotARasterError) as e:
        _open(s3_bucket.upload(p), s3_bucket.env)
    assert "truncated" in _message(e)


def test_s3_credentials_never_logged(s3_bucket, s3_scene, caplog, capfd, monkeypatch):
    _, uri = s3_scene
    with caplog.at_level(logging.DEBUG):
        src = _open(uri, s3_bucket.env)
        src.read((0, 90), (0, 110))
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + s3_bucket.server.secret_key)
        with pytest.raises(StorageAuthError) as e:
            _open(uri, s3_bucket.env)
    out, err = capfd.readouterr()
    for text in (caplog.text, out, err, str(e.value), repr(src)):
        assert s3_bucket.server.secret_key not in text


def test_s3_credentials_from_a_shared_credentials_profile(tmp_path, s3_bucket, s3_scene, monkeypatch):
    """No key variables at all: botocore's chain reads the profile and hands the keys to GDAL."""
    creds = tmp_path / "credentials"
    server = s3_bucket.server
    creds.write_text(f"[geosr]\naws_access_key_id = {server.access_key}\naws_secret_access_key = {server.secret_key}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    local, uri = s3_scene
    src = _open(uri, server.storage_env(profile="geosr"))
    np.testing.assert_array_equal(src.read((10, 60), (5, 100))[0], _open(local).read((10, 60), (5, 100))[0])


def test_s3_anonymous_read_of_a_public_bucket(tmp_path, s3_server):
    client = s3_server.client()
    bucket = "geosr-public"  # the test server lets unsigned requests read this bucket only
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    p = make_geotiff(tmp_path / "pub.tif", height=40, width=40, bands=2)
    client.put_object(Bucket=bucket, Key="pub.tif", Body=p.read_bytes())
    try:
        src = _open(f"s3://{bucket}/pub.tif", s3_server.storage_env(anon=True))
        np.testing.assert_array_equal(src.read((0, 40), (0, 40))[0], _open(p).read((0, 40), (0, 40))[0])
    finally:
        client.delete_object(Bucket=bucket, Key="pub.tif")
        client.delete_bucket(Bucket=bucket)


@pytest.fixture(scope="module")
def odd_scene(tmp_path_factory):
    p = make_geotiff(tmp_path_factory.mktemp("odd") / "odd.tif", height=97, width=113, bands=3, nodata=0,
                     nodata_layout="random", blocksize=32, seed=11)
    src = _open(p)
    return src, src.read((0, 97), (0, 113))


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_window_is_the_same_slice_of_the_whole_scene(odd_scene, data):
    src, (whole, whole_valid) = odd_scene
    r0 = data.draw(st.integers(0, 96))
    r1 = data.draw(st.integers(r0 + 1, 97))
    c0 = data.draw(st.integers(0, 112))
    c1 = data.draw(st.integers(c0 + 1, 113))
    refl, valid = src.read((r0, r1), (c0, c1))
    np.testing.assert_array_equal(refl, whole[:, r0:r1, c0:c1])
    np.testing.assert_array_equal(valid, whole_valid[r0:r1, c0:c1])


def test_sentinel2_preset_with_an_explicit_offset_needs_no_baseline(tmp_path, caplog):
    p = make_geotiff(tmp_path / "s2.tif", height=10, width=10)
    with caplog.at_level(logging.WARNING):
        src = _open(p, preset="sentinel2-l2a", add_offset=-0.05)
    assert (src.meta.scale_factor, src.meta.add_offset) == (1e-4, -0.05)
    assert not [r for r in caplog.records if "baseline" in r.getMessage()]


def test_sentinel2_band_offsets_that_disagree_are_refused(tmp_path):
    p = make_geotiff(tmp_path / "s2.tif", height=10, width=10, bands=2,
                     band_tags=[{"BOA_ADD_OFFSET": "-1000"}, {"BOA_ADD_OFFSET": "0"}])
    with pytest.raises(InputError) as e:
        _open(p, preset="sentinel2-l2a")
    assert "input.add_offset" in _message(e)
    assert _open(p, preset="sentinel2-l2a", bands=(1,)).meta.add_offset == pytest.approx(-0.1)


def test_reading_a_whole_scene_keeps_gdal_cache_bounded(tmp_path):
    """GDAL's block cache defaults to 5 % of RAM and would end up holding the whole input; reads happen
    inside geosr's GDAL environment, which caps it, so memory stays flat as scenes grow."""
    import subprocess
    import sys
    import textwrap

    import rasterio
    from rasterio.transform import from_origin

    path = tmp_path / "big.tif"
    n = 4096
    prof = dict(driver="GTiff", height=n, width=n, count=4, dtype="uint16", crs="EPSG:32633",
                transform=from_origin(0, 0, 10, 10), tiled=True, blockxsize=512, blockysize=512)
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **prof) as dst:  # 128 MB of pixels, uncompressed
        block = rng.integers(1, 60000, (4, 512, n), dtype=np.uint16)
        for r in range(0, n, 512):
            dst.write(block, window=((r, r + 512), (0, n)))
    code = textwrap.dedent(f"""
        from geosr.config import InputConfig
        from geosr.io.source import open_source
        from geosr.io.storage import StorageEnv
        rss = lambda: int(open('/proc/self/statm').read().split()[1]) * 4096
        src = open_source({str(path)!r}, InputConfig(), StorageEnv())
        src.read((0, 64), (0, 64))
        base = rss()
        for r in range(0, {n}, 1024):
            for c in range(0, {n}, 1024):
                src.read((r, r + 1024), (c, c + 1024))
        print((rss() - base) // 2**20)
    """)
    grown = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert grown < 100, f"RSS grew {grown} MiB reading a 128 MiB scene window by window"
