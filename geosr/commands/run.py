"""``geosr run INPUT OUTPUT``: super-resolve one scene into a Zarr store (resumable), on this machine."""

from __future__ import annotations

import argparse
import sys
import time

from ._flags import add_config_flags, config_from_args

LEASE_WAIT_S = 6 * 3600.0
"""How long ``geosr run`` waits for another run of the same output (see :mod:`geosr.store.lease`)."""


def register(sub) -> None:
    p = sub.add_parser("run", help="super-resolve a GeoTIFF into a georeferenced Zarr store",
                       description="Super-resolve INPUT (GeoTIFF/COG, local or s3://) into OUTPUT (a .zarr "
                       "directory, local or s3://). Rerunning resumes an unfinished output; a complete one made "
                       "from the same input and parameters is left alone, one made from others is refused unless "
                       "--overwrite.")
    p.add_argument("input")
    p.add_argument("output")
    add_config_flags(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--no-progress", action="store_true", help="no size estimate and no progress bar on stderr")
    p.add_argument("--quicklook", "--preview", dest="quicklook", metavar="PNG",
                   help="also write the side-by-side quicklook PNG (input and output)")
    p.set_defaults(func=_run)


class BlockProgressBar:
    """tqdm bar over blocks, with output Mpx/s and ETA."""

    def __init__(self, enabled: bool, px_per_block: float) -> None:
        self.enabled = enabled
        self.bar = None
        self.px = px_per_block
        self.t0 = time.perf_counter()
        self.start = 0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, initial=done, unit="block", file=sys.stderr, dynamic_ncols=True)
            self.start = done
            return
        self.bar.update(done - self.bar.n)
        dt = time.perf_counter() - self.t0
        if dt > 0 and done > self.start:
            self.bar.set_postfix_str(f"{(done - self.start) * self.px / dt / 1e6:.1f} Mpx/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _num(v: float | None, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def _run(args: argparse.Namespace) -> int:
    from ..io.storage import StorageEnv
    from ..lifecycle import run_scene
    from ..store.lease import LeaseOptions

    cfg = config_from_args(args)
    env = StorageEnv(cfg.storage)
    bar = BlockProgressBar(not args.no_progress, cfg.tiling.block**2)
    try:
        # one run per output at a time: a second run of the same output waits, then finds it complete
        rep = run_scene(args.input, args.output, cfg, overwrite=args.overwrite, progress=bar, env=env,
                        announce=None if args.no_progress else lambda line: print(line, file=sys.stderr, flush=True),
                        lease=LeaseOptions(wait=LEASE_WAIT_S, label="geosr run"))
    finally:
        bar.close()
    if rep.state == "skipped":
        print(f"{args.output} is already complete; nothing to do (use --overwrite to redo it)")
    else:
        m = rep.metrics
        print(f"{rep.state}: {args.output}  blocks {rep.blocks_run}/{rep.blocks_total}  "
              f"{rep.seconds:.1f} s  {rep.mpx_per_s:.1f} Mpx/s  "
              f"LR-L1 {_num(m.get('lr_l1'), '.5f')}  seam {_num(m.get('seam_metric'), '.3f')}")
    if args.quicklook:
        from ..quicklook import make_quicklook

        make_quicklook(args.input, args.output, args.quicklook, cfg, env)
        print(f"quicklook: {args.quicklook}")
    return 0
