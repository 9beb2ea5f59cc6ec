"""``geosr eval`` and the in-memory tiled run it uses."""

from __future__ import annotations

import json

import numpy as np
import torch

from geosr import metrics
from geosr.diffusion.evaluate import scene_boundaries, upsample_image
from geosr.diffusion.model import LatentSR
from geosr.diffusion.spec import AutoencoderSpec, DenoiserSpec, ModelSpec
from geosr.diffusion.weights_io import save_model
from geosr.upsamplers import build_upsampler

torch.set_num_threads(1)


def _tif(path, h=64, w=96):
    import rasterio
    from rasterio.transform import from_origin
    from scipy import ndimage

    a = ndimage.gaussian_filter(np.random.default_rng(0).random((4, h, w)), (0, 1.5, 1.5))
    a = ((a - a.min()) / (a.max() - a.min()) * 200 + 20).astype(np.uint8)
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=4, dtype="uint8", crs="EPSG:32618",
                       transform=from_origin(0, 0, 5, 5)) as ds:
        ds.write(a)
    return str(path)


def test_upsample_image_blends_to_the_global_result():
    img = np.random.default_rng(1).random((3, 40, 50)).astype(np.float32)
    up = build_upsampler("nearest", scale=2, device="cpu")
    out = upsample_image(up, img, scale=2, tile=16, overlap=4)
    # nearest tiles agree everywhere, so the blend is exactly the nearest image
    np.testing.assert_allclose(out, img.repeat(2, 1).repeat(2, 2), atol=1e-6)
    by, bx = scene_boundaries(40, 50, 16, 4, 2)
    assert by and bx and all(0 < b < 80 for b in by)


def test_aligned_seam_ratio_sees_tile_seams_not_pixel_phase():
    from geosr.diffusion.evaluate import aligned_seam_ratio

    rng = np.random.default_rng(0)
    lr = rng.random((1, 32, 32))
    img = np.repeat(np.repeat(lr, 4, 1), 4, 2)  # nearest x4: every low-res edge is a step
    s = aligned_seam_ratio(img, [64], [64], 4)
    assert abs((s[0] / s[1]) / (s[2] / s[3]) - 1) < 0.3  # tile edges look like other low-res edges
    img2 = img.copy()
    img2[:, :, 64:] += 0.5  # a real seam
    s2 = aligned_seam_ratio(img2, [64], [64], 4)
    assert (s2[0] / s2[1]) / (s2[2] / s2[3]) > 1.5


def test_eval_cli_reports_every_method(tmp_path, capsys):
    from geosr.cli import main

    spec = ModelSpec(bands=4, autoencoder=AutoencoderSpec(encoder_block_out_channels=(8, 8, 8),
                                                          decoder_block_out_channels=(8, 8, 8)),
                     denoiser=DenoiserSpec(block_out_channels=(16, 16), down_block_types=("DownBlock2D",) * 2,
                                           up_block_types=("UpBlock2D",) * 2, norm_num_groups=8))
    d = save_model(LatentSR(spec), tmp_path / "m")
    f = _tif(tmp_path / "hr.tif")
    out = tmp_path / "r.json"
    rc = main(["eval", "--weights", str(d), "--data", f, "--holdout", "0.5", "--steps", "1", "--tile", "8",
               "--overlap", "2", "--seam-tile", "8", "--seam-overlap", "2", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res["quality"]) == {"ldm", "bicubic", "lanczos", "bicubic + back-projection (ablation: no denoiser)"}
    for r in res["quality"].values():
        assert 10 < r["psnr"] < 80 and -1 <= r["ssim"] <= 1
    # the model's output is projected onto the input: consistency is exact; bicubic's is not
    assert res["quality"]["ldm"]["lr_l1"] < 1e-6 < res["quality"]["bicubic"]["lr_l1"]
    assert res["quality"]["bicubic + back-projection (ablation: no denoiser)"]["lr_l1"] < 1e-5
    assert {"ldm", "ldm (independent noise)", "ldm (keyed + fuse)", "bicubic", "ldm 4-step ddim eta=1",
            "ldm 4-step ddim eta=1 (independent noise)"} <= set(res["seam"]) and res["seam"].keys() == res["seam_aligned"].keys()
    assert all(np.isfinite(v) for v in res["seam"].values())
    assert "| ldm |" in capsys.readouterr().out
    hr = metrics.degrade(np.zeros((1, 8, 8)), 4)
    assert hr.shape == (1, 2, 2)
