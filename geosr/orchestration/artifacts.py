"""What a run reports: the per-scene markdown table, the quicklook PNG beside the store, and the
backfill summary. Pure functions of the results (Prefect publishes them, see :mod:`.prefect_io`)."""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
from typing import Any

from ..config import RunConfig
from ..io.storage import StorageEnv, is_remote, strip_protocol
from ..lifecycle import SceneReport
from ..store import stac_item_uri
from .backfill import BackfillOutcome, BackfillPlan, format_seconds

log = logging.getLogger(__name__)


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes only."""
    text = "-".join(p for p in parts if p)
    key = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return re.sub(r"-{2,}", "-", key)[:120] or "geosr"


def quicklook_uri(output_uri: str) -> str:
    """``.../scene.zarr`` -> ``.../scene.quicklook.png`` (beside the store, like its STAC item)."""
    u = str(output_uri).rstrip("/")
    return (u[: -len(".zarr")] if u.endswith(".zarr") else u) + ".quicklook.png"


def public_url(uri: str, mapping: str | None = None) -> str | None:
    """A URL a browser can open for ``uri``: ``mapping`` ``"s3://bucket/prefix=https://host/prefix"``
    rewrites object URIs (a CDN or an HTTP gateway in front of the bucket); local files get ``file://``.
    None when neither applies (the object store is not reachable from a browser as is)."""
    if mapping and "=" in mapping:
        src, dst = mapping.split("=", 1)
        if str(uri).startswith(src):
            return dst.rstrip("/") + "/" + str(uri)[len(src):].lstrip("/")
    if not is_remote(uri):
        return "file://" + os.path.abspath(strip_protocol(uri))
    if str(uri).startswith(("http://", "https://")):
        return str(uri)
    return None


def write_quicklook(input_uri: str, output_uri: str, cfg: RunConfig, env: StorageEnv, crop: int = 256) -> str:
    """Render the side-by-side quicklook (:func:`geosr.quicklook.make_quicklook`) and store it beside the
    output; returns its URI."""
    from ..quicklook import make_quicklook

    target = quicklook_uri(output_uri)
    with tempfile.TemporaryDirectory(prefix="geosr-quicklook-") as tmp:
        png = os.path.join(tmp, "quicklook.png")
        make_quicklook(input_uri, output_uri, png, cfg, env, crop=crop)
        fs = env.filesystem(target)
        path = strip_protocol(target) if is_remote(target) else os.path.abspath(strip_protocol(target))
        if not is_remote(target):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        fs.put_file(png, path)
        if is_remote(target):
            fs.invalidate_cache(path)
    return target


def _num(v: Any, fmt: str) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(f) else format(f, fmt)


def scene_markdown(run: SceneReport, *, quicklook: str | None = None, quicklook_link: str | None = None,
                   scene_id: str = "") -> str:
    """The per-scene artifact: a markdown table of what went in, what came out and how well."""
    rep, m = run, run.metrics
    b, h, w = run.in_shape
    oh, ow = run.out_shape
    model = run.model or {}
    model_txt = f"{model.get('name', '-')} {model.get('version', '')}".strip()
    rows = [
        ("state", f"**{rep.state}**" + (f" ({rep.blocks_run} of {rep.blocks_total} blocks computed)" if rep.state != "skipped" else "")),
        ("input", f"`{rep.input_uri}`"),
        ("size", f"{b} bands, {h} x {w} px -> {oh} x {ow} px"),
        ("tiles", f"{run.tiles} in the grid, {run.tiles_run} computed in this run"),
        ("duration", format_seconds(rep.seconds) + (f" (waited {format_seconds(run.slot_wait_s)} for the GPU)" if run.slot_wait_s >= 1 else "")),
        ("tiles/s", _num(run.tiles_per_s, ".2f")),
        ("output Mpx/s", _num(rep.mpx_per_s if rep.state != "skipped" else float("nan"), ".2f")),
        ("model", model_txt),
        ("LR consistency L1", _num(m.get("lr_l1"), ".5f")),
        ("LR spectral angle (deg)", _num(m.get("lr_spectral_angle_deg"), ".4f")),
        ("seam metric (1 = invisible)", _num(m.get("seam_metric"), ".4f")),
        ("output", f"`{rep.output_uri}`"),
        ("STAC item", f"`{stac_item_uri(rep.output_uri)}`"),
    ]
    if quicklook:
        rows.append(("quicklook", f"[{quicklook}]({quicklook_link})" if quicklook_link else f"`{quicklook}`"))
    if run.workers:
        rows.append(("GPU workers", ", ".join(f"`{a}`" for a in run.workers)))
    title = f"### geosr: {scene_id or rep.output_uri.rstrip('/').rsplit('/', 1)[-1]}"
    body = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"{title}\n\n| | |\n|---|---|\n{body}\n"


def scene_result(run: SceneReport, quicklook: str | None = None) -> dict[str, Any]:
    """A JSON-able summary of a scene run (flow return values, backfill rows)."""
    rep, m = run, run.metrics
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in m.items()}
    return {
        "state": rep.state, "input": rep.input_uri, "output": rep.output_uri,
        "blocks_total": rep.blocks_total, "blocks_run": rep.blocks_run, "seconds": round(rep.seconds, 3),
        "tiles": run.tiles, "tiles_run": run.tiles_run, "tiles_per_s": round(run.tiles_per_s, 3),
        "model": run.model, "metrics": clean, "slot_wait_s": round(run.slot_wait_s, 3),
        "slot_held": list(run.slot_held) if run.slot_held else None,
        "stac_item": stac_item_uri(rep.output_uri), "quicklook": quicklook,
    }


def backfill_markdown(outcome: BackfillOutcome, plan: BackfillPlan | None = None, title: str = "geosr backfill") -> str:
    c = outcome.counts()
    lines = [f"### {title}", "", f"**{c['done']} done, {c['skipped']} skipped, {c['failed']} failed**", ""]
    if plan is not None:
        t = plan.summary()
        lines += [f"Planned: {t['scenes']} scene(s), {t['tiles_todo']} tiles, estimated GPU time "
                  f"{format_seconds(plan.est_gpu_s)} ({plan.seconds_per_tile:g} s/tile, {plan.seconds_per_tile_source}).", ""]
    if outcome.done:
        lines += ["#### done", "", "| scene | blocks | duration | tiles/s | output |", "|---|---|---|---|---|"]
        for r in outcome.done:
            lines.append(f"| {r['scene']} | {r.get('blocks_run', '-')}/{r.get('blocks_total', '-')} | "
                         f"{format_seconds(float(r.get('seconds', 0)))} | {_num(r.get('tiles_per_s'), '.2f')} | `{r['output']}` |")
        lines.append("")
    if outcome.skipped:
        lines += ["#### skipped (already complete)", "", "| scene | output |", "|---|---|"]
        lines += [f"| {r['scene']} | `{r['output']}` |" for r in outcome.skipped]
        lines.append("")
    if outcome.failed:
        lines += ["#### failed", "", "| scene | reason | output |", "|---|---|---|"]
        lines += [f"| {r['scene']} | {r['reason'].replace('|', '/')} | `{r['output']}` |" for r in outcome.failed]
        lines.append("")
    return "\n".join(lines)
