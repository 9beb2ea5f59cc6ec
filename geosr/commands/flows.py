"""``geosr flows ...``: run and serve the Prefect flows (``serve``, ``run-scene``, ``new-scenes``,
``gpu-limit``). The flows live in the repository's ``flows/`` package; run these from the repository
root (or with it on ``PYTHONPATH``)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..config import parse_override
from ..errors import ConfigError


# -- shared options ------------------------------------------------------------------------------------------
def add_config_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run configuration (as for geosr run)")
    g.add_argument("--config", help="YAML run configuration (see configs/)")
    g.add_argument("--scale", type=int, help="upscaling factor (tiling.scale)")
    g.add_argument("--model", help="upsampler or model name (model.name)")
    g.add_argument("--device", help="auto, cpu, cuda, cuda:N (model.device)")
    g.add_argument("--batch-size", type=int, help="tiles per model call (model.batch_size)")
    g.add_argument("--endpoint-url", help="S3-compatible endpoint (storage.endpoint_url)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config override, e.g. --set tiling.block=2048 (repeatable)")


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    o: dict[str, Any] = {"tiling.scale": args.scale, "model.name": args.model, "model.device": args.device,
                         "model.batch_size": args.batch_size, "storage.endpoint_url": args.endpoint_url}
    for item in args.set:
        k, v = parse_override(item)
        o[k] = v
    return {k: v for k, v in o.items() if v is not None}


def add_cluster_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where the blocks run")
    g.add_argument("--dask-address", help="existing Dask scheduler (tcp://host:8786, dask-gateway, Coiled); "
                   "default: an embedded cluster on this machine")
    g.add_argument("--cpu-workers", type=int, default=1, help="embedded cluster: reading workers (default 1)")
    g.add_argument("--cpu-threads", type=int, default=2, help="embedded cluster: threads per reading worker")
    g.add_argument("--gpu-workers", type=int, help="embedded cluster: GPU-tagged workers (default: one per GPU)")
    g.add_argument("--dask-threads", action="store_true", help="embedded cluster: workers as threads of this "
                   "process instead of separate processes (one GPU only)")
    g.add_argument("--dask-dashboard", metavar="ADDRESS", help="embedded cluster: serve the Dask dashboard, e.g. :8787")
    g.add_argument("--gpu-limit", help="Prefect global concurrency limit guarding the GPUs ('' for none; default "
                   "geosr-gpu with a Prefect server (PREFECT_API_URL) or for serve, none with a temporary server)")
    g.add_argument("--gpu-slots", type=int, default=1, help="slots of the GPU limit when it has to be created "
                   "(default 1: one scene at a time on the GPUs)")
    g.add_argument("--prefetch", type=int, default=2, help="blocks read ahead per GPU (default 2)")
    g.add_argument("--max-concurrent-scenes", type=int, default=2, help="scenes in flight per flow run")
    g.add_argument("--lease-ttl", type=float, default=120.0, help="scene lease lifetime in s (default 120)")
    g.add_argument("--no-quicklook", action="store_true", help="no quicklook PNG")
    g.add_argument("--quicklook-url-map", help="s3://bucket/prefix=https://host/prefix: how browsers reach quicklooks")


def settings_from_args(args: argparse.Namespace) -> Any:
    from ..orchestration.settings import RunSettings

    return RunSettings(dask_address=args.dask_address or None, cpu_workers=args.cpu_workers,
                       cpu_threads=args.cpu_threads, gpu_workers=args.gpu_workers,
                       dask_processes=not args.dask_threads, dask_dashboard=args.dask_dashboard,
                       gpu_limit=gpu_limit_name(args),
                       prefetch=args.prefetch, max_concurrent_scenes=args.max_concurrent_scenes,
                       lease_ttl_s=args.lease_ttl, quicklook=not args.no_quicklook,
                       quicklook_url_map=args.quicklook_url_map)


def gpu_limit_name(args: argparse.Namespace) -> str | None:
    """``--gpu-limit``, else the default limit, except for one-shot runs on Prefect's temporary server: that
    server expires no slots, so a run killed while holding one would block every later run."""
    if args.gpu_limit is not None:
        return args.gpu_limit or None
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


def import_flows(module: str) -> Any:
    """``flows.<module>``, from the current directory or the checkout that holds this geosr."""
    try:
        return importlib.import_module(f"flows.{module}")
    except ModuleNotFoundError as e:
        if e.name not in ("flows", f"flows.{module}"):
            raise
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / "flows" / "__init__.py").is_file():
            sys.path.insert(0, str(root))
            return importlib.import_module(f"flows.{module}")
    raise ConfigError("the flows/ package is not importable: run geosr flows/backfill from the geosr repository root "
                      "(or put it on PYTHONPATH)")


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
    add_config_options(ns)
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
    add_config_options(sv)
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
    add_config_options(rs)
    add_cluster_options(rs)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=1, default=str))


def _run_scene(args: argparse.Namespace) -> int:
    scene = import_flows("scene")
    settings = settings_from_args(args)
    ensure_limit(settings, args.gpu_slots)
    res = scene.super_resolve_scene(input_uri=args.input, output_uri=args.output, collection=args.collection,
                                    config_path=args.config, config=config_overrides(args),
                                    overwrite=args.overwrite, settings=settings)
    _print_json(res)
    return 0


def run_scene_main(argv: list[str]) -> int:
    """``python -m flows.scene INPUT OUTPUT [options]``."""
    from ..cli import main

    return main(["flows", "run-scene", *argv])


def _new_scenes(args: argparse.Namespace) -> int:
    mod = import_flows("new_scenes")
    settings = settings_from_args(args)
    ensure_limit(settings, args.gpu_slots)
    state = mod.process_new_scenes(
        source=args.source, output_prefix=args.output_prefix, glob=args.glob, source_kind=args.source_kind,
        collection=args.collection, bbox=args.bbox, datetime=args.datetime, lookback_days=args.lookback_days,
        max_cloud_cover=args.max_cloud_cover, asset=args.asset, limit=args.limit, config_path=args.config,
        config=config_overrides(args), overwrite=args.overwrite, settings=settings, return_state=True)
    return _report_state(state)


def _report_state(state: Any) -> int:
    res = state.result(raise_on_failure=False)
    if isinstance(res, BaseException):
        print(f"geosr: {state.name}: {res}", file=sys.stderr)
        return 1
    _print_json(res)
    return 0 if state.is_completed() else 1


def _serve(args: argparse.Namespace) -> int:
    from ..orchestration.cluster import dask_client

    serve = import_flows("serve")
    settings = settings_from_args(args)
    new_scenes = None
    if args.source or args.output_prefix:
        if not (args.source and args.output_prefix):
            raise ConfigError("the scheduled new-scenes deployment needs both --source and --output-prefix")
        new_scenes = {"source": args.source, "output_prefix": args.output_prefix, "glob": args.glob,
                      "source_kind": args.source_kind, "collection": args.collection, "bbox": args.bbox,
                      "lookback_days": args.lookback_days if _is_stac(args.source, args.source_kind) else None,
                      "max_cloud_cover": args.max_cloud_cover, "asset": args.asset, "limit": args.limit,
                      "config_path": os.path.abspath(args.config) if args.config else None,
                      "config": config_overrides(args)}
    ensure_limit(settings, args.gpu_slots)
    if settings.dask_address:
        serve.serve_all(settings, new_scenes=new_scenes, cron=args.cron, timezone=args.timezone, limit=args.runs)
        return 0
    with dask_client(settings.cluster_spec()) as client:
        address = client.scheduler.address
        print(f"embedded Dask cluster at {address} (dashboard: {client.dashboard_link or 'off'})", file=sys.stderr)
        shared = settings.model_copy(update={"dask_address": address})
        serve.serve_all(shared, new_scenes=new_scenes, cron=args.cron, timezone=args.timezone, limit=args.runs)
    return 0


def _is_stac(source: str, kind: str) -> bool:
    from ..orchestration.query import SceneQuery

    return SceneQuery(source, kind).resolved_kind() != "prefix"  # type: ignore[arg-type]


def _gpu_limit(args: argparse.Namespace) -> int:
    from ..orchestration.gpu_limit import ensure_gpu_limit

    n = ensure_gpu_limit(args.name, args.slots, update=True)
    print(f"GPU concurrency limit {args.name}: {n} slot(s)")
    return 0
