"""Helpers of the fault tests (no tests here): run the real CLI in a subprocess, kill it at an exact point,
compare a store with a clean run file by file, look for leftovers, start a private SeaweedFS.

Killing at an exact point: ``python -m tests.test_faults_support --kill-at POINT [--after N] -- ARGS`` runs
``geosr ARGS`` (the real CLI, in this process) and sends itself SIGKILL when the run reaches POINT. The
hook lives here, in the tests, by wrapping a store method: production code has no test hook.

* ``blocks``: right after the N-th block marker is written (other worker threads are mid-block);
* ``stac``: inside ``finalize``, right after the STAC item was written (the overview tail is computed,
  the attributes and the consolidated metadata are not updated yet);
* ``complete``: inside ``finalize``, just before the completion marker is written.

The CLI runs in its own session and the kill takes its whole process group (the CLI and what it started,
such as Prefect's temporary server), as when the container or pod running it is killed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

# attributes that record when and how fast (not what) a run wrote: the only bytes allowed to differ between runs
TIME_KEYS = {"start_time", "end_time", "created", "finalized", "started", "time", "seconds", "model_seconds",
             "block_seconds"}
LEFTOVER_MARKERS = (".lease.json", ".guard", ".tmp-", ".lock")


# the scene every fault test runs: 16 blocks, two worker threads, a model slow enough to kill things mid-run
RUN = {"tiling.scale": 2, "tiling.tile": 32, "tiling.overlap": 8, "tiling.chunk": 128, "tiling.block": 128,
       "model.device": "cpu", "model.batch_size": 8, "workers": 2, "model.name": "test-slow-bicubic",
       "model.params": {"delay": 0.05}}
SET = [a for k, v in RUN.items() for a in ("--set", f"{k}={json.dumps(v)}")]


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> str:
    from tests.test_orchestration_support import make_scene

    return str(make_scene(tmp_path_factory.mktemp("in") / "S2_T33_20240105.tif"))


@pytest.fixture(scope="module")
def clean_store(scene, tmp_path_factory) -> Path:
    """The store of an uninterrupted ``geosr run`` of :func:`scene` (what every faulty run must match)."""
    out = tmp_path_factory.mktemp("clean") / "S2_T33_20240105.zarr"
    r = cli("run", scene, str(out), *SET, "--no-progress")
    assert r.returncode == 0, r.stderr
    return out


# -- running the CLI -------------------------------------------------------------------------------------
def cli(*args: str, env: dict[str, str | None] | None = None, kill_at: str | None = None, after: int = 1,
        timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``geosr ARGS`` to the end (or to its SIGKILL at ``kill_at``); stdout and stderr captured."""
    cmd = [PYTHON, "-m", "tests.test_faults_support"]
    if kill_at:
        cmd += ["--kill-at", kill_at, "--after", str(after)]
    cmd += ["--", *args]
    return subprocess.run(cmd, cwd=REPO, env=_env(env), capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)


def _env(extra: dict[str, str | None] | None) -> dict[str, str]:
    """This process's environment with ``extra`` (a None value removes the variable)."""
    env = {**os.environ, **(extra or {})}
    return {k: v for k, v in env.items() if v is not None}


def start_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "tests.test_faults_support", "--", *args], cwd=REPO,
                            env=_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def wait_for(cond, what: str, timeout: float = 90.0, proc: subprocess.Popen | None = None, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the process ended (rc {proc.returncode}) before {what}:\n{out[-2000:]}\n{err[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)


def rerun_finishes(scene: str, out: Path, clean_store: Path, blocks_run: int | None = None) -> None:
    """Rerun ``geosr run`` on ``out``: it resumes (redoing ``blocks_run`` blocks when given) and leaves the
    clean run's files, with nothing left in or beside the store."""
    from geosr.io.storage import StorageEnv
    from geosr.store import store_status

    r = cli("run", scene, str(out), *SET, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("resumed:"), r.stdout
    if blocks_run is not None:
        assert f"blocks {blocks_run}/16" in r.stdout, r.stdout
    assert store_status(str(out), StorageEnv()).state == "complete"
    assert_identical(out, output_files(clean_store))
    assert leftovers(out.parent) == []


def markers(store: Path) -> int:
    d = store / ".geosr" / "blocks"
    return len([p for p in d.iterdir() if p.suffix == ".json"]) if d.is_dir() else 0


def one_line_error(stderr: str) -> str:
    """The CLI's error: exactly one ``geosr: error:`` line, and no traceback."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith("geosr: error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, f"expected one error line, got:\n{stderr[-3000:]}"
    return lines[0]


# -- comparing outputs -----------------------------------------------------------------------------------
def _strip_times(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _strip_times(v) for k, v in doc.items() if k not in TIME_KEYS}
    if isinstance(doc, list):
        return [_strip_times(v) for v in doc]
    return doc


def _normalised(path: Path, data: bytes) -> bytes:
    """JSON files (Zarr metadata, ledger, STAC) without their run times; every other file as it is."""
    if path.suffix == ".json" or path.name in (".zattrs", ".zarray", ".zgroup", ".zmetadata"):
        return json.dumps(_strip_times(json.loads(data)), sort_keys=True).encode()
    return data


def output_files(store: Path) -> dict[str, bytes]:
    """Every file of a local store, plus its STAC item, by relative path (run times removed from JSON)."""
    stac = store.with_name(store.name[: -len(".zarr")] + ".stac-item.json")
    files = {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}
    return normalised_files(files, stac.read_bytes() if stac.exists() else None)


def s3_output_files(client: Any, bucket: str, store_key: str) -> dict[str, bytes]:
    """:func:`output_files` of a store on S3 (``store_key``: its key, e.g. ``out/scene.zarr``)."""
    def get(key: str) -> bytes:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()

    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=store_key + "/")
    files = {o["Key"][len(store_key) + 1:]: get(o["Key"]) for page in pages for o in page.get("Contents", [])}
    stac_key = store_key[: -len(".zarr")] + ".stac-item.json"
    try:
        stac = get(stac_key)
    except client.exceptions.NoSuchKey:
        stac = None
    return normalised_files(files, stac)


def normalised_files(files: dict[str, bytes], stac: bytes | None) -> dict[str, bytes]:
    out = {k: _normalised(Path(k), v) for k, v in files.items()}
    if stac is not None:
        item = json.loads(stac)
        item.get("properties", {}).pop("datetime", None)  # the run's time when the input has no acquisition time
        for a in item.get("assets", {}).values():
            a.pop("href", None)  # where the store is
        out["<stac>"] = json.dumps(_strip_times(item), sort_keys=True).encode()
    return out


def assert_identical(store: Path | dict[str, bytes], clean: dict[str, bytes]) -> None:
    got = store if isinstance(store, dict) else output_files(store)
    assert sorted(got) == sorted(clean), f"different files: {sorted(set(got) ^ set(clean))[:10]}"
    differ = [k for k in got if got[k] != clean[k]]
    assert not differ, f"{len(differ)} file(s) differ from the clean run, e.g. {differ[:5]}"


def leftovers(directory: Path) -> list[str]:
    """Lock, lease, guard or temporary files in or beside the outputs under ``directory``."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                  if any(m in p.name for m in LEFTOVER_MARKERS))


# -- a private SeaweedFS -----------------------------------------------------------------------------------
class PrivateS3:
    """A SeaweedFS of one test (the session's is never disturbed); ``stop`` / ``start`` keep its data."""

    def __init__(self) -> None:
        from tests.conftest import _start_weed, _wait_ready, find_weed_binary

        self.root = Path(tempfile.mkdtemp(prefix="weedf-"))
        self.server = _start_weed(find_weed_binary(), self.root)
        _wait_ready(self.server, timeout=90)

    @property
    def endpoint_url(self) -> str:
        return self.server.endpoint_url

    def stop(self) -> None:
        from tests.conftest import _stop

        _stop(self.server.process)

    def start(self, timeout: float = 60) -> None:
        old = self.server.process
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["TMPDIR"] = str(self.root)
        log = open(self.server.log_path, "ab")
        self.server.process = subprocess.Popen(old.args, stdout=log, stderr=subprocess.STDOUT, cwd=self.root, env=env,
                                               start_new_session=True)
        client = self.server.client()
        wait_for(lambda: _answers(client), "SeaweedFS to come back", timeout)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _answers(client: Any) -> bool:
    try:
        client.list_buckets()
        return True
    except Exception:  # noqa: BLE001 - not up yet
        return False


def in_thread(fn, *args: Any) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, errors


# -- the kill-at wrapper -----------------------------------------------------------------------------------
def _die() -> None:
    """SIGKILL this CLI and what it started (e.g. Prefect's temporary server), as when its pod is killed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _install_kill(point: str, after: int) -> None:
    from geosr.store import ledger, stac, zarr_output

    if point == "blocks":
        orig = ledger.Ledger.mark_done
        count = [0]
        lock = threading.Lock()

        def mark_done(self, key, doc):
            orig(self, key, doc)
            with lock:
                count[0] += 1
                if count[0] >= after:
                    _die()

        ledger.Ledger.mark_done = mark_done
    elif point == "stac":
        orig_stac = stac.write_stac_item

        def write_stac_item(*a, **kw):
            orig_stac(*a, **kw)
            _die()

        zarr_output.write_stac_item = write_stac_item
    elif point == "complete":
        ledger.Ledger.write_complete = lambda self, doc: _die()
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    import argparse

    import tests.test_orchestration_support  # noqa: F401 - registers the test upsamplers

    ap = argparse.ArgumentParser()
    ap.add_argument("--kill-at")
    ap.add_argument("--after", type=int, default=1)
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    if a.kill_at:
        _install_kill(a.kill_at, a.after)
    from geosr.cli import main

    sys.exit(main(a.rest[1:] if a.rest[:1] == ["--"] else a.rest))
