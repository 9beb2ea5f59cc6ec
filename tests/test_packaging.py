"""Every third-party module that geosr's code imports is declared in pyproject.toml (core or an extra), so that
``pip install geosr[...]`` on a user's machine (and the Docker images, built from requirements/cpu.txt) has it:
the test venv installs every extra at once and would hide a module that reaches it only through another
package's dependencies (pyproj did, through the test extra)."""

from __future__ import annotations

import ast
import importlib.util
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]

INSTALLED_WITHOUT_DEPS = {"opensr_test": "opensr-test"}
"""Imported (lazily) but installed with --no-deps beside an extra, because its declared requirements pull in
networks it never uses: scripts/setup.sh and docs/model.md say how. Every such module is listed here."""


def imported_modules(package: Path) -> dict[str, set[str]]:
    """Absolute imports of third-party modules in ``package``'s .py files: module -> files importing it."""
    found: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == package.name or top == "__future__":
                    continue
                found.setdefault(_distribution_module(name), set()).add(str(path.relative_to(ROOT)))
    return found


def _distribution_module(name: str) -> str:
    """The module that identifies the distribution: the top-level package, or its first subpackage for a
    namespace package shared by several distributions (``odc.stac``, ``odc.geo``)."""
    parts = name.split(".")
    spec = importlib.util.find_spec(parts[0])
    namespace = spec is not None and spec.origin in (None, "namespace") and spec.submodule_search_locations
    return ".".join(parts[:2]) if namespace and len(parts) > 1 else parts[0]


def _owners() -> dict[str, set[str]]:
    """Installed module (as :func:`_distribution_module` names it) -> distributions that ship it."""
    owners: dict[str, set[str]] = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        for f in dist.files or ():
            p = f.parts
            if not p or p[0].endswith((".dist-info", ".data")) or p[0] == "..":
                continue
            if len(p) == 1:
                if p[0].endswith(".py"):
                    owners.setdefault(p[0][:-3], set()).add(name)
                continue
            for n in (p[0], ".".join(p[:2])):
                owners.setdefault(n, set()).add(name)
    return owners


def declared() -> dict[str, str]:
    """Declared distribution -> where (``core`` or ``extra <name>``)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {canonicalize_name(Requirement(r).name): "core" for r in project["dependencies"]}
    for extra, reqs in project["optional-dependencies"].items():
        for r in reqs:
            out.setdefault(canonicalize_name(Requirement(r).name), f"extra {extra}")
    return out


def test_every_imported_module_is_declared():
    decl = declared()
    owners = _owners()
    missing = []
    for module, files in sorted(imported_modules(ROOT / "geosr").items()):
        top = module.split(".")[0]
        if top in INSTALLED_WITHOUT_DEPS:
            continue
        dists = owners.get(module) or owners.get(top) or set()
        if not dists & set(decl):
            missing.append(f"{module} (from {sorted(dists) or 'no installed distribution'}; imported in "
                           f"{', '.join(sorted(files)[:2])})")
    assert not missing, "imported but not declared in pyproject.toml: " + "; ".join(missing)


def test_the_scan_sees_what_it_must():
    """The scan itself: it finds the imports of a module (so the test above cannot pass by seeing nothing),
    tells a namespace package's distributions apart, and the --no-deps list is still imported somewhere."""
    mods = imported_modules(ROOT / "geosr")
    assert {"numpy", "pyproj", "rasterio", "torch", "odc.stac"} <= set(mods)
    owners = _owners()
    assert "odc-stac" in owners["odc.stac"] and "odc-stac" not in owners.get("odc.geo", set())
    for module in INSTALLED_WITHOUT_DEPS:
        assert module in mods, f"{module} is no longer imported; drop it from INSTALLED_WITHOUT_DEPS"


@pytest.mark.parametrize("profile,extras", [("test", "model,flows,test,opensr"), ("sample", "model,flows")])
def test_setup_installs_what_each_profile_needs(profile, extras):
    """scripts/setup.sh: the tests get every extra; the sample only what it runs (no SeaweedFS or hadolint
    binaries, no test tools)."""
    text = (ROOT / "scripts" / "setup.sh").read_text()
    assert f'-e ".[{extras}]"' in text
    if profile == "sample":
        assert "bash scripts/setup.sh sample" in (ROOT / "scripts" / "sample.sh").read_text()
    assert "GEOSR_TORCH_INDEX_URL" in text
