"""End to end on real files: partition invariance, exactness, nodata, resume, skip/overwrite."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import zarr

from geosr.config import load_config
from geosr.errors import OutputExistsError
from geosr.io.storage import StorageEnv
from geosr.lifecycle import run_scene
from geosr.store import store_status
from tests.data.synthetic import make_geotiff


def _cfg(**o):
    base = {"tiling.scale": 2, "tiling.tile": 32, "tiling.overlap": 8, "tiling.chunk": 64, "tiling.block": 128,
            "model.name": "bicubic", "model.device": "cpu", "workers": 1}
    base.update(o)
    return load_config(None, base)


def _read(store, var="reflectance"):
    return zarr.open_group(str(store), mode="r")[var][...]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    p = tmp_path_factory.mktemp("eng") / "scene.tif"
    make_geotiff(p, height=150, width=203, bands=3, dtype="uint16", nodata=0, nodata_layout="corner", seed=3)
    return p


@pytest.mark.parametrize(
    "chunk,block,workers",
    [(64, 64, 1), (64, 192, 2), (128, 256, 2), (64, 1024, 1)],
)
def test_partition_invariant_bytes(scene, tmp_path, chunk, block, workers):
    ref = tmp_path / "whole.zarr"
    # one block covering the whole output = a single whole-scene run
    run_scene(str(scene), str(ref), _cfg(**{"tiling.chunk": 512, "tiling.block": 512}))
    out = tmp_path / "parts.zarr"
    run_scene(str(scene), str(out), _cfg(**{"tiling.chunk": chunk, "tiling.block": block, "workers": workers}))
    assert np.array_equal(_read(ref), _read(out))


def test_float32_output_and_nearest_is_exact(scene, tmp_path):
    out = tmp_path / "nn.zarr"
    cfg = _cfg(**{"model.name": "nearest", "output.dtype": "float32", "tiling.block": 64})
    run_scene(str(scene), str(out), cfg)
    got = _read(out)
    with rasterio.open(scene) as src:
        dn = src.read().astype(np.float32)
        valid = src.read_masks(1) > 0
    want = (dn * np.float32(1e-4)).repeat(2, 1).repeat(2, 2)
    vmask = valid.repeat(2, 0).repeat(2, 1)
    assert np.isnan(got[:, ~vmask]).all(), "nodata stays nodata at output resolution"
    assert np.array_equal(got[:, vmask], want[:, vmask]), "nearest upsampler -> exactly the nearest image"


def test_nodata_never_bleeds_into_valid_pixels(tmp_path):
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    make_geotiff(a, height=96, width=96, bands=2, nodata=0, nodata_layout="stripe", seed=5)
    with rasterio.open(a) as src:
        prof, data = src.profile, src.read()
    # b: the same valid pixels, but a very different value (65535) under the nodata mask; if nodata
    # leaked through the upsampler's support, valid pixels near the stripe would differ
    prof.update(nodata=65535)
    data2 = np.where(data == 0, 65535, data).astype(np.uint16)
    with rasterio.open(b, "w", **prof) as dst:
        dst.write(data2)
    for p in (a, b):
        run_scene(str(p), str(tmp_path / (p.stem + ".zarr")), _cfg(**{"output.dtype": "float32"}))
    ra, rb = _read(tmp_path / "a.zarr"), _read(tmp_path / "b.zarr")
    assert np.array_equal(np.isnan(ra), np.isnan(rb))
    assert np.array_equal(ra, rb, equal_nan=True)
    assert np.isfinite(ra).any() and np.isnan(ra).any()


def test_resume_redoes_only_missing_blocks(scene, tmp_path):
    full = tmp_path / "full.zarr"
    run_scene(str(scene), str(full), _cfg(**{"tiling.block": 64}))
    out = tmp_path / "crash.zarr"
    cfg = _cfg(**{"tiling.block": 64})
    env = StorageEnv()
    first = run_scene(str(scene), str(out), cfg, max_blocks=3)  # "crash" after three blocks
    assert first.blocks_run == 3
    st = store_status(str(out), env)
    assert st.state == "incomplete" and st.done == 3
    second = run_scene(str(scene), str(out), cfg)
    assert second.state == "resumed" and second.blocks_run == first.blocks_total - 3
    assert store_status(str(out), env).state == "complete"
    assert np.array_equal(_read(full), _read(out))
    third = run_scene(str(scene), str(out), cfg)
    assert third.state == "skipped" and third.blocks_run == 0


def test_incomplete_with_other_parameters_is_refused_unless_overwrite(scene, tmp_path):
    out = tmp_path / "x.zarr"
    run_scene(str(scene), str(out), _cfg(**{"tiling.block": 64}), max_blocks=1)
    other = _cfg(**{"tiling.block": 64, "model.name": "lanczos"})
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run_scene(str(scene), str(out), other)
    rep = run_scene(str(scene), str(out), other, overwrite=True)
    assert rep.state == "written" and store_status(str(out), StorageEnv()).state == "complete"


def test_provenance_metrics(scene, tmp_path):
    out = tmp_path / "m.zarr"
    rep = run_scene(str(scene), str(out), _cfg())
    m = rep.metrics
    assert 0 <= m["lr_l1"] < 0.01 and 0 <= m["lr_spectral_angle_deg"] < 2
    assert 0.8 < m["seam_metric"] < 1.2
    attrs = zarr.open_group(str(out), mode="r").attrs.asdict()
    text = repr(attrs)
    assert "lr_l1" in text and "bicubic" in text and str(scene) in text


@pytest.mark.parametrize("h,w", [(20, 17), (1, 1), (33, 5)])
def test_scene_smaller_than_a_tile(tmp_path, h, w):
    p = make_geotiff(tmp_path / "tiny.tif", height=h, width=w, bands=2, seed=2)
    out = tmp_path / "tiny.zarr"
    run_scene(str(p), str(out), _cfg(**{"model.name": "nearest", "output.dtype": "float32"}))
    with rasterio.open(p) as src:
        want = (src.read().astype(np.float32) * np.float32(1e-4)).repeat(2, 1).repeat(2, 2)
    assert np.array_equal(_read(out), want)


def test_identity_model_returns_its_input(scene, tmp_path):
    out = tmp_path / "id.zarr"
    run_scene(str(scene), str(out), _cfg(**{"model.name": "nearest", "tiling.scale": 1, "tiling.chunk": 64,
                                           "tiling.block": 64}))
    with rasterio.open(scene) as src:
        dn = src.read()
    assert np.array_equal(_read(out), dn), "uint16 DN in, the same DN out"
