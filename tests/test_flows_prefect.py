"""The Prefect flows against a real Prefect server (prefect_test_harness), a real Dask cluster on loopback
with one GPU-tagged worker, and the SeaweedFS S3 server: one scene with its artifacts, new scenes from a
STAC ItemCollection on S3, a backfill (dry run, then with a failing scene), three scenes sharing one GPU
through a strict concurrency limit of 1, the flow process killed mid-scene and rerun, and the
deployments (prefect.yaml, flow.serve) with idempotent fan-out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from geosr.config import RunConfig, load_config
from geosr.io.storage import StorageEnv
from geosr.lifecycle import run_scene
from geosr.orchestration.cluster import ClusterSpec, dask_client
from geosr.orchestration.fan_out import SceneCall, submit_deployment_runs
from geosr.orchestration.gpu_limit import ensure_gpu_limit
from geosr.orchestration.settings import RunSettings
from geosr.store import stac_item_uri, store_status
from tests.test_orchestration_support import SMALL, assert_same_store, make_scene, small_config, store_arrays

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        ensure_gpu_limit("geosr-gpu", 1)
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="module")
def address():
    with dask_client(ClusterSpec(processes=False, cpu_workers=1, cpu_threads=2, gpu_workers=1)) as c:
        yield c.scheduler.address


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    d = tmp_path_factory.mktemp("scenes")
    return {name: make_scene(d / f"{name}.tif", seed=seed) for name, seed in
            (("S2_20240105", 3), ("S2_20240110", 5), ("S2_20240301", 7), ("S2_20240112", 9))}


@pytest.fixture(scope="module")
def reference(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    refs = {}
    for name, path in scenes.items():
        run_scene(str(path), str(out / f"{name}.zarr"), small_config())
        refs[name] = store_arrays(str(out / f"{name}.zarr"), StorageEnv())
    return refs


def _config(endpoint: str | None = None, **extra) -> RunConfig:
    c = dict(SMALL)
    if endpoint:
        c["storage.endpoint_url"] = endpoint
        c["storage.region"] = "us-east-1"
    c.update(extra)
    return load_config(None, c)


def _artifacts(key_prefix: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=key_prefix)))
    return arts


def test_one_scene_flow_on_s3_with_artifacts(prefect_api, address, scenes, reference, s3_bucket):
    from geosr.flows.scene import super_resolve_scene

    src = s3_bucket.upload(scenes["S2_20240105"], "inbox/S2_20240105.tif")
    prefix = s3_bucket.uri("geosr")
    settings = RunSettings(dask_address=address)
    res = super_resolve_scene(input_uri=src, output_prefix=prefix, collection="sentinel-2-l2a",
                              config=_config(s3_bucket.server.endpoint_url), settings=settings)
    out = f"{prefix}/sentinel-2-l2a/S2_20240105.zarr"
    assert res["state"] == "written" and res["output"] == out and res["blocks_run"] == 16
    assert res["tiles"] == 121 and res["tiles_per_s"] > 0 and res["model"]["name"] == "bicubic"
    assert_same_store(store_arrays(out, s3_bucket.env), reference["S2_20240105"])
    keys = set(s3_bucket.keys())
    assert "geosr/sentinel-2-l2a/S2_20240105.stac-item.json" in keys and stac_item_uri(out) == res["stac_item"]
    png = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="geosr/sentinel-2-l2a/S2_20240105.quicklook.png")
    assert png["Body"].read(8) == b"\x89PNG\r\n\x1a\n" and res["quicklook"].endswith(".quicklook.png")
    md = [a for a in _artifacts("geosr-scene-s2-20240105") if a.type == "markdown"]
    assert md, "a markdown artifact per scene"
    text = md[0].data
    for needle in (src, "3 bands, 256 x 256 px -> 512 x 512 px", "tiles/s", "bicubic 0.1.0", "LR consistency L1",
                   "seam metric", out, "S2_20240105.quicklook.png"):
        assert needle in text, needle
    progress = [a for a in _artifacts("geosr-progress-s2-20240105") if a.type == "progress"]
    assert progress and float(progress[0].data) == 100.0
    again = super_resolve_scene(input_uri=src, output_uri=out, config=_config(s3_bucket.server.endpoint_url),
                                settings=settings)
    assert again["state"] == "skipped" and again["blocks_run"] == 0


def test_one_scene_flow_on_a_per_band_stac_item_on_s3(prefect_api, address, s3_bucket, tmp_path):
    """Issue 16: the scene flow end to end on a Sentinel-2 L2A STAC Item of per-band COGs (shaped like Earth Search's,
    tests/s2_item.py) in a static catalog on SeaweedFS, written to S3 by the Dask cluster: the bands stacked on the
    10 m grid with the baseline offset and the SCL mask, the output's STAC Item derived from the source Item."""
    from geosr.flows.scene import super_resolve_scene
    from tests import s2_item
    from tests.test_stac_item_input import expected_nearest

    scene = s2_item.write_scene(tmp_path / "S2B_32TMT")
    for f in sorted(scene.parent.rglob("*")):
        if f.is_file():
            s3_bucket.upload(f, "catalog/S2B_32TMT/" + f.relative_to(scene.parent).as_posix())
    src = s3_bucket.uri("catalog/S2B_32TMT/item.json")
    out = s3_bucket.uri("flow/S2B_32TMT.zarr")
    cfg = _config(s3_bucket.server.endpoint_url, **{"model.name": "nearest", "input.stac.scl_mask": True})
    res = super_resolve_scene(input_uri=src, output_uri=out, config=cfg, settings=RunSettings(dask_address=address))
    assert res["state"] == "written" and res["output"] == out and res["blocks_run"] == res["blocks_total"] == 9
    png = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="flow/S2B_32TMT.quicklook.png")["Body"].read(8)
    assert png == b"\x89PNG\r\n\x1a\n", "the quicklook of an Item input"
    from geosr.io.storage import rasterio_env
    from tests.test_stac_item_input import read_gdal

    with rasterio_env(out, s3_bucket.env):
        data, transform, crs = read_gdal("/vsis3/" + out[len("s3://"):])
    assert crs.to_epsg() == s2_item.EPSG and transform.a == 5.0 and (transform.c, transform.f) == s2_item.ORIGIN
    import numpy as np

    np.testing.assert_array_equal(data, expected_nearest(scl_mask=True))
    item = json.loads(s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="flow/S2B_32TMT.stac-item.json")["Body"].read())
    assert [lk["href"] for lk in item["links"] if lk["rel"] == "derived_from"] == [src]
    assert item["properties"]["platform"] == "sentinel-2b" and item["properties"]["gsd"] == 5.0
    again = super_resolve_scene(input_uri=src, output_uri=out, config=cfg, settings=RunSettings(dask_address=address))
    assert again["state"] == "skipped" and again["blocks_run"] == 0


def _item(scene_id, href, dt, cloud):
    return {"type": "Feature", "stac_version": "1.0.0", "id": scene_id, "collection": "s2",
            "geometry": {"type": "Polygon", "coordinates": [[[13.7, 45.1], [13.8, 45.1], [13.8, 45.2], [13.7, 45.2],
                                                             [13.7, 45.1]]]},
            "bbox": [13.7, 45.1, 13.8, 45.2], "properties": {"datetime": dt, "eo:cloud_cover": cloud}, "links": [],
            "assets": {"data": {"href": href, "type": "image/tiff; application=geotiff", "roles": ["data"]}}}


def test_new_scenes_from_a_static_item_collection_on_s3(prefect_api, address, scenes, reference, s3_bucket):
    from geosr.flows.new_scenes import process_new_scenes

    for name in scenes:
        s3_bucket.upload(scenes[name], f"l2a/{name}.tif")
    items = [_item("S2_20240105", "../l2a/S2_20240105.tif", "2024-01-05T10:00:00Z", 5.0),
             _item("S2_20240110", "../l2a/S2_20240110.tif", "2024-01-10T10:00:00Z", 80.0),  # too cloudy
             _item("S2_20240301", "../l2a/S2_20240301.tif", "2024-03-01T10:00:00Z", 1.0),  # outside the dates
             _item("S2_20240112", "../l2a/S2_20240112.tif", "2024-01-12T10:00:00Z", 2.0)]  # already done
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="stac/items.json",
                                Body=json.dumps({"type": "FeatureCollection", "features": items}).encode())
    prefix = s3_bucket.uri("out")
    cfg = small_config(s3_bucket.server.endpoint_url)
    run_scene(s3_bucket.uri("l2a/S2_20240112.tif"), f"{prefix}/s2/S2_20240112.zarr", cfg)
    kw = dict(source=s3_bucket.uri("stac/items.json"), output_prefix=prefix, collection="s2",
              datetime="2024-01-01/2024-01-31", max_cloud_cover=20, config=_config(s3_bucket.server.endpoint_url),
              settings=RunSettings(dask_address=address))
    res = process_new_scenes(**kw)
    assert (res["done"], res["skipped"], res["failed"]) == (1, 0, 0)
    assert res["scenes"][0]["scene"] == "S2_20240105"
    out = f"{prefix}/s2/S2_20240105.zarr"
    assert_same_store(store_arrays(out, s3_bucket.env), reference["S2_20240105"])
    item = json.loads(s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="out/s2/S2_20240105.stac-item.json")["Body"].read())
    assert item["properties"]["datetime"].startswith("2024-01-05"), "the acquisition time becomes the item's datetime"
    for name in ("S2_20240110", "S2_20240301"):
        assert store_status(f"{prefix}/s2/{name}.zarr", s3_bucket.env).state == "absent"
    summary = [a for a in _artifacts("geosr-new-scenes") if a.type == "markdown"]
    assert summary and "1 done, 0 skipped, 0 failed" in summary[0].data
    assert process_new_scenes(**kw)["done"] == 0, "nothing new the second time"


def test_backfill_dry_run_then_run_with_a_failing_scene(prefect_api, address, scenes, reference, tmp_path):
    from geosr.flows.backfill import backfill

    src = tmp_path / "in"
    src.mkdir()
    for name in ("S2_20240105", "S2_20240110", "S2_20240301"):
        os.symlink(scenes[name], src / f"{name}.tif")
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00 truncated")
    prefix = str(tmp_path / "out")
    kw = dict(output_prefix=prefix, source=str(src), start="2024-01-01", end="2024-01-31", scenes=[str(broken)],
              config=_config(), settings=RunSettings(dask_address=address, quicklook=False))
    plan = backfill(dry_run=True, **kw)
    assert plan["dry_run"] and (plan["scenes"], plan["run"], plan["error"]) == (3, 2, 1)
    assert plan["tiles_todo"] > 0 and plan["est_gpu_s"] > 0 and "S2_20240110" in plan["table"]
    assert not os.path.exists(prefix), "a dry run writes nothing"
    state = backfill(return_state=True, **kw)
    assert state.is_failed(), "a backfill with a failed scene ends Failed"
    res = state.result(raise_on_failure=False)
    assert (res["done"], res["skipped"], res["failed"]) == (2, 0, 1)
    assert res["failed_scenes"][0]["scene"] == "broken" and "not a raster" in res["failed_scenes"][0]["reason"]
    for name in ("S2_20240105", "S2_20240110"):
        assert_same_store(store_arrays(f"{prefix}/{name}.zarr", StorageEnv()), reference[name])
    md = [a for a in _artifacts("geosr-backfill") if a.type == "markdown" and "#### failed" in a.data]
    assert md and "2 done, 0 skipped, 1 failed" in md[0].data and "broken" in md[0].data
    again = backfill(**{**kw, "scenes": []})
    assert (again["done"], again["skipped"], again["failed"]) == (0, 2, 0)


def test_backfill_with_scenes_whose_outputs_collide_fails_them_both(prefect_api, address, scenes, tmp_path):
    """Issue 18 #3: ``scene a.tif`` and ``scene-a.tif`` map to one output; the flow used to end Completed with one of
    them silently skipped. Both are failures now, and nothing is written for them."""
    from geosr.flows.backfill import backfill

    a, b = tmp_path / "scene a.tif", tmp_path / "scene-a.tif"
    os.symlink(scenes["S2_20240105"], a)
    os.symlink(scenes["S2_20240110"], b)
    prefix = str(tmp_path / "out")
    state = backfill(output_prefix=prefix, scenes=[str(a), str(b)], config=_config(),
                     settings=RunSettings(dask_address=address, quicklook=False), return_state=True)
    assert state.is_failed()
    res = state.result(raise_on_failure=False)
    assert (res["done"], res["skipped"], res["failed"]) == (0, 0, 2)
    assert all("would both be written to" in f["reason"] for f in res["failed_scenes"])
    assert store_status(f"{prefix}/scene-a.zarr", StorageEnv()).state == "absent"


def test_a_scene_flow_refuses_the_complete_output_of_another_model(prefect_api, address, scenes, s3_bucket):
    """Issue 18 #2 through the flow, on S3: a complete output made by another model is refused, not reported done."""
    from geosr.errors import OutputExistsError
    from geosr.flows.scene import super_resolve_scene

    src = s3_bucket.upload(scenes["S2_20240112"], "in/S2_20240112.tif")
    out = s3_bucket.uri("geosr/S2_20240112.zarr")
    settings = RunSettings(dask_address=address, quicklook=False)
    first = super_resolve_scene(input_uri=src, output_uri=out, config=_config(s3_bucket.server.endpoint_url),
                                settings=settings)
    assert first["state"] == "written"
    other = _config(s3_bucket.server.endpoint_url, **{"model.name": "lanczos"})
    with pytest.raises(OutputExistsError, match="model.name='bicubic' \\(now 'lanczos'\\).*--overwrite"):
        super_resolve_scene(input_uri=src, output_uri=out, config=other, settings=settings)
    assert store_status(out, s3_bucket.env).state == "complete"


def test_three_scenes_at_once_share_one_gpu_worker_through_a_limit_of_one(prefect_api, address, scenes, reference,
                                                                          tmp_path):
    from geosr.flows.backfill import backfill

    ensure_gpu_limit("geosr-gpu-load", 1)
    names = ["S2_20240105", "S2_20240110", "S2_20240112"]
    prefix = str(tmp_path / "load")
    res = backfill(output_prefix=prefix, scenes=[str(scenes[n]) for n in names],
                   config=_config(**{"model.name": "test-slow-bicubic", "model.params": {"delay": 0.03}}),
                   settings=RunSettings(dask_address=address, gpu_limit="geosr-gpu-load", max_concurrent_scenes=3,
                                        quicklook=False))
    assert (res["done"], res["failed"]) == (3, 0)
    held = sorted(tuple(r["slot_held"]) for r in res["done_scenes"])
    assert all(a[1] <= b[0] for a, b in zip(held, held[1:])), f"GPU slots overlapped: {held}"
    assert sum(1 for r in res["done_scenes"] if r["slot_wait_s"] > 0.2) >= 2, "two scenes waited for the GPU"
    for n in names:
        assert_same_store(store_arrays(f"{prefix}/{n}.zarr", StorageEnv()), reference[n])


def test_gpu_limit_cli_creates_and_resizes_the_limit(prefect_api, capsys):
    from prefect.client.orchestration import get_client

    from geosr.cli import main

    assert main(["flows", "gpu-limit", "--name", "geosr-gpu-cli", "--slots", "2"]) == 0
    assert main(["flows", "gpu-limit", "--name", "geosr-gpu-cli", "--slots", "3"]) == 0
    assert "geosr-gpu-cli: 3 slot(s)" in capsys.readouterr().out
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name("geosr-gpu-cli").limit == 3


def test_a_missing_gpu_limit_fails_the_scene_strictly(prefect_api, address, scenes, tmp_path):
    from geosr.flows.scene import super_resolve_scene

    state = super_resolve_scene(input_uri=str(scenes["S2_20240105"]), output_uri=str(tmp_path / "x.zarr"),
                                config=_config(), settings=RunSettings(dask_address=address, gpu_limit="no-such-gpus"),
                                return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="no-such-gpus.*does not exist"):
        state.result()
    assert store_status(str(tmp_path / "x.zarr"), StorageEnv()).state == "absent", "nothing ran without the GPU slot"


def test_flow_process_killed_mid_scene_then_rerun_redoes_only_missing_blocks(prefect_api, scenes, reference, tmp_path):
    from geosr.flows.scene import super_resolve_scene

    ensure_gpu_limit("geosr-gpu-kill", 2)
    out = str(tmp_path / "killed.zarr")
    overrides = {**SMALL, "model.name": "test-slow-bicubic", "model.params": {"delay": 0.25}}
    args = [sys.executable, "-m", "tests.test_orchestration_support", "flows", "run-scene",
            str(scenes["S2_20240110"]), out, "--dask-threads", "--gpu-limit", "geosr-gpu-kill", "--no-quicklook"]
    for k, v in overrides.items():
        args += ["--set", f"{k}={json.dumps(v)}"]
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while store_status(out, StorageEnv()).done < 4:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the flow process never got going"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the flow process and everything it started, mid-scene
        proc.wait(30)
    st = store_status(out, StorageEnv())
    assert st.state == "incomplete" and 4 <= st.done < 16
    res = super_resolve_scene(input_uri=str(scenes["S2_20240110"]), output_uri=out, config=load_config(None, overrides),
                              settings=RunSettings(dask_processes=False, gpu_limit="geosr-gpu-kill", quicklook=False))
    assert res["state"] == "resumed" and res["blocks_run"] == 16 - st.done, "only the missing blocks were redone"
    assert_same_store(store_arrays(out, StorageEnv()), reference["S2_20240110"])


def test_deployments_from_prefect_yaml_and_serve_with_idempotent_fan_out(prefect_api, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.flows import load_flow_from_entrypoint

    from geosr.flows.serve import deployments

    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = {}
    for d in doc["deployments"]:
        fl = load_flow_from_entrypoint(str(REPO / d["entrypoint"]))
        params = {k: ("s3://bucket/x" if isinstance(v, str) and "{{" in v else v) for k, v in d["parameters"].items()}
        params["settings"] = {k: (None if isinstance(v, str) and "{{" in v else v) for k, v in params["settings"].items()}
        required = {"source": "s3://b/in/", "output_prefix": "s3://b/out", "input_uri": "s3://b/in/a.tif"}
        for p, v in required.items():
            if p in fl.parameters.properties and p not in params:
                params[p] = v
        fl.validate_parameters(params)  # the YAML's parameters fit the flow's signature
        names[d["name"]] = fl.name
    assert names == {"scheduled": "process-new-scenes", "analyst": "geosr-backfill", "on-demand": "super-resolve-scene"}
    sched = next(d for d in doc["deployments"] if d["name"] == "scheduled")
    assert sched["schedules"][0]["cron"] and sched["concurrency_limit"] == 1

    settings = RunSettings(dask_address="tcp://127.0.0.1:8786")
    deps = deployments(settings, new_scenes={"source": "s3://b/in/", "output_prefix": "s3://b/out"},
                       cron="*/15 * * * *")
    ids = [d.apply() for d in deps]
    with get_client(sync_client=True) as client:
        got = {client.read_deployment(i).name: client.read_deployment(i) for i in ids}
    assert set(got) == {"on-demand", "analyst", "scheduled"}
    assert got["scheduled"].schedules[0].schedule.cron == "*/15 * * * *"
    assert got["analyst"].parameters["settings"]["dask_address"] == "tcp://127.0.0.1:8786"
    calls = [SceneCall(f"s{i}", f"s3://b/out/s{i}.zarr", {"input_uri": f"s3://b/in/s{i}.tif",
                                                         "output_uri": f"s3://b/out/s{i}.zarr",
                                                         "idempotency_key": f"job{i}"}) for i in range(2)]
    first = submit_deployment_runs("super-resolve-scene/on-demand", calls, key_prefix="backfill-run-1")
    again = submit_deployment_runs("super-resolve-scene/on-demand", calls, key_prefix="backfill-run-1")
    other = submit_deployment_runs("super-resolve-scene/on-demand", calls[:1], key_prefix="backfill-run-2")
    assert [fid for _, fid in first] == [fid for _, fid in again], "the same key gives the same flow run"
    assert len({fid for _, fid in first}) == 2 and other[0][1] not in {fid for _, fid in first}
    with get_client(sync_client=True) as client:
        for _, fid in first + other:
            client.delete_flow_run(fid)
