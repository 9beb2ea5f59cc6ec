"""``geosr`` command line. Sub-commands live in :mod:`geosr.commands`, one module each."""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .errors import GeosrError


def build_parser() -> argparse.ArgumentParser:
    from .commands import command_modules

    p = argparse.ArgumentParser(prog="geosr", description="Seamless super-resolution of satellite imagery to Zarr.")
    p.add_argument("--version", action="version", version=f"geosr {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for mod in command_modules():
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if not args.verbose:  # coroutines and tasks that zarr/s3fs abandon when a storage call fails are noise
        sys.unraisablehook = _debug_unraisable  # after the one-line error: debug log only
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    from .runtime import limit_malloc_arenas

    limit_malloc_arenas()  # flat memory over long runs (see geosr/runtime.py)
    try:
        rc = args.func(args)
    except GeosrError as e:
        print(f"geosr: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("geosr: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return int(rc or 0)


def _debug_unraisable(u: "sys.UnraisableHookArgs") -> None:
    logging.getLogger("geosr").debug("ignored in %r: %s: %s", u.object, type(u.exc_value).__name__, u.exc_value)


if __name__ == "__main__":
    sys.exit(main())
