"""Faults of the Prefect flows, against a real Prefect server (prefect_test_harness), real Dask clusters
on loopback and the SeaweedFS S3 server:

* two ``geosr flows run-scene`` processes triggered at once for one scene on S3: one computes it, the
  other waits on the scene lease and skips; one output, the clean bytes, no lease left; and the secret
  key is in no flow-run parameter, log line or artifact of either run;
* the flow CLI killed (SIGKILL) mid-blocks, then rerun: the dead run's lease is taken over at once, the
  rerun redoes only the missing blocks, and no lease or guard file is left beside the store;
* a Dask worker SIGKILLed mid-scene (the GPU-tagged one, then a reading one): the flow run completes with
  the clean bytes.
"""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest

from geosr.config import load_config
from geosr.io.storage import StorageEnv
from geosr.orchestration.cluster import worker_roles
from geosr.orchestration.gpu_limit import ensure_gpu_limit
from geosr.orchestration.settings import RunSettings
from geosr.store import store_status
from tests.conftest import TEST_SECRET_KEY
from tests.test_faults_support import (  # noqa: F401 - scene and clean_store are fixtures
    RUN,
    SET,
    clean_store,
    cli,
    leftovers,
    markers,
    output_files,
    s3_output_files,
    scene,
    start_cli,
    wait_for,
)

FLOW = ["--dask-threads", "--gpu-limit", "geosr-gpu-faults", "--gpu-slots", "2", "--no-quicklook", "--lease-ttl", "30"]
METADATA = (".zattrs", ".zarray", ".zgroup", ".zmetadata", ".json", "<stac>")


def chunks(files: dict[str, bytes]) -> dict[str, bytes]:
    """The chunk objects of a store (its pixels); a flow's metadata also records its scene id and flow run."""
    return {k: v for k, v in files.items() if not k.endswith(METADATA)}


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        ensure_gpu_limit("geosr-gpu-faults", 2)
        yield PREFECT_API_URL.value()


def _result(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("\n{") + 1 if not stdout.startswith("{") else 0:])


def _secret_free(api: str, flow_run_ids: list[str]) -> None:
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        for fid in flow_run_ids:
            fr = client.read_flow_run(UUID(fid))
            assert TEST_SECRET_KEY not in json.dumps(fr.parameters, default=str)
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(fid)])))
            assert logs and not [lg.message for lg in logs if TEST_SECRET_KEY in lg.message]
        arts = client.read_artifacts()
        assert not [a.key for a in arts if TEST_SECRET_KEY in json.dumps(a.data, default=str)]


def test_two_flow_processes_triggered_at_once_for_one_scene(prefect_api, scene, clean_store, s3_bucket):
    src = s3_bucket.upload(scene, "in/S2_T33_20240105.tif")
    key = "out/S2_T33_20240105.zarr"
    ep = ["--endpoint-url", s3_bucket.server.endpoint_url, "--set", 'storage.region="us-east-1"']
    env = {"PREFECT_API_URL": prefect_api}
    procs = [start_cli("flows", "run-scene", src, s3_bucket.uri(key), *SET, *ep, *FLOW, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (so, se) in zip(procs, outs):
        assert p.returncode == 0, se[-3000:]
    results = [_result(so) for so, _ in outs]
    assert sorted(r["state"] for r in results) == ["skipped", "written"], "the second waited on the lease, then skipped"
    assert sum(r["blocks_run"] for r in results) == 16, "no block was computed twice"
    assert chunks(s3_output_files(s3_bucket.client, s3_bucket.name, key)) == chunks(output_files(clean_store))
    assert not [k for k in s3_bucket.keys() if "lease" in k], "the lease is released"
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = [str(fr.id) for fr in client.read_flow_runs()]
    for _, se in outs:
        assert TEST_SECRET_KEY not in se
    _secret_free(prefect_api, runs)


def test_flow_cli_killed_then_rerun_leaves_no_lease(prefect_api, scene, clean_store, tmp_path):
    out = tmp_path / "S2_T33_20240105.zarr"
    env = {"PREFECT_API_URL": prefect_api}
    r = cli("flows", "run-scene", scene, str(out), *SET, *FLOW, env=env, kill_at="blocks", after=5, timeout=180)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert (tmp_path / "S2_T33_20240105.lease.json").exists(), "the killed run held the lease"
    done = store_status(str(out), StorageEnv()).done
    again = cli("flows", "run-scene", scene, str(out), *SET, *FLOW, env=env, timeout=180)
    assert again.returncode == 0, again.stderr[-3000:]
    res = _result(again.stdout)
    assert res["state"] == "resumed" and res["blocks_run"] == 16 - done
    assert chunks(output_files(out)) == chunks(output_files(clean_store))
    assert leftovers(tmp_path) == []


def test_flow_cli_on_a_temporary_prefect_server_killed_then_rerun(scene, clean_store, tmp_path):
    """Without PREFECT_API_URL the CLI runs on Prefect's temporary server, which expires no concurrency
    slots: the killed run must not leave one taken (the rerun would wait for it forever)."""
    (tmp_path / "data").mkdir()
    out = tmp_path / "data" / "S2_T33_20240105.zarr"
    env = {"PREFECT_API_URL": None, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    flow = ["--dask-threads", "--no-quicklook"]
    r = cli("flows", "run-scene", scene, str(out), *SET, *flow, env=env, kill_at="blocks", after=5, timeout=180)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    done = store_status(str(out), StorageEnv()).done
    again = cli("flows", "run-scene", scene, str(out), *SET, *flow, env=env, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _result(again.stdout)["blocks_run"] == 16 - done
    assert chunks(output_files(out)) == chunks(output_files(clean_store))
    assert leftovers(out.parent) == []


@pytest.mark.parametrize("role", ["gpu", "cpu"])
def test_dask_worker_killed_mid_scene_the_flow_completes(role, prefect_api, scene, clean_store, tmp_path):
    from distributed import Client, Nanny, Scheduler, SpecCluster

    from geosr.flows.scene import super_resolve_scene

    preload = ["tests.test_orchestration_support"]
    opts = {"nthreads": 1, "host": "127.0.0.1", "preload": preload}
    workers = {"cpu-0": {"cls": Nanny, "options": opts},
               "gpu-0": {"cls": Nanny, "options": {**opts, "resources": {"GPU": 1}}}}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": ":0"}}
    out = tmp_path / "S2_T33_20240105.zarr"
    with SpecCluster(workers=workers, scheduler=scheduler, silence_logs=40) as cluster, Client(cluster) as c:
        c.wait_for_workers(2, timeout=120)
        killed: list[str] = []

        def kill() -> None:
            wait_for(lambda: markers(out) >= 3, "3 block markers")
            roles = worker_roles(c)
            victim = (roles.gpu if role == "gpu" else roles.cpu)[0]
            os.kill(c.run(os.getpid, workers=[victim])[victim], signal.SIGKILL)
            killed.append(victim)

        t = threading.Thread(target=kill, daemon=True)
        t.start()
        res = super_resolve_scene(input_uri=scene, output_uri=str(out), config=load_config(None, RUN),
                                  settings=RunSettings(dask_address=cluster.scheduler_address, quicklook=False,
                                                       gpu_limit="geosr-gpu-faults", gpu_wait_s=120))
        t.join(60)
    assert killed, "a worker was killed mid-scene"
    assert res["state"] == "written" and res["blocks_total"] == 16
    assert store_status(str(out), StorageEnv()).state == "complete"
    assert chunks(output_files(out)) == chunks(output_files(clean_store))
    assert leftovers(tmp_path) == []


def test_waiting_on_deployment_runs_sorts_them_into_done_and_failed(prefect_api):
    """``wait_flow_runs`` (Prefect's ``wait_for_flow_run``) as a backfill fanned out to a deployment uses it:
    runs that end Completed are done, runs that end otherwise are failures with their state's message."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Failed

    from geosr.orchestration.fan_out import SceneCall, wait_flow_runs

    @flow(name="geosr-faults-noop")
    def noop() -> None:
        return None

    with get_client(sync_client=True) as client:
        runs = [client.create_flow_run(noop) for _ in range(2)]
        client.set_flow_run_state(runs[0].id, Completed(), force=True)
        client.set_flow_run_state(runs[1].id, Failed(message="S3 refused the credentials"), force=True)
    calls = [SceneCall(f"s{i}", f"/out/s{i}.zarr", {}) for i in range(2)]
    outcome = wait_flow_runs([(c, str(fr.id)) for c, fr in zip(calls, runs)], poll_s=1)
    assert outcome.counts() == {"done": 1, "skipped": 0, "failed": 1}
    assert outcome.done[0]["scene"] == "s0" and "refused the credentials" in outcome.failed[0]["reason"]
