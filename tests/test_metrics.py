import numpy as np
import pytest

from geosr.metrics import SeamAccumulator, degrade, lr_consistency, psnr, seam_metric, ssim, tile_boundaries


def _smooth(c=3, h=128, w=96, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / 17.0
    base = 0.2 + 0.05 * np.sin(yy) * np.cos(xx)
    return (base[None] + 0.01 * rng.standard_normal((c, h, w))).astype(np.float32)


def test_seam_metric_is_one_without_seams_and_grows_with_a_step():
    img = _smooth()
    clean = seam_metric(img, [64], [48])
    stepped = img.copy()
    stepped[:, :, 48:] += 0.05
    assert 0.9 < clean < 1.1
    assert seam_metric(stepped, [64], [48]) > 5 * clean


def test_seam_accumulator_blocks_sum_to_whole():
    img = _smooth(h=200, w=160)
    whole = SeamAccumulator()
    whole.add(img, [50, 120], [40, 100])
    parts = SeamAccumulator()
    for y0 in (0, 100):
        for x0 in (0, 80):
            parts.add(img[:, y0 : y0 + 100, x0 : x0 + 80], [50, 120], [40, 100], y0=y0, x0=x0)
    # block edges drop the pairs that straddle blocks; the ratio stays close
    assert abs(parts.value() - whole.value()) < 0.05
    small = SeamAccumulator()
    small.add(img, [50, 120], [40, 100], strip=7)
    assert small.seam_n == whole.seam_n and small.inner_n == whole.inner_n
    assert np.isclose(small.inner_sum, whole.inner_sum)


def test_tile_boundaries():
    assert tile_boundaries((0, 112, 224), 128, 4, 352) == [448, 512, 896, 960]


@pytest.mark.parametrize("op", ["average", "gaussian"])
def test_degrade_shapes_and_constant(op):
    x = np.full((2, 40, 40), 0.3)
    d = degrade(x, 4, op)
    assert d.shape == (2, 10, 10) and np.allclose(d, 0.3)


def test_lr_consistency_zero_for_consistent_image():
    lr = _smooth(h=32, w=32)
    sr = lr.repeat(4, 1).repeat(4, 2)
    c = lr_consistency(sr, lr, 4)
    assert c["lr_l1"] < 1e-7 and c["lr_spectral_angle_deg"] < 1e-3
    c2 = lr_consistency(sr * 1.1, lr, 4)
    assert c2["lr_l1"] > 0.01


def test_psnr_ssim():
    a = _smooth()
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)
    noisy = a + 0.01 * np.random.default_rng(1).standard_normal(a.shape)
    assert 35 < psnr(noisy, a) < 45
    assert ssim(noisy, a) < ssim(a + 0.001, a)
