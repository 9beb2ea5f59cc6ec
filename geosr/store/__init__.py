"""Zarr output: layout (``OutputSpec``), the writable store (``ZarrOutput``), its ledger and status,
multiscale overviews, provenance and the STAC item beside it. See ``docs/architecture.md``."""

from __future__ import annotations

from .encode import decode, encode
from .spec import OutputSpec
from .stac import stac_item_uri
from .status import StoreStatus, store_status
from .zarr_output import ZarrOutput

__all__ = ["OutputSpec", "ZarrOutput", "StoreStatus", "store_status", "stac_item_uri", "encode", "decode"]
