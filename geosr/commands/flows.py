"""``geosr flows ...``: run and serve the Prefect flows of :mod:`geosr.flows` (``serve``, ``run-scene``,
``new-scenes``, ``gpu-limit``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import ConfigError
from ..jsonio import dumps
from ._flags import add_config_flags, add_model_flags, config_from_args, model_from_args


# -- shared options ------------------------------------------------------------------------------------------
def add_cluster_options(p: argparse.ArgumentParser) -> None:
    from ..orchestration.settings import RunSettings

    add_model_flags(p, RunSettings, "where the blocks run")
    p.add_argument("--gpu-slots", type=int, default=1, help="slots of the GPU limit when it has to be created "
                   "(default 1: one scene at a time on the GPUs)")


def settings_from_args(args: argparse.Namespace) -> Any:
    from ..orchestration.settings import RunSettings

    return model_from_args(RunSettings, args, gpu_limit=gpu_limit_name(args))


def gpu_limit_name(args: argparse.Namespace) -> str | None:
    """``--gpu-limit``, else the default limit, except for one-shot runs on Prefect's temporary server: that
    server expires no slots, so a run killed while holding one would block every later run."""
    given = getattr(args, "RunSettings:gpu_limit", None)
    if given is not None:
        return given or None
    from prefect.settings import PREFECT_API_URL

    from ..orchestration.settings import DEFAULT_GPU_LIMIT

    served = getattr(args, "flows_command", None) == "serve"
    return DEFAULT_GPU_LIMIT if served or PREFECT_API_URL.value() else None


def add_source_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scene source and filters")
    g.add_argument("--glob", default="*.tif", help="file pattern under a prefix source (default *.tif)")
    g.add_argument("--source-kind", choices=["auto", "prefix", "stac-api", "item-collection"], default="auto")
    g.add_argument("--collection", help="STAC collection (and the output sub-folder)")
    g.add_argument("--bbox", help="west,south,east,north in degrees")
    g.add_argument("--max-cloud-cover", type=float, help="eo:cloud_cover at most this (STAC sources)")
    g.add_argument("--asset", help="STAC asset key, or 'item' for the Item's bands stacked (default: the Item when "
                   "it has one COG per band, as Sentinel-2 L2A does, else its first GeoTIFF data asset)")
    g.add_argument("--limit", type=int, help="at most this many scenes")


def ensure_limit(settings: Any, slots: int) -> None:
    if settings.gpu_limit:
        from ..orchestration.gpu_limit import ensure_gpu_limit

        n = ensure_gpu_limit(settings.gpu_limit, slots)
        print(f"GPU concurrency limit {settings.gpu_limit}: {n} slot(s)", file=sys.stderr)


# -- commands ------------------------------------------------------------------------------------------------
def register(sub) -> None:
    p = sub.add_parser("flows", help="run or serve the Prefect flows (scene, new scenes, backfill)",
                       description="Prefect flows over a Dask cluster. Without PREFECT_API_URL, flows run against a "
                       "temporary local Prefect server.")
    fsub = p.add_subparsers(dest="flows_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    rs = fsub.add_parser("run-scene", help="one scene -> one Zarr store, through the super-resolve-scene flow")
    _add_run_scene_arguments(rs)
    rs.set_defaults(func=_run_scene)

    ns = fsub.add_parser("new-scenes", help="run process-new-scenes once: every scene of SOURCE without a complete output")
    ns.add_argument("source", help="prefix (s3://bucket/path or a folder), STAC API URL, or ItemCollection JSON")
    ns.add_argument("output_prefix", help="outputs go to <prefix>/<collection>/<scene>.zarr")
    ns.add_argument("--datetime", help="STAC interval, e.g. 2024-01-01/2024-02-01")
    ns.add_argument("--lookback-days", type=float, help="only scenes of the last N days")
    ns.add_argument("--overwrite", action="store_true")
    add_source_options(ns)
    add_config_flags(ns)
    add_cluster_options(ns)
    ns.set_defaults(func=_new_scenes)

    sv = fsub.add_parser("serve", help="serve all flows from this process (one-machine mode, flow.serve)",
                         description="Registers super-resolve-scene/on-demand, geosr-backfill/analyst and, with "
                         "--source and --output-prefix, process-new-scenes/scheduled on --cron; runs their flow runs "
                         "until interrupted. Without --dask-address, starts one embedded Dask cluster for all runs.")
    sv.add_argument("--source", help="scene source for the scheduled new-scenes deployment")
    sv.add_argument("--output-prefix", help="output prefix for the scheduled new-scenes deployment")
    sv.add_argument("--cron", default="*/30 * * * *", help="schedule of new-scenes (default every 30 min)")
    sv.add_argument("--timezone", default="UTC")
    sv.add_argument("--lookback-days", type=float, default=3.0, help="scheduled runs search the last N days (STAC)")
    sv.add_argument("--runs", type=int, help="flow runs at once (default: unlimited)")
    add_source_options(sv)
    add_config_flags(sv)
    add_cluster_options(sv)
    sv.set_defaults(func=_serve)

    gl = fsub.add_parser("gpu-limit", help="create or resize the Prefect global concurrency limit guarding the GPUs")
    gl.add_argument("--name", default="geosr-gpu")
    gl.add_argument("--slots", type=int, default=1, help="flow runs that may use the GPUs at once (default 1)")
    gl.set_defaults(func=_gpu_limit)


def _add_run_scene_arguments(rs: argparse.ArgumentParser) -> None:
    rs.add_argument("input", help="GeoTIFF/COG, local or s3://")
    rs.add_argument("output", help="Zarr store, local or s3://")
    rs.add_argument("--overwrite", action="store_true", help="replace a complete or different output")
    rs.add_argument("--collection", help="collection name recorded with the output")
    add_config_flags(rs)
    add_cluster_options(rs)


def _print_json(obj: Any) -> None:
    print(dumps(obj, indent=1))


def _run_scene(args: argparse.Namespace) -> int:
    from ..flows.scene import super_resolve_scene

    cfg = config_from_args(args)
    settings = settings_from_args(args)
    ensure_limit(settings, args.gpu_slots)
    res = super_resolve_scene(input_uri=args.input, output_uri=args.output, collection=args.collection,
                              config=cfg, overwrite=args.overwrite, settings=settings)
    _print_json(res)
    return 0


def _new_scenes(args: argparse.Namespace) -> int:
    from ..flows.new_scenes import process_new_scenes

    cfg = config_from_args(args)
    settings = settings_from_args(args)
    ensure_limit(settings, args.gpu_slots)
    state = process_new_scenes(
        source=args.source, output_prefix=args.output_prefix, glob=args.glob, source_kind=args.source_kind,
        collection=args.collection, bbox=args.bbox, datetime=args.datetime, lookback_days=args.lookback_days,
        max_cloud_cover=args.max_cloud_cover, asset=args.asset, limit=args.limit, config=cfg,
        overwrite=args.overwrite, settings=settings, return_state=True)
    return _report_state(state)


def _report_state(state: Any) -> int:
    res = state.result(raise_on_failure=False)
    if isinstance(res, BaseException):
        print(f"geosr: {state.name}: {res}", file=sys.stderr)
        return 1
    _print_json(res)
    return 0 if state.is_completed() else 1


def _serve(args: argparse.Namespace) -> int:
    from ..flows.serve import serve_all
    from ..orchestration.cluster import dask_client

    cfg = config_from_args(args)
    settings = settings_from_args(args)
    new_scenes = None
    if args.source or args.output_prefix:
        if not (args.source and args.output_prefix):
            raise ConfigError("the scheduled new-scenes deployment needs both --source and --output-prefix")
        new_scenes = {"source": args.source, "output_prefix": args.output_prefix, "glob": args.glob,
                      "source_kind": args.source_kind, "collection": args.collection, "bbox": args.bbox,
                      "lookback_days": args.lookback_days if _is_stac(args.source, args.source_kind) else None,
                      "max_cloud_cover": args.max_cloud_cover, "asset": args.asset, "limit": args.limit,
                      "config": cfg.model_dump(mode="json")}
    ensure_limit(settings, args.gpu_slots)
    if settings.dask_address:
        serve_all(settings, new_scenes=new_scenes, cron=args.cron, timezone=args.timezone, limit=args.runs)
        return 0
    with dask_client(settings.cluster_spec()) as client:
        address = client.scheduler.address
        print(f"embedded Dask cluster at {address} (dashboard: {client.dashboard_link or 'off'})", file=sys.stderr)
        shared = settings.model_copy(update={"dask_address": address})
        serve_all(shared, new_scenes=new_scenes, cron=args.cron, timezone=args.timezone, limit=args.runs)
    return 0


def _is_stac(source: str, kind: str) -> bool:
    from ..orchestration.query import SceneQuery

    return SceneQuery(source, kind).resolved_kind() != "prefix"  # type: ignore[arg-type]


def _gpu_limit(args: argparse.Namespace) -> int:
    from ..orchestration.gpu_limit import ensure_gpu_limit

    n = ensure_gpu_limit(args.name, args.slots, update=True)
    print(f"GPU concurrency limit {args.name}: {n} slot(s)")
    return 0
