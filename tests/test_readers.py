"""One geosr output, opened the ways users open it: GDAL (rasterio's ``ZARR:`` driver), xarray's
``open_zarr`` and ``open_datatree`` (every overview level a child group), rioxarray and odc-geo. They must
agree on CRS, transform, nodata and values at every level the root's ``multiscales`` attribute lists.
Also: the conventions validate (zarr-cm), Zarr v3 warns at write time and ``geosr info`` says who reads
it, the STAC Item holds up in pystac's object model, and a finished run leaves no lock files behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import odc.geo.xr  # noqa: F401  (registers .odc)
import pystac
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
import zarr
import zarr_cm
from affine import Affine
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterExtension
from pystac.validation import validate_dict
from rasterio.errors import RasterioIOError

from geosr.cli import main
from geosr.config import load_config
from geosr.lifecycle import run_scene
from geosr.store.readers import GDAL_MIN, gdal_version
from geosr.store.stac import stac_item_uri
from tests.data.synthetic import make_geotiff

BANDS = ["red", "green", "blue"]
CFG = {"tiling.scale": 4, "tiling.tile": 64, "tiling.overlap": 8, "tiling.chunk": 128, "tiling.block": 512,
       "model.name": "bicubic", "model.device": "cpu"}
VAR = "reflectance"


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    from rasterio.transform import from_origin

    return make_geotiff(tmp_path_factory.mktemp("in") / "S2_T33_20240105.tif", height=100, width=150, bands=3,
                        crs="EPSG:32633", transform=from_origin(600000, 5100000, 10, 10), nodata=0,
                        nodata_layout="corner", band_descriptions=BANDS)


@pytest.fixture(scope="module")
def v2(scene, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("v2") / "scene.zarr"
    run_scene(str(scene), str(out), load_config(None, CFG))
    return out


@pytest.fixture(scope="module")
def v3(scene, tmp_path_factory) -> tuple[Path, str]:
    """The same scene through the CLI as a user runs it, in Zarr v3 with shards: (store, stderr)."""
    out = tmp_path_factory.mktemp("v3") / "scene.zarr"
    args = [sys.executable, "-m", "geosr", "run", str(scene), str(out), "--scale", "4", "--tile", "64",
            "--overlap", "8", "--chunk", "128", "--block", "512", "--model", "bicubic", "--device", "cpu",
            "--zarr-format", "3", "--set", "output.shard=256", "--no-progress"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out, proc.stderr


def layout(store: Path) -> list[dict]:
    return zarr.open_group(str(store), mode="r").attrs["multiscales"]["layout"]


def read_gdal(store: Path, asset: str) -> dict:
    with rasterio.open(f'ZARR:"{store}":/{asset}') as ds:
        return {"crs": ds.crs, "transform": ds.transform, "nodata": ds.nodata, "scales": ds.scales,
                "raw": ds.read(), "bands": [ds.tags(i + 1).get("DIM_band_VALUE") for i in range(ds.count)]}


def node_path(asset: str) -> str:
    return "/" + asset.rsplit("/", 1)[0] if "/" in asset else "/"


def assert_same_georef(da: xr.DataArray, crs, transform: Affine, shape: tuple[int, int]) -> None:
    """rioxarray and odc-geo find ``crs``, ``transform`` and ``shape`` on ``da``."""
    assert da.rio.crs == crs
    assert da.rio.transform().almost_equals(transform, precision=1e-9)
    assert (da.rio.height, da.rio.width) == shape
    gbox = da.odc.geobox
    assert gbox.crs.epsg == crs.to_epsg() and gbox.crs == crs.to_wkt()
    assert gbox.affine.almost_equals(transform, precision=1e-9)
    assert gbox.shape == shape


def assert_same_values(da: xr.DataArray, raw: np.ndarray, nodata: float) -> None:
    """xarray's decoded reflectance (NaN nodata) is GDAL's stored uint16 x 1e-4, nodata exactly where GDAL's."""
    values = da.values
    assert values.shape == raw.shape
    invalid = raw == nodata
    assert invalid.any() and not invalid.all(), "the test scene has nodata and data at every level"
    np.testing.assert_array_equal(np.isnan(values), invalid)
    np.testing.assert_allclose(values[~invalid], raw[~invalid] * 1e-4, rtol=0, atol=1e-9)


# -- Zarr v2 (the default) -----------------------------------------------------------------------------------------

def test_every_reader_agrees_on_crs_transform_nodata_and_values_at_every_level(v2, scene):
    with rasterio.open(scene) as src:
        src_crs, src_tf = src.crs, src.transform
    levels = layout(v2)
    assert len(levels) >= 3, "full resolution and at least two overview levels"
    tree = xr.open_datatree(v2, engine="zarr")
    for index, entry in enumerate(levels):
        g = read_gdal(v2, entry["asset"])
        want = src_tf @ Affine.scale(2 ** index / 4)
        assert g["crs"] == src_crs and g["transform"].almost_equals(want, precision=1e-9), entry["asset"]
        assert g["transform"] == Affine(*entry["spatial:transform"]) and g["nodata"] == 0
        assert g["scales"] == (1e-4,) * 3 and g["bands"] == BANDS
        shape = tuple(entry["spatial:shape"])
        assert g["raw"].shape == (3, *shape)
        da = tree[node_path(entry["asset"])][VAR]
        assert list(da["band"].values) == BANDS
        assert_same_georef(da, g["crs"], g["transform"], shape)
        assert np.isnan(da.rio.nodata) and da.rio.encoded_nodata == g["nodata"]
        assert da.odc.nodata == g["nodata"]
        assert_same_values(da, g["raw"], g["nodata"])
    # full resolution the way existing users open it
    ds = xr.open_zarr(v2)
    g0 = read_gdal(v2, VAR)
    assert_same_georef(ds[VAR], g0["crs"], g0["transform"], g0["raw"].shape[1:])
    assert ds.rio.crs == g0["crs"] and ds.rio.transform() == g0["transform"]
    xr.testing.assert_identical(ds[VAR].load(), tree["/"][VAR].load())


def test_open_datatree_has_every_overview_level_as_a_child_group(v2):
    tree = xr.open_datatree(v2, engine="zarr")
    entries = layout(v2)
    assert set(tree.groups) == {"/", "/overviews"} | {node_path(e["asset"]) for e in entries}
    for index, entry in enumerate(entries[1:], start=1):
        node = tree[f"overviews/{index}"]
        own = node.to_dataset(inherit=False)
        assert set(own.data_vars) == {VAR} and own[VAR].dims == ("band", f"y_{index}", f"x_{index}")
        # the level's own dataset georeferences itself (rioxarray picks x_<l>/y_<l> from their CF axis)
        assert own.rio.transform() == Affine(*entry["spatial:transform"])
        assert (own.rio.height, own.rio.width) == tuple(entry["spatial:shape"])
        # and a single level opens on its own too
        alone = xr.open_zarr(v2, group=f"overviews/{index}")
        assert alone.rio.transform() == Affine(*entry["spatial:transform"]) and alone.rio.crs.to_epsg() == 32633


def test_multiscales_and_geozarr_conventions_validate_and_lead_to_every_level(v2):
    root = zarr.open_group(str(v2), mode="r")
    attrs = root.attrs.asdict()
    assert zarr_cm.detect_revisions(attrs) == zarr_cm.latest_revisions(), "the published revisions of each"
    zarr_cm.validate_all(attrs)
    doc = json.loads((v2 / ".zattrs").read_text())
    assert doc == attrs
    entries = attrs["multiscales"]["layout"]
    by_asset = {e["asset"]: e for e in entries}
    assert entries[0]["asset"] == VAR and "derived_from" not in entries[0]
    for entry in entries:
        # a reader that knows only the convention: follow the asset, check what the entry says about it
        arr = root[entry["asset"]]
        assert list(arr.shape[-2:]) == entry["spatial:shape"]
        arr_attrs = arr.attrs.asdict()
        zarr_cm.validate_all(arr_attrs)
        assert arr_attrs["spatial:transform"] == entry["spatial:transform"]
        assert arr_attrs["spatial:dimensions"] == entry["spatial:dimensions"] == arr_attrs["_ARRAY_DIMENSIONS"][1:]
        if "derived_from" in entry:
            parent = by_asset[entry["derived_from"]]
            scale = entry["transform"]["scale"]
            assert entry["transform"]["translation"] == [0.0, 0.0]
            assert entry["spatial:transform"][0] == parent["spatial:transform"][0] * scale[1]
            assert entry["spatial:transform"][4] == parent["spatial:transform"][4] * scale[0]
            assert entry["resampling_method"] == "average"
            group_attrs = root[entry["asset"].rsplit("/", 1)[0]].attrs.asdict()
            zarr_cm.validate_all(group_attrs)


# -- Zarr v3 -------------------------------------------------------------------------------------------------------

def test_zarr_v3_warns_at_write_time_and_readers_other_than_old_gdal_agree_with_v2(v3, v2):
    store, stderr = v3
    warning = [line for line in stderr.splitlines() if "Zarr v3" in line]
    assert len(warning) == 1, stderr
    assert f"GDAL < {GDAL_MIN[3][0]}.{GDAL_MIN[3][1]} cannot read" in warning[0] and "--zarr-format 2" in warning[0]
    tree3, tree2 = xr.open_datatree(store, engine="zarr"), xr.open_datatree(v2, engine="zarr")
    assert tree3.groups == tree2.groups
    for entry in layout(store):
        path = node_path(entry["asset"])
        a, b = tree3[path][VAR], tree2[path][VAR]
        assert_same_georef(a, b.rio.crs, b.rio.transform(), (b.rio.height, b.rio.width))
        np.testing.assert_array_equal(a.values, b.values)
    zarr_cm.validate_all(zarr.open_group(str(store), mode="r").attrs.asdict())
    here = gdal_version()
    if here is not None and here < GDAL_MIN[3]:
        with pytest.raises(RasterioIOError, match="Unsupported codec"):
            rasterio.open(f'ZARR:"{store}":/{VAR}')
    else:
        g3, g2 = read_gdal(store, VAR), read_gdal(v2, VAR)
        assert g3["transform"] == g2["transform"] and np.array_equal(g3["raw"], g2["raw"])


def test_info_says_which_readers_open_each_format(v2, v3, capsys):
    here = gdal_version()
    for store, fmt in ((v2, 2), (v3[0], 3)):
        assert main(["info", str(store), "--json"]) == 0
        readers = {r["name"]: r for r in json.loads(capsys.readouterr().out)["readers"]}
        assert {"GDAL", "xarray", "rioxarray", "odc-geo"} <= set(readers)
        assert all(readers[n]["reads"] for n in ("xarray", "rioxarray", "odc-geo"))
        gdal = readers["GDAL"]
        assert gdal["needs"] == ">= {}.{}".format(*GDAL_MIN[fmt]) and gdal["version"] == "{}.{}".format(*here)
        assert gdal["reads"] == (here >= GDAL_MIN[fmt]), "what GDAL here can do, as the v3 test shows"
        assert main(["info", str(store)]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("readers:"))
        if gdal["reads"]:
            assert f"can: GDAL >= {GDAL_MIN[fmt][0]}.{GDAL_MIN[fmt][1]}" in line and "cannot" not in line
        else:
            assert "cannot: GDAL {}.{} here (needs >= 3.11)".format(*here) in line


# -- STAC ----------------------------------------------------------------------------------------------------------

def test_stac_item_holds_up_in_pystac_and_matches_what_gdal_reads(v2):
    item = pystac.Item.from_file(stac_item_uri(str(v2)))
    g = read_gdal(v2, VAR)
    assert ProjectionExtension.has_extension(item) and RasterExtension.has_extension(item)
    proj = ProjectionExtension.ext(item)
    assert proj.code == f"EPSG:{g['crs'].to_epsg()}" and proj.shape == list(g["raw"].shape[1:])
    assert Affine(*proj.transform) == g["transform"]
    asset = item.assets["data"]
    assert asset.href == "./" + v2.name and asset.get_absolute_href() == str(v2) and asset.media_type == pystac.MediaType.ZARR and asset.roles == ["data"]
    bands = RasterExtension.ext(asset).bands
    assert len(bands) == 3
    for band, scale in zip(bands, g["scales"]):
        assert band.data_type == DataType.UINT16 and band.nodata == g["nodata"]
        assert band.scale == scale and band.offset == 0.0 and band.spatial_resolution == g["transform"].a
    assert [b["name"] for b in asset.extra_fields["bands"]] == g["bands"]
    # offline, pystac holds the core schemas only: validate against them (extension schemas are remote)
    doc = item.to_dict(include_self_link=False)
    doc["stac_extensions"] = []
    assert validate_dict(doc) == ["https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json"]


# -- nothing left behind -------------------------------------------------------------------------------------------

LEFTOVERS = ("*.guard", "*.lock", "*.lease.json", "*.tmp-*", ".*.lock")


def leftovers(root: Path) -> list[str]:
    found = []
    for pattern in LEFTOVERS:
        found += [str(p.relative_to(root)) for p in root.rglob(pattern)]
    return sorted(set(found))


@pytest.mark.servers
def test_a_finished_run_under_the_scene_lease_leaves_no_lock_or_lease_files(scene, tmp_path):
    from geosr.io.storage import StorageEnv
    from geosr.orchestration.cluster import ClusterSpec, dask_client
    from geosr.orchestration.dask_executor import DaskExecutor
    from geosr.store.lease import LeaseOptions

    out = tmp_path / "out" / "scene.zarr"
    with dask_client(ClusterSpec(processes=False, cpu_workers=1, cpu_threads=1, gpu_workers=1)) as client:
        run = run_scene(str(scene), str(out), load_config(None, CFG), DaskExecutor(client, StorageEnv()),
                        lease=LeaseOptions(ttl=30, wait=60, poll=0.2))
    assert run.state == "written" and (out / ".geosr" / "complete.json").exists()
    assert sorted(os.listdir(out.parent)) == ["scene.stac-item.json", "scene.zarr"], leftovers(out.parent)
    assert leftovers(out.parent) == []
