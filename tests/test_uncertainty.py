"""Per-pixel uncertainty (``output.uncertainty_samples``): N samples per tile, their mean as the data and
their standard deviation as ``<variable>_std`` -- config, store, engine and Dask paths, on real files,
read back with zarr, xarray and GDAL."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr
from pyproj import CRS

from geosr.blend import blend_tiles
from geosr.cli import main
from geosr.config import load_config
from geosr.errors import ConfigError, OutputExistsError
from geosr.io.source import open_source
from geosr.io.storage import StorageEnv
from geosr.lifecycle import run_scene
from geosr.plan import ScenePlan
from geosr.store import OutputSpec, ZarrOutput, store_status
from geosr.store.describe import describe_store
from geosr.tiles import read_block
from geosr.upsample import block_tiles
from geosr.upsamplers import TileBatch, build_upsampler, register, require_sampling, sampling_models
from geosr.upsamplers.classic import ClassicUpsampler
from tests.data.synthetic import make_geotiff

ENV = StorageEnv()
UTM = CRS.from_epsg(32633).to_wkt()
TRANSFORM = (2.5, 0.0, 500000.0, 0.0, -2.5, 5000000.0)
# the bundled ldm model: 4 bands, x4; 64 x 56 low-res -> 256 x 224 output
LDM = {"tiling.scale": 4, "tiling.tile": 32, "tiling.overlap": 8, "tiling.chunk": 64, "tiling.block": 128,
       "model.name": "ldm", "model.device": "cpu", "model.params": {"steps": 1}, "model.batch_size": 4,
       "output.uncertainty_samples": 3, "output.dtype": "float32", "workers": 1}


def ldm_config(**o: Any):
    return load_config(None, {**LDM, **o})


def arrays(store: Path | str) -> dict[str, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = zarr.open_group(str(store), mode="r")
        return {name: g[name][...] for name in ("reflectance", "reflectance_std")}


# -- a cheap sampling model: bicubic mean, a per-tile constant std keyed on the tile's position --------------
class ConstStdBicubic(ClassicUpsampler):
    """``sample_with_std`` returns bicubic as the mean and, as the std, a constant per tile that depends only
    on the tile's global origin (so blocks agree); ``samples`` scales it, so the engine must pass N through."""

    def __init__(self, **kw: Any) -> None:
        super().__init__("bicubic", **kw)
        self.name = "test-const-std"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "name": self.name}

    @staticmethod
    def tile_std(origin: np.ndarray, samples: int) -> float:
        return 1e-3 * samples * (1 + (int(origin[0]) // 8 + 3 * (int(origin[1]) // 8)) % 5)

    def sample_with_std(self, batch: TileBatch, n: int) -> tuple[np.ndarray, np.ndarray]:
        mean = self(batch)
        std = np.empty_like(mean)
        for i, o in enumerate(batch.origins):
            std[i] = self.tile_std(o, n)
        return mean, std


def _const_std_factory(*, scale: int, batch_size: int = 16, device: str = "auto", bands: int | None = None,
                       seed: int = 0, **params: Any) -> ConstStdBicubic:
    return ConstStdBicubic(scale=scale, batch_size=batch_size, device=device, bands=bands, **params)


register("test-const-std", _const_std_factory)
SMALL = {"tiling.scale": 2, "tiling.tile": 32, "tiling.overlap": 8, "tiling.chunk": 64, "tiling.block": 128,
         "model.name": "test-const-std", "model.device": "cpu", "model.batch_size": 5,
         "output.uncertainty_samples": 2, "workers": 1}


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("unc-small") / "s.tif"
    return make_geotiff(p, height=75, width=101, bands=3, nodata=0, nodata_layout="corner", seed=7)


@pytest.fixture(scope="module")
def ldm_scene(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("unc-ldm") / "in.tif"
    return make_geotiff(p, height=56, width=64, bands=4, nodata=0, nodata_layout="corner", seed=4,
                        band_descriptions=["blue", "green", "red", "nir"])


@pytest.fixture(scope="module")
def ldm_ref(ldm_scene, tmp_path_factory) -> Path:
    """The ldm scene with 3 samples per tile, float32, 128 px blocks (4 blocks)."""
    out = tmp_path_factory.mktemp("unc-ref") / "ref.zarr"
    rep = run_scene(str(ldm_scene), str(out), ldm_config())
    assert rep.state == "written" and rep.blocks_total == 4
    return out


# -- config and spec ------------------------------------------------------------------------------------------
def test_config_refuses_one_sample_and_the_option_changes_the_hash():
    with pytest.raises(ConfigError, match=r"output\.uncertainty_samples.*at least 2"):
        load_config(None, {"output.uncertainty_samples": 1})
    with pytest.raises(ConfigError, match=r"output\.uncertainty_samples"):
        load_config(None, {"output.uncertainty_samples": -2})
    off, on3, on4 = (load_config(None, {"output.uncertainty_samples": n}) for n in (0, 3, 4))
    assert len({off.config_hash(), on3.config_hash(), on4.config_hash()}) == 3
    assert off.config_hash() == load_config().config_hash()


def test_spec_names_the_std_variable_and_round_trips_it():
    base = dict(shape=(3, 300, 260), chunk=64, block=128, band_names=("a", "b", "c"), crs_wkt=UTM,
                transform=TRANSFORM, variable="refl")
    on = OutputSpec(**base, uncertainty_samples=5)
    assert on.std_variable == "refl_std" and on.variables == ("refl", "refl_std")
    d = json.loads(json.dumps(on.to_dict()))
    assert d["uncertainty_samples"] == 5 and OutputSpec.from_dict(d) == on
    off = OutputSpec(**base)
    assert off.std_variable is None and off.variables == ("refl",)
    assert "uncertainty_samples" not in off.to_dict(), "a store without it keeps the plan it had before"
    assert OutputSpec.from_dict(off.to_dict()) == off
    for bad in (1, -1, 2.5):
        with pytest.raises(ConfigError, match="uncertainty_samples"):
            OutputSpec(**base, uncertainty_samples=bad)


def test_deterministic_models_are_refused_naming_the_model_and_the_ones_that_sample():
    assert "ldm" in sampling_models()
    up = build_upsampler("bicubic", scale=2, device="cpu")
    require_sampling(up, 0)  # off: anything goes
    with pytest.raises(ConfigError) as e:
        require_sampling(up, 3)
    msg = str(e.value)
    assert "'bicubic'" in msg and "ldm" in msg and "uncertainty_samples" in msg and "\n" not in msg


# -- store ----------------------------------------------------------------------------------------------------
def test_write_block_stores_std_at_level_0_only_with_the_data_nodata(tmp_path):
    spec = OutputSpec(shape=(2, 256, 256), chunk=64, block=128, band_names=("red", "nir"), crs_wkt=UTM,
                      transform=TRANSFORM, dtype="uint16", uncertainty_samples=4)
    out = ZarrOutput.create(str(tmp_path / "u.zarr"), spec, ENV, "plan-u")
    rng = np.random.default_rng(0)
    data = rng.uniform(0.01, 0.5, (2, 256, 256)).astype(np.float32)
    std = rng.uniform(0.0, 0.02, (2, 256, 256)).astype(np.float32)
    std[:, 50, 50] = 0.0  # a valid pixel with zero spread
    valid = np.ones((256, 256), bool)
    valid[:20, :30] = False
    data[1, 100, 100] = np.nan  # the data is nodata there (band 1 only), so the std must be too
    for b in spec.blocks():
        sl = (slice(b.y0, b.y1), slice(b.x0, b.x1))
        with pytest.raises(ValueError, match="std="):
            out.write_block(b, data[:, sl[0], sl[1]], valid[sl])
        with pytest.raises(ValueError, match="std is"):
            out.write_block(b, data[:, sl[0], sl[1]], valid[sl], std=std[:1, sl[0], sl[1]])
        out.write_block(b, data[:, sl[0], sl[1]], valid[sl], std=std[:, sl[0], sl[1]])
        out.mark_done(b, {})
    out.finalize({"uncertainty_samples": 4}, stac=True)
    g = zarr.open_group(str(tmp_path / "u.zarr"), mode="r")
    raw, raw_std = g["reflectance"][...], g["reflectance_std"][...]
    assert raw_std.dtype == np.uint16 and raw_std.shape == raw.shape
    assert np.array_equal(raw_std == 0, raw == 0), "std nodata exactly where the data is nodata"
    assert raw_std[1, 100, 100] == 0 and raw_std[0, 100, 100] != 0
    ok = raw != 0
    want = np.clip(np.rint(std * 10000), 1, 65535)
    assert np.array_equal(raw_std[ok], want[ok]), "same encoding as the data: round(x * 10000), at least 1"
    assert raw_std[0, 50, 50] == 1 and raw_std[0, 5, 5] == 0, "a zero std on a valid pixel is 1 (0 is nodata)"
    assert "reflectance_std" not in g["overviews/1"], "no overviews of the std"
    a = g["reflectance_std"].attrs.asdict()
    assert a["grid_mapping"] == "spatial_ref" and a["scale_factor"] == 1e-4 and "4 model samples" in a["long_name"]
    assert a["geosr:uncertainty"]["samples"] == 4 and "level 0 only" in a["description"].lower()
    assert a["spatial:transform"] == list(TRANSFORM) and a["_CRS"] == g["reflectance"].attrs["_CRS"]
    assert g["reflectance"].attrs["ancillary_variables"] == "reflectance_std"
    assert g["reflectance_std"].chunks == g["reflectance"].chunks
    assert g.attrs["geosr"]["uncertainty"] == {"variable": "reflectance_std", "samples": 4,
                                               "overviews": "none (level 0 only)"}
    # a store opened to resume knows its std variable
    again = ZarrOutput.open(str(tmp_path / "u.zarr"), ENV)
    assert again.spec.std_variable == "reflectance_std" and again.spec.uncertainty_samples == 4
    info = describe_store(str(tmp_path / "u.zarr"), ENV)
    assert info["variables"] == ["reflectance", "reflectance_std"] and info["uncertainty"]["samples"] == 4
    item = json.loads((tmp_path / "u.stac-item.json").read_text())
    assert item["properties"]["geosr:uncertainty"] == {"variable": "reflectance_std", "samples": 4}


def test_write_block_refuses_a_std_for_a_store_without_one(tmp_path):
    spec = OutputSpec(shape=(1, 64, 64), chunk=64, block=64, band_names=("x1",), crs_wkt=UTM, transform=TRANSFORM)
    out = ZarrOutput.create(str(tmp_path / "n.zarr"), spec, ENV, "plan-n")
    b = next(spec.blocks())
    with pytest.raises(ValueError, match="no std variable"):
        out.write_block(b, np.zeros((1, 64, 64), np.float32), np.ones((64, 64), bool),
                        std=np.zeros((1, 64, 64), np.float32))
    assert "reflectance_std" not in zarr.open_group(str(tmp_path / "n.zarr"), mode="r")


# -- engine with a cheap sampling model -----------------------------------------------------------------------
def test_engine_blends_mean_like_the_data_and_std_with_the_same_weights(small_scene, tmp_path):
    cfg = load_config(None, SMALL)
    unc, plain = tmp_path / "unc.zarr", tmp_path / "plain.zarr"
    rep = run_scene(str(small_scene), str(unc), cfg)
    run_scene(str(small_scene), str(plain), load_config(None, {**SMALL, "output.uncertainty_samples": 0}))
    assert rep.metrics["std_mean"] > 0
    g_unc, g_plain = zarr.open_group(str(unc), mode="r"), zarr.open_group(str(plain), mode="r")
    assert np.array_equal(g_unc["reflectance"][...], g_plain["reflectance"][...]), "the mean is blended as data"
    assert "reflectance_std" not in g_plain
    raw = g_unc["reflectance"][...]
    std = g_unc["reflectance_std"][...].astype(np.float64) / 1e4
    assert np.array_equal(raw == 0, std == 0)
    # where one tile alone covers a pixel its std is exact; elsewhere it lies within the overlapping tiles'
    src = open_source(str(small_scene), cfg.input, ENV)
    g = ScenePlan(str(small_scene), str(unc), cfg, src.meta).grid
    lo = np.full(std.shape[1:], np.inf)
    hi = np.full(std.shape[1:], -np.inf)
    count = np.zeros(std.shape[1:], int)
    H, W = g.out_shape
    for ky in range(len(g.y_origins)):
        for kx in range(len(g.x_origins)):
            oy, ox = g.origin(ky, kx)
            v = ConstStdBicubic.tile_std(np.array([oy, ox]), 2)
            ys, xs = slice(oy * 2, min(oy * 2 + g.out_tile, H)), slice(ox * 2, min(ox * 2 + g.out_tile, W))
            lo[ys, xs] = np.minimum(lo[ys, xs], v)
            hi[ys, xs] = np.maximum(hi[ys, xs], v)
            count[ys, xs] += 1
    ok = raw[0] != 0
    single = ok & (count == 1)
    assert single.any() and (ok & (count > 1)).any()
    assert np.allclose(std[:, single], lo[single], rtol=0, atol=0.6e-4), "one tile: its std (to the uint16 step)"
    assert (std[:, ok] >= lo[ok] - 0.6e-4).all() and (std[:, ok] <= hi[ok] + 0.6e-4).all()
    assert (std[:, ok & (count > 1)] != std[:, ok & (count > 1)].flat[0]).any(), "overlaps blend, not pick"


def test_blend_block_with_std_agrees_with_blend_block_on_the_same_stream(small_scene):
    cfg = load_config(None, {**SMALL, "output.dtype": "float32"})
    src = open_source(str(small_scene), cfg.input, ENV)
    plan = ScenePlan(str(small_scene), "unused.zarr", cfg, src.meta)
    up = build_upsampler("bicubic", scale=2, batch_size=3, device="cpu")
    for block in list(plan.blocks)[:3]:
        inp = read_block(plan, block, src)
        (data,) = blend_tiles(plan.grid, inp.block, inp.keys, inp.skip, inp.bands, block_tiles(up, inp, 0))
        pairs = ((t, t) for t in block_tiles(up, inp, 0))
        mean, std = blend_tiles(plan.grid, inp.block, inp.keys, inp.skip, inp.bands, pairs, 2)
        assert np.array_equal(data, mean)
        assert np.array_equal(std, data), "the std goes through the same weights, in the same order"


# -- the bundled ldm model, end to end ------------------------------------------------------------------------
def test_ldm_writes_a_std_variable_readable_by_xarray_and_gdal(ldm_scene, ldm_ref):
    a = arrays(ldm_ref)
    refl, std = a["reflectance"], a["reflectance_std"]
    assert std.shape == refl.shape == (4, 224, 256) and std.dtype == np.float32
    nod = np.isnan(refl)
    assert nod.any() and (~nod).any()
    assert np.array_equal(np.isnan(std), nod), "std is nodata exactly where the data is"
    assert (std[~nod] >= 0).all() and (std[~nod] > 0).mean() > 0.5, "3 stochastic samples differ"
    assert float(std[~nod].max()) < 0.2, "a spread, not a reflectance"
    ds = xr.open_zarr(ldm_ref)
    assert ds["reflectance_std"].dims == ("band", "y", "x")
    assert list(ds["reflectance_std"]["band"].values) == ["blue", "green", "red", "nir"]
    assert np.array_equal(ds["reflectance_std"].values, std, equal_nan=True)
    assert "3 model samples" in ds["reflectance_std"].attrs["long_name"]
    with rasterio.open(f'ZARR:"{ldm_ref}":/reflectance') as g0, \
            rasterio.open(f'ZARR:"{ldm_ref}":/reflectance_std') as g1:
        assert g1.crs == g0.crs and g1.crs.to_epsg() == 32633
        assert tuple(g1.transform) == tuple(g0.transform)
        assert (g1.count, g1.height, g1.width) == (4, 224, 256)
        assert np.array_equal(g1.read(), std, equal_nan=True)
    with rasterio.open(ldm_scene) as s:
        want = s.transform * s.transform.scale(0.25)
    assert np.allclose(tuple(g1.transform)[:6], tuple(want)[:6])
    attrs = zarr.open_group(str(ldm_ref), mode="r").attrs["geosr"]
    assert attrs["provenance"]["uncertainty_samples"] == 3
    assert attrs["provenance"]["parameters"]["output"]["uncertainty_samples"] == 3
    assert attrs["provenance"]["metrics"]["std_mean"] > 0


def test_ldm_std_does_not_depend_on_the_block_size(ldm_scene, ldm_ref, tmp_path):
    out = tmp_path / "whole.zarr"
    rep = run_scene(str(ldm_scene), str(out), ldm_config(**{"tiling.block": 256}))  # the scene in one block
    assert rep.blocks_total == 1
    ref, got = arrays(ldm_ref), arrays(out)
    for k in ("reflectance", "reflectance_std"):
        assert np.array_equal(np.isnan(ref[k]), np.isnan(got[k])), k
        np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=1e-5, equal_nan=True, err_msg=k)


def test_ldm_with_uncertainty_resumes(ldm_scene, ldm_ref, tmp_path):
    out = tmp_path / "resume.zarr"
    cfg = ldm_config()
    first = run_scene(str(ldm_scene), str(out), cfg, max_blocks=1)
    assert first.blocks_run == 1 and store_status(str(out), ENV).state == "incomplete"
    # a different sample count is a different output: it does not resume into this store
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run_scene(str(ldm_scene), str(out), ldm_config(**{"output.uncertainty_samples": 2}))
    second = run_scene(str(ldm_scene), str(out), cfg)
    assert second.state == "resumed" and second.blocks_run == 3
    assert store_status(str(out), ENV).state == "complete"
    ref, got = arrays(ldm_ref), arrays(out)
    for k in ("reflectance", "reflectance_std"):
        np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=1e-6, equal_nan=True, err_msg=k)


# -- CLI ------------------------------------------------------------------------------------------------------
def test_cli_refuses_uncertainty_with_a_classic_model_in_one_line(tmp_path, capsys):
    src = make_geotiff(tmp_path / "in.tif", height=40, width=40, bands=3, seed=2)
    out = tmp_path / "o.zarr"
    rc = main(["run", str(src), str(out), "--model", "bicubic", "--scale", "2", "--tile", "32", "--overlap", "8",
               "--chunk", "64", "--block", "64", "--device", "cpu", "--no-progress",
               "--set", "output.uncertainty_samples=3"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("geosr: error:") and "Traceback" not in err
    assert "'bicubic'" in lines[0] and "ldm" in lines[0] and "uncertainty_samples=3" in lines[0]
    assert not out.exists(), "refused before the store is created"


def test_cli_info_lists_the_std_variable(ldm_ref, capsys):
    assert main(["info", str(ldm_ref)]) == 0
    text = capsys.readouterr().out
    assert "uncertainty:" in text and "'reflectance_std'" in text and "3 samples" in text


# -- Dask: a LocalCluster with a GPU-tagged worker ------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    from geosr.orchestration.cluster import ClusterSpec, dask_client

    with dask_client(ClusterSpec(processes=False, cpu_workers=1, cpu_threads=1, gpu_workers=1)) as c:
        yield c


def test_cluster_run_with_uncertainty_matches_the_engine(client, ldm_scene, ldm_ref, tmp_path):
    from geosr.orchestration.dask_executor import DaskExecutor

    out = tmp_path / "dask.zarr"
    run = run_scene(str(ldm_scene), str(out), ldm_config(), DaskExecutor(client, ENV))
    assert run.state == "written" and run.blocks_run == 4 and run.model["name"] == "ldm"
    assert run.metrics["std_mean"] > 0
    ref, got = arrays(ldm_ref), arrays(out)
    for k in ("reflectance", "reflectance_std"):
        np.testing.assert_allclose(got[k], ref[k], rtol=0, atol=1e-6, equal_nan=True, err_msg=k)
    assert describe_store(str(out), ENV)["uncertainty"]["variable"] == "reflectance_std"


def test_cluster_refuses_uncertainty_with_a_classic_model_before_writing(client, small_scene, tmp_path):
    from geosr.orchestration.dask_executor import DaskExecutor

    out = tmp_path / "never.zarr"
    cfg = load_config(None, {**SMALL, "model.name": "bicubic"})
    with pytest.raises(ConfigError, match="'bicubic'.*ldm"):
        run_scene(str(small_scene), str(out), cfg, DaskExecutor(client, ENV))
    assert store_status(str(out), ENV).state == "absent"
