"""OutputSpec validation and geometry, and the overview level plan (pure, no I/O)."""

from __future__ import annotations

import pytest
from pyproj import CRS

from geosr.config import OutputConfig
from geosr.errors import ConfigError
from geosr.grid import BlockGrid, TileGrid
from geosr.store import OutputSpec
from geosr.store.overviews import plan_levels
from geosr.store.spec import auto_overview_levels

UTM = CRS.from_epsg(32633).to_wkt()


def spec(**kw) -> OutputSpec:
    base = dict(shape=(3, 520, 600), chunk=128, block=256, band_names=("B02", "B03", "B04"), crs_wkt=UTM,
                transform=(2.5, 0.0, 500000.0, 0.0, -2.5, 5000000.0))
    base.update(kw)
    return OutputSpec(**base)


def test_round_trips_through_dict_and_normalises_types():
    s = spec(shape=[3, 520, 600], band_names=["B02", "B03", "B04"], transform=[2.5, 0, 500000, 0, -2.5, 5e6])
    assert s.shape == (3, 520, 600) and s.band_names == ("B02", "B03", "B04")
    assert all(isinstance(v, float) for v in s.transform)
    assert OutputSpec.from_dict(s.to_dict()) == s
    assert hash(OutputSpec.from_dict(s.to_dict())) == hash(s)


def test_from_config_takes_the_output_section():
    cfg = OutputConfig(dtype="float32", zarr_format=3, shard=256, compressor="blosc", level=5, overviews=1,
                       variable="sr")
    s = OutputSpec.from_config(cfg, shape=(3, 520, 600), chunk=128, block=512, band_names=("a", "b", "c"),
                               crs_wkt=UTM, transform=(2.5, 0, 500000, 0, -2.5, 5e6))
    assert (s.dtype, s.zarr_format, s.shard, s.compressor, s.level, s.overviews, s.variable) == (
        "float32", 3, 256, "blosc", 5, 1, "sr")


@pytest.mark.parametrize("kw, words", [
    (dict(block=200), "multiple of chunk"),
    (dict(band_names=("B02", "B03")), "one name per band"),
    (dict(band_names=("B02", "B02", "B04")), "unique"),
    (dict(crs_wkt="not a crs"), "not a valid WKT"),
    (dict(transform=(2.5, 0.1, 500000.0, 0.0, -2.5, 5000000.0)), "north-up"),
    (dict(transform=(0.0, 0.0, 500000.0, 0.0, -2.5, 5000000.0)), "zero pixel size"),
    (dict(variable="x"), "none of"),
    (dict(variable="y_3"), "x_<n>, y_<n>"),  # an overview level's coordinate
    (dict(variable="a/b"), "letters"),
    (dict(dtype="int8"), "uint16, float32"),
    (dict(zarr_format=4), "use one of 2, 3"),
    (dict(compressor="lz4"), "zstd, blosc, none"),
    (dict(level=30), "0..22"),
    (dict(shard=256), "zarr_format 3"),
    (dict(zarr_format=3, shard=192), "multiple of chunk"),
    (dict(zarr_format=3, block=384, shard=256), "divide block"),
    (dict(overviews=20), "room for 0..10"),
    (dict(shape=(3, 0, 600)), "at least 1"),
])
def test_invalid_values_raise_config_error_saying_what_is_accepted(kw, words):
    with pytest.raises(ConfigError, match=words):
        spec(**kw)


def test_blocks_match_the_engine_block_grid():
    # 130 x 150 low-res at scale 4 -> 520 x 600 output, the same blocks BlockGrid cuts
    grid = BlockGrid(TileGrid(130, 150, 32, 8, 4), block=256, chunk=128)
    s = spec()
    assert list(s.blocks()) == list(grid)
    assert s.n_blocks == len(grid) == 9
    assert s.block_keys == {b.key for b in grid}


def test_check_block_rejects_a_block_that_is_not_whole_chunks_of_the_grid():
    s = spec()
    s.check_block(s.block_at(2, 2))
    from geosr.grid import Block
    with pytest.raises(ValueError, match="not aligned"):
        s.check_block(Block(0, 0, 0, 200, 0, 256))
    with pytest.raises(ValueError, match="outside"):
        s.check_block(Block(5, 0, 0, 256, 0, 256))


def test_auto_overviews_stop_when_the_longer_side_is_under_256():
    assert auto_overview_levels(520, 600) == 2  # 300 -> 150
    assert auto_overview_levels(255, 100) == 0
    assert auto_overview_levels(256, 10) == 1
    assert auto_overview_levels(43920, 43920) == 8  # 171.5 -> < 256
    assert spec().overview_levels == 2 and spec(overviews=0).overview_levels == 0


def test_levels_are_written_per_block_while_their_chunk_stays_whole_and_large_enough():
    # block 256, chunk 128: level 1 chunk min(128, 128) -> per block; level 2 would be 64 px -> finalize
    lv = plan_levels(spec())
    assert [(lv.index, lv.shape, lv.chunk, lv.in_block) for lv in lv] == [
        (0, (520, 600), (128, 128), True), (1, (260, 300), (128, 128), True), (2, (130, 150), (128, 128), False)]
    # block 512: both levels fit whole 128 px chunks of the block
    assert [lv.in_block for lv in plan_levels(spec(block=512))] == [True, True, True]
    # block = chunk: no level can be written per block
    assert [lv.in_block for lv in plan_levels(spec(block=128))] == [True, False, False]
    # production-sized: chunk 1024, block 4096 -> levels 1..4 per block (chunks 1024, 1024, 512, 256)
    big = spec(shape=(4, 43920, 43920), chunk=1024, block=4096, band_names=("a", "b", "c", "d"))
    levels = plan_levels(big)
    assert [lv.chunk[0] for lv in levels if lv.in_block] == [1024, 1024, 1024, 512, 256]
    assert [lv.index for lv in levels if not lv.in_block] == [5, 6, 7, 8]
    assert levels[5].chunk == (256, 256)
    # a block of three chunks cannot be halved into whole chunks
    assert [lv.in_block for lv in plan_levels(spec(block=384, chunk=128))][:2] == [True, False]


def test_sharded_levels_write_whole_shards_per_block():
    s = spec(zarr_format=3, chunk=128, block=512, shard=256)
    lv = plan_levels(s)
    assert lv[0].shard == (256, 256)
    assert lv[1].shard == (256, 256) and lv[1].chunk == (128, 128)  # 512 >> 1 = 256: one shard per block
    assert lv[2].shard is None and lv[2].in_block  # 512 >> 2 = 128 = one chunk: no shard needed
    for level in lv[1:]:
        unit = (level.shard or level.chunk)[0]
        assert not level.in_block or (s.block >> level.index) % unit == 0


def test_level_transforms_double_the_pixel_size_from_the_same_corner():
    lv = plan_levels(spec())
    assert lv[2].transform == (10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0)
    assert lv[2].array_path("reflectance") == "overviews/2/reflectance"
