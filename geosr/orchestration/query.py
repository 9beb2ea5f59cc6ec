"""What a scene search asks for and what it finds: :class:`SceneQuery`, :class:`SceneRef`, and the parsing
of bboxes, STAC-style datetime intervals and dates in file names (pure functions, no I/O)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from typing import Any, Literal

from .errors import DiscoveryError
from .jobs import scene_output_uri

SourceKind = Literal["auto", "prefix", "stac-api", "item-collection"]
BBox = tuple[float, float, float, float]



@dataclass(frozen=True)
class SceneRef:
    """A scene found in a source."""

    scene_id: str
    input_uri: str
    collection: str | None = None
    datetime: str | None = None  # ISO 8601, UTC
    bbox: BBox | None = None  # lon/lat
    cloud_cover: float | None = None
    properties: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def output_uri(self, output_prefix: str) -> str:
        return scene_output_uri(output_prefix, self.collection, self.scene_id)


@dataclass(frozen=True)
class SceneQuery:
    source: str
    kind: SourceKind = "auto"
    glob: str = "*.tif"
    collection: str | None = None
    bbox: BBox | None = None
    datetime: str | None = None  # "2024-01-01/2024-02-01", "2024-01-01/..", "../2024-02-01", "2024-01-05"
    max_cloud_cover: float | None = None
    asset: str | None = None  # STAC asset key, or "item": the Item itself (stacked bands); default: the Item when it
    # has one COG per band, else its first GeoTIFF data asset
    limit: int | None = None

    def resolved_kind(self) -> SourceKind:
        if self.kind != "auto":
            return self.kind
        s = self.source.lower().split("?", 1)[0]
        if s.endswith((".json", ".geojson")):
            return "item-collection"
        if s.startswith(("http://", "https://")):
            return "stac-api"
        return "prefix"


# -- parsing helpers ------------------------------------------------------------------------------------
def parse_bbox(value: Any) -> BBox | None:
    """``"w,s,e,n"`` or a 4-sequence -> (w, s, e, n) floats; :class:`DiscoveryError` if malformed."""
    if value is None or value == "":
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        w, s, e, n = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise DiscoveryError(f"bbox={value!r}: expected west,south,east,north in degrees, e.g. 11.0,46.0,12.0,47.0") from None
    if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= n <= 90):
        raise DiscoveryError(f"bbox={value!r}: need -180<=west,east<=180 and -90<=south<=north<=90 (degrees)")
    return (w, s, e, n)


def parse_instant(text: str, end: bool) -> datetime | None:
    text = text.strip()
    if text in ("", ".."):
        return None
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            d = datetime.fromisoformat(text).date()
            return datetime.combine(d, time.max if end else time.min, tzinfo=timezone.utc)
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise DiscoveryError(f"datetime {text!r}: expected ISO 8601, e.g. 2024-01-05 or 2024-01-05T10:30:00Z") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def parse_interval(value: str | None) -> tuple[datetime | None, datetime | None]:
    """STAC-style ``start/end`` (either side may be ``..``) or a single date/instant -> (start, end)."""
    if not value:
        return None, None
    if "/" in value:
        a, b = value.split("/", 1)
        start, end = parse_instant(a, False), parse_instant(b, True)
    else:
        start, end = parse_instant(value, False), parse_instant(value, True)
    if start and end and start > end:
        raise DiscoveryError(f"datetime={value!r}: the start is after the end")
    return start, end


def interval_text(start: str | None, end: str | None) -> str | None:
    """CLI ``--start/--end`` -> a STAC interval string (None when both are open)."""
    if not start and not end:
        return None
    return f"{start or '..'}/{end or '..'}"


def lookback_interval(days: float | None, now: datetime | None = None) -> str | None:
    """The interval from ``days`` ago until now (open-ended), for scheduled runs; None without ``days``."""
    if not days:
        return None
    start = (now or datetime.now(timezone.utc)) - timedelta(days=float(days))
    return f"{iso(start)}/.."


def iso(dt: datetime | None) -> str | None:
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if dt else None


def intersects(a: BBox | None, b: BBox | None) -> bool:
    if a is None or b is None:
        return True
    return not (a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1])


def in_interval(start: datetime | None, end: datetime | None, lo: datetime | None, hi: datetime | None) -> bool:
    """Does the scene's [lo, hi] time span overlap the query's [start, end]?"""
    if start is None and end is None:
        return True
    if lo is None and hi is None:
        return False
    lo = lo or hi
    hi = hi or lo
    assert lo is not None and hi is not None
    return not ((start and hi < start) or (end and lo > end))



_DATE_IN_NAME = re.compile(r"(?<!\d)(\d{4})-?(\d{2})-?(\d{2})(?!\d)")


def date_from_name(name: str) -> datetime | None:
    for m in _DATE_IN_NAME.finditer(name):
        try:
            return datetime(int(m.group(1)), int(m.group(2)), int(m.group(3)), tzinfo=timezone.utc)
        except ValueError:
            continue
    return None

