"""Training on CPU with a tiny config: losses fall, checkpoints are safetensors + JSON, runs resume."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from geosr.diffusion.data import DataSpec, Degradation, PairSampler
from geosr.diffusion.spec import AutoencoderSpec, DenoiserSpec, ModelSpec
from geosr.diffusion.train import Trainer, TrainSpec
from geosr.diffusion.weights_io import load_model
from geosr.errors import ConfigError, InputNotFoundError

torch.set_num_threads(1)


def _write_tif(path, h=96, w=128, bands=4, seed=0):
    import rasterio
    from rasterio.transform import from_origin
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.random((bands, h, w)), (0, 2, 2))
    a = ((a - a.min()) / (a.max() - a.min()) * 200 + 20).astype(np.uint8)
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=bands, dtype="uint8",
                       crs="EPSG:32618", transform=from_origin(0, 0, 5, 5)) as ds:
        ds.write(a)
    return str(path)


SPEC = ModelSpec(
    bands=4, scale=4, residual_scale=0.1,
    autoencoder=AutoencoderSpec(encoder_block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8)),
    denoiser=DenoiserSpec(block_out_channels=(16, 16), down_block_types=("DownBlock2D",) * 2,
                          up_block_types=("UpBlock2D",) * 2, norm_num_groups=8),
)


@pytest.fixture()
def train_spec(tmp_path):
    f = _write_tif(tmp_path / "hr.tif")
    data = DataSpec(files=(f,), dn_scale=1 / 255, holdout=0.3, patch=32, gain=(1.0, 1.0),
                    degradation=Degradation(noise_std=(0.0, 0.001)))
    return TrainSpec(data=data, batch=4, ae_steps=40, denoiser_steps=60, ae_lr=3e-3, lr=2e-3, checkpoint_every=20,
                     val_every=30, val_batches=1, log_every=20, threads=1)


def test_pairs_are_consistent_and_split_geographically(train_spec):
    tr = PairSampler(train_spec.data, 4, "train")
    ho = PairSampler(train_spec.data, 4, "heldout")
    assert tr.images[0].shape[2] + ho.images[0].shape[2] == 128  # east 30% held out, no overlap
    lr, hr = tr.batch(3, np.random.default_rng(0))
    assert lr.shape == (3, 4, 8, 8) and hr.shape == (3, 4, 32, 32)
    lr2, hr2 = tr.batch(3, np.random.default_rng(0))
    assert torch.equal(lr, lr2) and torch.equal(hr, hr2)  # batches are a function of the RNG
    clean = replace(train_spec.data, degradation=Degradation(noise_std=(0.0, 0.0)))
    lr3, hr3 = PairSampler(clean, 4, "train").batch(2, np.random.default_rng(1))
    assert float((torch.nn.functional.avg_pool2d(hr3, 4) - lr3).abs().max()) < 1e-6


def test_training_losses_fall_and_checkpoint_loads(train_spec, tmp_path):
    out = tmp_path / "run"
    tr = Trainer(SPEC, train_spec, out, log_fn=lambda m: None)
    tr.run()
    ae, dn = tr.losses["autoencoder"], tr.losses["denoiser"]
    assert len(ae) == 40 and len(dn) == 60
    assert np.mean(ae[-10:]) < 0.7 * np.mean(ae[:5])
    assert np.mean(dn[-15:]) < np.mean(dn[:5])
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert all(f.endswith((".safetensors", ".json")) for f in files), files
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["trained"]["denoiser_steps"] == 60 and cfg["autoencoder"]["scaling_factor"] != 1.0
    assert cfg["trained"]["history"] and "val_psnr" in cfg["trained"]["history"][-1]
    m = load_model(out)
    assert m.spec.autoencoder.scaling_factor == pytest.approx(cfg["autoencoder"]["scaling_factor"])


def test_one_step_finetune_trains_what_the_one_step_sampler_computes(train_spec, tmp_path):
    """Stage 3 optimises x0 = sqrt(a_T) x_T - sqrt(1 - a_T) v(x_T, T); that must be what one DPM-Solver++ step
    returns, and the stage must update the weights, record itself and set 1-step sampling."""
    from diffusers import DDPMScheduler

    from geosr.diffusion.model import LatentSR
    from geosr.diffusion.samplers import sample_dpmpp

    torch.manual_seed(0)
    m = LatentSR(SPEC).eval()
    with torch.no_grad():
        for p in m.denoiser.parameters():
            p.add_(0.02 * torch.randn_like(p))
    cond = torch.randn(2, 4, 8, 8)
    x_T = torch.randn(2, 4, 8, 8)
    ac = DDPMScheduler(**SPEC.schedule.scheduler_config()).alphas_cumprod
    T = SPEC.schedule.num_train_timesteps - 1
    with torch.no_grad():
        v = m.denoise(x_T, torch.full((2,), T), cond)
        x0 = ac[T].sqrt() * x_T - (1 - ac[T]).sqrt() * v
        y = sample_dpmpp(lambda x, t: m.denoise(x, t, cond), x_T, schedule=SPEC.schedule.scheduler_config(), steps=1)
    assert float((y - x0).abs().max()) < 1e-3 * float(x0.abs().max())

    out = tmp_path / "run"
    spec = replace(train_spec, ae_steps=20, denoiser_steps=20, finetune_steps=20, val_every=20)
    Trainer(SPEC, replace(spec, finetune_steps=0), out, log_fn=lambda m: None).run()
    before = load_model(out).denoiser.state_dict()
    tr = Trainer(SPEC, spec, out, log_fn=lambda m: None)
    tr.run()
    assert len(tr.losses["finetune"]) == 20 and all(np.isfinite(tr.losses["finetune"]))
    after = load_model(out).denoiser.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["sampling"] == {"steps": 1, "sampler": "dpmpp"} and cfg["trained"]["finetune_steps"] == 20
    with pytest.raises(Exception):  # a different architecture cannot resume this run
        Trainer(replace(SPEC, denoiser=replace(SPEC.denoiser, block_out_channels=(8, 16))), spec, out,
                log_fn=lambda m: None)


def test_training_resumes_where_it_stopped(train_spec, tmp_path):
    out = tmp_path / "run"
    short = replace(train_spec, ae_steps=20, denoiser_steps=20)
    Trainer(SPEC, short, out, log_fn=lambda m: None).run()
    msgs = []
    t2 = Trainer(SPEC, replace(train_spec, ae_steps=20, denoiser_steps=40), out, log_fn=msgs.append)
    assert t2.state["denoiser_step"] == 20 and any("resumed" in m for m in msgs)
    assert t2.opt_dn.state_dict()["state"]  # optimiser moments restored
    t2.run()
    assert len(t2.losses["autoencoder"]) == 0 and len(t2.losses["denoiser"]) == 20
    assert json.loads((out / "train" / "state.json").read_text())["state"]["denoiser_step"] == 40


def test_train_cli(tmp_path, train_spec):
    import yaml

    from geosr.cli import main

    doc = {"model": SPEC.to_dict(), "train": {
        "data": {"files": list(train_spec.data.files), "dn_scale": 1 / 255, "holdout": 0.3, "patch": 32,
                 "degradation": {"operator": "gaussian", "blur_sigma": [0.0, 1.0], "noise_std": [0.0, 0.001]}},
        "batch": 2, "ae_steps": 3, "denoiser_steps": 3, "val_every": 3, "val_batches": 1, "log_every": 1}}
    cfg = tmp_path / "m.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "o"), "--threads", "1"]) == 0
    assert (tmp_path / "o" / "denoiser.safetensors").is_file()
    assert main(["train", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]) == 2


def test_bad_training_inputs(tmp_path):
    with pytest.raises(InputNotFoundError):
        PairSampler(DataSpec(files=(str(tmp_path / "none.tif"),)), 4)
    with pytest.raises(ConfigError):
        Degradation(operator="bicubic")
    f = _write_tif(tmp_path / "a.tif", h=40, w=40)
    with pytest.raises(ConfigError):
        PairSampler(DataSpec(files=(f,), patch=30), 4)
