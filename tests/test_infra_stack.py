"""The local full stack (infra/stack/stack.py, `make stack`): Prefect server (SQLite), SeaweedFS S3, a Dask
scheduler with CPU workers and a GPU-tagged worker, a Prefect process worker; all on free 127.0.0.1
ports with a private state dir. One stack for the module: it comes up once, serves every test, including a
scheduled Prefect deployment of ``super-resolve-scene`` end to end, and the last test takes it down and
checks that exactly its processes are gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STACK = ROOT / "infra" / "stack" / "stack.py"
sys.path.insert(0, str(STACK.parent))
import stack as stackmod  # noqa: E402

PY = sys.executable


def _stack_env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOSR_STACK_")}
    env.update({
        "GEOSR_STACK_DIR": str(state),
        "GEOSR_STACK_PREFECT_PORT": "0", "GEOSR_STACK_S3_PORT": "0", "GEOSR_STACK_DASK_PORT": "0",
        "GEOSR_STACK_DASHBOARD_PORT": "0",
        "GEOSR_STACK_PREFECT_UI": "0",
        "GEOSR_STACK_CPU_WORKERS": "1", "GEOSR_STACK_CPU_THREADS": "1", "GEOSR_STACK_GPU_WORKERS": "1",
        "GEOSR_STACK_START_TIMEOUT": "150",
    })
    # The session's test credentials (conftest) double as the stack's S3 keys, so clients in this process
    # and every stack process agree.
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        env["GEOSR_STACK_S3_ACCESS_KEY"] = os.environ["AWS_ACCESS_KEY_ID"]
        env["GEOSR_STACK_S3_SECRET_KEY"] = os.environ["AWS_SECRET_ACCESS_KEY"]
    return env


def run_stack(env: dict[str, str], *args: str, timeout: float = 200) -> subprocess.CompletedProcess:
    return subprocess.run([PY, str(STACK), *args], env=env, capture_output=True, text=True, timeout=timeout)


def _logs(state: Path) -> str:
    out = []
    for p in sorted((state / "logs").glob("*.log")):
        out.append(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-25:]))
    return "\n".join(out)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    state = tmp_path_factory.mktemp("stack")
    env = _stack_env(state)
    t0 = time.monotonic()
    r = run_stack(env, "up")
    if r.returncode != 0:
        run_stack(env, "down")
        pytest.fail(f"stack up failed ({r.returncode}):\n{r.stdout}\n{r.stderr}\n{_logs(state)}")
    info = {"state": state, "env": env, "up_s": time.monotonic() - t0, "stdout": r.stdout,
            "settings": stackmod.load_settings(state)}
    yield info
    r = run_stack(env, "down", "--purge", timeout=60)  # no-op when the last test already took it down
    assert r.returncode == 0, r.stderr


def status(stack) -> dict:
    r = run_stack(stack["env"], "status", "--json", timeout=60)
    return json.loads(r.stdout)


# ------------------------------------------------------------------------------------------ the parts


def test_stack_comes_up_healthy(stack):
    st = status(stack)
    assert st["healthy"], json.dumps(st, indent=1) + _logs(stack["state"])
    s = stack["settings"]
    ports = [s.ports[k] for k in ("prefect", "s3", "dask", "dashboard")]
    assert len(set(ports)) == 4 and all(p > 0 for p in ports)
    assert st["dask"]["workers"] == {"cpu": 1, "gpu": 1, "gpu_slots": 1}
    assert st["work_pool"]["healthy"] and st["gpu_limit"]["slots"] == 1
    env_sh = (stack["state"] / "env.sh").read_text()
    for line in (f"export PREFECT_API_URL={s.prefect_api_url}", f"export GEOSR_DASK_ADDRESS={s.dask_address}",
                 f"export AWS_ENDPOINT_URL={s.s3_endpoint}"):
        assert line in env_sh
    # `up` tells the user how to point the main job and the flows at the stack
    assert f"--endpoint-url {s.s3_endpoint}" in stack["stdout"] and f"--dask-address {s.dask_address}" in stack["stdout"]
    r = run_stack(stack["env"], "env")
    assert r.returncode == 0 and r.stdout == env_sh


def test_up_is_idempotent(stack):
    before = {n: p.pid for n, p in stackmod.load_procs(stack["state"]).items()}
    r = run_stack(stack["env"], "up", timeout=60)
    assert r.returncode == 0 and "already running" in r.stdout
    assert {n: p.pid for n, p in stackmod.load_procs(stack["state"]).items()} == before


def test_prefect_server(stack):
    import urllib.request

    s = stack["settings"]
    with urllib.request.urlopen(f"{s.prefect_api_url}/health", timeout=10) as r:
        assert json.loads(r.read()) is True
    with urllib.request.urlopen(f"{s.prefect_api_url}/admin/version", timeout=10) as r:
        assert json.loads(r.read()).startswith("3.")
    assert (stack["state"] / "prefect" / "prefect.db").is_file(), "SQLite database in the state dir"


def test_seaweedfs_bucket_create_and_list(stack):
    s = stack["settings"]
    fs = stackmod.s3_client(s)
    bucket = f"t-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    fs.pipe(f"{bucket}/a/b.bin", b"geosr")
    assert bucket in {b.rstrip("/") for b in fs.ls("", refresh=True)}
    assert s.bucket in {b.rstrip("/") for b in fs.ls("", refresh=True)}
    assert fs.ls(f"{bucket}/a", refresh=True) == [f"{bucket}/a/b.bin"]
    assert fs.cat(f"{bucket}/a/b.bin") == b"geosr"
    fs.rm(bucket, recursive=True)


def test_dask_gpu_tagged_worker_answers(stack):
    from distributed import Client

    s = stack["settings"]
    with Client(s.dask_address, timeout=20, set_as_default=False) as c:
        workers = c.scheduler_info(n_workers=-1)["workers"]
        gpu = [a for a, w in workers.items() if (w.get("resources") or {}).get("GPU") == 1]
        assert len(gpu) == 1 and len(workers) == 2
        # client.run on the GPU worker: it has the stack's S3 endpoint and can import geosr and the flows
        out = c.run(lambda: (os.environ.get("AWS_ENDPOINT_URL"), __import__("geosr.flows.scene").__name__), workers=gpu)
        assert out == {gpu[0]: (s.s3_endpoint, "geosr")}
        # a task that asks for the GPU resource lands there
        where = c.submit(lambda: __import__("distributed").get_worker().address, resources={"GPU": 1}, pure=False)
        assert where.result(timeout=30) == gpu[0]


# ------------------------------------------------------------------------------------------ end to end

DEPLOY = textwrap.dedent('''
    """Deploy super-resolve-scene to the stack's work pool with a schedule whose first run is due in a few
    seconds; wait for that scheduled run (executed by the stack's process worker) to finish."""
    import asyncio, datetime as dt, json, os, sys, time
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.schedules import IntervalSchedule

    params = json.loads(sys.argv[1])
    t0 = time.monotonic()
    dep = flow.from_source(source=os.getcwd(), entrypoint="geosr/flows/scene.py:super_resolve_scene")
    # The server schedules occurrences after the deployment exists: leave the deploy call time to finish.
    anchor = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=12)
    dep_id = dep.deploy(name="stack-e2e", work_pool_name=os.environ["GEOSR_STACK_WORK_POOL"], build=False,
                        push=False, parameters=params, print_next_steps=False,
                        schedule=IntervalSchedule(interval=dt.timedelta(hours=1), anchor_date=anchor))

    async def wait():
        async with get_client() as c:
            while time.monotonic() - t0 < 150:
                runs = await c.read_flow_runs()
                due = sorted((r for r in runs if r.deployment_id == dep_id), key=lambda r: r.expected_start_time)
                if due and (due[0].expected_start_time - dt.datetime.now(dt.timezone.utc)).total_seconds() > 120:
                    return {"state": "NOT_DUE", "first_run_at": str(due[0].expected_start_time)}
                if due and due[0].state and due[0].state.is_final():
                    r = due[0]
                    return {"state": r.state_type.value, "message": r.state.message, "auto_scheduled": r.auto_scheduled,
                            "scheduled_runs": len(due), "run_s": r.total_run_time.total_seconds(),
                            "wall_s": time.monotonic() - t0}
                await asyncio.sleep(2)
            return {"state": "TIMEOUT", "runs": [(r.name, r.state_type.value) for r in runs]}

    print(json.dumps(asyncio.run(wait())))
''')


def test_scheduled_deployment_end_to_end(stack, tmp_path):
    """A deployment with a schedule on the stack's Prefect server, run by the stack's process worker,
    executing super_resolve_scene on the stack's Dask (model step on the GPU-tagged worker), reading from and
    writing to the stack's SeaweedFS; the Zarr output is complete."""
    sys.path.insert(0, str(ROOT / "tests"))
    from data.synthetic import make_geotiff

    from geosr.config import StorageConfig
    from geosr.io.storage import StorageEnv
    from geosr.store import store_status

    s = stack["settings"]
    fs = stackmod.s3_client(s)
    tif = make_geotiff(tmp_path / "scene.tif", height=96, width=128, bands=4, seed=3)
    fs.put(str(tif), f"{s.bucket}/in/e2e-scene.tif")
    out = f"s3://{s.bucket}/out/e2e-scene.zarr"
    params = {
        "input_uri": f"s3://{s.bucket}/in/e2e-scene.tif", "output_uri": out,
        "config": {"storage": {"endpoint_url": s.s3_endpoint},
                   "tiling": {"scale": 4, "tile": 64, "overlap": 8, "chunk": 128, "block": 256}},
        "settings": {"dask_address": s.dask_address, "gpu_limit": s.gpu_limit, "quicklook": False,
                     "gpu_wait_s": 60},
    }
    (tmp_path / "deploy.py").write_text(DEPLOY)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "DASK_"))}
    env.update(s.client_env())
    env["PREFECT_HOME"] = str(tmp_path / "prefect-client")
    r = subprocess.run([PY, str(tmp_path / "deploy.py"), json.dumps(params)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=170)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["state"] == "COMPLETED", f"{res}\n{_logs(stack['state'])}"
    assert res["auto_scheduled"], "the run must come from the deployment's schedule"
    st = store_status(out, StorageEnv(StorageConfig(endpoint_url=s.s3_endpoint)))
    assert st.state == "complete" and st.done == st.total > 0, st
    # The model step ran on the GPU-tagged worker, not on the CPU worker.
    from distributed import Client

    from geosr.orchestration.dask_executor import worker_cache_stats

    with Client(s.dask_address, timeout=20, set_as_default=False) as c:
        info = c.scheduler_info(n_workers=-1)["workers"]
        stats = c.run(worker_cache_stats)
    gpu_calls = {a: st for a, st in stats.items() if (info[a].get("resources") or {}).get("GPU")}
    cpu_calls = {a: st for a, st in stats.items() if a not in gpu_calls}
    assert any(v.get("blocks", 0) > 0 for v in gpu_calls.values()), stats
    assert all(not v or v.get("blocks", 0) == 0 for v in cpu_calls.values()), stats


PREFECT_YAML = textwrap.dedent('''
    """`prefect deploy --all` (the repository's prefect.yaml) against the stack, check the cron schedule of the
    scheduled deployment is registered, then run that deployment now and print its state and logs."""
    import asyncio, json, subprocess, sys
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.deployments import run_deployment

    r = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"], capture_output=True,
                       text=True, timeout=120)
    if r.returncode:
        print(json.dumps({"state": "DEPLOY_FAILED", "out": (r.stdout + r.stderr)[-3000:]}))
        sys.exit(0)
    params = json.loads(sys.argv[1])
    fr = run_deployment("process-new-scenes/scheduled", parameters=params, timeout=150)

    async def info():
        async with get_client() as c:
            d = await c.read_deployment_by_name("process-new-scenes/scheduled")
            runs = await c.read_flow_runs()
            logs = await c.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[fr.id])))
            return {"state": fr.state.type.value, "message": fr.state.message,
                    "cron": [getattr(s.schedule, "cron", None) for s in d.schedules if s.active],
                    "auto_scheduled": sum(1 for x in runs if x.deployment_id == d.id and x.auto_scheduled),
                    "deployments": sorted(f"{x.name}" for x in await c.read_deployments()),
                    "logs": [l.message for l in logs][-25:]}

    print(json.dumps(asyncio.run(info())))
''')


def test_prefect_yaml_scheduled_deployment_on_the_stack(stack, tmp_path):
    """The repository's prefect.yaml deployed as-is to the stack (`prefect deploy --all` with env.sh's
    variables): its cron-scheduled `process-new-scenes/scheduled` deployment is registered with upcoming runs,
    and a run of it, executed by the stack's worker, super-resolves the scene waiting in the inbox."""
    if not (ROOT / "prefect.yaml").is_file():
        pytest.skip("prefect.yaml not in the repository")
    sys.path.insert(0, str(ROOT / "tests"))
    from data.synthetic import make_geotiff

    from geosr.config import StorageConfig
    from geosr.io.storage import StorageEnv
    from geosr.orchestration.jobs import scene_output_uri
    from geosr.store import store_status

    s = stack["settings"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "DASK_", "GEOSR_"))}
    env.update(s.client_env())
    env["PREFECT_HOME"] = str(tmp_path / "prefect-client")
    scene = f"inbox-{uuid.uuid4().hex[:6]}"
    tif = make_geotiff(tmp_path / f"{scene}.tif", height=96, width=128, bands=4, seed=5)
    stackmod.s3_client(s).put(str(tif), f"{env['GEOSR_SOURCE'].removeprefix('s3://')}{scene}.tif")
    (tmp_path / "yaml_deploy.py").write_text(PREFECT_YAML)
    # A prefix inbox has neither cloud cover nor acquisition dates: the deployment's STAC-oriented filters
    # (max_cloud_cover, lookback_days) would refuse it / filter every scene out, so they are turned off.
    params = {"max_cloud_cover": None, "lookback_days": None}
    r = subprocess.run([PY, str(tmp_path / "yaml_deploy.py"), json.dumps(params)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=290)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["state"] == "COMPLETED", json.dumps(res, indent=1) + _logs(stack["state"])
    assert res["cron"] and res["auto_scheduled"] >= 1, res
    out = scene_output_uri(env["GEOSR_OUTPUT_PREFIX"], "sentinel-2-l2a", scene)
    st = store_status(out, StorageEnv(StorageConfig(endpoint_url=s.s3_endpoint)))
    assert st.state == "complete", f"{out}: {st}\n" + "\n".join(res["logs"])


# ------------------------------------------------------------------------------------------ teardown


def test_down_stops_exactly_the_stack_processes(stack):
    """`down` stops every recorded process and its descendants, and nothing else, even a process whose
    command line looks like one of ours (a pkill -f would have taken it)."""
    procs = stackmod.load_procs(stack["state"])
    assert set(procs) == set(stackmod.ORDER)
    tree = {}
    for p in procs.values():
        assert p.alive()
        for pid in [p.pid, *stackmod.descendants(p.pid)]:
            tree[pid] = stackmod.proc_start_time(pid)
    assert len(tree) > len(procs), "dask workers run under nannies: there are descendants"
    decoy = subprocess.Popen([PY, "-c", "import time; time.sleep(120)", "weed", "server", "dask", "worker",
                              "prefect", "server", str(stack["state"])], start_new_session=True)
    try:
        t0 = time.monotonic()
        r = run_stack(stack["env"], "down", timeout=60)
        took = time.monotonic() - t0
        assert r.returncode == 0, r.stderr
        for name in stackmod.ORDER:
            assert f"{name}: " in r.stdout
        alive = [pid for pid, st in tree.items() if st is not None and stackmod.proc_start_time(pid) == st]
        assert not alive, f"still running after down: {alive}"
        assert decoy.poll() is None, "down must not touch processes it did not start"
        assert not list((stack["state"] / "pids").glob("*.json")), "pid files removed"
        assert took < 30
        st = status(stack)
        assert not st["healthy"]
        assert run_stack(stack["env"], "down").stdout.startswith("no geosr stack processes")
    finally:
        decoy.send_signal(signal.SIGKILL)
        decoy.wait(10)
