"""Retries with exponential backoff for transient storage and network failures.

A failure is *transient* when retrying the same call can succeed: a refused or reset connection, a
timeout, a 5xx / throttling answer from object storage, a GDAL network error. Everything that a
retry cannot fix (a missing input, refused credentials, a bad band, a corrupt file, a configuration
error) is *permanent* and raised at once. :func:`is_transient` looks through the whole exception
chain, because the typed errors of :mod:`geosr.io.source` and :mod:`geosr.store` wrap the low-level
cause.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from ..errors import (
    BandError,
    BucketNotFoundError,
    ConfigError,
    GeoreferenceError,
    GeosrError,
    InputNotFoundError,
    ModelError,
    NotARasterError,
    OutputExistsError,
    StorageAuthError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_PERMANENT = (
    ConfigError, InputNotFoundError, NotARasterError, GeoreferenceError, BandError, StorageAuthError,
    BucketNotFoundError, OutputExistsError, ModelError, PermissionError, FileNotFoundError,
)
_TRANSIENT_TEXT = (
    "connection refused", "connection reset", "connection aborted", "couldn't connect", "could not connect",
    "cannot connect", "timed out", "timeout", "temporarily unavailable", "service unavailable", "slowdown",
    "slow down", "internalerror", "bad gateway", "gateway timeout", "too many requests", "http response code: 5",
    "broken pipe", "server disconnected", "remote end closed", "connection was closed", "connection closed",
    "max retries exceeded", "(503)", "(502)", "(504)", "(500)",
)
_TRANSIENT_S3_CODES = {
    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed", "Throttling",
    "ThrottlingException", "500", "502", "503", "504",
}


def _chain(exc: BaseException, limit: int = 12) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(out) < limit and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _transient_class(e: BaseException) -> bool:
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    try:
        import botocore.exceptions as bce

        if isinstance(e, (bce.EndpointConnectionError, bce.ConnectionClosedError, bce.ReadTimeoutError,
                          bce.ConnectTimeoutError, bce.HTTPClientError)):
            return True
        if isinstance(e, bce.ClientError):
            return str(e.response.get("Error", {}).get("Code", "")) in _TRANSIENT_S3_CODES
    except ImportError:  # pragma: no cover - s3fs brings botocore
        pass
    try:  # the Dask scheduler went away (restart, pod rescheduled): a retry reconnects and resumes
        from distributed.comm.core import CommClosedError

        if isinstance(e, CommClosedError):
            return True
        if type(e).__name__ == "FutureCancelledError" and "scheduler-connection-lost" in str(e):
            return True
    except ImportError:  # pragma: no cover - distributed is a dependency
        pass
    try:
        import aiohttp

        if isinstance(e, (aiohttp.ClientConnectionError, aiohttp.ServerTimeoutError)):
            return True
    except ImportError:  # pragma: no cover
        pass
    return False


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` (or what it wraps) is a failure that a later retry can get past."""
    chain = _chain(exc)
    if any(_transient_class(e) for e in chain):
        return True
    if isinstance(exc, _PERMANENT):
        return False
    if not isinstance(exc, (OSError, GeosrError)):
        return False
    text = " ".join(str(e) for e in chain).lower()
    return any(m in text for m in _TRANSIENT_TEXT)


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


NO_RETRY = RetryPolicy(attempts=1)


def call_with_retry(fn: Callable[[], T], policy: RetryPolicy, what: str,
                    transient: Callable[[BaseException], bool] = is_transient) -> T:
    """Call ``fn``; on a transient failure sleep with backoff and try again, up to ``policy.attempts``."""
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as e:
            attempt += 1
            if attempt >= policy.attempts or not transient(e):
                raise
            d = policy.delay(attempt - 1)
            log.warning("%s failed (%s: %s); retry %d/%d in %.1f s", what, type(e).__name__,
                        " ".join(str(e).split())[:200], attempt, policy.attempts - 1, d)
            time.sleep(d)
