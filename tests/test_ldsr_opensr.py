"""LDSR-S2 as released: a Lightning checkpoint read safely (tensors only; its metadata allow-listed as inert
stand-ins, anything else refused), and sampled as opensr-model samples it, proven against opensr-model 1.0.8's own
``SRLatentDiffusion.forward`` on random weights with shared noise. A small LDSR (32 channels) keeps it fast on CPU:
the sampling code does not depend on the width; the full-size conversion is tests/test_diffusion_ldsr.py's.

Measured (this file's setup, 128 px tiles): DDIM 100 steps eta 0 (opensr-model's default) max |diff| 3.3e-5
reflectance, relative L2 3.2e-6; 20 steps eta 1: 2.5e-5. The test runs 10 steps with eta 1 and asserts <= 1e-4."""

from __future__ import annotations

import argparse
import importlib.util
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("einops")
pytest.importorskip("skimage")
if importlib.util.find_spec("opensr_model") is None:
    pytest.skip("opensr-model is not installed (pip install --no-deps opensr-model==1.0.8)", allow_module_level=True)

from geosr.diffusion.ldsr import (  # noqa: E402
    METADATA_GLOBALS,
    convert_ldsr,
    ddim_scheduler,
    ldsr_spec,
    read_ckpt,
    sample_opensr,
)
from geosr.errors import ModelError  # noqa: E402

FIRST_STAGE = dict(embed_dim=4, double_z=True, z_channels=4, resolution=512, in_channels=4, out_ch=4, ch=32,
                   ch_mult=[1, 2, 4], num_res_blocks=1, attn_resolutions=[], dropout=0.0)
UNET = dict(image_size=128, in_channels=8, model_channels=32, out_channels=4, num_res_blocks=1,
            attention_resolutions=[8], channel_mult=[1, 2, 2, 4], num_head_channels=32)
SPEC = ldsr_spec(model_channels=32, num_res_blocks=1, ae_ch=32, ae_res_blocks=1)


@pytest.fixture(scope="module")
def opensr():
    """opensr-model's inference wrapper on config_10m.yaml's settings, at this file's small width, random weights."""
    from omegaconf import OmegaConf
    from opensr_model.srmodel import SRLatentDiffusion

    cfg = OmegaConf.create({
        "apply_normalization": False, "encode_conditioning": True,
        "denoiser_settings": {"linear_start": 0.0001, "linear_end": 0.015, "timesteps": 1000, "sampling_eta": 0.0,
                              "sampling_temperature": 1.0, "sampling_steps": 100},
        "first_stage_config": FIRST_STAGE, "cond_stage_config": UNET,
        "other": {"concat_mode": True, "cond_stage_trainable": False, "first_stage_key": "image",
                  "cond_stage_key": "LR_image"}})
    torch.manual_seed(0)
    sr = SRLatentDiffusion(cfg, device="cpu")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # zero-initialised output convs would make the comparison vacuous
        for p in sr.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return sr


def lightning_checkpoint(state_dict: dict, path: Path, extra: dict | None = None) -> Path:
    """What a Lightning run saves: weights plus epoch/loop counters, callback states (keyed by the callback class,
    as Lightning < 1.5 did, and by its state key, as later ones do), optimizer and scheduler states, omegaconf
    hyper-parameters in an AttributeDict, a numpy scalar and array, a path, an argparse Namespace."""
    from omegaconf import OmegaConf
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
    from pytorch_lightning.utilities.parsing import AttributeDict

    params = [torch.nn.Parameter(torch.randn(3, 3)), torch.nn.Parameter(torch.randn(3))]
    opt = torch.optim.AdamW(params, lr=1e-4)
    params[0].sum().backward()
    params[1].grad = torch.ones(3)
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
    hp = AttributeDict(first_stage_config=OmegaConf.create(FIRST_STAGE), cond_stage_config=OmegaConf.create(UNET),
                       linear_start=0.0001, linear_end=0.015, ckpt_path=Path("/runs/ldsr/last.ckpt"),
                       monitor="val/loss", scale_by_std=False)
    ckpt = {
        "epoch": 41, "global_step": 123456, "pytorch-lightning_version": "1.4.2",
        "state_dict": OrderedDict(state_dict),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 42, "completed": 41}}}},
        "callbacks": {
            ModelCheckpoint: {"monitor": "val/loss", "best_model_score": torch.tensor(0.0123),
                              "best_model_path": "/runs/ldsr/epoch=41.ckpt", "dirpath": Path("/runs/ldsr"),
                              "kth_value": np.float64(0.02), "best_k_models": {"/runs/ldsr/epoch=41.ckpt": torch.tensor(0.0123)}},
            "EarlyStopping{'monitor': 'val/loss', 'mode': 'min'}": {"wait_count": 3, "best_score": torch.tensor(0.01),
                                                                   "patience": 10, "stopped_epoch": 0},
            EarlyStopping: {"wait_count": 1},
        },
        "optimizer_states": [opt.state_dict()], "lr_schedulers": [sched.state_dict()],
        "hparams_name": "kwargs", "hyper_parameters": hp,
        "datamodule_hyper_parameters": argparse.Namespace(batch_size=8, bands=np.array([4, 3, 2, 8])),
        **(extra or {}),
    }
    torch.save(ckpt, path)
    return path


def test_a_lightning_checkpoint_is_read_safely_as_tensors(opensr, tmp_path):
    sd = {k: v for k, v in opensr.model.state_dict().items() if not k.startswith("model_ema.")}
    path = lightning_checkpoint(sd, tmp_path / "opensr-ldsrs2_v1_0_0.ckpt")
    with pytest.raises(Exception, match="Unsupported global"):  # what read_ckpt used to do: refuse the release
        torch.load(str(path), map_location="cpu", weights_only=True)
    got = read_ckpt(path)
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    model = convert_ldsr(got, SPEC)  # strict: every tensor accounted for
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = opensr.model.model(x, torch.tensor([500]), c_concat=[x])
        ours = model.denoise(x, torch.tensor([500]), x)
    assert float((ours - ref).norm() / ref.norm()) < 1e-4


class Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


class NotMetadata:
    pass


@pytest.mark.parametrize("payload", [Evil(), NotMetadata()], ids=["reduce-to-print", "unknown-class"])
def test_anything_beyond_the_allow_list_is_refused_in_one_line(tmp_path, payload, capsys):
    path = lightning_checkpoint({"model.diffusion_model.x": torch.zeros(1)}, tmp_path / "x.ckpt",
                                extra={"hyper_parameters": {"trap": payload}})
    with pytest.raises(ModelError) as e:
        read_ckpt(path)
    msg = str(e.value)
    assert "\n" not in msg and "neither a tensor nor known checkpoint metadata" in msg
    assert ("builtins.print" in msg) if isinstance(payload, Evil) else ("NotMetadata" in msg)
    assert "pickled code ran" not in capsys.readouterr().out
    assert "builtins.print" not in METADATA_GLOBALS


@pytest.mark.parametrize("steps", [100, 50, 20, 10])
def test_ddim_schedule_is_opensr_models(opensr, steps):
    """Timesteps and the alphas of every step, against opensr-model's DDIMSampler.make_schedule."""
    from opensr_model.diffusion.utils import DDIMSampler

    ddim = DDIMSampler(opensr.model)
    ddim.make_schedule(ddim_num_steps=steps, ddim_eta=1.0, verbose=False)
    sched = ddim_scheduler(SPEC)
    sched.set_timesteps(steps)
    ts = sched.timesteps.numpy()
    np.testing.assert_array_equal(ts, np.flip(ddim.ddim_timesteps))
    a = sched.alphas_cumprod.double().numpy()
    np.testing.assert_allclose(a[ts[::-1]], np.asarray(ddim.ddim_alphas, dtype=np.float64), rtol=2e-6)
    prev = [a[t - 1000 // steps] if t - 1000 // steps >= 0 else a[0] for t in ts[::-1]]
    np.testing.assert_allclose(prev, np.asarray(ddim.ddim_alphas_prev, dtype=np.float64), rtol=2e-6)


def test_sampling_matches_opensr_model_with_shared_noise(opensr):
    """DDIM with eta 1 (so the per-step noise path is exercised too), histogram matching on, 128 px tiles
    (opensr-model pads smaller ones): same initial noise, same result to <= 1e-4 reflectance."""
    sd = {k: v for k, v in opensr.model.state_dict().items() if not k.startswith("model_ema.")}
    model = convert_ldsr(sd, SPEC)
    lr = torch.rand(1, 4, 128, 128, generator=torch.Generator().manual_seed(3)) * 0.3 + 0.01
    torch.manual_seed(7)
    ref = opensr.forward(lr.clone(), sampling_steps=4, sampling_eta=1.0)
    ours = sample_opensr(model, lr, steps=4, eta=1.0, generator=torch.Generator().manual_seed(7))
    assert ref.shape == ours.shape == (1, 4, 512, 512) and ref.std() > 1e-3
    diff = (ours - ref).abs()
    assert float(diff.max()) <= 1e-4 and float((ours - ref).norm() / ref.norm()) <= 1e-5
    other = sample_opensr(model, lr, steps=4, eta=1.0, generator=torch.Generator().manual_seed(8))
    assert float((other - ref).abs().max()) > 1e-3, "other noise, another sample: the comparison can fail"


def test_ldsr_upsampler_runs_tiles_deterministically_per_position(opensr, tmp_path):
    from geosr.diffusion.weights_io import save_model
    from geosr.upsamplers import TileBatch, build_upsampler

    sd = {k: v for k, v in opensr.model.state_dict().items() if not k.startswith("model_ema.")}
    weights = save_model(convert_ldsr(sd, SPEC), tmp_path / "ldsr", SPEC)
    up = build_upsampler("ldsr", scale=4, device="cpu", bands=4, seed=3,
                         params={"weights": str(weights), "steps": 2, "correction": "projection"})
    px = (np.random.default_rng(0).random((2, 4, 16, 16)) * 0.3 + 0.01).astype(np.float32)
    y = up(TileBatch(px, np.array([[0, 0], [0, 8]], dtype=np.int64), seed=3))
    assert y.shape == (2, 4, 64, 64) and np.isfinite(y).all()
    alone = up(TileBatch(px[1:], np.array([[0, 8]], dtype=np.int64), seed=3))
    np.testing.assert_array_equal(alone[0], y[1])  # a tile's output depends on its position, not its batch
    from geosr import metrics

    assert metrics.lr_consistency(y[0], px[0], 4)["lr_l1"] < 1e-5  # correction=projection
    assert up.describe()["sampling"]["steps"] == 2
