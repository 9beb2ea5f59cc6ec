"""GDAL failures as geosr's typed errors: one line that says what was wrong with which input and what to do
(missing file, not a raster, truncated, refused credentials, unreachable storage)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import GeosrError, InputError, InputNotFoundError, NotARasterError, StorageAuthError
from .failures import GDAL_AUTH_MARKERS, GDAL_NETWORK_MARKERS
from .storage import is_remote


def is_gdal_error(exc: BaseException) -> bool:
    from rasterio._err import CPLE_BaseError
    from rasterio.errors import RasterioError

    return isinstance(exc, (RasterioError, CPLE_BaseError))


def gdal_message(exc: BaseException) -> str:
    """The most specific GDAL message in an exception chain, on one line."""
    msgs: list[str] = []
    e: BaseException | None = exc
    while e is not None and len(msgs) < 8:
        msgs.append(str(e))
        e = e.__cause__ or e.__context__
    useful = [m for m in msgs if m and "See previous exception" not in m]
    text = useful[-1] if useful else (msgs[0] if msgs else type(exc).__name__)
    return " ".join(text.split())




def gdal_error(exc: BaseException, uri: str, doing: str) -> GeosrError:
    msg = gdal_message(exc)
    full = " ".join(_chain_text(exc).split())
    if is_remote(uri):
        if any(m in full for m in GDAL_AUTH_MARKERS):
            return StorageAuthError(
                f"{uri}: storage refused access while {doing} ({msg}); check the AWS credentials and endpoint"
            )
        if any(m in full for m in GDAL_NETWORK_MARKERS):
            return InputError(
                f"{uri}: storage error while {doing} ({msg}); check storage.endpoint_url and the network"
            )
    return NotARasterError(
        f"{uri} is corrupt or truncated: {doing} failed ({msg}); re-download or re-create the file"
    )


def _chain_text(exc: BaseException) -> str:
    parts: list[str] = []
    e: BaseException | None = exc
    n = 0
    while e is not None and n < 8:
        parts.append(str(e))
        e, n = e.__cause__ or e.__context__, n + 1
    return " | ".join(parts)


def open_dataset(gdal_path: str, uri: str) -> Any:
    import rasterio

    try:
        return rasterio.open(gdal_path)
    except Exception as e:
        if not is_gdal_error(e):
            raise
        msg = gdal_message(e)
        if is_remote(uri):
            err = gdal_error(e, uri, "opening")
            if not isinstance(err, NotARasterError):
                raise err from None
        elif not Path(gdal_path).exists():
            raise InputNotFoundError(f"{uri} does not exist; check the path") from None
        raise NotARasterError(
            f"{uri} is not a raster GDAL can read ({msg}); give a GeoTIFF/COG, or re-download it if it is truncated"
        ) from None
