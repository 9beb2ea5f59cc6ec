"""Strict JSON, everywhere geosr writes JSON (store attributes and ledger, STAC items, CLI output, eval results):
a value JSON cannot hold -- NaN, infinity, a numpy scalar, a path -- is turned into one it can (null, a
number, a string) before it is written, and the writer refuses NaN, so JavaScript readers never meet a bare
``NaN``."""

from __future__ import annotations

import json
import math
from typing import Any


def jsonable(doc: Any) -> Any:
    """``doc`` as plain JSON values: non-finite floats become None, numpy scalars and arrays numbers and lists,
    mappings get string keys, anything else JSON cannot hold becomes its ``str``."""
    if isinstance(doc, bool) or doc is None or isinstance(doc, (str, int)):
        return doc
    if isinstance(doc, float):
        return doc if math.isfinite(doc) else None
    if isinstance(doc, dict):
        return {str(k): jsonable(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in doc]
    tolist = getattr(doc, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        try:
            return jsonable(tolist())
        except (TypeError, ValueError):
            pass
    return str(doc)


def dumps(doc: Any, **kw: Any) -> str:
    """``json.dumps`` of :func:`jsonable` ``doc``, refusing NaN (strict JSON)."""
    return json.dumps(jsonable(doc), allow_nan=False, **kw)
