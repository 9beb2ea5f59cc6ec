"""Same inputs and seed -> the same output bytes, on two versions of geosr.

Runs ``geosr run`` with a few configurations on the bundled sample (and a synthetic scene with nodata) once with
the geosr of this checkout and once with another one (``--other DIR``: a checkout or ``git archive`` of e.g.
main, put first on ``PYTHONPATH``), then compares the two Zarr stores file by file: every chunk byte for byte,
every Zarr metadata file (``.zattrs``, ``.zarray``, ``.zmetadata``, ``zarr.json``) and the STAC item as JSON
without what differs from run to run (times, durations; ``--ignore`` adds keys). The ledger (``.geosr/``) is
geosr's bookkeeping, not the product, and is left out.

    git archive main | tar -x -C /tmp/main-src
    python scripts/check_bytes.py --other /tmp/main-src [--ldm]

Exit 0 when every configuration gives identical products; the differences otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "geosr" / "data" / "sample" / "rgbn.tif"
VOLATILE = {"start_time", "end_time", "created", "finalized", "started", "time", "seconds", "model_seconds",
            "block_seconds", "datetime"}
CONFIGS: dict[str, list[str]] = {
    "bicubic-x4": ["--model", "bicubic", "--chunk", "256", "--block", "512"],
    "lanczos-x2-float32": ["--model", "lanczos", "--scale", "2", "--tile", "64", "--overlap", "8", "--chunk", "128",
                           "--block", "256", "--dtype", "float32"],
    "nearest-zarr3-shard": ["--model", "nearest", "--zarr-format", "3", "--chunk", "128", "--block", "512",
                            "--set", "output.shard=256"],
    "bilinear-nodata": ["--model", "bilinear", "--chunk", "128", "--block", "256", "<nodata>"],
}
LDM = {"ldm-default": ["--chunk", "512", "--block", "1024", "--batch-size", "8"]}


def nodata_scene(path: Path) -> Path:
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(7)
    a = (rng.random((4, 150, 170)) * 3000 + 200).astype("uint16")
    a[:, 20:60, 30:90] = 0
    with rasterio.open(path, "w", driver="GTiff", height=150, width=170, count=4, dtype="uint16", nodata=0,
                       crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10)) as ds:
        ds.write(a)
    return path


def run(pythonpath: str | None, args: list[str], workdir: Path) -> Path:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    else:
        env.pop("PYTHONPATH", None)
    out = workdir / "out.zarr"  # given relative to the run's folder: the STAC item's href is the same for both
    cmd = [sys.executable, "-m", "geosr", "run", *args[:1], "out.zarr", *args[1:], "--device", "cpu", "--no-progress",
           "--workers", "1"]
    r = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"geosr run failed ({'other' if pythonpath else 'this'}): {r.stderr[-2000:]}")
    return out


def _clean(doc: Any, ignore: set[str]) -> Any:
    if isinstance(doc, dict):
        return {k: _clean(v, ignore) for k, v in doc.items() if k not in ignore}
    if isinstance(doc, list):
        return [_clean(v, ignore) for v in doc]
    return doc


def product(store: Path, ignore: set[str]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for p in sorted(store.rglob("*")):
        rel = p.relative_to(store).as_posix()
        if not p.is_file() or rel.startswith(".geosr/"):
            continue
        data = p.read_bytes()
        if p.name in (".zattrs", ".zarray", ".zgroup", ".zmetadata", "zarr.json"):
            data = json.dumps(_clean(json.loads(data), ignore), sort_keys=True).encode()
        files[rel] = data
    stac = store.with_name("out.stac-item.json")
    if stac.exists():
        item = _clean(json.loads(stac.read_bytes()), ignore)
        files["<stac item>"] = json.dumps(item, sort_keys=True).encode()
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--other", required=True, help="the other geosr's source tree (put first on PYTHONPATH)")
    p.add_argument("--ldm", action="store_true", help="also the bundled model on the sample (about a minute)")
    p.add_argument("--ignore", nargs="*", default=[], help="more JSON keys that may differ")
    args = p.parse_args(argv)
    ignore = VOLATILE | set(args.ignore)
    configs = {**CONFIGS, **(LDM if args.ldm else {})}
    bad = 0
    with tempfile.TemporaryDirectory(prefix="geosr-bytes-") as tmp:
        scene = nodata_scene(Path(tmp) / "nodata.tif")
        for name, flags in configs.items():
            src = str(scene if "<nodata>" in flags else SAMPLE)
            flags = [f for f in flags if f != "<nodata>"]
            stores = []
            for who, path in (("this", None), ("other", str(Path(args.other).resolve()))):
                d = Path(tmp) / name / who
                d.mkdir(parents=True)
                stores.append(product(run(path, [src, *flags], d), ignore))
            mine, theirs = stores
            differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            chunks = sum(1 for k in mine if "/" in k and not k.rsplit("/", 1)[-1].startswith((".z", "zarr.json")))
            print(f"{name}: {len(mine)} files ({chunks} chunks) -> "
                  f"{'identical' if not differ else f'{len(differ)} differ: {differ[:6]}'}")
            bad += bool(differ)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
