"""CLI flags generated from the pydantic models, so no option is declared twice: a field with
``json_schema_extra={"flag": "--tile"}`` (see :func:`geosr.config.flag`) becomes ``--tile``, with the field's
description as help, its ``Literal`` values as choices and its type as the argument type. ``--set KEY=VALUE``
reaches every field of the run configuration.

* :func:`add_config_flags` / :func:`config_from_args` -- :class:`geosr.config.RunConfig` (``geosr run``, the flows).
* :func:`add_model_flags` / :func:`model_from_args` -- any other pydantic model (the flows' ``RunSettings``).
"""

from __future__ import annotations

import argparse
import types
from typing import Any, Iterator, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from ..config import RunConfig, _ModelBase, format_errors, load_config, parse_override
from ..errors import ConfigError


def _extra(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def _plain(annotation: Any) -> Any:
    """``X | None`` -> ``X``."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _sections(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """(dotted key, field) of every field with a flag, through nested sections (``model``: the common fields of
    every model kind, plus ``name``)."""
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        if name == "model" and model is RunConfig:
            yield key + ".name", info
            yield from _sections(_ModelBase, key + ".")
            continue
        inner = _plain(info.annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            yield from _sections(inner, key + ".")
        elif "flag" in _extra(info):
            yield key, info


def _argument(parser: Any, dest: str, info: FieldInfo) -> None:
    extra = _extra(info)
    kind = _plain(info.annotation)
    kw: dict[str, Any] = {"dest": dest, "default": None, "help": info.description or "",
                          "metavar": dest.rsplit(".", 1)[-1].rsplit(":", 1)[-1].upper()}
    if info.default not in (None, ...) and not isinstance(info.default, BaseModel) and kind is not bool:
        kw["help"] += f" (default {info.default})"
    if extra.get("list"):
        kw["metavar"] = "A,B,..."
        kw["type"] = lambda text: [int(p) if p.strip().lstrip("-").isdigit() else p.strip() for p in text.split(",")]
    elif get_origin(kind) is Literal:
        values = get_args(kind)
        kw["choices"] = values
        kw["type"] = type(values[0])
        del kw["metavar"]
    elif kind is bool:  # a switch: ``--x`` sets True, or False with ``"negative": True`` (e.g. ``--no-quicklook``)
        parser.add_argument(extra["flag"], dest=dest, action="store_const", const=not extra.get("negative"),
                            default=None, help=kw["help"])
        return
    elif kind in (int, float):
        kw["type"] = kind
    parser.add_argument(extra["flag"], **kw)


# -- the run configuration ----------------------------------------------------------------------------------------
def add_config_flags(p: argparse.ArgumentParser, title: str = "run configuration") -> None:
    g = p.add_argument_group(title)
    g.add_argument("--config", help="YAML run configuration: a path, or a packaged one by name (default, sample, "
                   "sentinel2-l2a)")
    for key, info in _sections(RunConfig):
        if key == "model.name":
            g.add_argument("--model", dest="cfg:model.name", metavar="NAME", help="upsampler: ldm (default), nearest, bilinear, "
                           "bicubic, lanczos, or a registered model")
            continue
        _argument(g, f"cfg:{key}", info)
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config override, e.g. --set tiling.block=2048 (repeatable)")


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The dotted overrides the flags and ``--set`` give (flags first, ``--set`` last)."""
    o = {k[len("cfg:"):]: v for k, v in vars(args).items() if k.startswith("cfg:") and v is not None}
    for item in args.set:
        k, v = parse_override(item)
        o[k] = v
    return o


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The validated run configuration of ``--config``, the flags and ``--set``."""
    return load_config(args.config, config_overrides(args))


# -- any other model (flow settings) ------------------------------------------------------------------------------
def add_model_flags(p: argparse.ArgumentParser, model: type[BaseModel], title: str) -> None:
    g = p.add_argument_group(title)
    for name, info in model.model_fields.items():
        if "flag" in _extra(info):
            _argument(g, f"{model.__name__}:{name}", info)


def model_from_args(model: type[BaseModel], args: argparse.Namespace, **more: Any) -> Any:
    """``model`` from its flags (unset flags keep the model's defaults) plus ``more``."""
    prefix = f"{model.__name__}:"
    given = {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix) and v is not None}
    try:
        return model(**{**given, **more})
    except ValidationError as e:
        raise ConfigError(format_errors(e, "options")) from None

