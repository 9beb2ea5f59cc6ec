"""The tile grid's edge policy (see geosr/grid.py) and block/chunk alignment, as properties."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geosr.errors import ConfigError
from geosr.grid import BlockGrid, TileGrid, axis_origins, mirror_indices


@st.composite
def axes(draw):
    tile = draw(st.integers(8, 96))
    overlap = draw(st.integers(0, tile // 2))
    n = draw(st.integers(1, 700))
    return n, tile, overlap


@given(axes())
def test_tiles_cover_axis_and_stay_inside(a):
    n, tile, overlap = a
    o = axis_origins(n, tile, overlap)
    assert o[0] == 0
    covered = np.zeros(n, bool)
    for x in o:
        covered[x : x + tile] = True
    assert covered.all()
    if n >= tile:
        assert all(0 <= x <= n - tile for x in o), "no tile reads outside the scene"
        assert o[-1] == n - tile, "last tile flush with the border"
    else:
        assert o == (0,), "a scene smaller than a tile gets one tile"
    assert list(o) == sorted(set(o)), "strictly increasing"
    for a_, b_ in zip(o, o[1:]):
        assert b_ - a_ <= tile - overlap, "every overlap at least `overlap`"
    if n > tile:
        assert len(o) == 1 + math.ceil((n - tile) / (tile - overlap))


def test_regular_grid_when_size_fits_stride():
    # 10980 px, 128 px tiles, 12 px overlap: 95 windows, as in LDSR-S2's tiling of a Sentinel-2 tile
    assert len(axis_origins(10980, 128, 12)) == 95
    assert axis_origins(128 + 3 * 112, 128, 16) == (0, 112, 224, 336)


@pytest.mark.parametrize("tile,overlap", [(0, 0), (16, 16), (16, -1), (8, 9)])
def test_bad_tiling_is_a_config_error(tile, overlap):
    with pytest.raises(ConfigError):
        axis_origins(100, tile, overlap)


def test_mirror_matches_numpy_symmetric_pad():
    x = np.arange(5)
    got = x[mirror_indices(-7, 12, 5)]
    assert (got == np.pad(x, (7, 7), mode="symmetric")).all()


@given(axes(), st.integers(1, 4), st.sampled_from([(64, 64), (64, 128), (32, 96), (128, 256)]))
@settings(max_examples=60, deadline=None)
def test_blocks_partition_output_and_tiles_cover_blocks(a, scale, cb):
    n, tile, overlap = a
    chunk, block = cb
    g = TileGrid(n, max(1, n // 2 + 3), tile, overlap, scale)
    bg = BlockGrid(g, block, chunk)
    h, w = g.out_shape
    owner = np.full((h, w), -1)
    for i, b in enumerate(bg):
        assert (owner[b.y0 : b.y1, b.x0 : b.x1] == -1).all(), "blocks do not overlap"
        owner[b.y0 : b.y1, b.x0 : b.x1] = i
        assert b.y0 % chunk == 0 and b.x0 % chunk == 0, "blocks start on chunk boundaries"
        assert b.y1 == h or (b.y1 - b.y0) % chunk == 0
        cover = np.zeros(b.shape, bool)
        keys = bg.tiles(b)
        assert keys == sorted(keys), "tiles come in global order"
        for ky, kx in keys:
            oy, ox = (o * scale for o in g.origin(ky, kx))
            cover[max(oy - b.y0, 0) : max(oy + g.out_tile - b.y0, 0), max(ox - b.x0, 0) : max(ox + g.out_tile - b.x0, 0)] = True
        assert cover.all(), "the block's tiles cover it"
        (r0, r1), (c0, c1) = bg.read_window(b)
        assert 0 <= r0 < r1 <= g.height and 0 <= c0 < c1 <= g.width
    assert (owner >= 0).all(), "blocks cover the output"


def test_block_must_be_chunk_multiple():
    g = TileGrid(100, 100, 32, 8, 2)
    with pytest.raises(ConfigError, match="multiple of chunk"):
        BlockGrid(g, 96, 64)
