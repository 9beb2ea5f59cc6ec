"""``geosr quicklook INPUT STORE PNG`` (also ``geosr preview``): the side-by-side quicklook of input and output."""

from __future__ import annotations

import argparse

from ..config import load_config, parse_override


def register(sub) -> None:
    p = sub.add_parser("quicklook", aliases=["preview"], help="write the quicklook: a PNG with input and output "
                       "side by side")
    p.add_argument("input", help="the GeoTIFF the store was made from")
    p.add_argument("store", help="the Zarr store")
    p.add_argument("png", help="PNG to write")
    p.add_argument("--config", help="the run's YAML config (bands, scale, variable)")
    p.add_argument("--crop", type=int, default=256, help="low-res window size, centred (default 256)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_quicklook)


def _quicklook(args: argparse.Namespace) -> int:
    from ..config import RunConfig
    from ..io.storage import StorageEnv
    from ..quicklook import make_quicklook, run_parameters

    overrides = dict(parse_override(s) for s in args.set)
    cfg = load_config(args.config, overrides)
    env = StorageEnv(cfg.storage)
    if not args.config and not overrides:
        params = run_parameters(args.store, env)
        if params:  # the store remembers how it was made: same bands, scale and variable
            cfg = RunConfig.model_validate({**params, "storage": cfg.storage.model_dump()})
    make_quicklook(args.input, args.store, args.png, cfg, env, crop=args.crop)
    print(args.png)
    return 0
