"""Digital numbers to reflectance: ``reflectance = DN * scale_factor + add_offset``.

Where the two numbers come from, most explicit first:

1. ``input.scale_factor`` / ``input.add_offset`` in the config (each overrides only its own half);
2. ``input.preset: sentinel2-l2a``: ``reflectance = (DN + BOA_ADD_OFFSET) / 10000`` where
   ``BOA_ADD_OFFSET`` is -1000 for processing baseline >= 04.00 and 0 before. The baseline comes from
   ``input.processing_baseline``, else the file's ``BOA_ADD_OFFSET`` tag (band or dataset level), else its
   ``PROCESSING_BASELINE`` tag, else it is assumed to be >= 04.00 and a warning says so;
3. the on-disk dtype: uint16/int16 -> 1e-4, uint8 -> 1/255, float32 -> 1.0, offset 0.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..config import InputConfig
from ..errors import ConfigError, InputError

log = logging.getLogger(__name__)

SUPPORTED_DTYPES: tuple[str, ...] = ("uint8", "uint16", "int16", "float32")
DEFAULT_SCALE: Mapping[str, float] = {"uint8": 1.0 / 255.0, "uint16": 1e-4, "int16": 1e-4, "float32": 1.0}

S2_QUANTIFICATION = 10000.0
S2_BOA_ADD_OFFSET = -1000.0  # processing baseline >= 04.00 (products from 2022-01-25 on)
S2_OFFSET_SINCE: tuple[int, int] = (4, 0)

_BASELINE_PATTERNS = (
    re.compile(r"^N?(\d{1,2})\.(\d{1,2})$"),  # "04.00", "4.0", "N04.00"
    re.compile(r"^N?(\d{2})(\d{2})$"),  # "0400", "N0400" (as in product names)
    re.compile(r"^(\d{1,2})$"),  # "4"
)


@dataclass(frozen=True)
class Radiometry:
    """How to turn the on-disk numbers into reflectance, and where that rule came from (for logs)."""

    scale_factor: float
    add_offset: float
    origin: str

    def apply(self, dn: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(C,h,w) DN and (h,w) valid mask -> float32 reflectance with invalid pixels set to 0."""
        out = dn.astype(np.float32, copy=True)
        if self.scale_factor != 1.0:
            out *= np.float32(self.scale_factor)
        if self.add_offset != 0.0:
            out += np.float32(self.add_offset)
        if not valid.all():
            out[:, ~valid] = 0.0
        return out


def parse_processing_baseline(text: str) -> tuple[int, int]:
    """``"05.10"`` -> ``(5, 10)``; also accepts ``"4.0"``, ``"N0400"``, ``"4"``. Raises ``ValueError``."""
    s = str(text).strip().upper()
    for pat in _BASELINE_PATTERNS:
        m = pat.match(s)
        if m:
            major = int(m.group(1))
            minor = int(m.group(2)) if m.lastindex and m.lastindex >= 2 else 0
            return major, minor
    raise ValueError(f"processing baseline {text!r} is not of the form NN.NN (e.g. '05.10')")


def _s2_offset_for_baseline(baseline: tuple[int, int]) -> float:
    """BOA_ADD_OFFSET in DN for a processing baseline."""
    return S2_BOA_ADD_OFFSET if baseline >= S2_OFFSET_SINCE else 0.0


def _tag(tags: Mapping[str, str], prefix: str) -> dict[str, str]:
    """Tags whose key is ``prefix`` or ``prefix_<suffix>``, case-insensitively."""
    p = prefix.upper()
    return {k: v for k, v in tags.items() if k.upper() == p or k.upper().startswith(p + "_")}


def _one_float(found: Mapping[str, str], what: str, uri: str) -> float | None:
    values: set[float] = set()
    for k, v in found.items():
        try:
            values.add(float(v))
        except (TypeError, ValueError):
            raise InputError(
                f"{uri}: tag {k}={v!r} is not a number; fix the tag or set input.add_offset explicitly"
            ) from None
    if not values:
        return None
    if len(values) > 1:
        raise InputError(
            f"{uri}: tags {', '.join(sorted(found))} give different {what} values {sorted(values)}; "
            "select bands that share one, or set input.add_offset explicitly"
        )
    return values.pop()


def _sentinel2_offset(
    cfg: InputConfig, tags: Mapping[str, str], band_tags: Sequence[Mapping[str, str]], uri: str
) -> tuple[float, str]:
    """(BOA_ADD_OFFSET in DN, where it came from)."""
    if cfg.processing_baseline is not None:
        try:
            baseline = parse_processing_baseline(cfg.processing_baseline)
        except ValueError as e:
            raise ConfigError(f"input.processing_baseline: {e}") from None
        return _s2_offset_for_baseline(baseline), f"input.processing_baseline={cfg.processing_baseline}"

    band_found: dict[str, str] = {}
    for i, bt in enumerate(band_tags):
        band_found.update({f"band{i}:{k}": v for k, v in _tag(bt, "BOA_ADD_OFFSET").items()})
    offset = _one_float(band_found, "BOA_ADD_OFFSET", uri)
    if offset is not None:
        return offset, "band tag BOA_ADD_OFFSET"
    offset = _one_float(_tag(tags, "BOA_ADD_OFFSET"), "BOA_ADD_OFFSET", uri)
    if offset is not None:
        return offset, "tag BOA_ADD_OFFSET"

    for k, v in _tag(tags, "PROCESSING_BASELINE").items():
        try:
            baseline = parse_processing_baseline(v)
        except ValueError:
            log.warning("%s: ignoring unreadable tag %s=%r", uri, k, v)
            continue
        return _s2_offset_for_baseline(baseline), f"tag {k}={v}"

    log.warning(
        "%s: no Sentinel-2 processing baseline in input.processing_baseline or the file's tags "
        "(PROCESSING_BASELINE, BOA_ADD_OFFSET); assuming baseline >= 04.00, i.e. BOA_ADD_OFFSET = -1000; "
        "set input.processing_baseline if the product is older",
        uri,
    )
    return S2_BOA_ADD_OFFSET, "assumed baseline >= 04.00"


def resolve_radiometry(
    cfg: InputConfig,
    *,
    dtype: str,
    tags: Mapping[str, str],
    band_tags: Sequence[Mapping[str, str]],
    uri: str,
) -> Radiometry:
    """The scale/offset for a source of on-disk ``dtype`` with dataset ``tags`` and per-selected-band tags."""
    if dtype not in SUPPORTED_DTYPES:
        raise InputError(
            f"{uri}: data type {dtype} is not supported (use {', '.join(SUPPORTED_DTYPES)}); "
            "convert it, e.g. gdal_translate -ot UInt16 -scale ... in.tif out.tif"
        )
    if cfg.preset == "sentinel2-l2a":
        if dtype not in ("uint16", "int16"):
            raise InputError(
                f"{uri}: preset sentinel2-l2a expects uint16 digital numbers but the file is {dtype}; "
                "use input.preset: none (with input.scale_factor/add_offset) for already-scaled data"
            )
        scale, offset, origin = 1.0 / S2_QUANTIFICATION, 0.0, "sentinel2-l2a"
        if cfg.add_offset is None:  # an explicit offset makes the baseline irrelevant
            offset_dn, offset_origin = _sentinel2_offset(cfg, tags, band_tags, uri)
            offset = offset_dn / S2_QUANTIFICATION
            origin = f"sentinel2-l2a, BOA_ADD_OFFSET={offset_dn:g} ({offset_origin})"
    else:
        scale, offset, origin = DEFAULT_SCALE[dtype], 0.0, f"default for {dtype}"
    if cfg.scale_factor is not None:
        scale, origin = float(cfg.scale_factor), origin + ", input.scale_factor"
    if cfg.add_offset is not None:
        offset, origin = float(cfg.add_offset), origin + ", input.add_offset"
    return Radiometry(scale_factor=float(scale), add_offset=float(offset), origin=origin)
