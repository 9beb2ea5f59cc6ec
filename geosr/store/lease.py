"""A scene lease: at most one run computes a scene at a time, across machines, with no lock server.

The lease is a small JSON object beside the store (``scene.zarr`` -> ``scene.lease.json``) holding the
owner, its host and pid, and an expiry. It is taken with a conditional create (S3 ``If-None-Match: *``;
``O_EXCL`` on local disk), renewed by the holder every ``ttl/3`` seconds with a compare-and-swap on the
object's ETag (``If-Match``), and deleted on release only if it is still ours. A lease that expired
(its holder died or lost the network) is taken over with the same compare-and-swap, so two runs
racing for an expired lease cannot both win; a lease held by a process on this host that no longer
exists is taken over at once.

Every write is verified by reading it back, so a backend that ignores the conditional headers is
caught at the next renewal at the latest: the run that finds someone else's lease stops. Even then no
data can be corrupted: every block's bytes are a pure function of the input and parameters, so two
runs that both write a block write the same bytes, and a block is marked done only after its chunks
are stored. The lease saves duplicate GPU work; the deterministic block writes are what make the store
safe.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator

from ..errors import LeaseLostError, SceneLockedError
from ..io.failures import is_transient
from ..io.storage import StorageEnv
from ..retry import STORAGE, RetryPolicy, call_with_retry
from .backend import StoreLocation, storage_errors
from .cas_object import cas_object

log = logging.getLogger(__name__)


def lease_uri(output_uri: str) -> str:
    """``.../scene.zarr`` -> ``.../scene.lease.json`` (beside the store, like its STAC item)."""
    u = str(output_uri).rstrip("/")
    return (u[: -len(".zarr")] if u.endswith(".zarr") else u) + ".lease.json"


@dataclass(frozen=True)
class LeaseRecord:
    owner: str
    host: str
    pid: int
    label: str
    acquired: float
    expires: float

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseRecord | None:
        try:
            d = json.loads(data)
            return cls(str(d["owner"]), str(d["host"]), int(d["pid"]), str(d.get("label", "")),
                       float(d["acquired"]), float(d["expires"]))
        except (ValueError, KeyError, TypeError):
            return None  # half-written or foreign: treated as expired

    def stale(self, now: float) -> bool:
        """Expired, or held by a process of this host that no longer runs."""
        return self.why_stale(now) is not None

    def why_stale(self, now: float) -> str | None:
        """Why the lease may be taken over (in words), or None while its holder may still be working."""
        if self.host == socket.gethostname() and self.pid != os.getpid():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return f"its holder, process {self.pid} on this host, is gone"
            except PermissionError:
                pass
        if now >= self.expires:
            return f"it expired {now - self.expires:.0f} s ago"
        return None


@dataclass(frozen=True)
class LeaseOptions:
    """How a run takes a scene's lease (see :func:`geosr.lifecycle.run_scene`)."""

    enabled: bool = True
    ttl: float = 120.0
    wait: float = 6 * 3600.0  # how long a second run of a scene waits for the first one
    poll: float = 2.0
    label: str = ""


class SceneLease:
    """The lease of one output store. Use :meth:`hold` (a context manager) rather than the pieces."""

    def __init__(self, output_uri: str, env: StorageEnv, *, ttl: float = 120.0, label: str = "",
                 poll: float = 2.0, retry: RetryPolicy = STORAGE) -> None:
        if ttl <= 0:
            raise ValueError(f"lease ttl={ttl}: must be positive")
        self.output_uri = output_uri
        self.uri = lease_uri(output_uri)
        self.ttl = float(ttl)
        self.poll = poll
        self.retry = retry
        self.env = env
        self.label = label
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._backend = cas_object(self.uri, env)
        self._token: str | None = None
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._expires = 0.0
        self._mutex = threading.Lock()

    # -- pieces ------------------------------------------------------------------------------------
    def _record(self, now: float) -> LeaseRecord:
        return LeaseRecord(self.owner, socket.gethostname(), os.getpid(), self.label, now, now + self.ttl)

    def _verify(self, token: str) -> bool:
        cur = self._backend.read()
        if cur is None:
            return False
        rec = LeaseRecord.from_bytes(cur[0])
        return rec is not None and rec.owner == self.owner

    def try_acquire(self) -> LeaseRecord | None:
        """Take the lease if it is free or stale. Returns None on success, else the current holder's record."""
        rec = self._record(time.time())
        token = self._backend.create(rec.to_bytes())
        for _ in range(2):  # a second create when the lease vanished between our create and read
            if token is not None:
                break
            cur = self._backend.read()
            if cur is None:
                token = self._backend.create(rec.to_bytes())
                continue
            held = LeaseRecord.from_bytes(cur[0])
            if held is not None and held.owner != self.owner and not held.stale(rec.acquired):
                return held
            if held is None or held.owner != self.owner:
                why = held.why_stale(rec.acquired) if held else None
                log.warning("taking over the lease of %s (%s)", self.output_uri,
                            f"held by {held.owner}: {why}" if held else "unreadable")
            token = self._backend.replace(rec.to_bytes(), cur[1])
            break
        if token is None or not self._verify(token):
            return self._holder()
        with self._mutex:
            self._token, self._expires = token, rec.expires
            self._lost.clear()
        return None

    def clear_stale(self) -> None:
        """Delete the lease if a run that is gone left it behind (e.g. beside a store that is complete)."""
        if self._backend.read() is not None and self.try_acquire() is None:
            self.release()

    def _holder(self) -> LeaseRecord | None:
        cur = self._backend.read()
        rec = LeaseRecord.from_bytes(cur[0]) if cur else None
        return rec or LeaseRecord("unknown", "", 0, "", 0.0, time.time() + self.poll)

    def acquire(self, wait: float = 0.0) -> None:
        """Take the lease, waiting up to ``wait`` seconds while another live run holds it
        (:class:`SceneLockedError` after that)."""
        StoreLocation(self.output_uri, self.env).check_bucket()  # some S3 servers create a missing bucket on PUT
        deadline = time.monotonic() + max(0.0, wait)
        announced = False
        while True:
            with storage_errors(self.uri, "take the lease"):  # typed, one-line errors (missing bucket, ...)
                holder = call_with_retry(self.try_acquire, self.retry, f"taking the lease of {self.output_uri}")
            if holder is None:
                log.info("holding the lease of %s (%s)", self.output_uri, self.owner)
                return
            if time.monotonic() >= deadline:
                raise SceneLockedError(
                    f"{self.output_uri} is being processed by another run ({holder.label or holder.owner} on "
                    f"{holder.host}, lease until {time.strftime('%H:%M:%S', time.localtime(holder.expires))}); "
                    f"wait for it, or delete {self.uri} if that run is gone"
                )
            if not announced:
                log.info("%s is being processed by %s; waiting", self.output_uri, holder.label or holder.owner)
                announced = True
            time.sleep(min(self.poll, max(0.05, deadline - time.monotonic())))

    def renew(self) -> bool:
        """Extend the lease; False (and :attr:`lost`) when someone else holds it now."""
        with self._mutex:
            token = self._token
        if token is None or self._lost.is_set():
            return False
        now = time.time()
        rec = self._record(now)
        new = self._backend.replace(rec.to_bytes(), token)
        if new is None or not self._verify(new):
            log.error("lost the lease of %s: another run took it over", self.output_uri)
            self._lost.set()
            return False
        with self._mutex:
            self._token, self._expires = new, rec.expires
        return True

    def release(self) -> None:
        with self._mutex:
            token, self._token = self._token, None
        if token is None or self._lost.is_set():
            return
        if not self._backend.delete(token):
            log.warning("did not delete the lease of %s: it is not ours any more", self.output_uri)

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def check(self) -> None:
        """Raise :class:`LeaseLostError` if the lease was lost (call between units of work)."""
        if self._lost.is_set():
            raise LeaseLostError(
                f"lost the lease of {self.output_uri} (it expired and another run took it over); this run stops, "
                "the other one finishes the scene"
            )

    # -- heartbeat ----------------------------------------------------------------------------------
    def _beat(self) -> None:
        interval = self.ttl / 3.0
        while not self._stop.wait(interval):
            try:
                if not self.renew():
                    return
            except Exception as e:  # storage hiccup: keep the lease until it would expire
                if not is_transient(e):
                    log.error("cannot renew the lease of %s: %s", self.output_uri, e)
                else:
                    log.warning("renewing the lease of %s failed (%s); retrying", self.output_uri, e)
                with self._mutex:
                    expired = time.time() >= self._expires
                if expired:
                    log.error("the lease of %s expired while storage was unreachable", self.output_uri)
                    self._lost.set()
                    return

    @contextmanager
    def hold(self, wait: float = 0.0) -> Iterator[SceneLease]:
        """Acquire (waiting up to ``wait`` s), keep renewing in a background thread, release on exit."""
        self.acquire(wait)
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"geosr-lease-{self.owner[-6:]}", daemon=True)
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=self.ttl)
            try:
                self.release()
            except Exception as e:  # the lease expires by itself; never mask the run's own outcome
                log.warning("could not release the lease of %s (%s); it expires in %.0f s", self.output_uri, e,
                            self.ttl)
