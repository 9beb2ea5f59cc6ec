"""Object-storage environment as an explicit object (no ``os.environ`` mutation).

``StorageEnv`` turns a :class:`~geosr.config.StorageConfig` into an fsspec filesystem (local or s3fs)
and into GDAL options for rasterio. Credentials are never stored here and never logged: s3fs/botocore
and GDAL find them in the standard AWS environment variables, shared files or profile.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import fsspec

from ..config import StorageConfig


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def strip_protocol(uri: str) -> str:
    uri = str(uri)
    if uri.startswith("file://"):
        return uri[len("file://") :]
    return uri.split("://", 1)[1] if "://" in uri else uri


def resolve_href(base_uri: str, href: str) -> str:
    """An href made absolute against the document it came from (a STAC Item or catalog: URLs, s3:// and paths)."""
    if "://" in href or href.startswith("/"):
        return href
    if is_remote(base_uri):
        scheme, rest = base_uri.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(posixpath.dirname(rest), href))}"
    return posixpath.normpath(posixpath.join(posixpath.dirname(strip_protocol(base_uri)), href))


BOTOCORE_RETRIES = {"max_attempts": 3, "mode": "standard"}
"""Layer 1 of the retries (:mod:`geosr.retry`): each S3 request, 3 attempts in botocore's standard mode."""


def no_s3fs_retries(fs: Any) -> Any:
    """``fs`` without s3fs's own retry loop (its ``retries`` is a class attribute, 5): botocore retries each request,
    geosr each operation (:mod:`geosr.retry`), and a third loop in between would only multiply the waits."""
    fs.retries = 1
    return fs


@dataclass(frozen=True)
class StorageEnv:
    config: StorageConfig = StorageConfig()

    def s3_kwargs(self) -> dict[str, Any]:
        """s3fs options. Retries (``docs/architecture.md``, Retries): botocore retries each request
        (:data:`BOTOCORE_RETRIES`); s3fs adds no loop of its own (:func:`no_s3fs_retries`); geosr retries whole
        operations."""
        c = self.config
        kw: dict[str, Any] = {"anon": c.anon, "config_kwargs": {"retries": dict(BOTOCORE_RETRIES)}}
        client: dict[str, Any] = {}
        if c.endpoint_url:
            kw["endpoint_url"] = c.endpoint_url
        if c.region:
            client["region_name"] = c.region
        if client:
            kw["client_kwargs"] = client
        if c.profile:
            kw["profile"] = c.profile
        return kw

    def filesystem(self, uri: str) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem that serves ``uri`` (s3:// or a local path)."""
        scheme = urlparse(str(uri)).scheme if is_remote(uri) else "file"
        if scheme in ("s3", "s3a"):
            return no_s3fs_retries(fsspec.filesystem("s3", **self.s3_kwargs()))
        if scheme == "file":
            return fsspec.filesystem("file", auto_mkdir=True)
        return fsspec.filesystem(scheme)

    def gdal_options(self) -> dict[str, Any]:
        """GDAL configuration options for /vsis3/ matching this environment (no secrets)."""
        c = self.config
        # Each block reads its window once, so GDAL's block cache (default: 5 % of RAM, per process)
        # would only grow with the scene; a small one keeps memory flat.
        opts: dict[str, Any] = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_CACHEMAX": 64}
        if c.endpoint_url:
            u = urlparse(c.endpoint_url)
            opts["AWS_S3_ENDPOINT"] = u.netloc or u.path
            opts["AWS_HTTPS"] = "YES" if u.scheme == "https" else "NO"
            opts["AWS_VIRTUAL_HOSTING"] = "FALSE"
        if c.region:
            opts["AWS_REGION"] = c.region
        if c.profile:
            opts["AWS_PROFILE"] = c.profile
        if c.anon:
            opts["AWS_NO_SIGN_REQUEST"] = "YES"
        return opts

    def gdal_path(self, uri: str) -> str:
        """``s3://b/k`` -> ``/vsis3/b/k``; local paths unchanged."""
        uri = str(uri)
        if uri.startswith(("s3://", "s3a://")):
            return "/vsis3/" + strip_protocol(uri)
        return strip_protocol(uri)


# --------------------------------------------------------------------------------------------------
# S3 access for readers: credentials, rasterio environments, typed errors.
#
# Everything below builds on botocore (always present through s3fs), never on ``os.environ``
# mutation. Credentials are resolved by botocore's standard chain (environment variables, shared
# credentials/config files, profile, container/instance metadata) and only ever handed to GDAL through
# a rasterio session object: they are never formatted into messages or logs.
# --------------------------------------------------------------------------------------------------

S3_SCHEMES = ("s3://", "s3a://")


def is_s3(uri: str) -> bool:
    return str(uri).startswith(S3_SCHEMES)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``; the key may be empty."""
    if not is_s3(uri):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    rest = strip_protocol(uri)
    bucket, _, key = rest.partition("/")
    if not bucket:
        from ..errors import InputError

        raise InputError(f"{uri!r} has no bucket name; write it as s3://BUCKET/KEY")
    return bucket, key


@dataclass(frozen=True)
class ObjectInfo:
    """What a reader needs to know about a stored object before opening it."""

    size: int
    etag: str | None = None


class _CredentialSource:
    """The part of a ``boto3.Session`` that ``rasterio.session.AWSSession`` uses, backed by botocore.

    Lets rasterio hand botocore's standard credential chain to GDAL without boto3 installed.
    """

    def __init__(self, session: Any, region_name: str | None) -> None:
        self._session = session
        self.region_name = region_name

    def get_credentials(self) -> Any:
        return self._session.get_credentials()


def _profile_error(config: StorageConfig) -> Exception:
    from ..errors import StorageAuthError

    return StorageAuthError(
        f"AWS profile {config.profile!r} is not defined; add it to ~/.aws/config or ~/.aws/credentials, "
        "or unset storage.profile"
    )


def _botocore_session(config: StorageConfig) -> tuple[Any, str | None]:
    """A botocore session on the standard credential chain, and the region to use (None: default)."""
    import botocore.session
    from botocore.exceptions import ProfileNotFound

    session = botocore.session.Session(profile=config.profile) if config.profile else botocore.session.Session()
    try:
        region = config.region or session.get_config_variable("region")
    except ProfileNotFound:
        raise _profile_error(config) from None
    return session, region


def _s3_client(config: StorageConfig) -> Any:
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import ProfileNotFound

    session, region = _botocore_session(config)
    cfg_kw: dict[str, Any] = {
        "retries": dict(BOTOCORE_RETRIES),
        "connect_timeout": 10,
        "read_timeout": 60,
    }
    if config.anon:
        cfg_kw["signature_version"] = UNSIGNED
    if config.endpoint_url:
        cfg_kw["s3"] = {"addressing_style": "path"}
    try:
        return session.create_client(
            "s3", endpoint_url=config.endpoint_url, region_name=region or "us-east-1", config=Config(**cfg_kw)
        )
    except ProfileNotFound:
        raise _profile_error(config) from None


def _s3_error(exc: BaseException, uri: str, config: StorageConfig, *, client: Any = None) -> Exception:
    """Map a botocore exception met while accessing ``uri`` to a typed geosr error (one line)."""
    from botocore.exceptions import (
        ClientError,
        HTTPClientError,
        NoCredentialsError,
        PartialCredentialsError,
        ProfileNotFound,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError

    from ..errors import BucketNotFoundError, InputError, InputNotFoundError, StorageAuthError
    from .failures import BUCKET_CODES, DENIED_CODES, NOT_FOUND_CODES, REFUSED_CREDENTIAL_CODES, http_status, s3_code

    where = config.endpoint_url or "AWS S3"
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return StorageAuthError(
            f"no AWS credentials found to read {uri}; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE or storage.profile (or storage.anon: true for a public bucket)"
        )
    if isinstance(exc, ProfileNotFound):
        return _profile_error(config)
    if isinstance(exc, (BotoConnectionError, HTTPClientError)):
        return InputError(
            f"cannot reach {where} to read {uri} ({type(exc).__name__}); check storage.endpoint_url and the network"
        )
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code, status = s3_code(exc), http_status(exc)
        bucket, _ = split_s3_uri(uri)
        no_bucket = f"bucket {bucket!r} does not exist at {where}; check the URI or create the bucket"
        if code in BUCKET_CODES:
            return BucketNotFoundError(no_bucket)
        if code in NOT_FOUND_CODES or status == 404:
            if client is not None and not _bucket_exists(client, bucket):
                return BucketNotFoundError(no_bucket)
            return InputNotFoundError(f"{uri} does not exist; check the key (object name) and the bucket")
        if code in REFUSED_CREDENTIAL_CODES:
            return StorageAuthError(
                f"{where} refused the AWS credentials ({code}) reading {uri}; check AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY or the profile, and storage.endpoint_url"
            )
        denied = code in DENIED_CODES or status == 403
        if denied and config.anon:
            return StorageAuthError(
                f"anonymous access to {uri} at {where} was denied (HTTP 403): the bucket is not public; "
                "unset storage.anon and provide AWS credentials"
            )
        if denied:
            return StorageAuthError(
                f"access denied to {uri} at {where} (HTTP 403); check the AWS credentials and that they may read "
                "this bucket"
            )
        return InputError(f"reading {uri} from {where} failed: {code or status} {err.get('Message', '')}".strip())
    return InputError(f"reading {uri} from {where} failed: {type(exc).__name__}: {exc}".replace("\n", " "))


def _bucket_exists(client: Any, bucket: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as e:
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(e.response.get("Error", {}).get("Code", ""))
        return not (status == 404 or code in ("404", "NoSuchBucket", "NotFound"))
    return True


def s3_object_info(uri: str, env: StorageEnv) -> ObjectInfo:
    """Size and ETag of an s3:// object, or a typed error (missing bucket/key, refused credentials).

    Uses a one-byte ranged GET rather than HEAD, so that a refusal comes back with its error code.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3_uri(uri)
    if not key:
        from ..errors import InputError

        raise InputError(f"{uri} names a bucket, not an object; add the object key: s3://{bucket}/KEY")
    client = _s3_client(env.config)
    try:
        try:
            resp = client.get_object(Bucket=bucket, Key=key, Range="bytes=0-0")
        except ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) != "InvalidRange":
                raise
            resp = client.head_object(Bucket=bucket, Key=key)  # empty object: a range cannot be satisfied
        else:
            resp["Body"].close()
    except (ClientError, BotoCoreError) as e:
        raise _s3_error(e, uri, env.config, client=client) from None
    size = resp.get("ContentLength", 0)
    content_range = resp.get("ContentRange")
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        if total.isdigit():
            size = int(total)
    etag = resp.get("ETag")
    return ObjectInfo(size=int(size), etag=etag.strip('"') if etag else None)


def rasterio_session(uri: str, env: StorageEnv) -> Any:
    """A rasterio session for ``uri``: botocore's credential chain for s3://, nothing for local paths.

    Build one per thread (botocore sessions are not thread-safe) and reuse it; credentials are
    re-read from it each time a ``rasterio.Env`` is entered, so rotating credentials keep working.
    """
    from rasterio.session import AWSSession, DummySession

    if not is_s3(uri):
        return DummySession()
    from botocore.exceptions import BotoCoreError  # s3:// only: local paths need no botocore

    c = env.config
    if c.anon:
        return AWSSession(aws_unsigned=True, region_name=c.region)
    session, region = _botocore_session(c)
    try:
        return AWSSession(session=_CredentialSource(session, region))
    except BotoCoreError as e:
        raise _s3_error(e, uri, c) from None


def rasterio_env(uri: str, env: StorageEnv, session: Any | None = None) -> Any:
    """A ``rasterio.Env`` configured for ``uri`` (GDAL options + credentials session), not yet entered."""
    import rasterio

    return rasterio.Env(session=session if session is not None else rasterio_session(uri, env), **env.gdal_options())
