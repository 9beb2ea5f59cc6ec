"""The GPU device session's logic, on CPU and without network (bench/gpu_wheels.py, gpu_session.sh/.py): the
wheel list against what the local path really imports, LZMA-repacked wheels that pip installs with --no-index,
the size limit, the summary beside LDSR-S2's figures."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # the bench scripts import each other by name, and so does this test

import gpu  # noqa: E402
import gpu_session  # noqa: E402
import gpu_wheels as gw  # noqa: E402


def test_is_optional_tells_guarded_imports_from_required_ones(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(textwrap.dedent("""\
        try:
            import a
        except ImportError:
            a = None
        try:
            import b
        except ImportError as e:
            raise SystemExit("pip install b") from e
        from contextlib import suppress
        with suppress(ImportError):
            import c
        import d
        """))
    line = {ln.strip()[len("import "):]: i for i, ln in enumerate(src.read_text().splitlines(), 1)
            if ln.strip().startswith("import ")}
    assert {n: gw.is_optional(str(src), line[n]) for n in "abcd"} == {"a": True, "b": False, "c": True, "d": False}


def test_wheel_list_is_exactly_what_the_local_path_imports(tmp_path):
    """`geosr run` on a local scene, gpu_check, gpu.py and `geosr train`, traced: every distribution that geosr
    or a shipped wheel imports is in the image or in WHEELS, and every wheel is imported."""
    trace = tmp_path / "trace.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_wheels.py"), "trace", str(trace)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = gw.needs(trace)
    missing = sorted(set(got["wheels"]) - set(gw.WHEELS))
    assert not missing, f"the local path imports {missing}, which the GPU image lacks: add them to WHEELS " \
                        "(or make the import lazy where local files do not need it)"
    unused = sorted(set(gw.WHEELS) - set(got["wheels"]))
    assert not unused, f"WHEELS ships {unused}, which nothing imports on the local path any more"
    assert got["image"] == sorted(gw.IMAGE_USED)
    assert not {"boto3", "botocore", "s3fs", "distributed", "dask", "prefect"} & set(got["image"] + got["wheels"])
    assert len(gw.wheel_pins()) == len(gw.WHEELS)  # each pinned in requirements/constraints.txt


def _wheel(path: Path, files: dict[str, str], name: str = "probe", version: str = "1.0") -> Path:
    info = f"{name}-{version}.dist-info"
    files = {**files, f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for n, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{n},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    whl = path / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w", zipfile.ZIP_DEFLATED) as z:
        for n, text in files.items():
            z.writestr(n, text)
    return whl


def test_repacked_wheel_keeps_its_files_and_installs_with_no_index(tmp_path):
    rng = random.Random(0)  # text that LZMA packs tighter than deflate, as it does real wheels' code
    words = ("tile", "band", "scene", "zarr", "blend", "model", "batch", "seam")
    filler = "".join(f"# {' '.join(rng.choice(words) for _ in range(12))}\n" for _ in range(3000))
    whl = _wheel(tmp_path, {"probe.py": "VALUE = 42\n" + filler})
    with zipfile.ZipFile(whl) as z:
        before = [(i.filename, i.CRC) for i in z.infolist()]
    b0, b1 = gw.repack(whl)
    assert b1 < b0
    with zipfile.ZipFile(whl) as z:
        assert [(i.filename, i.CRC) for i in z.infolist()] == before
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_LZMA}
    assert gw.repack(whl) == (b1, b1)  # already LZMA: left alone
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
                    "--no-deps", "--no-compile", "--target", str(site), str(whl)], check=True, timeout=120)
    out = subprocess.run([sys.executable, "-c", "import probe; print(probe.VALUE)"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(site)}, check=True)
    assert out.stdout.strip() == "42"


def test_collect_takes_exactly_the_pinned_wheels(tmp_path):
    cache, dest = tmp_path / "cache", tmp_path / "dest"
    cache.mkdir()
    pins = dict(p.split("==") for p in gw.wheel_pins())
    for name, version in pins.items():
        _wheel(cache, {"m.py": "x = 1\n"}, name.replace("-", "_"), version)
    _wheel(cache, {"m.py": "x = 1\n"}, "zarr", "0.0.1")  # another version: not taken
    gw.collect(cache, dest)
    assert len(list(dest.glob("*.whl"))) == len(gw.WHEELS)
    (cache / f"zarr-{pins['zarr']}-py3-none-any.whl").unlink()
    with pytest.raises(SystemExit, match=r"missing \['zarr'\]"):
        gw.collect(cache, dest)


def test_size_check_fails_over_the_limit(tmp_path, capsys):
    (tmp_path / "a.whl").write_bytes(b"x" * 2**20)
    assert gw.main(["size", str(tmp_path), "--limit-mib", "1000"]) == 0
    assert gw.main(["size", str(tmp_path), "--limit-mib", "1"]) == 1
    assert "would not travel" in capsys.readouterr().err


def test_session_stops_at_once_without_a_wheelhouse(tmp_path):
    env = {**os.environ, "GEOSR_WHEELS": str(tmp_path / "none"), "GEOSR_SITE": str(tmp_path / "site"),
           "GEOSR_WORK": str(tmp_path / "work")}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_session.sh"), "--cpu-dry-run", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "bench/gpu_wheelhouse.sh" in proc.stdout + proc.stderr
    assert (tmp_path / "out" / "session.log").is_file()


def test_summary_puts_the_figures_beside_ldsr_s2(tmp_path, capsys):
    row = gpu._row("geosr shipped", "bfloat16", 16, 0, 0.002, 9604, sampling="mean predictor")
    (tmp_path / "bench.json").write_text(json.dumps({"info": {"device": "NVIDIA H100"}, "rows": [row]}))
    (tmp_path / "e2e.json").write_text(json.dumps({"device": "cuda", "side": 2048, "tiles_per_s": 120.0,
                                                   "s_per_s2_tile": 95.0}))
    assert gpu_session.main(["summary", str(tmp_path)]) == 0
    text = (tmp_path / "summary.md").read_text()
    assert "NVIDIA H100" in text
    assert "| geosr shipped, model only (mean predictor) | bfloat16 | 16 | 500.0 | 19 |" in text
    assert "| geosr run end to end, 2048^2 scene on cuda (default config) | auto | engine | 120.0 | 95 |" in text
    assert "| LDSR-S2 published (H200; ../shared/reference/ldsr_s2_h200.md) | float32 | 32 | 17.7 | 509 |" in text
    assert text in capsys.readouterr().out
