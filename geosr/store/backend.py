"""Where a store lives: its filesystem, its Zarr store object, small JSON files, and storage errors.

Every storage operation of the store goes through :func:`storage_errors`, which turns permission,
bucket and credential failures from the local filesystem, s3fs and botocore into geosr's typed errors
(:class:`~geosr.errors.OutputError`, :class:`~geosr.errors.BucketNotFoundError`,
:class:`~geosr.errors.StorageAuthError`) with a message that says what to change.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from contextlib import contextmanager
from functools import cached_property
from typing import Any, Iterator

import fsspec

from ..errors import BucketNotFoundError, GeosrError, OutputError, StorageAuthError
from ..io.failures import Failure, failure_kind, s3_code
from ..io.storage import StorageEnv, is_remote, no_s3fs_retries, strip_protocol
from ..jsonio import dumps

log = logging.getLogger(__name__)

def storage_error(exc: BaseException, uri: str, action: str) -> GeosrError | None:
    """The typed error for a storage failure of ``action`` on ``uri`` (its kind decided by
    :func:`geosr.io.failures.failure_kind`); None when ``exc`` is not one."""
    if isinstance(exc, GeosrError):
        return exc
    remote = is_remote(uri)
    kind = failure_kind(exc, remote=remote)
    text = str(exc)
    where = getattr(exc, "filename", None) or text
    try:
        import botocore.exceptions as bce

        no_credentials = isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError))
        unreachable = isinstance(exc, (bce.EndpointConnectionError, bce.ConnectTimeoutError))
    except ImportError:  # pragma: no cover - s3fs always brings botocore
        no_credentials = unreachable = False
    if no_credentials:
        return StorageAuthError(
            f"cannot {action} {uri}: no object-storage credentials found; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, a shared credentials file or storage.profile (or storage.anon for public data)"
        )
    if unreachable:
        return OutputError(f"cannot {action} {uri}: the object storage does not answer ({exc}); check "
                           "storage.endpoint_url (--endpoint-url) and the network")
    if kind is Failure.NO_BUCKET:
        return _bucket_missing(uri, bucket_of(uri))
    if kind is Failure.AUTH:
        code = s3_code(exc)
        return _auth_failed(uri, action, code or text)
    if kind is Failure.PERMISSION:
        return OutputError(
            f"cannot {action} {uri}: permission denied ({where}); choose an output location you can write to, or "
            "fix its permissions"
        )
    if isinstance(exc, (NotADirectoryError, FileExistsError)) and not remote:
        return OutputError(
            f"cannot {action} {uri}: a parent of the output path is a file, not a directory ({where}); choose an "
            "output path inside a directory"
        )
    if kind is Failure.READ_ONLY:
        return OutputError(f"cannot {action} {uri}: the filesystem is read-only; choose a writable output location")
    if kind is Failure.NO_SPACE:
        return OutputError(f"cannot {action} {uri}: no space left on the device; free space or choose another location")
    return None


def _bucket_missing(uri: str, bucket: str | None) -> BucketNotFoundError:
    return BucketNotFoundError(
        f"bucket {bucket!r} of {uri} does not exist (or is not visible with these credentials); "
        "create it first or fix the output URI"
    )


def _auth_failed(uri: str, action: str, detail: str) -> StorageAuthError:
    return StorageAuthError(
        f"cannot {action} {uri}: object storage refused the credentials ({detail}); check AWS_ACCESS_KEY_ID / "
        "AWS_SECRET_ACCESS_KEY or storage.profile, and that they may write to this bucket"
    )


@contextmanager
def storage_errors(uri: str, action: str) -> Iterator[None]:
    """Re-raise storage failures inside the block as geosr's typed errors (others pass through)."""
    try:
        yield
    except GeosrError:
        raise
    except Exception as exc:
        mapped = storage_error(exc, uri, action)
        if mapped is None:
            raise
        raise mapped from exc


def check_store_uri(uri: str) -> None:
    """Refuse, in one line, a store URI that names no object key (``s3://bucket``) or whose key has ``.``/``..``
    segments (object storage takes them literally; nothing resolves them as a path would)."""
    if not is_remote(uri):
        if not uri.strip():
            raise OutputError("the output path is empty; give a path such as out/scene.zarr")
        return
    scheme, rest = uri.split("://", 1)
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise OutputError(f"{uri} has no bucket; write it as {scheme}://BUCKET/KEY.zarr")
    if not key.strip("/"):
        raise OutputError(f"{uri} names a bucket, not a store; add a key: {scheme}://{bucket}/KEY.zarr")
    if any(part in (".", "..", "") for part in key.split("/")):
        raise OutputError(f"{uri}: the key {key!r} has empty, '.' or '..' segments, which object storage does not "
                          f"resolve; write the key plainly, e.g. {scheme}://{bucket}/outputs/scene.zarr")


def _stem(path: str) -> str:
    name = str(path).rsplit("/", 1)[-1]
    return name[: -len(".json")] if name.endswith(".json") else name


def bucket_of(uri: str) -> str | None:
    return strip_protocol(uri).split("/", 1)[0] if is_remote(uri) else None


class StoreLocation:
    """A store's URI, filesystem and paths; cheap to build, picklable (the filesystem is rebuilt)."""

    def __init__(self, uri: str, env: StorageEnv) -> None:
        self.uri = str(uri).rstrip("/")
        check_store_uri(self.uri)
        self.env = env
        self.remote = is_remote(self.uri)
        root = strip_protocol(self.uri)
        self.root = root if self.remote else os.path.abspath(root)

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "env": self.env}

    def __setstate__(self, state: dict[str, Any]) -> None:
        StoreLocation.__init__(self, state["uri"], state["env"])

    @cached_property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self.env.filesystem(self.uri)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *[p.strip("/") for p in parts if p]])

    def zarr_store(self, read_only: bool = False):
        """A zarr-python store for the root: ``LocalStore`` for paths, ``FsspecStore`` for object storage
        (an asynchronous twin of ``env.filesystem(uri)`` with the same options)."""
        from zarr.storage import FsspecStore, LocalStore

        if not self.remote:
            return LocalStore(self.root, read_only=read_only)
        fs = self.fs
        if getattr(fs, "async_impl", False):
            # zarr needs an asynchronous instance; without a listings cache, so that it never sees a
            # stale listing of objects another worker (or an overwrite) added or deleted
            opts = {**fs.storage_options, "asynchronous": True, "use_listings_cache": False}
            fs = no_s3fs_retries(type(fs)(**opts))
        if not getattr(fs, "async_impl", False):
            from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

            fs = AsyncFileSystemWrapper(fs)
        return FsspecStore(fs, read_only=read_only, path=self.root)

    # -- small files --------------------------------------------------------------------------------
    def exists(self, rel: str = "") -> bool:
        with storage_errors(self.uri, "read"):
            return self.fs.exists(self.path(rel))

    def read_json(self, rel: str) -> dict[str, Any] | None:
        """The JSON document at ``rel`` under the root; None when absent or unreadable (half-written)."""
        with storage_errors(self.uri, "read"):
            try:
                data = self.fs.cat_file(self.path(rel))
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return None
        try:
            return json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            log.warning("ignoring unreadable %s in %s (interrupted write?)", rel, self.uri)
            return None

    def write_json(self, rel: str, doc: dict[str, Any]) -> None:
        """Write ``doc`` at ``rel``; atomically (temp file + rename) on local disk, one PUT on S3."""
        data = dumps(doc, indent=1, sort_keys=True).encode()
        self.write_bytes(self.path(rel), data)

    def write_bytes(self, path: str, data: bytes) -> None:
        with storage_errors(self.uri, "write"):
            if self.remote:
                self.fs.pipe_file(path, data)
                return
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)

    def json_names(self, rel_dir: str) -> list[str]:
        """Full paths of the ``*.json`` files directly under ``rel_dir`` ([] when it does not exist)."""
        base = self.path(rel_dir)
        with storage_errors(self.uri, "read"):
            if self.remote:
                self.fs.invalidate_cache(base)
            try:
                return [str(p) for p in self.fs.ls(base, detail=False) if str(p).endswith(".json")]
            except (FileNotFoundError, NotADirectoryError):
                return []

    def read_many_json(self, rel_dir: str) -> dict[str, dict[str, Any]]:
        """{file stem: document} for every ``*.json`` directly under ``rel_dir``. A file deleted since the listing
        is left out, and so is one that is not a JSON document (a torn write: its block counts as not done and
        is redone); any other failure to read one is raised (and retried by the caller), never taken for
        "not there"."""
        names = self.json_names(rel_dir)
        if not names:
            return {}
        with storage_errors(self.uri, "read"):
            blobs = self.fs.cat(names, on_error="return")
            for p, data in blobs.items():
                if isinstance(data, BaseException) and not isinstance(data, FileNotFoundError):
                    raise data
        out: dict[str, dict[str, Any]] = {}
        for p, data in blobs.items():
            if isinstance(data, BaseException):
                continue
            try:
                doc = json.loads(data)
            except (UnicodeDecodeError, json.JSONDecodeError):
                doc = None
            if not isinstance(doc, dict):
                log.warning("ignoring unreadable marker %s (interrupted write?); its block will be redone", p)
                continue
            out[_stem(p)] = doc
        return out

    def remove(self, rel: str) -> None:
        with storage_errors(self.uri, "delete"):
            try:
                self.fs.rm_file(self.path(rel))
            except FileNotFoundError:
                pass

    def remove_tree(self) -> None:
        with storage_errors(self.uri, "delete"):
            if self.fs.exists(self.root):
                self.fs.rm(self.root, recursive=True)
            if self.remote:
                self.fs.invalidate_cache(self.root)

    def listing(self) -> list[str]:
        """Names directly under the root ([] when absent)."""
        with storage_errors(self.uri, "read"):
            if self.remote:
                self.fs.invalidate_cache(self.root)
            try:
                return [str(p).rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)]
            except (FileNotFoundError, NotADirectoryError):
                return []

    def is_file(self) -> bool:
        with storage_errors(self.uri, "read"):
            return self.fs.isfile(self.root)

    def check_bucket(self) -> None:
        """Raise :class:`BucketNotFoundError` / :class:`StorageAuthError` unless the bucket is reachable."""
        if not self.remote or not hasattr(self.fs, "call_s3"):
            return
        bucket = bucket_of(self.uri)
        with storage_errors(self.uri, "reach"):
            try:
                self.fs.call_s3("head_bucket", Bucket=bucket)
            except FileNotFoundError:
                raise _bucket_missing(self.uri, bucket) from None
            except PermissionError as e:
                raise _auth_failed(self.uri, "reach", str(e) or "access denied") from None
