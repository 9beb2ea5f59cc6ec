"""``geosr preview INPUT STORE PNG``: side-by-side quicklook of input and output."""

from __future__ import annotations

import argparse

from ..config import load_config, parse_override


def register(sub) -> None:
    p = sub.add_parser("preview", help="write a PNG with input and output side by side")
    p.add_argument("input", help="the GeoTIFF the store was made from")
    p.add_argument("store", help="the Zarr store")
    p.add_argument("png", help="PNG to write")
    p.add_argument("--config", help="the run's YAML config (bands, scale, variable)")
    p.add_argument("--crop", type=int, default=256, help="low-res window size, centred (default 256)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_preview)


def _preview(args: argparse.Namespace) -> int:
    from ..io.storage import StorageEnv
    from ..preview import make_preview
    from ..store import store_info

    overrides = dict(parse_override(s) for s in args.set)
    cfg = load_config(args.config, overrides)
    env = StorageEnv(cfg.storage)
    info = store_info(args.store, env)
    params = info.get("provenance", {}).get("parameters")
    if params and not args.config and not args.set:
        from ..config import RunConfig

        cfg = RunConfig.model_validate(params)
    make_preview(args.input, args.store, args.png, cfg, env, crop=args.crop)
    print(args.png)
    return 0
