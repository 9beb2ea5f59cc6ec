"""ZarrOutput end to end on local disk, read back with the real readers: GDAL (rasterio), xarray +
rioxarray and zarr; overviews, resume ledger, overwrite and error paths."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr
from affine import Affine
from pyproj import CRS
from rasterio.crs import CRS as RioCRS

from geosr.errors import OutputError, OutputExistsError
from geosr.grid import Block
from geosr.io.storage import StorageEnv
from geosr.store import OutputSpec, ZarrOutput, stac_item_uri, store_status
from geosr.store.encode import encode

UTM = CRS.from_epsg(32633).to_wkt()
ENV = StorageEnv()
TRANSFORM = (2.5, 0.0, 500000.0, 0.0, -2.5, 5000000.0)


def make_spec(**kw) -> OutputSpec:
    base = dict(shape=(3, 520, 600), chunk=128, block=256, band_names=("B02", "B03", "B04"), crs_wkt=UTM,
                transform=TRANSFORM)
    base.update(kw)
    return OutputSpec(**base)


def scene(spec: OutputSpec, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reflectance (C, H, W) float32 in [0, 0.6] and a valid mask with a nodata corner and holes."""
    rng = np.random.default_rng(seed)
    data = rng.uniform(0.0, 0.6, spec.shape).astype(np.float32)
    valid = rng.random(spec.shape[1:]) > 0.05
    valid[:140, :260] = False  # a nodata corner: two all-nodata chunks, empty overview cells
    return data, valid


def write_all(out: ZarrOutput, data: np.ndarray, valid: np.ndarray, blocks=None) -> None:
    for b in (blocks if blocks is not None else list(out.spec.blocks())):
        out.write_block(b, data[:, b.y0:b.y1, b.x0:b.x1], valid[b.y0:b.y1, b.x0:b.x1])
        out.mark_done(b, {"block": b.key, "tiles": 4})


def build(path: Path, spec: OutputSpec, seed: int = 0, provenance: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    data, valid = scene(spec, seed)
    out = ZarrOutput.create(str(path), spec, ENV, "plan-1")
    write_all(out, data, valid)
    out.finalize(provenance or {"input_uri": "s3://in/scene.tif", "input_checksum": "etag-1",
                                "model": {"name": "bicubic", "version": "1"}, "config_hash": "cfg1",
                                "datetime": "2024-06-01T10:20:30Z"})
    return data, valid


def reference_pyramid(raw0: np.ndarray, levels: int) -> list[np.ndarray]:
    """Overviews by brute force (uint16): each level's cell = floor(mean of non-zero values + 0.5)."""
    out, cur = [raw0], raw0
    for _ in range(levels):
        c, h, w = cur.shape
        pad = np.zeros((c, h + h % 2, w + w % 2), np.float64)
        pad[:, :h, :w] = cur
        cells = pad.reshape(c, pad.shape[1] // 2, 2, pad.shape[2] // 2, 2).transpose(0, 1, 3, 2, 4).reshape(
            c, pad.shape[1] // 2, pad.shape[2] // 2, 4)
        n = (cells != 0).sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.floor(cells.sum(-1) / n + 0.5)
        cur = np.where(n > 0, mean, 0).astype(np.uint16)
        out.append(cur)
    return out


def gdal_name(path: Path, array: str) -> str:
    return f'ZARR:"{path}":/{array}'


@pytest.fixture(scope="module")
def v2_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("v2") / "scene.zarr"
    spec = make_spec()
    data, valid = build(path, spec)
    return path, spec, encode(data, valid, "uint16")


# -- GDAL --------------------------------------------------------------------------------------------

def test_gdal_reads_crs_geotransform_values_nodata_and_scale(v2_store):
    path, spec, raw = v2_store
    with rasterio.open(gdal_name(path, "reflectance")) as ds:
        assert ds.driver == "Zarr"
        assert (ds.count, ds.height, ds.width) == spec.shape
        assert ds.crs == RioCRS.from_wkt(spec.crs_wkt) and ds.crs.to_epsg() == 32633
        assert ds.transform == Affine(*spec.transform)
        assert ds.dtypes == ("uint16",) * 3 and ds.nodata == 0
        assert ds.scales == (1e-4,) * 3 and ds.offsets == (0.0,) * 3
        assert ds.block_shapes[0] == (128, 128)
        assert [ds.tags(i + 1)["DIM_band_VALUE"] for i in range(3)] == list(spec.band_names)
        np.testing.assert_array_equal(ds.read(), raw)
        np.testing.assert_array_equal(ds.read(2, window=((300, 420), (10, 500))), raw[1, 300:420, 10:500])
    # all-nodata chunks are not stored at all (readers use the fill value 0)
    assert not (path / "reflectance" / "0.0.0").exists() and (path / "reflectance" / "0.2.2").exists()


def test_gdal_reads_every_overview_level_georeferenced(v2_store):
    path, spec, raw = v2_store
    ref = reference_pyramid(raw, 2)
    for level in (1, 2):
        with rasterio.open(gdal_name(path, f"overviews/{level}/reflectance")) as ds:
            k = 2 ** level
            assert ds.crs.to_epsg() == 32633
            assert ds.transform == Affine(2.5 * k, 0, 500000.0, 0, -2.5 * k, 5000000.0)
            np.testing.assert_array_equal(ds.read(), ref[level])


@pytest.mark.parametrize("keep", ["cf", "gdal"])
def test_gdal_finds_the_crs_through_either_channel_alone(v2_store, tmp_path, keep):
    """GDAL 3.10 reads the CF ``grid_mapping`` without ``_CRS``; GDAL's own ``_CRS`` (all GDAL 3.4+ read
    it) works without the CF variable. Strip one (and the consolidated copy) and the CRS is still found."""
    path, spec, _ = v2_store
    copy = tmp_path / "copy.zarr"
    shutil.copytree(path, copy)
    attrs_file = copy / "reflectance" / ".zattrs"
    attrs = json.loads(attrs_file.read_text())
    if keep == "cf":
        del attrs["_CRS"]
    else:
        del attrs["grid_mapping"], attrs["coordinates"]
        shutil.rmtree(copy / "spatial_ref")
    attrs_file.write_text(json.dumps(attrs))
    (copy / ".zmetadata").unlink()
    with rasterio.open(gdal_name(copy, "reflectance")) as ds:
        assert ds.crs == RioCRS.from_wkt(spec.crs_wkt)
        assert ds.transform == Affine(*spec.transform)


@pytest.mark.parametrize("compressor", ["blosc", "none"])
def test_gdal_reads_other_compressors(tmp_path, compressor):
    spec = make_spec(shape=(2, 300, 260), band_names=("a", "b"), compressor=compressor, level=5)
    data, valid = build(tmp_path / "c.zarr", spec)
    with rasterio.open(gdal_name(tmp_path / "c.zarr", "reflectance")) as ds:
        np.testing.assert_array_equal(ds.read(), encode(data, valid, "uint16"))


def test_float32_store_reads_back_exactly_with_nan_nodata(tmp_path):
    spec = make_spec(dtype="float32")
    data, valid = build(tmp_path / "f.zarr", spec)
    expected = np.where(valid, data, np.nan).astype(np.float32)
    with rasterio.open(gdal_name(tmp_path / "f.zarr", "reflectance")) as ds:
        assert ds.dtypes[0] == "float32" and np.isnan(ds.nodata)
        np.testing.assert_array_equal(ds.read(), expected)
    ds = xr.open_zarr(tmp_path / "f.zarr")
    assert ds.reflectance.dtype == np.float32
    np.testing.assert_array_equal(ds.reflectance.values, expected)


# -- xarray / rioxarray ------------------------------------------------------------------------------

def test_xarray_decodes_reflectance_and_rioxarray_finds_crs_and_transform(v2_store):
    import rioxarray  # noqa: F401  (registers .rio)

    path, spec, raw = v2_store
    ds = xr.open_zarr(path)
    v = ds["reflectance"]
    assert v.dims == ("band", "y", "x")
    assert list(ds["band"].values) == list(spec.band_names)
    assert v.encoding["chunks"] == (1, 128, 128)
    expected = np.where(raw == 0, np.nan, raw.astype(np.float64) * 1e-4)
    np.testing.assert_allclose(v.values, expected, rtol=1e-12, equal_nan=True)
    a, _, c, _, e, f = spec.transform
    np.testing.assert_array_equal(ds.x.values, c + a * (np.arange(600) + 0.5))
    np.testing.assert_array_equal(ds.y.values, f + e * (np.arange(520) + 0.5))
    assert ds.rio.crs == RioCRS.from_wkt(spec.crs_wkt)
    assert v.rio.crs.to_epsg() == 32633
    assert v.rio.transform() == Affine(*spec.transform)
    assert v.rio.transform(recalc=True).almost_equals(Affine(*spec.transform))
    assert np.isnan(v.rio.nodata) and v.rio.encoded_nodata == 0


def test_root_attributes_carry_geozarr_multiscales_and_provenance(v2_store):
    path, spec, _ = v2_store
    attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
    assert attrs["proj:code"] == "EPSG:32633"
    assert CRS.from_wkt(attrs["proj:wkt2"]) == CRS.from_epsg(32633)
    assert attrs["spatial:transform"] == list(spec.transform)
    assert attrs["spatial:shape"] == [520, 600] and attrs["spatial:dimensions"] == ["y", "x"]
    assert {c["name"] for c in attrs["zarr_conventions"]} == {"multiscales", "proj", "spatial"}
    layout = attrs["multiscales"]["layout"]
    assert [e["asset"] for e in layout] == ["reflectance", "overviews/1/reflectance", "overviews/2/reflectance"]
    assert layout[2]["derived_from"] == "overviews/1/reflectance" and layout[2]["transform"]["scale"] == [2.0, 2.0]
    assert layout[2]["spatial:shape"] == [130, 150] and layout[2]["spatial:dimensions"] == ["y_2", "x_2"]
    g = attrs["geosr"]
    assert g["complete"] is True and g["plan_hash"] == "plan-1"
    assert g["provenance"]["input_checksum"] == "etag-1" and g["provenance"]["model"]["name"] == "bicubic"
    assert g["overviews"] == {**g["overviews"], "written_per_block": [1], "written_at_finalize": [2]}
    var = zarr.open_array(str(path / "reflectance"), mode="r").attrs.asdict()
    assert var["grid_mapping"] == "spatial_ref" and var["spatial:shape"] == [520, 600]
    ref = zarr.open_array(str(path / "spatial_ref"), mode="r").attrs.asdict()
    assert ref["GeoTransform"] == "500000.0 2.5 0.0 5000000.0 0.0 -2.5"
    assert ref["grid_mapping_name"] == "transverse_mercator"
    assert json.loads((path / ".zmetadata").read_text())["metadata"][".zattrs"]["geosr"]["complete"] is True


def test_overview_groups_open_as_georeferenced_datasets(v2_store):
    import rioxarray  # noqa: F401

    path, spec, raw = v2_store
    ref = reference_pyramid(raw, 2)
    o = xr.open_zarr(path, group="overviews/2")
    assert o.reflectance.shape == (3, 130, 150) and o.reflectance.dims == ("band", "y_2", "x_2")
    assert o.rio.transform() == Affine(10.0, 0, 500000.0, 0, -10.0, 5000000.0)
    assert o.rio.crs.to_epsg() == 32633
    np.testing.assert_array_equal(o.x_2.values, 500000.0 + 10.0 * (np.arange(150) + 0.5))
    np.testing.assert_allclose(o.reflectance.values, np.where(ref[2] == 0, np.nan, ref[2] * 1e-4), equal_nan=True)


# -- overviews ---------------------------------------------------------------------------------------

def test_overviews_are_identical_whatever_the_block_size(tmp_path):
    arrays = {}
    for block in (128, 256, 512):  # all at finalize / level 1 per block / both per block
        spec = make_spec(block=block)
        build(tmp_path / f"b{block}.zarr", spec, seed=7)
        g = zarr.open_group(str(tmp_path / f"b{block}.zarr"), mode="r")
        arrays[block] = [g["reflectance"][:]] + [g[f"overviews/{k}/reflectance"][:] for k in (1, 2)]
    data, valid = scene(make_spec(), seed=7)
    ref = reference_pyramid(encode(data, valid, "uint16"), 2)
    for block, levels in arrays.items():
        for got, want in zip(levels, ref):
            np.testing.assert_array_equal(got, want, err_msg=f"block={block}")
    assert (ref[1][:, :70, :130] == 0).all() and (ref[2][:, :35, :65] == 0).all()  # nodata stays nodata


def test_tail_levels_are_built_window_by_window(tmp_path):
    # block = chunk = 64: nothing can be reduced inside a block, so finalize builds every level, and
    # level 1 (1100 rows) spans two 1024-row windows
    spec = make_spec(shape=(1, 2200, 300), band_names=("B08",), chunk=64, block=64)
    data, valid = build(tmp_path / "t.zarr", spec, seed=11)
    g = zarr.open_group(str(tmp_path / "t.zarr"), mode="r")
    assert g.attrs["geosr"]["overviews"]["written_at_finalize"] == [1, 2, 3, 4]
    ref = reference_pyramid(encode(data, valid, "uint16"), 4)
    for level in range(1, 5):
        np.testing.assert_array_equal(g[f"overviews/{level}/reflectance"][:], ref[level], err_msg=f"level {level}")


def test_explicit_overview_count_and_none(tmp_path):
    spec = make_spec(overviews=0)
    build(tmp_path / "n.zarr", spec)
    g = zarr.open_group(str(tmp_path / "n.zarr"), mode="r")
    assert "overviews" not in g and len(g.attrs["multiscales"]["layout"]) == 1
    spec = make_spec(overviews=4)
    build(tmp_path / "four.zarr", spec)
    g = zarr.open_group(str(tmp_path / "four.zarr"), mode="r")
    assert g["overviews/4/reflectance"].shape == (3, 33, 38)


# -- Zarr v3 and sharding ----------------------------------------------------------------------------

def test_v3_sharded_store_writes_whole_shards_and_reads_back(tmp_path):
    import rioxarray  # noqa: F401

    spec = make_spec(zarr_format=3, block=512, shard=256)
    path = tmp_path / "s.zarr"
    data, valid = build(path, spec)
    raw = encode(data, valid, "uint16")
    arr = zarr.open_array(str(path / "reflectance"), mode="r")
    assert arr.metadata.zarr_format == 3
    assert arr.shards == (3, 256, 256) and arr.chunks == (1, 128, 128)
    np.testing.assert_array_equal(arr[:], raw)
    shard_files = sorted(p.relative_to(path / "reflectance").as_posix()
                         for p in (path / "reflectance" / "c").rglob("*") if p.is_file())
    # one object per shard holding all bands: 3 x 3 shards over 520 x 600 (none all-nodata)
    assert shard_files == [f"c/0/{i}/{j}" for i in range(3) for j in range(3)]
    ds = xr.open_zarr(path)
    assert ds.reflectance.encoding["shards"] == (3, 256, 256)
    np.testing.assert_allclose(ds.reflectance.values, np.where(raw == 0, np.nan, raw * 1e-4), equal_nan=True)
    assert ds.rio.crs.to_epsg() == 32633 and ds.reflectance.rio.transform() == Affine(*spec.transform)
    assert list(ds.band.values) == list(spec.band_names)
    ref = reference_pyramid(raw, 2)
    lv1 = zarr.open_array(str(path / "overviews/1/reflectance"), mode="r")
    assert lv1.shards == (3, 256, 256)
    np.testing.assert_array_equal(lv1[:], ref[1])
    np.testing.assert_array_equal(zarr.open_array(str(path / "overviews/2/reflectance"), mode="r")[:], ref[2])
    root = json.loads((path / "zarr.json").read_text())
    assert "consolidated_metadata" in root and root["attributes"]["geosr"]["complete"] is True


def test_v3_float32_nodata_decodes_to_nan_in_xarray(tmp_path):
    spec = make_spec(zarr_format=3, dtype="float32", shape=(1, 200, 260), band_names=("B08",))
    data, valid = build(tmp_path / "f3.zarr", spec)
    ds = xr.open_zarr(tmp_path / "f3.zarr")
    np.testing.assert_array_equal(ds.reflectance.values, np.where(valid, data, np.nan))


# -- ledger, resume, completion ----------------------------------------------------------------------

def test_resume_ledger_survives_reopen_and_completion_comes_last(tmp_path):
    path = str(tmp_path / "r.zarr")
    spec = make_spec()
    data, valid = scene(spec)
    assert store_status(path, ENV).state == "absent"
    out = ZarrOutput.create(path, spec, ENV, "plan-r")
    st = store_status(path, ENV)
    assert (st.state, st.plan_hash, st.done, st.total) == ("incomplete", "plan-r", 0, 9)
    blocks = list(spec.blocks())
    write_all(out, data, valid, blocks[:4])
    del out  # "crash"

    again = ZarrOutput.open(path, ENV, plan_hash="plan-r")
    assert again.spec == spec
    assert set(again.done_blocks()) == {b.key for b in blocks[:4]}
    assert again.done_blocks()["0_1"] == {"block": "0_1", "tiles": 4}
    assert again.missing_blocks() == blocks[4:]
    with pytest.raises(OutputError, match="5 of 9 blocks are not done"):
        again.finalize({})
    assert not (Path(path) / ".geosr" / "complete.json").exists()
    write_all(again, data, valid, blocks[4:])
    st = store_status(path, ENV)
    assert (st.state, st.done) == ("incomplete", 9)  # every block done, but not finalized yet
    assert zarr.open_group(path, mode="r").attrs["geosr"]["complete"] is False
    again.finalize({"run": 2})
    st = store_status(path, ENV)
    assert (st.state, st.done, st.total) == ("complete", 9, 9)
    assert again.is_complete()
    with rasterio.open(gdal_name(Path(path), "reflectance")) as ds:
        np.testing.assert_array_equal(ds.read(), encode(data, valid, "uint16"))


def test_open_refuses_a_store_made_for_another_plan(tmp_path):
    path = str(tmp_path / "p.zarr")
    ZarrOutput.create(path, make_spec(), ENV, "plan-a")
    with pytest.raises(OutputExistsError, match="plan-a, not plan-b"):
        ZarrOutput.open(path, ENV, plan_hash="plan-b")
    with pytest.raises(OutputError, match="not a geosr output store"):
        ZarrOutput.open(str(tmp_path / "nothing.zarr"), ENV)


def test_block_is_marked_done_only_after_it_was_written(tmp_path):
    out = ZarrOutput.create(str(tmp_path / "m.zarr"), make_spec(), ENV, "p")
    with pytest.raises(ValueError, match="before write_block"):
        out.mark_done(out.spec.block_at(0, 0), {})
    assert out.done_blocks() == {}


def test_write_block_rejects_misaligned_blocks_and_wrong_shapes(tmp_path):
    out = ZarrOutput.create(str(tmp_path / "a.zarr"), make_spec(), ENV, "p")
    with pytest.raises(ValueError, match="not aligned"):
        out.write_block(Block(0, 0, 0, 200, 0, 256), np.zeros((3, 200, 256), np.float32), np.ones((200, 256), bool))
    b = out.spec.block_at(2, 2)  # the clipped corner block: 8 x 88
    assert b.shape == (8, 88)
    with pytest.raises(ValueError, match="expected"):
        out.write_block(b, np.zeros((3, 8, 80), np.float32), np.ones((8, 80), bool))


def test_rewriting_a_block_gives_the_same_bytes(tmp_path):
    path = tmp_path / "w.zarr"
    spec = make_spec()
    data, valid = build(path, spec)
    before = {p: p.read_bytes() for p in (path / "reflectance").rglob("*") if p.is_file()}
    out = ZarrOutput.open(str(path), ENV)
    b = spec.block_at(1, 1)
    out.write_block(b, data[:, b.y0:b.y1, b.x0:b.x1], valid[b.y0:b.y1, b.x0:b.x1])
    after = {p: p.read_bytes() for p in (path / "reflectance").rglob("*") if p.is_file()}
    assert before == after


def test_output_pickles_to_a_reopened_store(tmp_path):
    path = str(tmp_path / "k.zarr")
    out = ZarrOutput.create(path, make_spec(), ENV, "p")
    clone = pickle.loads(pickle.dumps(out))
    assert clone.uri == out.uri and clone.spec == out.spec and clone.plan_hash == "p"
    data, valid = scene(out.spec)
    write_all(clone, data, valid, [out.spec.block_at(0, 0)])
    assert set(out.done_blocks()) == {"0_0"}


# -- create / overwrite / errors ---------------------------------------------------------------------

def test_existing_store_needs_overwrite_which_replaces_it_and_its_stac_item(tmp_path):
    path = tmp_path / "o.zarr"
    build(path, make_spec())
    assert Path(stac_item_uri(str(path))).exists()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        ZarrOutput.create(str(path), make_spec(), ENV, "plan-2")
    out = ZarrOutput.create(str(path), make_spec(dtype="float32"), ENV, "plan-2", overwrite=True)
    st = store_status(str(path), ENV)
    assert (st.state, st.plan_hash, st.done) == ("incomplete", "plan-2", 0)
    assert not Path(stac_item_uri(str(path))).exists()
    assert not any((path / "reflectance").glob("0.*"))  # old chunks are gone
    assert out.spec.dtype == "float32"


def test_overwrite_never_deletes_a_directory_that_is_not_a_zarr_store(tmp_path):
    target = tmp_path / "photos"
    target.mkdir()
    (target / "holiday.jpg").write_bytes(b"jpeg")
    with pytest.raises(OutputError, match="not a Zarr store"):
        ZarrOutput.create(str(target), make_spec(), ENV, "p", overwrite=True)
    assert (target / "holiday.jpg").read_bytes() == b"jpeg"


def test_an_interrupted_creation_is_replaced_without_overwrite(tmp_path):
    path = tmp_path / "i.zarr"
    (path / ".geosr").mkdir(parents=True)
    (path / ".geosr" / "creating.json").write_text('{"plan_hash": "old"}')
    (path / ".zgroup").write_text('{"zarr_format": 2}')
    assert store_status(str(path), ENV).state == "absent"
    ZarrOutput.create(str(path), make_spec(), ENV, "new")
    assert store_status(str(path), ENV).plan_hash == "new"
    assert not (path / ".geosr" / "creating.json").exists()


def test_parent_that_is_a_file_is_an_output_error(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a directory") as e:
        ZarrOutput.create(str(tmp_path / "file.txt" / "scene.zarr"), make_spec(), ENV, "p")
    assert isinstance(e.value, OSError)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_permission_denied_is_an_output_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="permission denied"):
            ZarrOutput.create(str(locked / "scene.zarr"), make_spec(), ENV, "p")
    finally:
        locked.chmod(0o700)


def test_no_warnings_when_reading_the_store(v2_store):
    """The ``.geosr`` ledger and the attributes must not trip xarray/zarr up."""
    path, _, _ = v2_store
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(path)
        ds.reflectance[0, :2, :2].values


def test_finalize_removes_temporary_files_of_interrupted_chunk_writes(tmp_path):
    """A worker SIGKILLed between zarr's write of a chunk's temporary file and its rename leaves
    ``<key>.<uuid>.partial`` beside the chunks; the rerun rewrites the chunk and finalize sweeps the
    leftover, so the finished store holds exactly the files of an uninterrupted run."""
    import uuid

    spec = make_spec()
    clean = tmp_path / "clean.zarr"
    build(clean, spec)
    data, valid = scene(spec)
    out = ZarrOutput.create(str(tmp_path / "killed.zarr"), spec, ENV, "plan-1")
    write_all(out, data, valid)
    # what zarr's LocalStore leaves for chunk key "reflectance/0.0.0" (Path.with_suffix drops ".0")
    leftovers = [tmp_path / "killed.zarr" / "reflectance" / f"0.0.{uuid.uuid4().hex}.partial",
                 tmp_path / "killed.zarr" / "1" / "reflectance" / f"0.0.{uuid.uuid4().hex}.partial"]
    for p in leftovers:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half a chunk")
    mine = tmp_path / "killed.zarr" / "notes.partial"  # not zarr's pattern: never touched
    mine.write_text("a user's file")
    out.finalize({"input_uri": "s3://in/scene.tif", "input_checksum": "etag-1",
                  "model": {"name": "bicubic", "version": "1"}, "config_hash": "cfg1", "geosr_version": "t"})
    assert not any(p.exists() for p in leftovers)
    assert mine.exists()
    mine.unlink()

    def files(root):
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".geosr" not in p.parts)

    assert files(tmp_path / "killed.zarr") == files(clean)
    a = zarr.open_group(str(clean), mode="r")["reflectance"][:]
    b = zarr.open_group(str(tmp_path / "killed.zarr"), mode="r")["reflectance"][:]
    np.testing.assert_array_equal(a, b)
