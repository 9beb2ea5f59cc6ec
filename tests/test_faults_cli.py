"""Faults of the ``geosr run`` CLI process: SIGKILL at three points (mid-blocks, inside finalize after the
STAC item, just before the completion marker), once from outside when a block marker appears; each time
the rerun finishes the store, which is then identical, file by file, to a clean run (run times excepted),
with no lock, lease, guard or temporary file left in or beside it. Two ``geosr run`` processes started at
once for one output end with that one output, identical too."""

from __future__ import annotations

import json
import os
import signal

import pytest

from geosr.io.storage import StorageEnv
from geosr.store import store_status
from tests.test_faults_support import (
    assert_identical,
    cli,
    leftovers,
    markers,
    output_files,
    start_cli,
    wait_for,
)
from tests.test_orchestration_support import SMALL, make_scene

RUN = {**SMALL, "workers": 2, "model.name": "test-slow-bicubic", "model.params": {"delay": 0.05}}
SET = [a for k, v in RUN.items() for a in ("--set", f"{k}={json.dumps(v)}")]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return str(make_scene(tmp_path_factory.mktemp("in") / "S2_T33_20240105.tif"))


@pytest.fixture(scope="module")
def clean(scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "S2_T33_20240105.zarr"
    r = cli("run", scene, str(out), *SET, "--no-progress")
    assert r.returncode == 0, r.stderr
    return output_files(out)


def _rerun_and_check(scene: str, out, clean, tmp_path, done_before: int) -> None:
    r = cli("run", scene, str(out), *SET, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("resumed:") and f"blocks {16 - done_before}/16" in r.stdout, r.stdout
    assert store_status(str(out), StorageEnv()).state == "complete"
    assert_identical(out, clean)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("point, after", [("blocks", 5), ("stac", 1), ("complete", 1)])
def test_cli_killed_at_a_point_then_rerun_gives_the_clean_bytes(point, after, scene, clean, tmp_path):
    out = tmp_path / "S2_T33_20240105.zarr"
    r = cli("run", scene, str(out), *SET, "--no-progress", kill_at=point, after=after)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    st = store_status(str(out), StorageEnv())
    assert st.state == "incomplete", "killed before the completion marker"
    if point == "blocks":
        assert after <= st.done < 16
    else:
        assert st.done == 16
        assert (tmp_path / "S2_T33_20240105.stac-item.json").exists(), "killed inside finalize"
    _rerun_and_check(scene, out, clean, tmp_path, st.done)


def test_cli_killed_from_outside_when_block_markers_appear(scene, clean, tmp_path):
    out = tmp_path / "S2_T33_20240105.zarr"
    proc = start_cli("run", scene, str(out), *SET, "--no-progress")
    try:
        wait_for(lambda: markers(out) >= 4, "4 block markers", proc=proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    st = store_status(str(out), StorageEnv())
    assert st.state == "incomplete" and 4 <= st.done < 16
    _rerun_and_check(scene, out, clean, tmp_path, st.done)


def test_two_cli_runs_of_one_output_at_once_end_with_the_clean_bytes(scene, clean, tmp_path):
    out = tmp_path / "S2_T33_20240105.zarr"
    procs = [start_cli("run", scene, str(out), *SET, "--no-progress") for _ in range(2)]
    results = [(p.wait(120), *p.communicate()) for p in procs]
    for rc, stdout, stderr in results:
        assert rc == 0, f"rc {rc}: {stderr[-3000:]}"
    assert store_status(str(out), StorageEnv()).state == "complete"
    assert_identical(out, clean)
    assert leftovers(tmp_path) == []
