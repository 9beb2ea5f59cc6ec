"""Object-storage environment as an explicit object (no ``os.environ`` mutation).

``StorageEnv`` turns a :class:`~geosr.config.StorageConfig` into an fsspec filesystem (local or s3fs)
and into GDAL options for rasterio. Credentials are never stored here and never logged: s3fs/botocore
and GDAL find them in the standard AWS environment variables, shared files or profile.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class StorageEnv:
    config: StorageConfig = StorageConfig()

    def s3_kwargs(self) -> dict[str, Any]:
        c = self.config
        kw: dict[str, Any] = {"anon": c.anon}
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
            return fsspec.filesystem("s3", **self.s3_kwargs())
        if scheme == "file":
            return fsspec.filesystem("file", auto_mkdir=True)
        return fsspec.filesystem(scheme)

    def gdal_options(self) -> dict[str, Any]:
        """GDAL configuration options for /vsis3/ matching this environment (no secrets)."""
        c = self.config
        opts: dict[str, Any] = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
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
