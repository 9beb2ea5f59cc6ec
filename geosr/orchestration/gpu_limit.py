"""The GPU concurrency limit: a Prefect global concurrency limit that every scene run holds one slot of
while its blocks use the GPUs (strict: a missing limit is an error, never a silent free-for-all)."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Callable, ContextManager, Iterator

from .errors import GpuLimitError
from .settings import DEFAULT_GPU_LIMIT

log = logging.getLogger(__name__)


def ensure_gpu_limit(name: str = DEFAULT_GPU_LIMIT, slots: int = 1, *, update: bool = False) -> int:
    """Create the global concurrency limit ``name`` with ``slots`` slots if it does not exist (or set its
    size with ``update``). Returns its size."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    if slots < 1:
        raise GpuLimitError(f"GPU limit {name!r}: slots={slots}; give at least 1")
    with get_client(sync_client=True) as client:
        try:
            current = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
            log.info("created the global concurrency limit %s with %d slot(s)", name, slots)
            return slots
        if update and current.limit != slots:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=slots))
            return slots
        return int(current.limit)


def gpu_slot(name: str | None, timeout_s: float | None = None,
             lease_s: float = 60.0) -> Callable[[], ContextManager[Any]] | None:
    """A factory of context managers that hold one slot of the Prefect global concurrency limit ``name``
    (strict: a missing limit is an error, never a silent free-for-all). None when ``name`` is empty.

    The slot is a lease that Prefect renews while it is held; if the holding process dies, the server
    frees the slot after ``lease_s`` seconds."""
    if not name:
        return None

    @contextmanager
    def hold() -> Iterator[None]:
        from prefect.concurrency.sync import concurrency

        acquired = False
        try:
            with concurrency(name, occupy=1, timeout_seconds=timeout_s, lease_duration=lease_s, strict=True):
                acquired = True
                yield
        except Exception as e:
            if not acquired and type(e).__name__ == "ConcurrencySlotAcquisitionError":
                raise GpuLimitError(
                    f"the GPU concurrency limit {name!r} does not exist on the Prefect server; create it with "
                    f"`geosr flows gpu-limit --name {name} --slots N` (N = flow runs that may share the GPUs at once)"
                ) from None
            raise

    return hold
