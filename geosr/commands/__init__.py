"""CLI sub-commands: every module here defines ``register(subparsers)`` and is discovered automatically."""

from __future__ import annotations

import importlib
import pkgutil


def command_modules():
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"{__name__}.{info.name}")
