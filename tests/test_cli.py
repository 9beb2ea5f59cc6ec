"""The CLI as a user meets it: one-line errors with non-zero exit codes, never a traceback for a user's
mistake; skip / resume / overwrite; info and preview."""

from __future__ import annotations

import subprocess
import sys

import pytest
from rasterio.transform import Affine

from geosr.cli import main
from tests.data.synthetic import (
    make_corrupt_block_geotiff,
    make_geotiff,
    make_truncated_geotiff,
    make_ungeoreferenced_tiff,
    write_not_a_raster,
)

SMALL = ["--scale", "2", "--tile", "32", "--overlap", "8", "--chunk", "64", "--block", "128",
         "--device", "cpu", "--no-progress", "--model", "bicubic"]


def _run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def scene(tmp_path):
    return make_geotiff(tmp_path / "in.tif", height=90, width=70, bands=3, seed=1)


def _one_line_error(rc, err, *needles):
    assert rc != 0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("geosr: error:") and "Traceback" not in err
    for n in needles:
        assert n.lower() in lines[0].lower(), lines[0]


def test_run_info_preview_roundtrip(scene, tmp_path, capsys):
    out = tmp_path / "o.zarr"
    rc, so, _ = _run(["run", str(scene), str(out), *SMALL, "--preview", str(tmp_path / "p.png")], capsys)
    assert rc == 0 and "written" in so and (tmp_path / "p.png").stat().st_size > 1000
    rc, so, _ = _run(["run", str(scene), str(out), *SMALL], capsys)
    assert rc == 0 and "already complete" in so
    rc, so, _ = _run(["run", str(scene), str(out), *SMALL, "--overwrite"], capsys)
    assert rc == 0 and "written" in so
    rc, so, _ = _run(["info", str(out)], capsys)
    assert rc == 0 and "complete" in so and "EPSG:32633" in so
    rc, so, _ = _run(["preview", str(scene), str(out), str(tmp_path / "q.png"), "--crop", "40"], capsys)
    assert rc == 0
    from PIL import Image

    im = Image.open(tmp_path / "q.png")
    assert im.size == (40 * 2 * 2 + 8, 40 * 2), "input and output side by side at output resolution"


@pytest.mark.parametrize(
    "make,needles",
    [
        (lambda d: d / "missing.tif", ["does not exist"]),
        (lambda d: write_not_a_raster(d / "x.tif"), ["not a raster"]),
        (lambda d: make_truncated_geotiff(d / "t.tif"), []),
        (lambda d: make_corrupt_block_geotiff(d / "c.tif", height=512, width=512), []),
        (lambda d: make_ungeoreferenced_tiff(d / "u.tif"), ["geotransform"]),
    ],
    ids=["missing", "not-a-raster", "truncated", "corrupt-block", "no-crs"],
)
def test_bad_inputs_are_one_line_errors(tmp_path, capsys, make, needles):
    path = make(tmp_path)
    rc, _, err = _run(["run", str(path), str(tmp_path / "o.zarr"), *SMALL], capsys)
    _one_line_error(rc, err, *needles)
    assert not (tmp_path / "o.zarr" / ".geosr" / "complete.json").exists(), "nothing half-written is complete"


def test_rotated_transform_is_refused(tmp_path, capsys):
    p = make_geotiff(tmp_path / "r.tif", height=40, width=40, transform=Affine(10, 2, 500000, 2, -10, 5000000))
    rc, _, err = _run(["run", str(p), str(tmp_path / "o.zarr"), *SMALL], capsys)
    _one_line_error(rc, err, "gdalwarp")


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--bands", "9"], ["band"]),
        (["--bands", "B1,nosuchband"], ["nosuchband"]),
        (["--overlap", "40"], ["overlap"]),
        (["--scale", "0"], ["scale"]),
        (["--block", "100"], ["block"]),
        (["--set", "output.zarr_format=5"], ["zarr_format"]),
        (["--model", "magic"], ["magic"]),
    ],
)
def test_bad_parameters_are_one_line_errors(scene, tmp_path, capsys, args, needles):
    rc, _, err = _run(["run", str(scene), str(tmp_path / "o.zarr"), *SMALL, *args], capsys)
    _one_line_error(rc, err, *needles)


def test_unwritable_output(scene, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, _, err = _run(["run", str(scene), str(blocker / "o.zarr"), *SMALL], capsys)
    _one_line_error(rc, err)


def test_incomplete_output_other_parameters(scene, tmp_path, capsys):
    from geosr.config import load_config
    from geosr.lifecycle import run_scene

    out = tmp_path / "o.zarr"
    cfg = load_config(None, {"tiling.scale": 2, "tiling.tile": 32, "tiling.overlap": 8, "tiling.chunk": 64,
                             "tiling.block": 64, "model.device": "cpu", "model.name": "bicubic"})
    run_scene(str(scene), str(out), cfg, max_blocks=1)
    rc, _, err = _run(["run", str(scene), str(out), *SMALL], capsys)  # block 128 != 64
    _one_line_error(rc, err, "--overwrite")
    rc, so, _ = _run(["run", str(scene), str(out), *SMALL, "--block", "64"], capsys)
    assert rc == 0 and so.startswith("resumed")


@pytest.mark.s3
def test_s3_missing_bucket_and_bad_credentials(scene, tmp_path, capsys, s3_server, s3_bucket, monkeypatch):
    ep = ["--endpoint-url", s3_server.endpoint_url]
    rc, _, err = _run(["run", str(scene), "s3://no-such-bucket-geosr/o.zarr", *SMALL, *ep], capsys)
    _one_line_error(rc, err, "bucket")
    rc, so, _ = _run(["run", str(scene), s3_bucket.uri("o.zarr"), *SMALL, *ep], capsys)
    assert rc == 0 and "written" in so
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    rc, _, err = _run(["run", str(scene), s3_bucket.uri("p.zarr"), *SMALL, *ep], capsys)
    _one_line_error(rc, err)
    assert "wrong-secret" not in err
    s3fs.S3FileSystem.clear_instance_cache()


def test_entry_point_exit_code_and_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "geosr", "run", str(tmp_path / "nope.tif"), str(tmp_path / "o.zarr")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "does not exist" in r.stderr


@pytest.mark.heavy
def test_default_model_is_the_bundled_model_for_any_band_count(tmp_path, capsys):
    """No --model: the bundled x4 model, for 4, 1, 3 and 10 bands alike (issue 15); a scale it can't make is a
    one-line error that lists those it can."""
    import json

    import zarr

    flags = ["--tile", "32", "--overlap", "8", "--chunk", "64", "--block", "128", "--device", "cpu", "--no-progress"]
    for bands in (4, 1, 3, 10):
        src = make_geotiff(tmp_path / f"b{bands}.tif", height=40, width=48, bands=bands, seed=bands)
        out = tmp_path / f"o{bands}.zarr"
        rc, so, err = _run(["run", str(src), str(out), *flags], capsys)
        assert rc == 0, err
        group = zarr.open_group(str(out), mode="r")
        attrs = dict(group.attrs)
        prov = attrs.get("provenance") or attrs.get("geosr:provenance") or attrs
        assert '"name": "ldm"' in json.dumps(prov)
        assert group["reflectance"].shape == (bands, 160, 192)
    x5 = ["--tile", "32", "--overlap", "8", "--chunk", "80", "--block", "160", "--device", "cpu", "--no-progress"]
    rc, _, err = _run(["run", str(tmp_path / "b3.tif"), str(tmp_path / "x5.zarr"), "--scale", "5", *x5], capsys)
    _one_line_error(rc, err, "the bundled model makes x4", "x2, x3, x4, x8, x12, x16", "--model lanczos")
