"""Classic upsamplers behind the Upsampler interface."""

import numpy as np
import pytest

from geosr.errors import ConfigError
from geosr.upsamplers import TileBatch, Upsampler, available, build_upsampler
from geosr.upsamplers.classic import KINDS


def _batch(n=5, c=4, h=24, w=20, seed=0):
    rng = np.random.default_rng(seed)
    return TileBatch(rng.random((n, c, h, w), dtype=np.float32), np.arange(2 * n).reshape(n, 2), seed=7)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_shape_dtype_and_interface(kind, scale):
    up = build_upsampler(kind, scale=scale, batch_size=4, device="cpu")
    assert isinstance(up, Upsampler)
    b = _batch()
    out = up(b)
    assert out.shape == (5, 4, 24 * scale, 20 * scale) and out.dtype == np.float32
    assert up.describe()["name"] == kind


@pytest.mark.parametrize("kind", KINDS)
def test_constant_in_constant_out(kind):
    up = build_upsampler(kind, scale=4, device="cpu")
    x = np.full((2, 3, 16, 16), 0.1234, np.float32)
    out = up(TileBatch(x, np.zeros((2, 2), np.int64)))
    assert np.allclose(out, 0.1234, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_tile_output_independent_of_batch(kind):
    up = build_upsampler(kind, scale=3, device="cpu")
    b = _batch(n=6)
    full = up(b)
    for i in range(6):
        one = up(TileBatch(b.pixels[i : i + 1], b.origins[i : i + 1]))
        assert np.array_equal(one[0], full[i])


def test_nearest_is_exact_repeat():
    up = build_upsampler("nearest", scale=4, device="cpu")
    b = _batch(n=2)
    assert np.array_equal(up(b), b.pixels.repeat(4, 2).repeat(4, 3))


@pytest.mark.parametrize("kind,pil", [("lanczos", "LANCZOS"), ("bicubic", "BICUBIC"), ("bilinear", "BILINEAR")])
def test_kernels_match_pillow_away_from_edges(kind, pil):
    from PIL import Image

    from geosr.upsamplers.kernels import resample_matrix

    m = resample_matrix(32, 4, kind)
    assert np.allclose(m.sum(axis=1), 1.0)
    rng = np.random.default_rng(3)
    x = rng.random(32).astype(np.float32)
    ref = np.asarray(Image.fromarray(np.tile(x, (4, 1)), mode="F").resize((128, 4), getattr(Image, pil)))[0]
    # Pillow clamps at the border where we mirror; the interior must agree
    assert np.allclose((m @ x)[16:-16], ref[16:-16], atol=1e-5)


def test_block_average_consistency_of_bicubic_is_close():
    from geosr.metrics import lr_consistency

    up = build_upsampler("bicubic", scale=4, device="cpu")
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    smooth = (0.2 + 0.1 * np.sin(3 * yy) * np.cos(2 * xx))[None, None].repeat(3, 1).astype(np.float32)
    sr = up(TileBatch(smooth, np.zeros((1, 2), np.int64)))[0]
    c = lr_consistency(sr, smooth[0], 4)
    assert c["lr_l1"] < 1e-3 and c["lr_spectral_angle_deg"] < 0.1


def test_unknown_model_lists_available():
    with pytest.raises(ConfigError, match="available: .*bicubic"):
        build_upsampler("no-such-model", scale=4)
    assert "lanczos" in available()


def test_unknown_params_refused():
    with pytest.raises(ConfigError, match="not used"):
        build_upsampler("bicubic", scale=4, params={"steps": 3})
