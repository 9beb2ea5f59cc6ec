"""Per-block sums for the scene metrics (LR consistency, seams, mean std), saved with each block's done
marker, and their aggregate over the done blocks. Metrics a scene cannot have (a single tile has no seam;
an all-nodata scene no consistency) are ``None``, never NaN: they go into JSON."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .metrics import ConsistencyAccumulator, SeamAccumulator, degrade, tile_boundaries
from .plan import ScenePlan
from .tiles import BlockInput


def block_stats(plan: ScenePlan, inp: BlockInput, data: np.ndarray, valid: np.ndarray,
                std: np.ndarray | None = None) -> dict[str, Any]:
    """Per-block sums for scene metrics (LR consistency, seams, mean std when ``std`` is given)."""
    g, b = plan.grid, inp.block
    s = g.scale
    stats: dict[str, Any] = {"tiles": len(inp.keys), "tiles_skipped": inp.tiles_skipped}
    if b.y0 % s == 0 and b.x0 % s == 0 and data.shape[1] % s == 0 and data.shape[2] % s == 0:
        cons = ConsistencyAccumulator()
        cons.add(degrade(data, s), inp.lowres, inp.lowres_valid)
        stats["consistency"] = [cons.l1_sum, cons.angle_sum, cons.n]
    seam = SeamAccumulator()
    by = tile_boundaries(g.y_origins, g.tile, s, g.height)
    bx = tile_boundaries(g.x_origins, g.tile, s, g.width)
    seam.add(data, by, bx, valid, y0=b.y0, x0=b.x0, period=s, band_mean=True)
    stats["seam"] = [seam.seam_sum, seam.seam_n, seam.inner_sum, seam.inner_n]
    if std is not None:
        ok = valid[None] & np.isfinite(std)
        stats["std"] = [float(std.sum(where=ok, dtype=np.float64)), int(ok.sum())]
    return stats


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def scene_metrics(done: dict[str, dict]) -> dict[str, Any]:
    """Aggregate the per-block stats of every done block into scene metrics."""
    cons, seam = ConsistencyAccumulator(), SeamAccumulator()
    tiles = skipped = std_n = 0
    seconds = std_sum = 0.0
    for st in done.values():
        tiles += int(st.get("tiles", 0))
        skipped += int(st.get("tiles_skipped", 0))
        seconds += float(st.get("seconds", 0.0))
        if "consistency" in st:
            cons = cons.merge(ConsistencyAccumulator(*st["consistency"]))
        if "seam" in st:
            seam = seam.merge(SeamAccumulator(*st["seam"]))
        if "std" in st:
            std_sum += float(st["std"][0])
            std_n += int(st["std"][1])
    out: dict[str, Any] = {"tiles_computed": tiles, "tiles_skipped_nodata": skipped, "block_seconds": round(seconds, 3)}
    out.update({k: _finite(v) for k, v in cons.value().items()})
    out["seam_metric"] = _finite(seam.value())
    if std_n:
        out["std_mean"] = std_sum / std_n  # mean per-pixel std over valid pixels and bands
    return out
