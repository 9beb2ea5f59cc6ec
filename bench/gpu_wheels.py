"""The GPU session's wheelhouse: which wheels the lent device needs, and the checks of them.

The lent GPU machine has no network, Python 3.12 and an image with torch, numpy, scipy, pillow, ... (the list
is bench/gpu_image_packages.txt). geosr's local path there - ``geosr run`` on a local GeoTIFF writing local
Zarr, bench/gpu_check.py, bench/gpu.py, a short ``geosr train`` - needs :data:`WHEELS` beyond it, pinned by
requirements/constraints.txt. bench/gpu_wheelhouse.sh downloads them into .whl/ and calls this file:

    python bench/gpu_wheels.py pins                    # NAME==VERSION of every wheel (from the constraints)
    python bench/gpu_wheels.py collect CACHE DEST      # the pinned wheels of CACHE -> DEST, LZMA-repacked
    python bench/gpu_wheels.py size DIR --limit-mib 60 # DIR + the working tree that travels, against the limit
    python bench/gpu_wheels.py check --site DIR        # on the device, after the install: requirements met?
    python bench/gpu_wheels.py image-side DIR          # what the image must provide (the dry run installs these)
    python bench/gpu_wheels.py trace OUT.json          # run the local path on CPU, record who imports what
    python bench/gpu_wheels.py needs OUT.json          # -> distributions needed: from the image / as wheels

``trace`` + ``needs`` is how :data:`WHEELS` and :data:`IMAGE_USED` were found (tests/test_gpu_session.py
re-derives them): an import counts when geosr or a shipped wheel makes it, not inside a ``try: ... except
ImportError`` that carries on without it; what the image's own packages import is the image's business.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import functools
import importlib
import importlib.metadata as md
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
IMAGE_FILE = ROOT / "bench" / "gpu_image_packages.txt"
SCRIPTS = ("__main__", "core", "gpu", "gpu_check", "gpu_session")  # bench scripts, run by name: geosr's side

# distribution -> why the device needs it (what imports it on the local path). Requirements that nothing imports
# there stay out (rasterio's cligj and click-plugins serve its CLI; diffusers' importlib-metadata, Python < 3.8)
WHEELS: dict[str, str] = {
    "rasterio": "reads the GeoTIFF (geosr.io.source); GDAL and PROJ inside",
    "affine": "rasterio's transforms",
    "zarr": "writes the output store (geosr.store)",
    "numcodecs": "zarr's codecs (blosc, zstd)",
    "donfig": "zarr's configuration",
    "google-crc32c": "zarr's crc32c codec",
    "pyproj": "the output's CRS: CF grid mapping, STAC footprint (geosr.store.georef, .spec, .stac)",
    "pystac-core": "the STAC Item beside the store (geosr.store.stac)",
    "antimeridian": "the STAC Item's footprint split at +-180 (geosr.store.stac.footprint)",
    "shapely": "antimeridian's geometry (geosr.store.stac.footprint)",
    "pystac-ext-projection": "the STAC Item's proj: fields",
    "pystac-ext-raster": "the STAC Item's raster:bands",
    "pydantic": "run and train configuration (geosr.config, geosr.diffusion.train)",
    "pydantic-core": "pydantic",
    "annotated-types": "pydantic",
    "typing-inspection": "pydantic",
    "typing-extensions": "pydantic-core 2.50 needs >= 4.16, newer than the image may hold (pure Python, 45 kB)",
    "diffusers": "the denoiser (UNet2DModel) and LDSR-S2's autoencoder (geosr.diffusion.model)",
    "tenacity": "the retries of every storage operation (geosr.retry)",
    "tornado": "tenacity imports it when it is installed (its optional tornado support); pure Python",
}
# image distributions that geosr and the wheels import on the local path (the dry run installs these from
# the index to stand in for the image; `check` verifies them on the device)
IMAGE_USED: tuple[str, ...] = (
    "attrs", "certifi", "click", "fsspec", "huggingface-hub", "msgpack", "numpy", "packaging", "pillow", "pyyaml",
    "requests", "safetensors", "scipy", "torch", "tqdm", "urllib3",
)


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages() -> set[str]:
    return {canon(line.split("#")[0].strip()) for line in IMAGE_FILE.read_text().splitlines()
            if line.split("#")[0].strip()}


def pins() -> dict[str, str]:
    """canonical name -> pinned version, from requirements/constraints.txt."""
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[canon(name)] = version.strip()
    return out


def wheel_pins() -> list[str]:
    have = pins()
    missing = sorted(n for n in WHEELS if n not in have)
    if missing:
        raise SystemExit(f"gpu_wheels: {', '.join(missing)} not pinned in {CONSTRAINTS}: pin them there first")
    return [f"{n}=={have[n]}" for n in sorted(WHEELS)]


# -- repack ---------------------------------------------------------------------------------------------
def repack(path: Path) -> tuple[int, int]:
    """Rewrite one wheel with LZMA members: the same files, names, dates and modes (RECORD stays right, pip
    reads LZMA through zipfile). Returns (bytes before, bytes after); a wheel already LZMA is left alone."""
    before = path.stat().st_size
    with zipfile.ZipFile(path) as zin:
        infos = zin.infolist()
        if all(i.compress_type == zipfile.ZIP_LZMA or i.is_dir() for i in infos):
            return before, before
        tmp = path.with_name(path.name + ".tmp")
        with zipfile.ZipFile(tmp, "w") as zout:
            for info in infos:
                new = zipfile.ZipInfo(info.filename, info.date_time)
                new.external_attr = info.external_attr
                new.compress_type = zipfile.ZIP_STORED if info.is_dir() else zipfile.ZIP_LZMA
                zout.writestr(new, zin.read(info))
    with zipfile.ZipFile(path) as a, zipfile.ZipFile(tmp) as b:
        if [(i.filename, i.CRC) for i in a.infolist()] != [(i.filename, i.CRC) for i in b.infolist()]:
            tmp.unlink()
            raise SystemExit(f"gpu_wheels: repacking {path.name} changed its contents; left as it was")
        if b.testzip() is not None:
            tmp.unlink()
            raise SystemExit(f"gpu_wheels: the repacked {path.name} does not read back; left as it was")
    if tmp.stat().st_size >= before:
        tmp.unlink()
        return before, before
    tmp.replace(path)
    return before, path.stat().st_size


def collect(cache: Path, dest: Path) -> None:
    """Copy exactly the pinned wheels from ``cache`` (where pip downloaded them) into a fresh ``dest``, each
    repacked with LZMA; stop if one is missing or there are two of one distribution."""
    want = dict(p.split("==") for p in wheel_pins())
    found: dict[str, list[Path]] = {}
    for w in sorted(cache.glob("*.whl")):
        name, version = w.name.split("-")[:2]
        if want.get(canon(name)) == version:
            found.setdefault(canon(name), []).append(w)
    missing = sorted(set(want) - set(found))
    twice = sorted(n for n, ws in found.items() if len(ws) > 1)
    if missing or twice:
        raise SystemExit(f"gpu_wheels: in {cache}: missing {missing or 'none'}, more than one wheel of {twice or 'none'}")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    before = after = 0
    for name in sorted(found):
        w = shutil.copy2(found[name][0], tmp / found[name][0].name)
        b0, b1 = repack(Path(w))
        before, after = before + b0, after + b1
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    print(f"{dest}: {len(found)} wheels, {before / 2**20:.1f} MiB as downloaded, {after / 2**20:.1f} MiB repacked")


# -- size -----------------------------------------------------------------------------------------------
def travelling_bytes(root: Path = ROOT) -> int:
    """Bytes of the working tree that the device tool sends: tracked + untracked-not-ignored files."""
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         check=True, capture_output=True).stdout
    total = 0
    for rel in {p for p in out.decode().split("\0") if p}:
        f = root / rel
        if f.is_file() and not f.is_symlink():
            total += f.stat().st_size
    return total


def dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


# -- check (on the device) ------------------------------------------------------------------------------
def check(site: str | None) -> int:
    """Every shipped wheel's requirements and geosr's minimum versions, against what Python sees now."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = None
    reqs: list[tuple[str, Requirement]] = []
    dists: dict[str, md.Distribution] = {}
    for d in md.distributions():  # in sys.path order: the first of a name is the one Python imports
        dists.setdefault(canon(d.metadata["Name"]), d)
    for name in sorted(WHEELS):
        d = dists.get(name)
        if d is None:
            print(f"ERROR {name}: not installed (shipped in .whl/: did the install step run?)")
            continue
        if site and not str(d.locate_file("")).startswith(str(Path(site).resolve())):
            print(f"note  {name} {d.version}: found outside {site}")
        reqs += [(name, Requirement(r)) for r in d.requires or ()]
    if tomllib is not None:
        proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        for r in proj["dependencies"] + proj["optional-dependencies"]["model"]:
            reqs.append(("geosr", Requirement(r)))
    errors = 0
    needed = set(WHEELS) | set(IMAGE_USED)
    for who, r in reqs:
        if r.marker is not None and not r.marker.evaluate({"extra": ""}):
            continue
        name = canon(r.name)
        d = dists.get(name)
        if d is None:
            if name in needed:
                print(f"ERROR {who} needs {r}: not installed")
                errors += 1
            elif who != "geosr":
                print(f"note  {who} requires {r}: not installed (not imported on the local path)")
            continue
        if r.specifier and Version(d.version) not in r.specifier:
            bad = name in needed
            errors += bad
            print(f"{'ERROR' if bad else 'note '} {who} needs {r}; found {d.version}")
    for name in IMAGE_USED:
        if name not in dists:
            print(f"ERROR {name}: the image should provide it (bench/gpu_image_packages.txt) but it is missing")
            errors += 1
    shown = ", ".join(f"{n} {dists[n].version}" for n in sorted(needed) if n in dists)
    print(f"{'ok' if not errors else f'{errors} problem(s)'}: {shown}")
    return 1 if errors else 0


def _requirement(text: str):
    try:
        from packaging.requirements import Requirement
    except ModuleNotFoundError:  # a bare interpreter: pip's own copy
        from pip._vendor.packaging.requirements import Requirement
    return Requirement(text)


def wheel_requires(wheel: Path) -> list[str]:
    """Names a wheel requires (its METADATA's Requires-Dist without extras, markers for this Python)."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    out = []
    for line in lines:
        if line.startswith("Requires-Dist:"):
            r = _requirement(line.split(":", 1)[1].strip())
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                out.append(canon(r.name))
    return out


def image_side(wheel_dir: Path) -> list[str]:
    """The image's distributions this path uses: :data:`IMAGE_USED` plus what the wheels in ``wheel_dir``
    require of the image (the dry run installs these to stand in for it; requirements that neither ship nor
    are in the image are the ones nothing imports, see :data:`WHEELS`)."""
    out, image = set(IMAGE_USED), image_packages()
    for w in sorted(wheel_dir.glob("*.whl")):
        out |= {n for n in wheel_requires(w) if n not in WHEELS and n in image}
    return sorted(out)


# -- trace ----------------------------------------------------------------------------------------------
def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    t = handler.type
    names = {n.attr if isinstance(n, ast.Attribute) else getattr(n, "id", "")
             for n in ([] if t is None else t.elts if isinstance(t, ast.Tuple) else [t])}
    reraises = any(isinstance(n, ast.Raise) for n in ast.walk(handler))
    return not reraises and (t is None or bool({"ImportError", "ModuleNotFoundError", "Exception"} & names))


@functools.lru_cache(maxsize=None)
def _optional_ranges(filename: str) -> tuple[tuple[int, int], ...]:
    """Line ranges of ``filename`` whose imports are optional: try bodies whose handler catches ImportError
    and carries on, ``with suppress(ImportError)`` blocks."""
    try:
        tree = ast.parse(Path(filename).read_text())
    except (OSError, SyntaxError, ValueError):
        return ()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and node.body and any(_catches_import_error(h) for h in node.handlers):
            out.append((node.body[0].lineno, node.body[-1].end_lineno))
        elif isinstance(node, ast.With):
            for item in node.items:
                e = item.context_expr
                if isinstance(e, ast.Call) and getattr(e.func, "attr", getattr(e.func, "id", "")) == "suppress" \
                        and any(getattr(x, "id", "") in ("ImportError", "ModuleNotFoundError") for x in e.args):
                    out.append((node.lineno, node.end_lineno))
    return tuple(out)


def is_optional(filename: str, line: int) -> bool:
    """Is the import at ``filename:line`` one its module carries on without (try/except ImportError that does
    not re-raise, or ``with suppress(ImportError)``)?"""
    return any(a <= line <= b for a, b in _optional_ranges(filename))


class ImportTracer:
    """Records (importer module, imported module, where) for every import statement and import_module call while
    active (also of modules already loaded, so a second importer is seen too); :meth:`edges` judges afterwards
    which were optional."""

    def __init__(self) -> None:
        self.sites: set[tuple[str, str, str, int]] = set()

    def _record(self, importer: str | None, target: str, frame) -> None:
        if importer and importer != target:
            self.sites.add((importer, target, frame.f_code.co_filename, frame.f_lineno))

    def edges(self, owners: dict[str, str]) -> dict[tuple[str, str], bool]:
        """(importer's distribution, imported one) -> optional (a required import anywhere wins), for imports
        across distributions made by geosr or by a distribution the image lacks (``owners``: module ->
        distribution; the traced scripts count as geosr). What the image's packages import is its business."""
        image = image_packages() - set(WHEELS)
        groups: dict[tuple[str, str], list[tuple[str, int]]] = {}
        for importer, target, filename, line in self.sites:
            a = owners.get(importer) or ("geosr" if importer in SCRIPTS else None)
            b = owners.get(target)
            if a and b and a != b and "stdlib" not in (a, b) and a not in image:
                groups.setdefault((a, b), []).append((filename, line))
        # optional unless one site is not (parsing stops at the first required site)
        return {edge: all(is_optional(f, n) for f, n in sorted(sites)) for edge, sites in groups.items()}

    def __enter__(self) -> "ImportTracer":
        self._import, self._import_module = builtins.__import__, importlib.import_module
        tracer = self

        def traced_import(name, globals=None, locals=None, fromlist=(), level=0):
            mod = tracer._import(name, globals, locals, fromlist, level)
            g = globals or {}
            try:
                target = importlib.util.resolve_name("." * level + name, g.get("__package__")) if level else name
            except (ImportError, ValueError):
                return mod
            frame = sys._getframe(1)
            tracer._record(g.get("__name__"), target, frame)
            for item in fromlist or ():
                if f"{target}.{item}" in sys.modules:
                    tracer._record(g.get("__name__"), f"{target}.{item}", frame)
            return mod

        def traced_import_module(name, package=None):
            mod = tracer._import_module(name, package)
            frame = sys._getframe(1)
            tracer._record(frame.f_globals.get("__name__"), mod.__name__, frame)
            return mod

        builtins.__import__, importlib.import_module = traced_import, traced_import_module
        return self

    def __exit__(self, *exc) -> None:
        builtins.__import__, importlib.import_module = self._import, self._import_module


def module_owners() -> dict[str, str]:
    """Loaded module -> its distribution ("geosr" for this checkout's files, "stdlib"), from files' RECORDs."""
    files: dict[str, str] = {}
    for d in md.distributions():
        name = canon(d.metadata["Name"] or "")
        for f in d.files or ():
            if f.suffix in (".py", ".so", ".pyd"):
                files[os.path.realpath(d.locate_file(f))] = name
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    out = {}
    for mname, mod in list(sys.modules.items()):
        path = getattr(mod, "__file__", None)
        if not path:
            if mname in sys.builtin_module_names or mname.split(".")[0] in sys.builtin_module_names:
                out[mname] = "stdlib"
            continue
        real = os.path.realpath(path)
        if real.startswith(str(ROOT) + os.sep) and "site-packages" not in real:
            out[mname] = "geosr"
        elif real in files:
            out[mname] = files[real]
        elif real.startswith(stdlib + os.sep) and "site-packages" not in real:
            out[mname] = "stdlib"
    return out


def run_local_path(work: Path) -> None:
    """What the device session runs, small and on CPU: ``geosr run`` on a synthetic scene (the bundled model),
    bench/gpu_check.py, bench/gpu.py (without LDSR-S2's baseline: geosr and diffusers code only, and an optional
    opensr-model check) and a few seconds of ``geosr train``."""
    import runpy

    sys.path.insert(0, str(ROOT / "bench"))
    from core import make_scene
    from geosr.cli import main as geosr

    scene = work / "scene.tif"
    make_scene(scene, 64)
    assert geosr(["run", str(scene), str(work / "out.zarr"), "--device", "cpu", "--no-progress",
                  "--set", "model.params.ensemble=1"]) == 0
    bench = {name: runpy.run_path(str(ROOT / "bench" / f"{name}.py"), run_name=name)["main"]
             for name in ("gpu_check", "gpu", "gpu_session")}
    assert bench["gpu_check"](["--quick"]) == 0
    assert bench["gpu"](["--device", "cpu", "--quick", "--no-baseline", "--batch", "1"]) == 0
    assert bench["gpu_session"](["train", "--work", str(work), "--out", str(work / "train"), "--device", "cpu",
                                 "--time-limit", "2", "--quick"]) == 0


def trace(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp, ImportTracer() as t:
        run_local_path(Path(tmp))
    edges = t.edges(module_owners())
    out.write_text(json.dumps({"edges": sorted([a, b, o] for (a, b), o in edges.items())}, indent=0) + "\n")


def needs(trace_json: Path) -> dict[str, list[str]]:
    """From a trace: the image's distributions that are used, the wheels needed (imports made by geosr or by
    another needed wheel) and the optional imports left out."""
    edges = json.loads(trace_json.read_text())["edges"]
    image = image_packages() - set(WHEELS)  # a wheel shipped over the image's copy still counts as a wheel
    required: dict[str, set[str]] = {}
    optional: dict[str, set[str]] = {}
    for a, b, opt in edges:
        (optional if opt else required).setdefault(a, set()).add(b)
    seen, todo = set(), ["geosr"]
    while todo:
        src = todo.pop()
        for dst in sorted(required.get(src, ())):
            if dst not in seen:
                seen.add(dst)
                if dst not in image:
                    todo.append(dst)
    skipped = sorted({f"{a} -> {b}" for a in seen | {"geosr"} if a not in image for b in optional.get(a, ())
                      if b not in seen})
    return {"image": sorted(seen & image), "wheels": sorted(seen - image), "optional_left_out": skipped}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("pins")
    r = sub.add_parser("collect")
    r.add_argument("cache")
    r.add_argument("dest")
    s = sub.add_parser("size")
    s.add_argument("dir")
    s.add_argument("--limit-mib", type=float, default=60.0)
    c = sub.add_parser("check")
    c.add_argument("--site", default=None, help="the folder the wheels were installed into")
    i = sub.add_parser("image-side")
    i.add_argument("wheel_dir")
    t = sub.add_parser("trace")
    t.add_argument("out")
    n = sub.add_parser("needs")
    n.add_argument("trace")
    a = p.parse_args(argv)
    if a.cmd == "pins":
        print("\n".join(wheel_pins()))
    elif a.cmd == "collect":
        collect(Path(a.cache), Path(a.dest))
    elif a.cmd == "size":
        wh, tree = dir_bytes(Path(a.dir)), travelling_bytes()
        total = (wh + tree) / 2**20
        print(f"wheelhouse {wh / 2**20:.1f} MiB + working tree {tree / 2**20:.1f} MiB = {total:.1f} MiB "
              f"(limit {a.limit_mib:g} MiB; the device tool takes 64 MiB in all)")
        if total > a.limit_mib:
            print(f"gpu_wheels: {total:.1f} MiB is over {a.limit_mib:g} MiB: the session would not travel. Shrink "
                  "the working tree (untracked files count too: `git status`) or the wheel list in bench/gpu_wheels.py",
                  file=sys.stderr)
            return 1
    elif a.cmd == "check":
        return check(a.site)
    elif a.cmd == "image-side":
        print("\n".join(image_side(Path(a.wheel_dir))))
    elif a.cmd == "trace":
        trace(Path(a.out))
    elif a.cmd == "needs":
        print(json.dumps(needs(Path(a.trace)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
