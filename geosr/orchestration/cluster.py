"""Where blocks run: an embedded Dask cluster on this machine, or any existing scheduler by address.

The embedded cluster has ``cpu_workers`` workers for reading and ``gpu_workers`` workers that advertise
``resources={"GPU": 1}`` and run the model step (one per visible CUDA device; one even without a GPU,
so the routing is the same on a laptop). With ``--dask-address`` geosr connects to a scheduler that
someone else runs (Kubernetes, dask-gateway, Coiled, ``dask scheduler`` + ``dask worker``): start the
GPU workers there with ``dask worker ADDRESS --nthreads 1 --resources GPU=1``.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from .errors import ClusterError

log = logging.getLogger(__name__)

GPU = "GPU"


@dataclass(frozen=True)
class ClusterSpec:
    """How to get a Dask client. ``address=None`` starts an embedded cluster for the duration of the run."""

    address: str | None = None
    cpu_workers: int = 1
    cpu_threads: int = 2
    gpu_workers: int | None = None  # None: one per visible CUDA device, at least one
    processes: bool = True  # embedded workers in their own processes (needed for more than one GPU)
    dashboard_address: str | None = None  # e.g. ":8787" to watch the embedded cluster
    connect_timeout_s: float = 30.0

    def describe(self) -> str:
        if self.address:
            return f"Dask scheduler at {self.address}"
        return (f"embedded Dask cluster: {self.cpu_workers} CPU worker(s) x {self.cpu_threads} threads, "
                f"{self.gpu_workers if self.gpu_workers is not None else 'one per visible'} GPU worker(s), "
                f"{'processes' if self.processes else 'threads'}")


def visible_gpus() -> int:
    """Number of CUDA devices this process can see (0 without torch or without a GPU)."""
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except ImportError:  # pragma: no cover - torch is a dependency
        return 0


def embedded_cluster(spec: ClusterSpec) -> Any:
    """A ``SpecCluster`` with CPU workers and GPU-tagged workers on 127.0.0.1 (without Dask's profiler)."""
    import dask
    from distributed import Nanny, Scheduler, SpecCluster, Worker

    if spec.cpu_workers < 0 or spec.cpu_threads < 1:
        raise ClusterError(f"cpu_workers={spec.cpu_workers}, cpu_threads={spec.cpu_threads}: need >= 0 and >= 1")
    gpus = visible_gpus()
    n_gpu = spec.gpu_workers if spec.gpu_workers is not None else max(1, gpus)
    if n_gpu < 1:
        raise ClusterError("the embedded cluster needs at least one GPU-tagged worker (gpu_workers >= 1)")
    if n_gpu > 1 and not spec.processes:
        raise ClusterError("more than one GPU worker needs worker processes (one CUDA device each); "
                           "drop --dask-threads or use --gpu-workers 1")
    cls = Nanny if spec.processes else Worker
    common: dict[str, Any] = {"host": "127.0.0.1"}
    if spec.processes:  # flat worker memory over long runs (geosr/runtime.py explains)
        common["env"] = {"MALLOC_ARENA_MAX": "2"}
    if not spec.processes:
        common["memory_limit"] = 0  # in-process workers share this process's memory; no per-worker budget
    workers: dict[str, dict[str, Any]] = {}
    for i in range(spec.cpu_workers):
        workers[f"cpu-{i}"] = {"cls": cls, "options": {**common, "nthreads": spec.cpu_threads}}
    for i in range(n_gpu):
        opts: dict[str, Any] = {**common, "nthreads": 1, "resources": {GPU: 1}}
        if spec.processes and gpus > 1 and i < gpus:
            opts["env"] = {**opts.get("env", {}), "CUDA_VISIBLE_DEVICES": _device_for(i)}
        workers[f"gpu-{i}"] = {"cls": cls, "options": opts}
    # the scheduler's HTTP server (health, metrics, and the dashboard when asked for): on a free loopback port,
    # or where told -- on 127.0.0.1 unless the address names a host
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1",
                                               "dashboard_address": loopback(spec.dashboard_address or ":0"),
                                               "dashboard": spec.dashboard_address is not None}}
    log.info("starting %s", spec.describe())
    # Workers are built inside SpecCluster's start (Nanny keeps a copy of the config for its worker process and
    # its restarts), so the setting holds for every embedded worker and nothing else.
    with dask.config.set(NO_WORKER_PROFILER):
        return SpecCluster(workers=workers, scheduler=scheduler, name="geosr", silence_logs=logging.WARNING)


# Dask's statistical profiler calls sys._current_frames() every 10 ms on every worker; on CPython 3.11 that can
# deadlock against the garbage collector (python/cpython#106883, dask/distributed#8616): a worker thread then waits
# for the GIL forever and the scene hangs. geosr never reads those profiles, so its workers run without it. The
# images set DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=false for workers started by `dask worker`.
NO_WORKER_PROFILER = {"distributed.worker.profile.enabled": False}


def loopback(address: str) -> str:
    """``":8787"`` -> ``"127.0.0.1:8787"``: an address without a host binds the loopback interface only (a
    dashboard on every interface must be asked for by name, e.g. ``0.0.0.0:8787``)."""
    address = str(address).strip()
    if address.startswith(":") or address.isdigit():
        return "127.0.0.1:" + address.lstrip(":")
    return address


def _device_for(i: int) -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        if i < len(ids):
            return ids[i]
    return str(i)


@contextmanager
def dask_client(spec: ClusterSpec) -> Iterator[Any]:
    """A connected ``distributed.Client``: to ``spec.address``, or to an embedded cluster closed on exit."""
    from distributed import Client

    if spec.address:
        try:
            client = Client(spec.address, timeout=spec.connect_timeout_s, set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise ClusterError(f"cannot reach the Dask scheduler at {spec.address} ({e}); check --dask-address "
                               "and that the scheduler is running") from None
        try:
            yield client
        finally:
            client.close()
        return
    with _quiet_dask():
        cluster = embedded_cluster(spec)
        try:
            with Client(cluster, set_as_default=False) as client:
                yield client
        finally:
            cluster.close()


@contextmanager
def _quiet_dask() -> Iterator[None]:
    """The embedded cluster's scheduler and workers log every connection at INFO; keep WARNING and up."""
    logger = logging.getLogger("distributed")
    before = logger.level
    if logger.getEffectiveLevel() < logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextmanager
def cluster_address(spec: ClusterSpec) -> Iterator[str]:
    """The scheduler address to hand to scene tasks: ``spec.address`` or an embedded cluster's, kept alive
    for the duration of the block (one cluster shared by every scene of a flow run)."""
    if spec.address:
        yield spec.address
        return
    with dask_client(spec) as client:
        yield client.scheduler.address


@dataclass(frozen=True)
class WorkerRoles:
    gpu: tuple[str, ...]  # addresses of workers that advertise resources GPU >= 1
    cpu: tuple[str, ...]  # every other worker
    gpu_slots: int  # total GPU resource units (concurrent model steps)


def worker_roles(client: Any) -> WorkerRoles:
    info = client.scheduler_info(n_workers=-1).get("workers", {})
    gpu, cpu, slots = [], [], 0
    for addr, w in sorted(info.items()):
        units = float((w.get("resources") or {}).get(GPU, 0))
        if units >= 1:
            gpu.append(addr)
            slots += int(units)
        else:
            cpu.append(addr)
    return WorkerRoles(tuple(gpu), tuple(cpu), slots)


def wait_for_gpu_workers(client: Any, timeout_s: float, poll_s: float = 0.5) -> WorkerRoles:
    """Wait until at least one worker advertises ``GPU``; :class:`ClusterError` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        roles = worker_roles(client)
        if roles.gpu:
            return roles
        if time.monotonic() >= deadline:
            addr = getattr(client.scheduler, "address", "?")
            raise ClusterError(
                f"no worker of the Dask cluster at {addr} advertises resources {GPU}=1 after {timeout_s:.0f} s; "
                f"start one with: dask worker {addr} --nthreads 1 --resources {GPU}=1"
            )
        time.sleep(poll_s)
