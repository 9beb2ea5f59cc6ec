import pytest

from geosr.config import RunConfig, load_config, parse_override
from geosr.errors import ConfigError


def test_defaults_are_valid():
    c = load_config()
    assert c.tiling.scale == 4 and c.output.zarr_format == 2 and c.output.dtype == "uint16"


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("tiling:\n  tile: 64\n  overlap: 8\nmodel:\n  name: lanczos\n")
    c = load_config(p, {"tiling.overlap": 12, "output.compressor": "blosc"})
    assert (c.tiling.tile, c.tiling.overlap, c.model.name, c.output.compressor) == (64, 12, "lanczos", "blosc")


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"tiling.overlap": 200}, "overlap=200"),
        ({"tiling.scale": 0}, "tiling.scale"),
        ({"tiling.block": 1000}, "multiple of chunk"),
        ({"tiling.scale": 3}, "multiple of scale"),
        ({"output.shard": 2048}, "zarr_format: 3"),
        ({"output.dtype": "int8"}, "output.dtype"),
        ({"tiling.tyle": 3}, "tiling.tyle"),
        ({"input.bands": [0]}, "1-based"),
    ],
)
def test_bad_values_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        load_config(None, overrides)


def test_bad_yaml_is_config_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("tiling: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_config_is_frozen_and_hash_ignores_runtime_knobs():
    a = load_config(None, {"workers": 1, "model.batch_size": 4})
    b = load_config(None, {"workers": 8, "model.batch_size": 64})
    assert a.config_hash() == b.config_hash()
    assert a.config_hash() != load_config(None, {"model.seed": 1}).config_hash()
    with pytest.raises(Exception):
        a.tiling = None  # type: ignore[misc]


def test_parse_override():
    assert parse_override("tiling.tile=256") == ("tiling.tile", 256)
    assert parse_override("input.bands=[3, 2, 1]") == ("input.bands", [3, 2, 1])
    with pytest.raises(ConfigError):
        parse_override("nonsense")


def test_shipped_configs_load():
    from pathlib import Path

    for p in sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml")):
        if p.name.startswith("model-"):
            continue
        assert isinstance(load_config(p), RunConfig), p
