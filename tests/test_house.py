"""Checks that keep the house: import rules between the layers, one source for every config default, the ldm
params in step with the sampler, CLI flags generated (never declared twice). Pure: no server, no file I/O
beyond reading the source tree."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import yaml

from geosr.config import LdmModel, RunConfig, load_config, packaged_configs
from geosr.model_params import LdmParams

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "geosr"


def _imports(path: Path) -> set[str]:
    """Absolute names of the geosr modules ``path`` imports (relative imports resolved, lazy ones included)."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return {m for m in out if m == "geosr" or m.startswith(("geosr.", "flows"))}


def _modules(*folders: str) -> list[Path]:
    files: list[Path] = []
    for f in folders:
        p = PKG / f
        files += [p] if p.suffix == ".py" else sorted(p.rglob("*.py"))
    return files


CORE = ["lifecycle.py", "plan.py", "tiles.py", "upsample.py", "blend.py", "project.py", "block_step.py",
        "local_executor.py", "memory.py", "store", "io", "upsamplers"]


@pytest.mark.parametrize("path", [p for p in _modules(*[c for c in CORE if (PKG / c).exists()])],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_engine_store_and_io_never_import_orchestration_or_flows(path):
    bad = {m for m in _imports(path) if m.startswith(("geosr.orchestration", "geosr.flows", "geosr.commands",
                                                        "geosr.cli", "flows"))}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}: the engine, store and io stay below orchestration"


@pytest.mark.parametrize("path", _modules("orchestration"), ids=lambda p: str(p.relative_to(ROOT)))
def test_orchestration_never_imports_the_cli_or_the_flows(path):
    bad = {m for m in _imports(path) if m.startswith(("geosr.commands", "geosr.cli", "geosr.flows", "flows"))}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_geosr_never_imports_a_top_level_flows_package():
    bad = {str(p.relative_to(ROOT)): m for p in PKG.rglob("*.py") for m in _imports(p) if m.startswith("flows")}
    assert not bad and not (ROOT / "flows").exists(), bad


def test_default_yaml_is_the_defaults_written_out():
    text = (PKG / "configs" / "default.yaml").read_text()
    assert load_config("default") == RunConfig(), "configs/default.yaml and the models' defaults differ"
    assert yaml.safe_load(text) == RunConfig().model_dump(mode="json"), "every key, and only those, is written out"


def test_packaged_configs_load_and_the_documented_paths_still_work():
    assert {"default", "sample", "sentinel2-l2a"} <= set(packaged_configs())
    for name in packaged_configs():
        load_config(name)
    assert load_config("configs/sentinel2-l2a.yaml") == load_config("sentinel2-l2a")
    assert load_config("sentinel2-l2a.yaml").input.preset == "sentinel2-l2a"


def test_ldm_params_mirror_the_sampling_options():
    import inspect
    import typing

    from geosr.diffusion.consistency import OPERATORS
    from geosr.diffusion.mean import ENSEMBLES
    from geosr.diffusion.pipeline import SamplingOptions
    from geosr.diffusion.samplers import SAMPLERS
    from geosr.diffusion.upsampler import build

    options = {f.name for f in dataclasses.fields(SamplingOptions)}
    factory = {n for n in inspect.signature(build).parameters if n not in ("scale", "batch_size", "device", "bands",
                                                                          "seed", "params")}
    assert set(LdmParams.model_fields) == options | factory, "geosr/model_params.py is out of step"

    def choices(name: str) -> set:
        ann = LdmParams.model_fields[name].annotation
        return {a for arg in typing.get_args(ann) for a in typing.get_args(arg)}

    assert choices("sampler") == set(SAMPLERS) and choices("operator") == set(OPERATORS)
    assert choices("ensemble") == set(ENSEMBLES)


def test_a_typo_in_model_params_fails_at_load():
    from geosr.errors import ConfigError

    with pytest.raises(ConfigError, match="model.params.stesp"):
        load_config(None, {"model.params.stesp": 4})
    with pytest.raises(ConfigError, match="sampler"):
        load_config(None, {"model.params.sampler": "euler"})
    with pytest.raises(ConfigError, match="model.params"):
        load_config(None, {"model.name": "bicubic", "model.params.steps": 4})
    assert load_config(None, {"model.params.steps": 4}).model == LdmModel(params=LdmParams(steps=4))
    # a plugin model's params go to its factory as given
    assert load_config(None, {"model.name": "my-plugin", "model.params": {"x": 1}}).model.params_dict() == {"x": 1}


def test_unset_ldm_params_leave_the_config_hash_as_it_was():
    assert RunConfig().model_dump()["model"]["params"] == {}
    assert load_config(None, {"model.params.steps": 2}).config_hash() != RunConfig().config_hash()


def test_config_flags_are_generated_once_for_every_command():
    from geosr.cli import build_parser

    def flags(*argv: str) -> set[str]:
        parser = build_parser()
        sub = parser._subparsers._group_actions[0].choices[argv[0]]  # noqa: SLF001
        if len(argv) > 1:
            sub = sub._subparsers._group_actions[0].choices[argv[1]]  # noqa: SLF001
        return {o for a in sub._actions for o in a.option_strings}  # noqa: SLF001

    config = {"--config", "--set", "--scale", "--tile", "--overlap", "--chunk", "--block", "--model", "--bands",
              "--preset", "--dtype", "--zarr-format", "--device", "--batch-size", "--seed", "--endpoint-url"}
    for argv in (("run",), ("flows", "run-scene"), ("flows", "new-scenes"), ("flows", "serve"), ("backfill",)):
        assert config <= flags(*argv), argv
    assert {"--dask-address", "--dask-threads", "--no-quicklook", "--lease-ttl"} <= flags("backfill")
