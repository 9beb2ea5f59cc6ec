"""``geosr backfill OUTPUT_PREFIX ...``: plan and run an analyst's backfill (the geosr-backfill flow).

``--dry-run`` prints the scenes, the tiles to compute and the estimated GPU time, and runs nothing (it
needs no Prefect server and no cluster: it reads headers and ledgers only).
"""

from __future__ import annotations

import argparse
import sys

from ..jsonio import dumps
from ._flags import add_config_flags, config_from_args
from .flows import _report_state, add_cluster_options, add_source_options, ensure_limit, settings_from_args


def register(sub) -> None:
    p = sub.add_parser("backfill", help="super-resolve a date range / area / list of scenes (dry run first)",
                       description="Select scenes from --source (prefix, STAC API or ItemCollection) by --start/--end, "
                       "--bbox, --collection, --max-cloud-cover, and/or name them with --scene; complete outputs are "
                       "skipped, incomplete ones resumed. Always try --dry-run first.")
    p.add_argument("output_prefix", help="outputs go to <prefix>/<collection>/<scene>.zarr")
    p.add_argument("--source", help="prefix (s3://bucket/path or folder), STAC API URL or ItemCollection JSON")
    p.add_argument("--scene", action="append", default=[], metavar="URI", help="a scene to include (repeatable)")
    p.add_argument("--scenes-file", help="a file with one scene URI per line")
    p.add_argument("--start", help="first acquisition date (YYYY-MM-DD or ISO 8601)")
    p.add_argument("--end", help="last acquisition date (inclusive)")
    p.add_argument("--overwrite", action="store_true", help="redo complete outputs too")
    p.add_argument("--dry-run", action="store_true", help="print the plan (scenes, tiles, GPU time) and stop")
    p.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    p.add_argument("--seconds-per-tile", type=float, help="GPU seconds per tile for the estimate "
                   "(default: measured on finished outputs, else a per-model default)")
    p.add_argument("--deployment", help="fan out as flow runs of this deployment (e.g. super-resolve-scene/on-demand) "
                   "instead of tasks of one flow run")
    add_source_options(p)
    add_config_flags(p)
    add_cluster_options(p)
    p.set_defaults(func=_backfill)


def _scenes(args: argparse.Namespace) -> list[str]:
    scenes = list(args.scene)
    if args.scenes_file:
        with open(args.scenes_file) as f:
            scenes += [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    return scenes


def _backfill(args: argparse.Namespace) -> int:
    from ..errors import ConfigError

    scenes = _scenes(args)
    if not args.source and not scenes:
        raise ConfigError("give --source and/or --scene/--scenes-file")
    cfg = config_from_args(args)
    if args.dry_run:
        return _dry_run(args, scenes, cfg)
    from ..flows.backfill import backfill

    settings = settings_from_args(args)
    if not args.deployment:
        ensure_limit(settings, args.gpu_slots)
    kw = {"fan_out_to": "deployment", "deployment": args.deployment} if args.deployment else {}
    state = backfill(
        output_prefix=args.output_prefix, source=args.source, scenes=scenes, start=args.start, end=args.end,
        bbox=args.bbox, collection=args.collection, glob=args.glob, source_kind=args.source_kind,
        max_cloud_cover=args.max_cloud_cover, asset=args.asset, limit=args.limit, config=cfg,
        overwrite=args.overwrite, seconds_per_tile=args.seconds_per_tile,
        settings=settings, return_state=True, **kw)
    return _report_state(state)


def _dry_run(args: argparse.Namespace, scenes: list[str], cfg) -> int:
    from ..io.storage import StorageEnv
    from ..orchestration.backfill import plan_backfill
    from ..orchestration.discovery import discover, explicit_scenes
    from ..orchestration.query import SceneQuery, interval_text, parse_bbox

    env = StorageEnv(cfg.storage)
    refs = []
    if args.source:
        q = SceneQuery(args.source, args.source_kind, args.glob, args.collection, parse_bbox(args.bbox),
                       interval_text(args.start, args.end), args.max_cloud_cover, args.asset, args.limit)
        refs = discover(q, env)
    seen = {r.input_uri for r in refs}
    refs += [r for r in explicit_scenes(scenes, args.collection) if r.input_uri not in seen]
    plan = plan_backfill(refs, args.output_prefix, cfg, overwrite=args.overwrite,
                         seconds_per_tile=args.seconds_per_tile, env=env)
    if args.json:
        rows = [{"scene": s.ref.scene_id, "input": s.ref.input_uri, "output": s.output_uri, "action": s.action,
                 "blocks_total": s.blocks_total, "blocks_todo": s.blocks_todo, "tiles": s.tiles,
                 "tiles_todo": s.tiles_todo, "est_gpu_s": s.est_gpu_s, "error": s.error} for s in plan.scenes]
        print(dumps({"summary": plan.summary(), "scenes": rows}, indent=1))
    else:
        print(plan.table())
    print("dry run: nothing was run", file=sys.stderr)
    return 0
