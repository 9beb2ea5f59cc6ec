"""Faults of the output filesystem, on a real (tmpfs) mount: the disk fills up mid-run, or the filesystem
turns read-only mid-run. Each time ``geosr run`` stops with one error line, the partial output stays
resumable, and once there is room (or write access) again the rerun finishes it, identical to a clean run,
with nothing left beside it. Mounting needs root: without it these tests are skipped (they say so)."""

from __future__ import annotations

import subprocess

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
    one_line_error,
    output_files,
    rerun_finishes,
    scene,
    start_cli,
    wait_for,
)


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def tmpfs(tmp_path):
    """A 64 MiB tmpfs at ``tmp_path/mnt``, unmounted after the test."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt))
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {e}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def test_disk_full_mid_run_is_one_error_line_then_the_rerun_resumes(scene, clean_store, tmpfs):
    size = sum(p.stat().st_size for p in clean_store.rglob("*") if p.is_file())
    # room for the metadata and some of the blocks (tmpfs counts whole 4 KiB pages per file)
    _mount("-o", f"remount,size={max(64, size // 2 // 1024)}k", str(tmpfs))
    out = tmpfs / "S2_T33_20240105.zarr"
    r = cli("run", scene, str(out), *SET, "--no-progress")
    assert r.returncode != 0, "the disk was full"
    line = one_line_error(r.stderr)
    assert "no space left" in line and str(out) in line, line
    st = store_status(str(out), StorageEnv())
    assert st.state == "incomplete" and st.done < 16, st
    _mount("-o", "remount,size=64m", str(tmpfs))
    rerun_finishes(scene, out, clean_store)


def test_output_turning_read_only_mid_run_is_one_error_line_then_the_rerun_resumes(scene, clean_store, tmpfs):
    out = tmpfs / "S2_T33_20240105.zarr"
    proc = start_cli("run", scene, str(out), *SET, "--no-progress")
    wait_for(lambda: markers(out) >= 3, "3 block markers", proc=proc)

    def remount_ro() -> bool:  # busy while a file is open for writing: try again
        return subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], capture_output=True).returncode == 0

    wait_for(remount_ro, "a read-only remount", timeout=30, poll=0.01)
    stdout, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.fail("the run finished before the filesystem turned read-only; slow the model down")
    line = one_line_error(stderr)
    assert "read-only" in line and str(out) in line, line
    st = store_status(str(out), StorageEnv())
    assert st.state == "incomplete" and 3 <= st.done < 16, st
    _mount("-o", "remount,rw", str(tmpfs))
    rerun_finishes(scene, out, clean_store)
