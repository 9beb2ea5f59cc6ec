"""Blending weights form a partition of unity; blending is exact for agreeing tiles and does not
depend on how the output is cut into blocks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geosr.blend import BlockBlender
from geosr.blend_weights import RAMPS, axis_weights, ramp, tile_weight
from geosr.grid import Block, BlockGrid, TileGrid


@st.composite
def grids(draw):
    tile = draw(st.integers(8, 40))
    overlap = draw(st.integers(0, tile // 2))
    return TileGrid(draw(st.integers(1, 150)), draw(st.integers(1, 150)), tile, overlap, draw(st.integers(1, 4)))


@given(grids(), st.sampled_from(RAMPS))
@settings(max_examples=80, deadline=None)
def test_weights_sum_to_one_everywhere(g, kind):
    h, w = g.out_shape
    total = np.zeros((max(h, g.out_tile * 2), max(w, g.out_tile * 2)), np.float64)
    ny, nx = g.shape
    for ky in range(ny):
        for kx in range(nx):
            oy, ox = (o * g.scale for o in g.origin(ky, kx))
            wt = tile_weight(g, ky, kx, kind)
            assert (wt > 0).all()
            total[oy : oy + g.out_tile, ox : ox + g.out_tile] += wt
    assert np.allclose(total[:h, :w], 1.0, atol=3e-7)


def test_cosine_ramps_are_complementary():
    r = ramp(16, "cosine")
    assert np.allclose(r + r[::-1], 1.0, atol=1e-15)
    assert (np.diff(r) > 0).all()


def test_weights_are_not_uniform_averaging():
    g = TileGrid(200, 200, 64, 16, 1)
    w0 = axis_weights(g, 0)[0]
    assert w0[0] == 1.0 and w0[-1] < 0.01, "a tile's weight fades out towards its neighbour"


def _blend(g: TileGrid, block: Block, tiles: dict, bands: int, kind="cosine"):
    bb = BlockBlender(g, block, bands, kind)
    for key in BlockGrid(g, 1 << 30, 1 << 30).grid.tiles_touching((block.y0, block.y1), (block.x0, block.x1)):
        bb.add(*key, tiles[key])
    return bb.result()


@given(grids(), st.data())
@settings(max_examples=40, deadline=None)
def test_blend_is_partition_invariant(g, data):
    rng = np.random.default_rng(0)
    ny, nx = g.shape
    tiles = {(a, b): rng.random((2, g.out_tile, g.out_tile), dtype=np.float32) for a in range(ny) for b in range(nx)}
    h, w = g.out_shape
    whole = _blend(g, Block(0, 0, 0, h, 0, w), tiles, 2)
    cy = data.draw(st.integers(1, h))
    cx = data.draw(st.integers(1, w))
    pieced = np.zeros_like(whole)
    for y0 in range(0, h, cy):
        for x0 in range(0, w, cx):
            b = Block(0, 0, y0, min(y0 + cy, h), x0, min(x0 + cx, w))
            pieced[:, b.y0 : b.y1, b.x0 : b.x1] = _blend(g, b, tiles, 2)
    assert np.array_equal(whole, pieced), "bit-identical whatever the block layout"


@given(grids())
@settings(max_examples=40, deadline=None)
def test_agreeing_tiles_blend_exactly(g):
    """Tiles cut from one image give back exactly that image (the nearest-neighbour identity)."""
    rng = np.random.default_rng(1)
    h, w = g.out_shape
    big = rng.random((3, h + 2 * g.out_tile, w + 2 * g.out_tile), dtype=np.float32)
    ny, nx = g.shape
    tiles = {}
    for a in range(ny):
        for b in range(nx):
            oy, ox = (o * g.scale for o in g.origin(a, b))
            tiles[(a, b)] = big[:, oy : oy + g.out_tile, ox : ox + g.out_tile]
    out = _blend(g, Block(0, 0, 0, h, 0, w), tiles, 3)
    assert np.array_equal(out, big[:, :h, :w])


def test_out_of_order_tiles_are_refused():
    g = TileGrid(100, 100, 32, 8, 1)
    bb = BlockBlender(g, Block(0, 0, 0, 100, 0, 100), 1)
    t = np.zeros((1, 32, 32), np.float32)
    bb.add(0, 1, t)
    with pytest.raises(ValueError, match="increasing global order"):
        bb.add(0, 0, t)


def test_uncovered_block_is_refused():
    g = TileGrid(100, 100, 32, 8, 1)
    bb = BlockBlender(g, Block(0, 0, 0, 100, 0, 100), 1)
    bb.add(0, 0, np.zeros((1, 32, 32), np.float32))
    with pytest.raises(RuntimeError, match="not covered"):
        bb.result()
