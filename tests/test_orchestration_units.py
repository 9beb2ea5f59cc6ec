"""Orchestration building blocks on real files, without a cluster or a Prefect server: retry
classification, OOM batch halving, the scene lease, scene discovery, backfill planning, artifacts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from geosr.errors import InputError, InputNotFoundError, LeaseLostError, ModelError, SceneLockedError, StorageAuthError
from geosr.io.failures import is_transient
from geosr.io.source import open_source
from geosr.io.storage import StorageEnv
from geosr.lifecycle import SceneReport, run_scene
from geosr.orchestration.artifacts import artifact_key, public_url, quicklook_uri, scene_markdown
from geosr.orchestration.backfill import plan_backfill
from geosr.orchestration.discovery import discover, explicit_scenes
from geosr.orchestration.errors import DiscoveryError
from geosr.orchestration.jobs import SceneJob, scene_output_uri
from geosr.orchestration.model_cache import ModelCache
from geosr.orchestration.query import SceneQuery, lookback_interval, parse_bbox, parse_interval
from geosr.orchestration.stac_source import stac_search_parameters
from geosr.plan import ScenePlan
from geosr.retry import RetryPolicy, call_with_retry
from geosr.store.lease import LeaseRecord, SceneLease, lease_uri
from geosr.tiles import read_block
from geosr.upsample import upsample_tiles
from geosr.upsamplers import build_upsampler
from geosr.upsamplers.recipe import ModelRecipe
from tests.test_orchestration_support import make_scene, small_config


# -- retry -------------------------------------------------------------------------------------------------------
def test_transient_and_permanent_failures_are_told_apart():
    import botocore.exceptions as bce

    assert is_transient(ConnectionRefusedError("connection refused"))
    assert is_transient(bce.EndpointConnectionError(endpoint_url="http://127.0.0.1:9"))
    slow = bce.ClientError({"Error": {"Code": "SlowDown", "Message": "slow down"}}, "PutObject")
    assert is_transient(slow)
    # a typed error that wraps a network failure is retried ...
    try:
        try:
            raise ConnectionResetError("reset by peer")
        except ConnectionResetError:
            raise InputError("s3://b/x.tif: storage error while reading (Couldn't connect to server)")
    except InputError as e:
        assert is_transient(e)
    # ... but what a retry cannot fix is not
    assert not is_transient(InputNotFoundError("s3://b/x.tif does not exist"))
    assert not is_transient(StorageAuthError("refused the credentials"))
    denied = bce.ClientError({"Error": {"Code": "AccessDenied", "Message": "denied"}}, "GetObject")
    assert not is_transient(denied)
    assert not is_transient(ValueError("rows=(0, 500) is not a range"))
    # losing the Dask scheduler (restart) is retried: the rerun reconnects and resumes from the ledger
    from distributed.client import FutureCancelledError
    from distributed.comm.core import CommClosedError

    assert is_transient(CommClosedError("in <TCP (closed)>: Stream is closed"))
    assert is_transient(FutureCancelledError(key="x", reason="scheduler-connection-lost"))
    assert not is_transient(FutureCancelledError(key="x", reason="cancelled by user"))


def test_call_with_retry_backs_off_then_succeeds_or_gives_up():
    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionResetError("connection reset by peer")
        return "ok"

    pol = RetryPolicy(attempts=4, base=0.05, factor=2.0)
    assert call_with_retry(flaky, pol, "flaky") == "ok"
    assert len(calls) == 3
    assert calls[1] - calls[0] >= 0.05 * 0.75 and calls[2] - calls[1] >= 0.1 * 0.75

    n = []

    def permanent():
        n.append(1)
        raise InputNotFoundError("gone")

    with pytest.raises(InputNotFoundError):
        call_with_retry(permanent, pol, "permanent")
    assert len(n) == 1, "a permanent error is not retried"

    m = []

    def always():
        m.append(1)
        raise TimeoutError("timed out")

    with pytest.raises(TimeoutError):
        call_with_retry(always, RetryPolicy(attempts=3, base=0.01), "always")
    assert len(m) == 3


# -- OOM: halve the batch ---------------------------------------------------------------------------------------
def test_cuda_oom_halves_the_batch_and_keeps_the_bytes(tmp_path):
    scene = make_scene(tmp_path / "s.tif")
    cfg = small_config(**{"model.name": "test-oom-bicubic", "model.params": {"max_tiles": 3}, "model.batch_size": 16,
                          "tiling.block": 512, "tiling.chunk": 128})
    src = open_source(str(scene), cfg.input, StorageEnv())
    plan = ScenePlan(str(scene), str(tmp_path / "o.zarr"), cfg, src.meta, {})
    block = next(iter(plan.blocks))
    inp = read_block(plan, block, src)
    assert inp.pixels.shape[0] > 8
    spec = ModelRecipe.from_config(cfg, 3)
    cache = ModelCache()
    model = cache.model(spec)
    got = np.stack(list(upsample_tiles(model, inp.pixels, inp.origins, 0, batch=cache.batch(spec))))
    ref = build_upsampler("bicubic", scale=2, device="cpu")
    from geosr.upsamplers import TileBatch

    want = ref(TileBatch(inp.pixels, inp.origins))
    assert np.array_equal(got, want), "halving the batch does not change a single byte"
    assert model.batches[:3] == [16, 8, 4] and set(model.batches[3:]) <= {2}
    assert cache.batch(spec).size == 2 and cache.oom_halvings == 3
    assert cache.model(spec) is model and cache.loads == 1, "the model is loaded once"


def test_oom_on_a_single_tile_is_a_model_error(tmp_path):
    cfg = small_config(**{"model.name": "test-oom-bicubic", "model.params": {"max_tiles": 0}, "model.batch_size": 4})
    spec = ModelRecipe.from_config(cfg, 3)
    cache = ModelCache()
    pixels = np.zeros((5, 3, 32, 32), np.float32)
    with pytest.raises(ModelError, match="single tile"):
        list(upsample_tiles(cache.model(spec), pixels, np.zeros((5, 2), np.int64), 0, batch=cache.batch(spec)))


# -- scene lease ---------------------------------------------------------------------------------------------------
def test_lease_excludes_a_second_holder_until_released(tmp_path):
    out = str(tmp_path / "scene.zarr")
    assert lease_uri(out) == str(tmp_path / "scene.lease.json")
    env = StorageEnv()
    a = SceneLease(out, env, ttl=30, label="run-a", poll=0.05)
    b = SceneLease(out, env, ttl=30, label="run-b", poll=0.05)
    a.acquire()
    with pytest.raises(SceneLockedError, match="run-a"):
        b.acquire(wait=0.2)
    assert a.renew()
    a.release()
    assert not os.path.exists(lease_uri(out))
    b.acquire()
    rec = LeaseRecord.from_bytes(open(lease_uri(out), "rb").read())
    assert rec.owner == b.owner and rec.label == "run-b"
    b.release()


def test_expired_lease_is_taken_over_and_the_old_holder_stops(tmp_path):
    out = str(tmp_path / "scene.zarr")
    env = StorageEnv()
    a = SceneLease(out, env, ttl=0.3, poll=0.05)
    a.acquire()
    time.sleep(0.4)  # a stalled: its lease expired
    b = SceneLease(out, env, ttl=30, poll=0.05)
    b.acquire(wait=1)
    assert not a.renew(), "a's compare-and-swap fails: the lease is b's now"
    with pytest.raises(LeaseLostError):
        a.check()
    a.release()  # must not delete b's lease
    assert LeaseRecord.from_bytes(open(lease_uri(out), "rb").read()).owner == b.owner
    b.release()


def test_lease_of_a_dead_local_process_is_taken_over_at_once(tmp_path):
    out = str(tmp_path / "scene.zarr")
    code = ("import sys; from geosr.store.lease import SceneLease; from geosr.io.storage import StorageEnv;"
            f"SceneLease({out!r}, StorageEnv(), ttl=3600).acquire()")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.getcwd())
    held = LeaseRecord.from_bytes(open(lease_uri(out), "rb").read())
    assert held.expires > time.time() + 3000
    t0 = time.monotonic()
    with SceneLease(out, StorageEnv(), ttl=30).hold(wait=0) as lease:
        assert not lease.lost
    assert time.monotonic() - t0 < 5
    assert not os.path.exists(lease_uri(out))


def test_heartbeat_keeps_a_short_lease_alive(tmp_path):
    out = str(tmp_path / "scene.zarr")
    with SceneLease(out, StorageEnv(), ttl=1.0, poll=0.05).hold() as lease:
        time.sleep(2.0)  # well past the ttl: renewed every ~0.33 s
        other = SceneLease(out, StorageEnv(), ttl=5, poll=0.05)
        with pytest.raises(SceneLockedError):
            other.acquire(wait=0)
        lease.check()


# -- discovery -------------------------------------------------------------------------------------------------------
def _item(id_, href, dt, bbox, cloud, collection="s2"):
    w, s, e, n = bbox
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": id_, "collection": collection,
        "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
        "bbox": list(bbox), "properties": {"datetime": dt, "eo:cloud_cover": cloud},
        "links": [], "assets": {
            "thumbnail": {"href": "thumb.png", "type": "image/png", "roles": ["thumbnail"]},
            "image": {"href": href, "type": "image/tiff; application=geotiff; profile=cloud-optimized", "roles": ["data"]},
        },
    }


def write_item_collection(path, items):
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return path


def test_static_item_collection_filters_and_resolves_relative_hrefs(tmp_path):
    (tmp_path / "stac").mkdir()
    items = [
        _item("a", "../scenes/a.tif", "2024-01-05T10:00:00Z", (11.0, 46.0, 11.5, 46.5), 5.0),
        _item("b", "../scenes/b.tif", "2024-01-20T10:00:00Z", (11.2, 46.1, 11.7, 46.6), 60.0),
        _item("c", "/abs/c.tif", "2024-03-01T10:00:00Z", (11.0, 46.0, 11.5, 46.5), 1.0),
        _item("d", "../scenes/d.tif", "2024-01-06T10:00:00Z", (20.0, 10.0, 20.5, 10.5), 1.0),
        _item("e", "../scenes/e.tif", "2024-01-07T10:00:00Z", (11.0, 46.0, 11.5, 46.5), 1.0, collection="other"),
    ]
    ic = write_item_collection(tmp_path / "stac" / "items.json", items)
    env = StorageEnv()
    q = SceneQuery(str(ic), collection="s2", bbox=(10.5, 45.5, 12.0, 47.0), datetime="2024-01-01/2024-01-31",
                   max_cloud_cover=20)
    refs = discover(q, env)
    assert [r.scene_id for r in refs] == ["a"]
    assert refs[0].input_uri == str(tmp_path / "scenes" / "a.tif")
    assert refs[0].cloud_cover == 5.0 and refs[0].datetime.startswith("2024-01-05")
    assert refs[0].output_uri("s3://out/geosr") == "s3://out/geosr/s2/a.zarr"
    everything = discover(SceneQuery(str(ic)), env)
    assert [r.scene_id for r in everything] == ["a", "d", "e", "b", "c"], "sorted by datetime"
    assert everything[-1].input_uri == "/abs/c.tif"


def test_prefix_glob_with_date_in_name_and_bbox(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("T32_20240105.tif", "T32_20240301.tif", "nodate.tif"):
        make_scene(d / name, size=64)
    (d / "notes.txt").write_text("x")
    env = StorageEnv()
    assert [r.scene_id for r in discover(SceneQuery(str(d)), env)] == ["nodate", "T32_20240105", "T32_20240301"]
    jan = discover(SceneQuery(str(d), datetime="2024-01-01/2024-01-31"), env)
    assert [r.scene_id for r in jan] == ["T32_20240105"]
    # the synthetic scenes are in UTM 33N near 13.73E 45.14N
    here = discover(SceneQuery(str(d), bbox=parse_bbox("13,45,14,46")), env)
    assert len(here) == 3 and all(r.bbox is not None for r in here)
    assert discover(SceneQuery(str(d), bbox=(100.0, 0.0, 101.0, 1.0)), env) == []
    with pytest.raises(DiscoveryError, match="cloud"):
        discover(SceneQuery(str(d), max_cloud_cover=10), env)


def test_query_parsing_and_stac_api_parameters():
    s, e = parse_interval("2024-01-01/..")
    assert s.isoformat() == "2024-01-01T00:00:00+00:00" and e is None
    s, e = parse_interval("2024-01-05")
    assert (e - s).total_seconds() > 86399
    with pytest.raises(DiscoveryError):
        parse_interval("2024-02-01/2024-01-01")
    with pytest.raises(DiscoveryError):
        parse_bbox("1,2,3")
    assert lookback_interval(None) is None and lookback_interval(2).endswith("/..")
    q = SceneQuery("https://stac.example/v1", collection="sentinel-2-l2a", bbox=(11, 46, 12, 47),
                   datetime="2024-01-01/2024-01-31", max_cloud_cover=20, limit=50)
    assert q.resolved_kind() == "stac-api"
    p = stac_search_parameters(q, conforms_filter=True, conforms_query=True)
    assert p["collections"] == ["sentinel-2-l2a"] and p["bbox"] == [11, 46, 12, 47] and p["max_items"] == 50
    assert p["datetime"] == "2024-01-01T00:00:00Z/2024-01-31T23:59:59.999999Z"
    assert p["filter"]["args"][1] == 20 and p["filter_lang"] == "cql2-json"
    p = stac_search_parameters(q, conforms_filter=False, conforms_query=True)
    assert p["query"] == {"eo:cloud_cover": {"lte": 20}} and "filter" not in p
    assert [r.scene_id for r in explicit_scenes(["s3://b/x.tif", "s3://b/y.tif", "s3://b/x.tif"], None)] == ["x", "y"]


# -- backfill plan ----------------------------------------------------------------------------------------------------
def test_backfill_plan_counts_tiles_and_estimates_gpu_time(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for n in ("a", "b", "c"):
        make_scene(d / f"{n}.tif")
    (d / "broken.tif").write_text("not a tiff")
    cfg = small_config()
    prefix = str(tmp_path / "out")
    run_scene(str(d / "a.tif"), scene_output_uri(prefix, None, "a"), cfg)  # complete
    run_scene(str(d / "b.tif"), scene_output_uri(prefix, None, "b"), cfg, max_blocks=6)  # 6 of 16 done
    refs = discover(SceneQuery(str(d)), StorageEnv())
    plan = plan_backfill(refs, prefix, cfg, seconds_per_tile=0.5)
    by = {s.ref.scene_id: s for s in plan.scenes}
    assert by["a"].action == "skip" and by["a"].tiles_todo == 0
    assert by["b"].action == "resume" and (by["b"].blocks_todo, by["b"].blocks_total) == (10, 16)
    assert by["c"].action == "run" and by["c"].blocks_todo == 16
    assert by["broken"].action == "error" and "not a raster" in by["broken"].error
    assert 0 < by["b"].tiles_todo < by["c"].tiles_todo
    assert by["c"].tiles == 121 and by["c"].tiles_todo >= by["c"].tiles  # straddling tiles count per block
    assert plan.est_gpu_s == pytest.approx(0.5 * (by["b"].tiles_todo + by["c"].tiles_todo))
    assert by["c"].key == SceneJob(by["c"].ref.input_uri, by["c"].output_uri, cfg).key
    table = plan.table()
    assert "1 to run, 1 to resume, 1 complete (skipped), 1 with errors" in table
    assert f"{plan.tiles_todo} tiles to compute" in table
    # without a given rate: measured on the finished output "a" (same model)
    measured = plan_backfill(refs, prefix, cfg)
    assert "measured on 1 finished output" in measured.seconds_per_tile_source and measured.seconds_per_tile > 0


def test_backfill_dry_run_cli_prints_the_plan_and_runs_nothing(tmp_path, capsys):
    from geosr.cli import main

    d = tmp_path / "in"
    d.mkdir()
    make_scene(d / "S2_20240105.tif")
    make_scene(d / "S2_20240210.tif", seed=4)
    out = tmp_path / "out"
    rc = main(["backfill", str(out), "--source", str(d), "--start", "2024-01-01", "--end", "2024-01-31",
               "--scene", str(d / "S2_20240210.tif"), "--dry-run", "--seconds-per-tile", "2",
               "--set", "tiling.scale=2", "--set", "tiling.tile=32", "--set", "tiling.overlap=8",
               "--set", "tiling.chunk=128", "--set", "tiling.block=128", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["scene"] for r in doc["scenes"]] == ["S2_20240105", "S2_20240210"]
    assert all(r["action"] == "run" for r in doc["scenes"])
    assert doc["summary"]["tiles_todo"] == sum(r["tiles_todo"] for r in doc["scenes"]) > 0
    assert doc["summary"]["est_gpu_s"] == pytest.approx(2 * doc["summary"]["tiles_todo"])
    assert not out.exists(), "a dry run writes nothing"


# -- artifacts ----------------------------------------------------------------------------------------------------------
def test_scene_markdown_and_helpers():
    run = SceneReport("s3://in/a.tif", "s3://out/s2/a.zarr", "written", 16, 16, 4.0, 512 * 512,
                      {"lr_l1": 0.0012, "lr_spectral_angle_deg": 0.5, "seam_metric": 1.01},
                      model={"name": "ldsr", "version": "1.2"}, in_shape=(4, 256, 256), out_shape=(1024, 1024),
                      tiles=121, tiles_run=196, slot_wait_s=3.0)
    md = scene_markdown(run, quicklook="s3://out/s2/a.quicklook.png", scene_id="a")
    for text in ("4 bands, 256 x 256 px -> 1024 x 1024 px", "121 in the grid, 196 computed", "49.00", "ldsr 1.2",
                 "0.00120", "1.0100", "`s3://out/s2/a.zarr`", "a.stac-item.json", "waited 3.0 s"):
        assert text in md, text
    assert artifact_key("geosr-scene", "S2A_MSIL2A_2024.01") == "geosr-scene-s2a-msil2a-2024-01"
    assert quicklook_uri("s3://b/x/a.zarr") == "s3://b/x/a.quicklook.png"
    assert public_url("s3://b/x/a.png", "s3://b/=https://cdn.example/b/") == "https://cdn.example/b/x/a.png"
    assert public_url("s3://b/x/a.png") is None
    assert public_url("/data/a.png") == "file:///data/a.png"


def test_lease_on_s3_uses_conditional_writes(s3_bucket):
    out = s3_bucket.uri("geosr/x.zarr")
    key = "geosr/x.lease.json"
    a = SceneLease(out, s3_bucket.env, ttl=2.0, label="a", poll=0.05)
    a.acquire()
    b = SceneLease(out, s3_bucket.env, ttl=30, label="b", poll=0.05)
    with pytest.raises(SceneLockedError, match="a"):
        b.acquire(wait=0)  # If-None-Match: * refused the second create
    time.sleep(2.1)
    b.acquire(wait=1)  # took the expired lease over with If-Match on a's ETag
    assert not a.renew() and a.lost
    a.release()  # a's conditional delete must not remove b's lease
    body = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=key)["Body"].read()
    assert LeaseRecord.from_bytes(body).owner == b.owner
    b.release()
    assert key not in s3_bucket.keys()


def test_cuda_oom_is_recognised_through_a_model_error():
    import torch

    from geosr.errors import ModelError
    from geosr.upsample import is_cuda_oom

    assert is_cuda_oom(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    try:
        try:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        except torch.cuda.OutOfMemoryError as inner:
            raise ModelError("out of GPU memory at batch 64; lower model.batch_size") from inner
    except ModelError as wrapped:
        assert is_cuda_oom(wrapped), "the batch-halving retry must see an OOM a model wrapped"
    assert not is_cuda_oom(ModelError("weights file is corrupt"))
    assert not is_cuda_oom(RuntimeError("out of memory in the host allocator"))
