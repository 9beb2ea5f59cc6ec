"""The ``geosr.upsamplers`` entry point (docs/model.md, "Your own model"): a plugin distribution registered only
through package metadata (a dist-info with entry_points.txt on the path, as ``pip install`` leaves it) is listed,
found by name, and runs through ``geosr run`` in a fresh process; its output is what it computes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio

from tests.test_orchestration_support import make_scene

PLUGIN = '''
import numpy as np


class GainNearest:
    """Nearest-neighbour upsampling times a gain: a stand-in for SEN2SR or your own network."""

    name = "toy-gain"
    version = "0.1"
    bands = None
    device = "cpu"

    def __init__(self, scale, batch_size, gain):
        self.scale, self.batch_size, self.gain = scale, batch_size, float(gain)

    def __call__(self, batch):
        px = np.nan_to_num(batch.pixels)
        return px.repeat(self.scale, axis=2).repeat(self.scale, axis=3) * np.float32(self.gain)

    def describe(self):
        return {"name": self.name, "version": self.version, "scale": self.scale, "gain": self.gain}


def factory(*, scale, batch_size, device, bands, seed, gain=1.0):
    return GainNearest(scale, batch_size, gain)
'''


def plugin_site(root: Path) -> Path:
    site = root / "site"
    site.mkdir()
    (site / "geosr_toy_plugin.py").write_text(PLUGIN)
    meta = site / "geosr_toy_plugin-0.1.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: geosr-toy-plugin\nVersion: 0.1\n")
    (meta / "entry_points.txt").write_text("[geosr.upsamplers]\ntoy = geosr_toy_plugin:factory\n")
    return site


def geosr(args: list[str], site: Path | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "geosr", *args], capture_output=True, text=True, env=env, timeout=300)


def test_plugin_found_by_name_through_package_metadata_runs_through_geosr_run(tmp_path):
    site = plugin_site(tmp_path)
    scene = make_scene(tmp_path / "scene.tif", size=64)
    out = tmp_path / "out.zarr"
    args = ["run", str(scene), str(out), "--model", "toy", "--set", "model.params.gain=2.0", "--scale", "2",
            "--tile", "32", "--overlap", "8", "--chunk", "64", "--block", "64", "--no-progress", "--workers", "1"]
    # without the plugin on the path the name is unknown (so the run below can only have found it via metadata)
    missing = geosr(args, None)
    assert missing.returncode == 2 and "model.name='toy' is unknown" in missing.stderr and not out.exists()
    done = geosr(args, site)
    assert done.returncode == 0, done.stderr
    with rasterio.open(scene) as src:
        lr = src.read().astype(np.float64)
        valid = np.all(lr != src.nodata, axis=0)
    with rasterio.open(f'ZARR:"{out}":/reflectance') as ds:
        hr = ds.read().astype(np.float64)
    expected = np.where(valid, lr * 2.0, 0).repeat(2, 1).repeat(2, 2)  # uint16 DN * 1e-4 * gain, back to DN
    np.testing.assert_allclose(hr, expected, atol=1.0)
    listed = geosr(["run", str(scene), str(tmp_path / "x.zarr"), "--model", "nope"], site)
    assert "toy" in listed.stderr.split("available:")[1]
