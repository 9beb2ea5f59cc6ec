"""The classic kernels' window path (geosr.upsamplers.window_path) gives the tiled path's exact bytes, for any block."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from geosr.blend import BlockBlender
from geosr.blend_weights import RAMPS
from geosr.config import load_config
from geosr.grid import BlockGrid, TileGrid
from geosr.lifecycle import run_scene
from geosr.tiles import BlockInput
from geosr.upsamplers import TileBatch
from geosr.upsamplers import window_path as separable
from geosr.upsamplers.classic import KINDS, ClassicUpsampler
from tests.data.synthetic import make_geotiff


def _tiled(g: TileGrid, block, window, origin, kind, ramp):
    """The reference: every tile touching the block, upsampled whole, blended in global order."""
    keys = tuple(g.tiles_touching((block.y0, block.y1), (block.x0, block.x1)))
    inp = BlockInput(block, keys, g, window, np.ones(window.shape[1:], bool), origin)
    tiles = ClassicUpsampler(kind, scale=g.scale, device="cpu")(TileBatch(inp.pixels, inp.origins))
    bb = BlockBlender(g, block, window.shape[0], ramp)
    for key, t in zip(keys, tiles):
        bb.add(*key, t)
    return bb.result()


@st.composite
def cases(draw):
    tile = draw(st.integers(6, 24))
    overlap = draw(st.integers(0, tile // 2))
    scale = draw(st.integers(1, 4))
    g = TileGrid(draw(st.integers(tile, 70)), draw(st.integers(tile, 70)), tile, overlap, scale)
    chunk = draw(st.integers(3, 40))
    blocks = BlockGrid(g, chunk * draw(st.integers(1, 3)), chunk)
    block = blocks.get(draw(st.integers(0, blocks.shape[0] - 1)), draw(st.integers(0, blocks.shape[1] - 1)))
    return g, blocks, block, draw(st.sampled_from(KINDS)), draw(st.sampled_from(RAMPS)), draw(st.integers(0, 99))


@given(cases())
@settings(max_examples=150, deadline=None)
def test_window_path_is_the_tiled_path_bit_for_bit(case):
    g, blocks, block, kind, ramp, seed = case
    rng = np.random.default_rng(seed)
    scene = (rng.random((2, g.height, g.width), dtype=np.float32) * rng.choice([0.01, 1.0, 300.0])).astype(np.float32)
    (r0, r1), (c0, c1) = blocks.read_window(block)
    window = np.ascontiguousarray(scene[:, r0:r1, c0:c1])
    fast = separable.upsample_block(g, block, window, (r0, c0), kind, ramp)
    want = _tiled(g, block, window, (r0, c0), kind, ramp)
    assert fast.shape == want.shape and fast.dtype == np.float32
    assert np.array_equal(fast.view(np.uint32), want.view(np.uint32)), f"{kind} {ramp} {g} {block}"


def test_exact_positions_exclude_only_tile_edges_inside_the_scene():
    # tiles 0..15 and 12..27 (overlap 4) on a 28-px axis, bicubic x1 margins (2 before, 1 after)
    ok = separable.exact_positions((0, 12), 16, 1, 28, 2, 1, 0, 28)
    assert ok[:12].all(), "the scene edge mirrors exactly as the tile does"
    assert not ok[12:14].any() and ok[14] and not ok[15] and ok[16:].all()
    assert separable.runs(~ok) == [(12, 14), (15, 16)]


def test_nodata_or_nonfinite_windows_use_the_tiles():
    g = TileGrid(40, 40, 16, 4, 2)
    w = np.ones((1, 40, 40), np.float32)
    valid = np.ones((40, 40), bool)
    assert separable.applies(g, w, valid)
    valid[3, 3] = False
    assert not separable.applies(g, w, valid)
    w[0, 5, 5] = np.inf
    assert not separable.applies(g, w, np.ones((40, 40), bool))
    assert not separable.applies(TileGrid(10, 40, 16, 4, 2), np.ones((1, 10, 40), np.float32), np.ones((10, 40), bool))


class _TilesOnly:
    """The same classic kernel, but not a ClassicUpsampler: the engine can only use its tiles."""

    def __init__(self, kind: str, scale: int) -> None:
        self._up = ClassicUpsampler(kind, scale=scale, device="cpu")
        self.name, self.version, self.scale, self.bands = kind, self._up.version, scale, None
        self.batch_size, self.device = 7, "cpu"

    def __call__(self, batch):
        return self._up(batch)

    def describe(self):
        return self._up.describe()


@pytest.mark.parametrize("kind", ["bicubic", "lanczos"])
def test_scene_bytes_match_the_tiled_path_with_and_without_nodata(tmp_path, kind):
    cfg = load_config(None, {"tiling.scale": 4, "tiling.tile": 32, "tiling.overlap": 6, "tiling.chunk": 64,
                             "tiling.block": 192, "model.name": kind, "model.device": "cpu", "workers": 2})
    for layout in (None, "corner"):
        src = tmp_path / f"s{layout}.tif"
        make_geotiff(src, height=97, width=130, bands=3, dtype="uint16", nodata=0, nodata_layout=layout, seed=11)
        fast, tiled = tmp_path / f"fast{layout}.zarr", tmp_path / f"tiled{layout}.zarr"
        run_scene(str(src), str(fast), cfg)
        run_scene(str(src), str(tiled), cfg, upsampler=_TilesOnly(kind, 4))
        a = zarr.open_group(str(fast), mode="r")
        b = zarr.open_group(str(tiled), mode="r")
        assert np.array_equal(a["reflectance"][...], b["reflectance"][...])
        assert np.array_equal(a["overviews/1/reflectance"][...], b["overviews/1/reflectance"][...])
