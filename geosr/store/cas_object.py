"""A compare-and-swap object: one small object whose writes succeed only from the state the writer last saw,
on S3 or on a local/network filesystem. The scene lease (:mod:`.lease`) is built on it. ``token`` is the object's ETag (S3) or the sha256 of its bytes (disk).

* S3: ``If-None-Match: *`` to create, ``If-Match: <ETag>`` to replace and delete (fsspec/s3fs calls).
* Disk: ``O_EXCL`` to create; replace and delete under an exclusive ``lockf`` of ``<object>.guard``. The
  guard exists only while the object does: whoever deletes the object deletes the guard in the same
  locked section, and a process that locked a guard which was deleted meanwhile locks the new one.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import uuid
from contextlib import contextmanager
from typing import Any, Iterator, Protocol

from ..io.failures import precondition_failed
from ..io.storage import StorageEnv, is_remote, strip_protocol


class CasObject(Protocol):
    def create(self, data: bytes) -> str | None: ...  # token, or None if the object exists
    def read(self) -> tuple[bytes, str] | None: ...  # (data, token), or None if absent
    def replace(self, data: bytes, token: str) -> str | None: ...  # new token, or None if not at ``token``
    def delete(self, token: str) -> bool: ...  # False if the object is not at ``token``


def cas_object(uri: str, env: StorageEnv) -> CasObject:
    if not is_remote(uri):
        return LocalObject(strip_protocol(uri))
    if not str(uri).startswith(("s3://", "s3a://")):
        raise ValueError(f"{uri}: scene leases support local paths and s3:// only")
    return S3Object(uri, env)


class S3Object:
    def __init__(self, uri: str, env: StorageEnv) -> None:
        self.fs = env.filesystem(uri)
        self.path = strip_protocol(uri)
        self.bucket, self.key = self.path.split("/", 1)

    def create(self, data: bytes) -> str | None:
        try:
            resp = self.fs.pipe_file(self.path, data, mode="create")
        except (OSError, ValueError) as e:
            if precondition_failed(e) or isinstance(e, FileExistsError):
                return None
            raise
        return self._etag(resp)

    def read(self) -> tuple[bytes, str] | None:
        # ETag before and after the body: equal means the body belongs to that ETag
        for _ in range(5):
            try:
                before = self.fs.info(self.path, refresh=True)["ETag"]
                data = self.fs.cat_file(self.path)
                after = self.fs.info(self.path, refresh=True)["ETag"]
            except FileNotFoundError:
                return None
            if before == after:
                return data, before
        return None

    def replace(self, data: bytes, token: str) -> str | None:
        try:
            resp = self.fs.pipe_file(self.path, data, IfMatch=token)
        except (OSError, ValueError) as e:
            if precondition_failed(e) or isinstance(e, FileNotFoundError):
                return None
            raise
        return self._etag(resp)

    def delete(self, token: str) -> bool:
        try:
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=token)
        except (OSError, ValueError) as e:
            if precondition_failed(e):
                return False
            if isinstance(e, FileNotFoundError):
                return True
            raise
        finally:
            self.fs.invalidate_cache(self.path)
        return True

    def _etag(self, resp: Any) -> str:
        self.fs.invalidate_cache(self.path)
        etag = resp.get("ETag") if isinstance(resp, dict) else None
        return etag or self.fs.info(self.path, refresh=True)["ETag"]


class LocalObject:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.guard = self.path + ".guard"

    @staticmethod
    def _token(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        while True:
            fd = os.open(self.guard, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX)
                try:
                    current = os.stat(self.guard).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    current = False
                if not current:  # the guard we locked was deleted by the last holder: lock the new one
                    continue
                try:
                    yield
                finally:
                    if not os.path.exists(self.path):  # no object, no guard (nothing left beside outputs)
                        for leftover in glob.glob(glob.escape(self.path) + ".tmp-*") + [self.guard]:
                            os.unlink(leftover)
                return
            finally:
                os.close(fd)

    def create(self, data: bytes) -> str | None:
        with self._locked():
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return None
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        return self._token(data)

    def read(self) -> tuple[bytes, str] | None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return data, self._token(data)

    def replace(self, data: bytes, token: str) -> str | None:
        with self._locked():
            cur = self.read()
            if cur is None or cur[1] != token:
                return None
            tmp = f"{self.path}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        return self._token(data)

    def delete(self, token: str) -> bool:
        with self._locked():
            cur = self.read()
            if cur is not None and cur[1] != token:
                return False
            if cur is not None:
                os.unlink(self.path)
        return True
