"""Retries of storage operations, with tenacity: the one retry layer of geosr.

The layers, chosen on purpose (``docs/architecture.md``, Retries):

1. **botocore** (inside s3fs, and geosr's own S3 client) retries each HTTP request 3 times in its ``standard``
   mode: sub-second blips (a reset connection, one 503) never reach geosr.
2. **geosr** (this module) retries each *storage operation* of a scene -- open the input, read the store's
   state, create it, read a block's window, write its chunks, mark it done, finalize -- with exponential
   backoff for about a minute, when :func:`geosr.io.failures.is_transient` says a retry can succeed. Both
   executors (the local thread pool and Dask) run these same steps, so ``geosr run`` and the flows ride out
   the same outages.
3. **Prefect** retries a scene task only when its Dask cluster went away (:func:`retry_cluster_lost`); a
   storage failure that outlived layer 2 fails the scene at once, with its one-line error.

A failure that no retry can fix (a missing input, refused credentials, a bad band) is raised at once.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, replace
from typing import Any, Callable, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from .io.failures import cause_chain, cluster_lost, is_transient

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all, sleeping ``base * factor**k`` (capped at ``max_delay``, +-25 % jitter)."""

    attempts: int = 8  # with the defaults: about a minute of waiting in all (rides out a storage restart)
    base: float = 0.5
    factor: float = 2.0
    max_delay: float = 30.0

    def delay(self, attempt: int) -> float:
        d = min(self.max_delay, self.base * self.factor**attempt)
        return d * random.uniform(0.75, 1.25)

    @property
    def total_wait(self) -> float:
        """Upper bound of the time spent sleeping before giving up (for sizing leases and tests)."""
        return sum(min(self.max_delay, self.base * self.factor**k) * 1.25 for k in range(self.attempts - 1))


STORAGE = RetryPolicy()
NO_RETRY = RetryPolicy(attempts=1)


def storage_policy(attempts: int) -> RetryPolicy:
    """The storage retries a run was configured with (``storage.retry_attempts``): :data:`STORAGE`'s backoff."""
    return replace(STORAGE, attempts=attempts)


def call_with_retry(fn: Callable[[], T], policy: RetryPolicy, what: str,
                    transient: Callable[[BaseException], bool] = is_transient) -> T:
    """Call ``fn``; on a transient failure sleep with backoff and try again, up to ``policy.attempts``."""

    def wait(state: RetryCallState) -> float:
        return policy.delay(state.attempt_number - 1)

    def before_sleep(state: RetryCallState) -> None:
        e = state.outcome.exception() if state.outcome is not None else None
        log.warning("%s failed (%s: %s); retry %d/%d in %.1f s", what, type(e).__name__,
                    " ".join(str(e).split())[:200], state.attempt_number, policy.attempts - 1,
                    state.upcoming_sleep)

    retrying = Retrying(stop=stop_after_attempt(max(1, policy.attempts)), wait=wait,
                        retry=retry_if_exception(lambda e: isinstance(e, Exception) and transient(e)),
                        before_sleep=before_sleep, reraise=True)
    return retrying(fn)


def retry_cluster_lost(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn`` (layer 3): retry a scene task only when its Dask cluster was lost."""
    try:
        state.result()
    except Exception as e:  # noqa: BLE001 - we classify whatever the task raised
        return any(cluster_lost(c) for c in cause_chain(e))
    return False
