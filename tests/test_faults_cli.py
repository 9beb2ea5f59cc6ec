"""Faults of the ``geosr run`` CLI process: SIGKILL at three points (mid-blocks, inside finalize after the
STAC item, just before the completion marker), once from outside when a block marker appears; each time
the rerun finishes the store, which is then identical, file by file, to a clean run (run times excepted),
with no lock, lease, guard or temporary file left in or beside it. Two ``geosr run`` processes started at
once for one output end with that one output, identical too."""

from __future__ import annotations

import os
import signal

import pytest

from geosr.io.storage import StorageEnv
from geosr.store import store_status
from tests.test_faults_support import (  # noqa: F401 - scene and clean_store are fixtures
    SET,
    assert_identical,
    clean_store,
    cli,
    leftovers,
    markers,
    output_files,
    rerun_finishes,
    scene,
    start_cli,
    wait_for,
)


@pytest.mark.parametrize("point, after", [("blocks", 5), ("stac", 1), ("complete", 1)])
def test_cli_killed_at_a_point_then_rerun_gives_the_clean_bytes(point, after, scene, clean_store, tmp_path):
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
    rerun_finishes(scene, out, clean_store, 16 - st.done)


def test_cli_killed_from_outside_when_block_markers_appear(scene, clean_store, tmp_path):
    out = tmp_path / "S2_T33_20240105.zarr"
    proc = start_cli("run", scene, str(out), *SET, "--no-progress")
    try:
        wait_for(lambda: markers(out) >= 4, "4 block markers", proc=proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    st = store_status(str(out), StorageEnv())
    assert st.state == "incomplete" and 4 <= st.done < 16
    rerun_finishes(scene, out, clean_store, 16 - st.done)


def test_two_cli_runs_of_one_output_at_once_end_with_the_clean_bytes(scene, clean_store, tmp_path):
    out = tmp_path / "S2_T33_20240105.zarr"
    procs = [start_cli("run", scene, str(out), *SET, "--no-progress") for _ in range(2)]
    results = [(p.wait(120), *p.communicate()) for p in procs]
    for rc, stdout, stderr in results:
        assert rc == 0, f"rc {rc}: {stderr[-3000:]}"
    said = sorted("written" if so.startswith("written:") else "skipped" if "already complete" in so else so
                  for _, so, _ in results)
    assert said == ["skipped", "written"], "the second run waited for the first, then found the output complete"
    assert store_status(str(out), StorageEnv()).state == "complete"
    assert_identical(out, output_files(clean_store))
    assert leftovers(tmp_path) == []
