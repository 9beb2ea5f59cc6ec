"""LDSR-S2 checkpoints: opensr-model's architecture with random weights, saved as a CompVis .ckpt, converted
by geosr, must give the same denoiser, encode and decode outputs (relative error <= 1e-4), and must run
through geosr's upsampler. Needs the test-only dependencies ``opensr-model==1.0.8`` (installed with
``--no-deps``) and ``einops==0.8.1``."""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest
import torch

pytest.importorskip("einops")
if importlib.util.find_spec("opensr_model") is None:
    pytest.skip("opensr-model is not installed (pip install --no-deps opensr-model==1.0.8)", allow_module_level=True)

from geosr.diffusion.ldsr import convert_ldsr, ldsr_spec, read_ckpt  # noqa: E402
from geosr.errors import ModelError  # noqa: E402
from geosr.upsamplers import TileBatch, build_upsampler  # noqa: E402

FIRST_STAGE = dict(embed_dim=4, double_z=True, z_channels=4, resolution=512, in_channels=4, out_ch=4, ch=128,
                   ch_mult=[1, 2, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0)
UNET = dict(image_size=128, in_channels=8, model_channels=160, out_channels=4, num_res_blocks=2,
            attention_resolutions=[16, 8], channel_mult=[1, 2, 2, 4], num_head_channels=32)


def _latent_diffusion_cls():
    """opensr-model's LatentDiffusion without running the package ``__init__`` (which imports
    pytorch-lightning, scikit-image and matplotlib for the inference wrapper we do not use)."""
    if "opensr_model" not in sys.modules or not hasattr(sys.modules["opensr_model"], "__path__"):
        spec = importlib.util.find_spec("opensr_model")
        pkg = types.ModuleType("opensr_model")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["opensr_model"] = pkg
    from opensr_model.diffusion.latentdiffusion import LatentDiffusion

    return LatentDiffusion


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    torch.manual_seed(0)
    ld = _latent_diffusion_cls()(FIRST_STAGE, UNET, timesteps=1000, unet_config=UNET, linear_start=0.0001,
                                  linear_end=0.015, concat_mode=True, cond_stage_trainable=False,
                                  first_stage_key="image", cond_stage_key="LR_image").eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # zero-initialised output convs would make the comparison vacuous
        for p in ld.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    path = tmp_path_factory.mktemp("ldsr") / "opensr-ldsrs2_v1_0_0.ckpt"
    torch.save({"state_dict": {k: v for k, v in ld.state_dict().items() if not k.startswith("model_ema.")}}, path)
    return ld, path


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_converted_ldsr_matches_opensr_model(reference):
    ld, path = reference
    model = convert_ldsr(read_ckpt(path), ldsr_spec())
    n_ref = sum(p.numel() for p in ld.model.diffusion_model.parameters())
    assert n_ref == sum(p.numel() for p in model.denoiser.parameters()) == 113_626_884
    g = torch.Generator().manual_seed(2)
    hr = torch.rand(1, 4, 64, 64, generator=g) * 0.4
    x_t = torch.randn(2, 4, 16, 16, generator=g)
    cond = torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([999, 321])
    with torch.no_grad():
        ref_eps = ld.model(x_t, t, c_concat=[cond])
        ours_eps = model.denoise(x_t, t, cond)
        ref_z = ld.first_stage_model.encode(hr).mode()
        ours_z = model.encode(hr)
        ref_x = ld.first_stage_model.decode(ref_z)
        ours_x = model.decode(ref_z)
    assert ref_eps.abs().mean() > 1e-3 and ref_x.abs().mean() > 1e-3
    assert _rel(ours_eps, ref_eps) < 1e-4
    assert _rel(ours_z, ref_z) < 1e-4
    assert _rel(ours_x, ref_x) < 1e-4
    # LDSR-S2 conditioning: bilinear 4x upsample, then a full autoencoder pass
    lr = torch.rand(1, 4, 16, 16, generator=g) * 0.3
    with torch.no_grad():
        up = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bilinear", align_corners=False)
        assert _rel(model.condition(lr, (16, 16)), ld.first_stage_model.encode(up).mode()) < 1e-4


def test_ldsr_runs_through_geosr_upsampler(reference, tmp_path):
    from geosr.cli import main

    _, path = reference
    out = tmp_path / "ldsr"
    assert main(["import-weights", str(path), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["autoencoder.safetensors", "config.json", "denoiser.safetensors"]
    up = build_upsampler("ldm", scale=4, device="cpu", bands=4, seed=0,
                         params={"weights": str(out), "steps": 3, "sampler": "dpmpp"})
    rng = np.random.default_rng(0)
    px = (rng.random((2, 4, 16, 16)) * 0.3).astype(np.float32)
    y = up(TileBatch(px, np.array([[0, 0], [0, 8]], dtype=np.int64), seed=5))
    assert y.shape == (2, 4, 64, 64) and np.isfinite(y).all()
    from geosr import metrics

    assert metrics.lr_consistency(y[0], px[0], 4)["lr_l1"] < 1e-5


def main_rc(argv):
    from geosr.cli import main

    return main(argv)


def test_read_ckpt_rejects_non_ldsr_and_unsafe_files(tmp_path):
    p = tmp_path / "x.ckpt"
    torch.save({"state_dict": {"foo": torch.zeros(1)}}, p)
    with pytest.raises(ModelError):
        read_ckpt(p)

    class Evil:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    assert main_rc(["import-weights", str(p), "--out", str(tmp_path / "o")]) == 2
    q = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": Evil()}}, q)
    with pytest.raises(ModelError):
        read_ckpt(q)
