"""Storage failures become geosr's typed errors, with messages that say what to change."""

from __future__ import annotations

import errno

import pytest
from botocore.exceptions import ClientError, NoCredentialsError

from geosr.errors import BucketNotFoundError, OutputError, StorageAuthError
from geosr.store.backend import storage_error, storage_errors


def client_error(code: str, op: str = "PutObject") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"{code} message"}}, op)


@pytest.mark.parametrize("code", ["InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "403"])
def test_refused_credentials_become_storage_auth_errors(code):
    err = storage_error(client_error(code), "s3://bucket/out/scene.zarr", "write")
    assert isinstance(err, StorageAuthError) and isinstance(err, PermissionError)
    assert "AWS_ACCESS_KEY_ID" in str(err) and "s3://bucket/out/scene.zarr" in str(err)


def test_missing_credentials_say_where_credentials_come_from():
    err = storage_error(NoCredentialsError(), "s3://bucket/scene.zarr", "write")
    assert isinstance(err, StorageAuthError) and "no object-storage credentials" in str(err)


def test_missing_bucket_becomes_bucket_not_found():
    err = storage_error(client_error("NoSuchBucket"), "s3://nope/scene.zarr", "write")
    assert isinstance(err, BucketNotFoundError) and isinstance(err, FileNotFoundError)
    assert "'nope'" in str(err) and "create it first" in str(err)
    # s3fs translates NoSuchBucket into a FileNotFoundError carrying the server's message
    err = storage_error(FileNotFoundError("The specified bucket does not exist"), "s3://nope/x.zarr", "read")
    assert isinstance(err, BucketNotFoundError)


def test_s3fs_permission_errors_are_auth_errors_but_local_ones_are_output_errors():
    remote = storage_error(PermissionError("Forbidden"), "s3://b/x.zarr", "write")
    local = storage_error(PermissionError(errno.EACCES, "Permission denied", "/data/x.zarr"), "/data/x.zarr", "write")
    assert isinstance(remote, StorageAuthError)
    assert type(local) is OutputError and "permission denied (/data/x.zarr)" in str(local)


def test_local_parent_file_read_only_and_full_disks_are_output_errors():
    for exc, words in [(NotADirectoryError(errno.ENOTDIR, "Not a directory", "/a/f.txt/x"), "is a file"),
                       (OSError(errno.EROFS, "Read-only file system"), "read-only"),
                       (OSError(errno.ENOSPC, "No space left on device"), "no space left")]:
        err = storage_error(exc, "/a/f.txt/x.zarr", "create")
        assert isinstance(err, OutputError) and words in str(err)


def test_unrelated_exceptions_pass_through_unchanged():
    assert storage_error(ValueError("bad value"), "/x.zarr", "write") is None
    with pytest.raises(KeyError):
        with storage_errors("/x.zarr", "write"):
            raise KeyError("not a storage failure")
    with pytest.raises(StorageAuthError) as e:
        with storage_errors("s3://b/x.zarr", "write"):
            raise client_error("InvalidAccessKeyId")
    assert isinstance(e.value.__cause__, ClientError)
