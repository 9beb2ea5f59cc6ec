"""Issue 18: never report success for a wrong, stale or unfinished product; refuse absurd and malformed input in
one line. One test per problem found by probing the CLI as a hostile or unlucky user would (see docs/faults.md);
each failed before its fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geosr.cli import main
from geosr.config import load_config
from geosr.errors import NotARasterError, OutputExistsError
from geosr.io.storage import StorageEnv
from geosr.lifecycle import run_scene
from geosr.local_executor import LocalExecutor
from geosr.store import store_status
from tests.data.synthetic import make_corrupt_block_geotiff, make_geotiff

ENV = StorageEnv()
SMALL = {"tiling.scale": 2, "tiling.tile": 32, "tiling.overlap": 8, "tiling.chunk": 64, "tiling.block": 64,
         "model.name": "bicubic", "model.device": "cpu", "workers": 1}
FLAGS = ["--scale", "2", "--tile", "32", "--overlap", "8", "--chunk", "64", "--block", "64", "--model", "bicubic",
         "--device", "cpu", "--no-progress"]


def _cfg(**kw):
    return load_config(None, {**SMALL, **kw})


@pytest.fixture
def scene(tmp_path):
    return str(make_geotiff(tmp_path / "in.tif", height=70, width=60, bands=3, seed=1))


def _one_line(capsys, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc != 0 and len(lines) == 1 and lines[0].startswith("geosr: error:") and "Traceback" not in err, err
    return lines[0]


def _strict_json(text: str):
    def refuse(const: str):
        raise ValueError(f"not JSON: {const}")

    return json.loads(text, parse_constant=refuse)


# -- 1: a store that is not complete is never reported as written --------------------------------------------
class _TearsAMarker(LocalExecutor):
    """Runs the blocks, then tears the done marker of the first block (a torn write / a crash of its writer)."""

    def run_blocks(self, plan, source, output, todo, on_block, policy):
        super().run_blocks(plan, source, output, todo, on_block, policy)
        if not getattr(self, "torn", False):
            self.torn = True
            (Path(plan.output_uri) / ".geosr" / "blocks" / "0_0.json").write_text('{"trunc')


def test_a_torn_marker_is_redone_and_the_run_ends_with_a_complete_store(scene, tmp_path):
    out = tmp_path / "o.zarr"
    rep = run_scene(scene, str(out), _cfg(), _TearsAMarker(1))
    assert rep.state == "written"
    assert store_status(str(out), ENV).state == "complete", "reported written, so it is complete"
    assert (out / ".geosr" / "complete.json").is_file() and (tmp_path / "o.stac-item.json").is_file()


def test_a_marker_that_cannot_be_read_back_is_retried_not_taken_for_missing(scene, tmp_path, monkeypatch):
    from geosr.store.backend import StoreLocation

    out = tmp_path / "o.zarr"
    real = StoreLocation.read_many_json
    failures = []

    def flaky(self, rel):
        names = self.json_names(rel)
        if rel.endswith("blocks") and len(names) >= 2 and not failures:
            failures.append(1)
            blobs = self.fs.cat(names, on_error="return")
            blobs[names[0]] = ConnectionResetError("connection reset by peer")
            monkeypatch.setattr(self.fs, "cat", lambda *a, **k: blobs)
            try:
                return real(self, rel)
            finally:
                monkeypatch.undo()
        return real(self, rel)

    monkeypatch.setattr(StoreLocation, "read_many_json", flaky)
    rep = run_scene(scene, str(out), _cfg())
    assert failures, "the transient failure was injected"
    assert rep.state == "written" and store_status(str(out), ENV).state == "complete"


# -- 2: a complete output made from another input or other parameters is refused --------------------------------
def test_a_complete_output_of_other_parameters_or_input_is_refused_naming_what_differs(scene, tmp_path, capsys):
    out = tmp_path / "x.zarr"
    assert main(["run", scene, str(out), *FLAGS]) == 0
    capsys.readouterr()
    line = _one_line(capsys, ["run", scene, str(out), *FLAGS, "--model", "lanczos"])
    assert "model.name='bicubic' (now 'lanczos')" in line and "--overwrite" in line, line
    other = str(make_geotiff(tmp_path / "other.tif", height=70, width=60, bands=3, seed=9))
    line = _one_line(capsys, ["run", other, str(out), *FLAGS])
    assert "input" in line and "in.tif" in line and "--overwrite" in line, line
    assert main(["run", scene, str(out), *FLAGS]) == 0 and "already complete" in capsys.readouterr().out
    assert main(["run", other, str(out), *FLAGS, "--overwrite"]) == 0
    with pytest.raises(OutputExistsError):
        run_scene(scene, str(out), _cfg())


# -- 3: scenes whose names map to one output are not silently merged ---------------------------------------------
def test_backfill_plan_refuses_scenes_whose_outputs_collide(tmp_path):
    from geosr.orchestration.backfill import plan_backfill
    from geosr.orchestration.discovery import explicit_scenes

    a = make_geotiff(tmp_path / "scene a.tif", height=40, width=40, bands=3, seed=1)
    b = make_geotiff(tmp_path / "scene-a.tif", height=40, width=40, bands=3, seed=2)
    plan = plan_backfill(explicit_scenes([str(a), str(b)], None), str(tmp_path / "out"), _cfg())
    assert [s.action for s in plan.scenes] == ["error", "error"]
    assert all("would both be written to" in (s.error or "") for s in plan.scenes)


# -- 4: every bound service on 127.0.0.1 -----------------------------------------------------------------------------
@pytest.mark.servers
@pytest.mark.parametrize("dashboard", [None, ":0"])
def test_the_embedded_scheduler_serves_http_on_loopback_only(dashboard):
    import psutil

    from geosr.orchestration.cluster import ClusterSpec, dask_client

    before = {c.laddr for c in psutil.Process().net_connections("inet") if c.status == psutil.CONN_LISTEN}
    with dask_client(ClusterSpec(processes=False, cpu_workers=0, gpu_workers=1, dashboard_address=dashboard)):
        listening = [c.laddr for c in psutil.Process().net_connections("inet") if c.status == psutil.CONN_LISTEN
                     and c.laddr not in before]
    assert listening, "the cluster listens somewhere"
    assert all(addr.ip in ("127.0.0.1", "::1") for addr in listening), listening


# -- 5: an absurd size is refused before anything is written -----------------------------------------------------
def test_a_huge_declared_raster_is_refused_in_one_line_naming_the_limit(tmp_path, capsys):
    small = make_geotiff(tmp_path / "tiny.tif", height=16, width=16, bands=1, seed=3)
    vrt = tmp_path / "huge.vrt"
    vrt.write_text(f"""<VRTDataset rasterXSize="1000000" rasterYSize="1000000">
  <SRS>EPSG:32633</SRS><GeoTransform>500000, 10, 0, 5000000, 0, -10</GeoTransform>
  <VRTRasterBand dataType="UInt16" band="1"><SimpleSource><SourceFilename relativeToVRT="1">{small.name}</SourceFilename>
  <SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>""")
    out = tmp_path / "huge.zarr"
    line = _one_line(capsys, ["run", str(vrt), str(out), "--model", "bicubic", "--device", "cpu", "--no-progress"])
    assert "output.max_size_gb" in line and "TB" in line, line
    assert not out.exists(), "nothing was written"


def test_the_size_estimate_is_printed_before_the_work(scene, tmp_path, capsys):
    assert main(["run", scene, str(tmp_path / "o.zarr"), *FLAGS[:-1]]) == 0
    err = capsys.readouterr().err
    assert "3 x 70 x 60 -> 3 x 140 x 120 uint16 (x2)" in err and "uncompressed" in err, err


# -- 7, 10: malformed values are one line ---------------------------------------------------------------------------
@pytest.mark.parametrize("extra, words", [
    (["--set", "tiling.tile=[1,"], "not a YAML value"),
    (["--set", "tiling.tile=\t4"], "not a YAML value"),
    (["--set", "model.name=!!python/object:os.system ls"], "not a YAML value"),
    (["--set", "tiling.tile="], "has no value"),
    (["--device", "banana"], "model.device"),
    (["--endpoint-url", "http://user:pass@127.0.0.1:9"], "credentials"),
    (["--endpoint-url", "ftp://x"], "expected http://host:port"),
    (["--quicklook", "/nonexistent/dir/q.png"], "folder does not exist"),
], ids=["unclosed", "tab", "python-tag", "empty", "device", "endpoint-credentials", "endpoint-ftp", "quicklook-dir"])
def test_malformed_values_are_one_line_errors(scene, tmp_path, capsys, extra, words):
    line = _one_line(capsys, ["run", scene, str(tmp_path / "o.zarr"), *FLAGS, *extra])
    assert words in line, line


@pytest.mark.parametrize("output, words", [
    ("s3://bucket", "names a bucket, not a store"),
    ("s3://bucket/", "names a bucket, not a store"),
    ("s3://bucket/a/../b.zarr", "'..' segments"),
], ids=["no-key", "no-key-slash", "dotdot"])
def test_malformed_output_uris_are_one_line_errors(scene, capsys, output, words):
    line = _one_line(capsys, ["run", scene, output, *FLAGS])
    assert words in line, line


def test_a_config_file_that_is_not_utf8_is_one_line(scene, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"tiling:\n  tile: 64 # \xff\xfe\n")
    line = _one_line(capsys, ["run", scene, str(tmp_path / "o.zarr"), "--config", str(cfg), "--no-progress"])
    assert "not UTF-8" in line, line


# -- 8: devices and FIFOs are refused at once, never read forever ----------------------------------------------------
def test_a_device_or_fifo_input_is_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):
        r = subprocess.run([sys.executable, "-m", "geosr", "run", path, str(tmp_path / "o.zarr"), "--no-progress",
                            "--model", "bicubic"], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "not a raster file" in r.stderr, r.stderr
    with pytest.raises(NotARasterError, match="a device"):
        from geosr.io.source import open_source

        open_source("/dev/zero", _cfg().input, ENV)


# -- 9: strict JSON in the store, the ledger and the STAC item ------------------------------------------------------
@pytest.mark.parametrize("nodata", [False, True], ids=["single-tile", "all-nodata"])
def test_metrics_a_scene_cannot_have_are_null_not_nan(tmp_path, nodata):
    path = tmp_path / "one.tif"
    make_geotiff(path, height=20, width=20, bands=2, seed=4, nodata=0 if nodata else None,
                 nodata_layout="all" if nodata else None)
    out = tmp_path / "one.zarr"
    run_scene(str(path), str(out), _cfg())
    texts = [p.read_text() for p in out.rglob("*") if p.is_file() and p.name in (".zattrs", ".zmetadata", "zarr.json")]
    texts += [p.read_text() for p in (out / ".geosr").rglob("*.json")]
    texts.append((tmp_path / "one.stac-item.json").read_text())
    for t in texts:
        _strict_json(t)
    prov = _strict_json((out / ".zattrs").read_text())["geosr"]["provenance"]["metrics"]
    assert prov["seam_metric"] is None


# -- 11: a store left by a failed first run does not block the rerun that the error recommends --------------------
def test_a_zero_block_store_from_a_corrupt_input_is_redone_once_the_input_is_fixed(tmp_path, capsys):
    path = tmp_path / "c.tif"
    make_corrupt_block_geotiff(path, height=256, width=256)
    out = tmp_path / "c.zarr"
    line = _one_line(capsys, ["run", str(path), str(out), *FLAGS])
    assert "re-create the file" in line
    make_geotiff(path, height=256, width=256, bands=3, seed=5)  # the user re-creates the file
    assert main(["run", str(path), str(out), *FLAGS]) == 0, capsys.readouterr().err
    assert store_status(str(out), ENV).state == "complete"


# -- 12: the lease says why it was taken over -------------------------------------------------------------------------
def test_taking_over_the_lease_of_a_dead_local_process_says_so(tmp_path, caplog):
    import logging

    from geosr.store.lease import SceneLease, lease_uri

    out = str(tmp_path / "scene.zarr")
    code = ("from geosr.store.lease import SceneLease; from geosr.io.storage import StorageEnv;"
            f"SceneLease({out!r}, StorageEnv(), ttl=3600).acquire()")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert Path(lease_uri(out)).is_file()
    with caplog.at_level(logging.WARNING, logger="geosr.store.lease"):
        with SceneLease(out, ENV, ttl=30).hold(wait=0):
            pass
    text = caplog.text
    assert "is gone" in text and "expired" not in text, text



# -- found by the hunt (docs/faults.md): more tracebacks instead of one line ----------------------------------------
@pytest.mark.parametrize("flag", [["--prefetch", "-1"], ["--lease-ttl", "-1"], ["--max-concurrent-scenes", "0"]],
                         ids=["prefetch", "lease-ttl", "concurrency"])
def test_invalid_flow_settings_are_one_line_before_any_flow_starts(scene, tmp_path, flag):
    # in a process of its own: the flow commands import Prefect, whose console log handler would outlive capsys
    r = subprocess.run([sys.executable, "-m", "geosr", "flows", "run-scene", scene, str(tmp_path / "o.zarr"), *flag],
                       capture_output=True, text=True, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("geosr: error:"), r.stderr
    assert "invalid options" in lines[0] and flag[0].lstrip("-").replace("-", "_")[:6] in lines[0], lines[0]


def test_a_quicklook_of_a_missing_store_is_one_line(scene, tmp_path, capsys):
    line = _one_line(capsys, ["quicklook", scene, str(tmp_path / "none.zarr"), str(tmp_path / "q.png")])
    assert "not a geosr output store" in line, line


@pytest.mark.parametrize("attempts, ok", [(1, False), (3, True)])
def test_storage_retry_attempts_reach_the_lifecycle(attempts, ok, tmp_path, monkeypatch):
    """`storage.retry_attempts` is how many tries every storage operation of a run gets: two refused connections
    stop a run allowed one try and are ridden out by one allowed three (no sleeping: the backoff is patched)."""
    import geosr.lifecycle as lifecycle
    import geosr.retry as retry

    src = make_geotiff(tmp_path / "in.tif", height=40, width=40, bands=1, dtype="uint8", seed=1)
    real, calls = lifecycle.open_source, []

    def flaky(*a, **kw):
        calls.append(1)
        if len(calls) <= 2:
            raise ConnectionRefusedError("connection refused")
        return real(*a, **kw)

    monkeypatch.setattr(lifecycle, "open_source", flaky)
    monkeypatch.setattr(retry.RetryPolicy, "delay", lambda self, attempt: 0.0)
    cfg = load_config(None, {**SMALL, "storage.retry_attempts": attempts})
    if ok:
        assert run_scene(str(src), str(tmp_path / "o.zarr"), cfg).state == "written"
        assert len(calls) == 3
    else:
        with pytest.raises(ConnectionRefusedError):
            run_scene(str(src), str(tmp_path / "o.zarr"), cfg)
        assert len(calls) == 1
