"""Helpers shared by the orchestration and flow tests (no tests here).

Importing this module registers two test upsamplers, so a Dask worker process gets them with
``preload=["tests.test_orchestration_support"]`` and a flow subprocess with
``python -m tests.test_orchestration_support flows run-scene ...``:

* ``test-slow-bicubic``: bicubic that sleeps ``delay`` seconds per model call, so a scene lasts long
  enough to kill things in the middle of it. Its pixels are bicubic's.
* ``test-oom-bicubic``: bicubic that raises ``torch.cuda.OutOfMemoryError`` for batches of more than
  ``max_tiles`` tiles, like a model on a GPU with too little memory.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from geosr.config import RunConfig, load_config
from geosr.upsamplers import TileBatch, register
from geosr.upsamplers.classic import ClassicUpsampler


class SlowBicubic(ClassicUpsampler):
    def __init__(self, *, delay: float = 0.2, **kw: Any) -> None:
        super().__init__("bicubic", **kw)
        self.name = "test-slow-bicubic"
        self.delay = float(delay)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "name": self.name, "delay": self.delay}

    def __call__(self, batch: TileBatch) -> np.ndarray:
        time.sleep(self.delay)
        return super().__call__(batch)


class OomBicubic(ClassicUpsampler):
    def __init__(self, *, max_tiles: int = 3, **kw: Any) -> None:
        super().__init__("bicubic", **kw)
        self.name = "test-oom-bicubic"
        self.max_tiles = int(max_tiles)
        self.batches: list[int] = []

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "name": self.name}

    def __call__(self, batch: TileBatch) -> np.ndarray:
        import torch

        self.batches.append(len(batch))
        if len(batch) > self.max_tiles:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(batch) * 64} MiB")
        return super().__call__(batch)


def _factory(cls):
    def make(*, scale: int, batch_size: int = 16, device: str = "auto", bands: int | None = None, seed: int = 0,
             **params: Any):
        return cls(scale=scale, batch_size=batch_size, device=device, bands=bands, **params)

    return make


register("test-slow-bicubic", _factory(SlowBicubic))
register("test-oom-bicubic", _factory(OomBicubic))

SMALL = {"tiling.scale": 2, "tiling.tile": 32, "tiling.overlap": 8, "tiling.chunk": 128, "tiling.block": 128,
         "model.name": "bicubic", "model.device": "cpu", "model.batch_size": 8, "workers": 1}
"""256 x 256 input -> 512 x 512 output in 16 blocks of 128 x 128 (one chunk each)."""


def small_config(endpoint_url: str | None = None, **overrides: Any) -> RunConfig:
    o = dict(SMALL)
    if endpoint_url:
        o["storage.endpoint_url"] = endpoint_url
        o["storage.region"] = "us-east-1"
    o.update(overrides)
    return load_config(None, o)


def make_scene(path: Path, seed: int = 3, size: int = 256) -> Path:
    from tests.data.synthetic import make_geotiff

    make_geotiff(path, height=size, width=size, bands=3, dtype="uint16", nodata=0, nodata_layout="corner", seed=seed)
    return path


def store_arrays(uri: str, env: Any) -> dict[str, np.ndarray]:
    """Every array of the store (all overview levels) by path: what "byte-identical" compares."""
    import warnings

    import zarr

    from geosr.store.backend import StoreLocation

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = zarr.open_group(StoreLocation(uri, env).zarr_store(read_only=True), mode="r")
        out: dict[str, np.ndarray] = {}

        def walk(g: Any, prefix: str) -> None:
            for name, arr in g.arrays():
                out[prefix + name] = arr[...]
            for name, sub in g.groups():
                walk(sub, prefix + name + "/")

        walk(root, "")
    return out


def assert_same_store(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b), f"different arrays: {sorted(a)} vs {sorted(b)}"
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), f"array {k} differs"


def restart_s3(server: Any, down_s: float = 2.0, timeout: float = 60.0) -> None:
    """Stop the session's SeaweedFS (its data stays on disk), wait ``down_s``, start it again on the same
    ports with the same arguments, and wait until it serves requests."""
    old = server.process
    old.send_signal(signal.SIGTERM)
    try:
        old.wait(timeout=15)
    except subprocess.TimeoutExpired:
        old.kill()
        old.wait(timeout=10)
    time.sleep(down_s)
    log = open(server.log_path, "ab")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("AWS_")}
    server.process = subprocess.Popen(old.args, stdout=log, stderr=subprocess.STDOUT, cwd=server.data_dir.parent,
                                      env=env, start_new_session=True)
    client = server.client()
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.list_buckets()
            return
        except Exception:
            if time.monotonic() > deadline or server.process.poll() is not None:
                raise RuntimeError(f"SeaweedFS did not come back; log tail:\n{server.log_tail()}")
            time.sleep(0.3)


if __name__ == "__main__":  # a flow process that knows the test models: python -m tests.test_orchestration_support ARGS
    from geosr.cli import main

    sys.exit(main(sys.argv[1:]))
