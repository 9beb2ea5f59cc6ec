"""The benchmark scripts' logic, on CPU with tiny configs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_s2_window_count():
    assert _load("gpu").windows_per_s2_tile(128, 12) == 9025


def test_gpu_bench_quick_on_cpu(tmp_path, capsys):
    """The shipped default path (bundled weights through the engine's upsampler) and a --config architecture,
    with seconds per Sentinel-2 tile counted in the engine's windows, and LDSR-S2's published figures."""
    gpu = _load("gpu")
    out = tmp_path / "b.json"
    assert gpu.main(["--device", "cpu", "--quick", "--no-baseline", "--config", str(ROOT / "configs" / "model-x4.yaml"),
                     "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    tile, overlap, _ = gpu.engine_tiling()
    assert res["info"]["windows_per_s2_tile"] == gpu.windows_per_s2_tile(tile, overlap) == 9604
    shipped = [r for r in res["rows"] if r["arch"] == "geosr shipped"]
    arch = [r for r in res["rows"] if r["arch"] != "geosr shipped"]
    assert [r["batch"] for r in shipped] == [1, 2] and all(r["sampling"] for r in shipped)
    assert {(r["batch"], r["steps"]) for r in arch} == {(1, 1), (1, 2), (2, 1), (2, 2)}
    for r in res["rows"]:
        assert r["ms_per_tile"] > 0 and r["tiles_per_s"] == pytest.approx(1000 / r["ms_per_tile"])
        assert r["s_per_s2_tile"] == pytest.approx(r["ms_per_tile"] * 9604 / 1000)
    assert [(r["batch"], round(r["s_per_s2_tile"])) for r in res["reference"]] == [(1, 958), (16, 511), (32, 509)]
    text = capsys.readouterr().out
    assert "| geosr shipped |" in text and "| LDSR-S2 reference (H200, published) |" in text


def test_model_cpu_bench_table(tmp_path, capsys):
    from geosr.diffusion.model import LatentSR
    from geosr.diffusion.weights_io import save_model

    gpu = _load("gpu")
    d = save_model(LatentSR(gpu.tiny_spec()), tmp_path / "m")
    out = tmp_path / "c.json"
    assert _load("model_cpu").main(["--weights", str(d), "--tiles", "16", "--steps", "1", "2", "--batch", "2",
                                    "--threads", "1", "--repeat", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["method"], r["steps"]) for r in rows] == [("bicubic", 0), ("ldm", 1), ("ldm", 2)]
    assert "| ldm | 1 | 16 -> 64 | 2 |" in capsys.readouterr().out
