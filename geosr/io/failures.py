"""What a storage failure *is*, decided in one place.

Every part of geosr that meets an object-storage or filesystem failure asks here what kind it is, then says
it in its own words (reading an input, writing a store, taking a lease):

* :func:`failure_kind` sorts one exception (its whole cause chain) into a :class:`Failure`: refused
  credentials, a missing bucket, a missing object, a failed precondition (compare-and-swap), a read-only or
  full filesystem, or a *transient* failure that the same call can get past later;
* :func:`is_transient` is what the retry layer (:mod:`geosr.retry`) retries;
* the error codes and GDAL message markers behind those answers are the sets below.

Nothing here formats a message or raises: callers map a kind to their typed, one-line error.
"""

from __future__ import annotations

import enum
import errno
import sys
from typing import Any

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


class Failure(enum.Enum):
    TRANSIENT = "transient"  # a later retry can succeed (network, 5xx, throttling, a scheduler restart)
    AUTH = "auth"  # credentials refused or access denied
    NO_BUCKET = "no-bucket"
    NOT_FOUND = "not-found"
    PRECONDITION = "precondition"  # a conditional write or delete lost the race (If-Match / If-None-Match)
    READ_ONLY = "read-only"
    NO_SPACE = "no-space"
    PERMISSION = "permission"  # local permission denied
    OTHER = "other"


# S3 error codes (botocore's ``response["Error"]["Code"]``)
AUTH_CODES = frozenset({
    "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
    "InvalidToken", "TokenRefreshRequired", "RequestTimeTooSkewed", "InvalidSecurity", "AccountProblem",
    "NotSignedUp", "403", "Forbidden", "Unauthorized", "401",
})
REFUSED_CREDENTIAL_CODES = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "TokenRefreshRequired",
})
DENIED_CODES = frozenset({"AccessDenied", "403", "Forbidden", "AllAccessDisabled"})
BUCKET_CODES = frozenset({"NoSuchBucket"})
NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
PRECONDITION_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
TRANSIENT_CODES = frozenset({
    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed", "Throttling",
    "ThrottlingException", "500", "502", "503", "504",
})
# words of a failure message that mean "try again later"
TRANSIENT_TEXT = (
    "connection refused", "connection reset", "connection aborted", "couldn't connect", "could not connect",
    "cannot connect", "timed out", "timeout", "temporarily unavailable", "service unavailable", "slowdown",
    "slow down", "internalerror", "bad gateway", "gateway timeout", "too many requests", "http response code: 5",
    "broken pipe", "server disconnected", "remote end closed", "connection was closed", "connection closed",
    "max retries exceeded", "(503)", "(502)", "(504)", "(500)",
)
# GDAL (/vsis3/) message markers
GDAL_AUTH_MARKERS = ("HTTP response code: 403", "AccessDenied", "Access Denied", "InvalidAccessKeyId",
                     "SignatureDoesNotMatch")
GDAL_NETWORK_MARKERS = ("HTTP response code", "Couldn't connect", "Could not resolve", "timed out", "curl")

# geosr's own errors that no retry can fix (a transient cause inside one still counts: see is_transient)
PERMANENT = (
    ConfigError, InputNotFoundError, NotARasterError, GeoreferenceError, BandError, StorageAuthError,
    BucketNotFoundError, OutputExistsError, ModelError, PermissionError, FileNotFoundError,
)


def cause_chain(exc: BaseException, limit: int = 12) -> list[BaseException]:
    """``exc`` and what it wraps (``__cause__`` or ``__context__``), outermost first."""
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(out) < limit and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def s3_code(exc: BaseException) -> str:
    """The S3 error code of ``exc`` (botocore ``ClientError``, or anything carrying its ``response``), or ''."""
    resp: Any = getattr(exc, "response", None)
    if isinstance(resp, dict):
        return str(resp.get("Error", {}).get("Code", ""))
    return ""


def http_status(exc: BaseException) -> int | None:
    resp: Any = getattr(exc, "response", None)
    if isinstance(resp, dict):
        status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status is not None else None
    return None


def _transient_type(e: BaseException) -> bool:
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    try:
        import botocore.exceptions as bce

        if isinstance(e, (bce.EndpointConnectionError, bce.ConnectionClosedError, bce.ReadTimeoutError,
                          bce.ConnectTimeoutError, bce.HTTPClientError)):
            return True
        if isinstance(e, bce.ClientError):
            return s3_code(e) in TRANSIENT_CODES
    except ImportError:  # pragma: no cover - s3fs brings botocore
        pass
    if cluster_lost(e):
        return True
    aiohttp = sys.modules.get("aiohttp")  # imported by whatever raised such an error
    if aiohttp is not None and isinstance(e, (aiohttp.ClientConnectionError, aiohttp.ServerTimeoutError)):
        return True
    return False


def cluster_lost(e: BaseException) -> bool:
    """The Dask scheduler went away (restart, pod rescheduled): a retry reconnects and resumes."""
    import sys

    comm = sys.modules.get("distributed.comm.core")  # a process that never used Dask has no such failure
    if comm is not None and isinstance(e, comm.CommClosedError):
        return True
    return type(e).__name__ == "FutureCancelledError" and "scheduler-connection-lost" in str(e)


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` (or what it wraps) is a failure that a later retry can get past."""
    chain = cause_chain(exc)
    if any(_transient_type(e) for e in chain):
        return True
    if isinstance(exc, PERMANENT):
        return False
    if not isinstance(exc, (OSError, GeosrError)):
        return False
    text = " ".join(str(e) for e in chain).lower()
    return any(m in text for m in TRANSIENT_TEXT)


def precondition_failed(exc: BaseException) -> bool:
    """A conditional S3 write or delete was refused because the object is not in the expected state."""
    for e in cause_chain(exc, 8):
        if s3_code(e) in PRECONDITION_CODES:
            return True
        text = str(e).lower()
        if "precondition" in text or "pre-condition" in text:
            return True
    return False


def failure_kind(exc: BaseException, *, remote: bool) -> Failure:
    """What kind of storage failure ``exc`` is (``remote``: it happened on object storage)."""
    try:
        import botocore.exceptions as bce
    except ImportError:  # pragma: no cover - s3fs always brings botocore
        bce = None  # type: ignore[assignment]
    if bce is not None:
        if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError)):
            return Failure.AUTH
        if isinstance(exc, (bce.EndpointConnectionError, bce.ConnectTimeoutError)):
            return Failure.TRANSIENT
        if isinstance(exc, bce.ClientError):
            code = s3_code(exc)
            if code in BUCKET_CODES:
                return Failure.NO_BUCKET
            if code in AUTH_CODES:
                return Failure.AUTH
            if code in PRECONDITION_CODES:
                return Failure.PRECONDITION
            if code in NOT_FOUND_CODES or http_status(exc) == 404:
                return Failure.NOT_FOUND
    text = str(exc)
    if isinstance(exc, PermissionError):
        return Failure.AUTH if remote else Failure.PERMISSION
    if isinstance(exc, FileNotFoundError):
        if remote and ("NoSuchBucket" in text or "bucket does not exist" in text.lower()):
            return Failure.NO_BUCKET
        return Failure.NOT_FOUND
    if isinstance(exc, OSError) and getattr(exc, "errno", None) == errno.EROFS:
        return Failure.READ_ONLY
    if isinstance(exc, OSError) and getattr(exc, "errno", None) == errno.ENOSPC:
        return Failure.NO_SPACE
    if is_transient(exc):
        return Failure.TRANSIENT
    return Failure.OTHER
