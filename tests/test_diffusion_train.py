"""Training on CPU with a tiny config: losses fall, checkpoints are safetensors + JSON, runs resume, the time
limit holds across checkpoints and stages."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from geosr.diffusion.data import DataSpec, Degradation, PatchSampler
from geosr.diffusion.spec import AutoencoderSpec, DenoiserSpec, ModelSpec
from geosr.diffusion.train import TrainSpec, open_run, train
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
    data = DataSpec(files=(f,), dn_scale=1 / 255, holdout=0.3, patch=32, context=32, gain=(1.0, 1.0),
                    degradation=Degradation(noise_std=(0.0, 0.001)))
    return TrainSpec(data=data, batch=4, ae_steps=40, denoiser_steps=60, ae_lr=3e-3, lr=2e-3, checkpoint_every=20,
                     val_every=30, val_batches=1, log_every=20, threads=1)


def test_pairs_are_consistent_and_split_geographically(train_spec):
    tr = PatchSampler(train_spec.data, 4, "train")
    ho = PatchSampler(train_spec.data, 4, "val")
    assert tr.images[0].pixels.shape[2] + ho.images[0].pixels.shape[2] == 128  # east 30% held out, no overlap
    b = tr.batch(3, np.random.default_rng(0), bands=4)
    assert b.lr.shape == (3, 4, 8, 8) and b.hr.shape == (3, 4, 32, 32) and b.mu.shape == b.sigma.shape == (3, 4)
    b2 = tr.batch(3, np.random.default_rng(0), bands=4)
    assert torch.equal(b.lr, b2.lr) and torch.equal(b.hr, b2.hr)  # batches are a function of the RNG
    clean = train_spec.data.model_copy(update={"degradation": Degradation()})
    b3 = PatchSampler(clean, 4, "train").batch(2, np.random.default_rng(1), bands=2)
    assert b3.lr.shape[1] == 2  # a random subset of the bands
    assert float((torch.nn.functional.avg_pool2d(b3.hr, 4) - b3.lr).abs().max()) < 1e-6
    # the normalisation statistics are the LR context's (here: the patch itself) band means and deviations
    assert torch.allclose(b3.mu, b3.lr.mean(dim=(2, 3)), atol=1e-5)
    assert torch.allclose(b3.sigma, (b3.lr.var(dim=(2, 3), unbiased=False) + 1e-6).sqrt(), atol=1e-5)


def test_training_losses_fall_and_checkpoint_loads(train_spec, tmp_path):
    out = tmp_path / "run"
    tr = train(SPEC, train_spec, out, log_fn=lambda m: None)
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
    spec = train_spec.model_copy(update=dict(ae_steps=20, denoiser_steps=20, finetune_steps=20, val_every=20))
    train(SPEC, spec.model_copy(update={"finetune_steps": 0}), out, log_fn=lambda m: None)
    before = load_model(out).denoiser.state_dict()
    tr = train(SPEC, spec, out, log_fn=lambda m: None)
    assert len(tr.losses["finetune"]) == 20 and all(np.isfinite(tr.losses["finetune"]))
    after = load_model(out).denoiser.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["sampling"] == {"steps": 1, "sampler": "dpmpp"} and cfg["trained"]["finetune_steps"] == 20
    with pytest.raises(Exception):  # a different architecture cannot resume this run
        open_run(replace(SPEC, denoiser=replace(SPEC.denoiser, block_out_channels=(8, 16))), spec, out,
                 log_fn=lambda m: None)


def test_training_resumes_where_it_stopped(train_spec, tmp_path):
    out = tmp_path / "run"
    train(SPEC, train_spec.model_copy(update=dict(ae_steps=20, denoiser_steps=20)), out, log_fn=lambda m: None)
    msgs = []
    longer = train_spec.model_copy(update=dict(ae_steps=20, denoiser_steps=40))
    r = open_run(SPEC, longer, out, log_fn=msgs.append)
    assert r.state["denoiser_step"] == 20 and any("resumed" in m for m in msgs)
    assert r.optims["optim_denoiser"].state_dict()["state"]  # optimiser moments restored
    t2 = train(SPEC, longer, out, log_fn=msgs.append)
    assert len(t2.losses.get("autoencoder", [])) == 0 and len(t2.losses["denoiser"]) == 20
    assert json.loads((out / "train" / "state.json").read_text())["state"]["denoiser_step"] == 40


def test_time_limit_stops_the_whole_run_across_checkpoints_and_stages(train_spec, tmp_path):
    """``time_limit_s`` is one deadline for the invocation: checkpoints do not restart its clock, and the run
    stops (saved, resumable) in whatever stage it is in — here with checkpoints every step."""
    out = tmp_path / "run"
    spec = train_spec.model_copy(update=dict(ae_steps=400, denoiser_steps=400, finetune_steps=400,
                                             checkpoint_every=1, val_every=10_000, time_limit_s=1.5))
    t0 = time.monotonic()
    r = train(SPEC, spec, out, log_fn=lambda m: None)
    took = time.monotonic() - t0
    done = r.state["ae_step"] + r.state["denoiser_step"] + r.state.get("finetune_step", 0)
    assert 0 < done < 1200 and r.state["stage"] != "done"
    assert took < 30, took  # one step + one checkpoint past the deadline, not a stage's worth
    saved = json.loads((out / "train" / "state.json").read_text())["state"]
    assert saved["ae_step"] == r.state["ae_step"] and saved["denoiser_step"] == r.state["denoiser_step"]
    r2 = train(SPEC, spec.model_copy(update={"time_limit_s": 1.0}), out, log_fn=lambda m: None)  # resumes
    assert r2.state["ae_step"] + r2.state["denoiser_step"] + r2.state.get("finetune_step", 0) > done


def test_train_cli(tmp_path, train_spec):
    import yaml

    from geosr.cli import main

    doc = {"model": SPEC.to_dict(), "train": {
        "data": {"files": list(train_spec.data.files), "dn_scale": 1 / 255, "holdout": 0.3, "patch": 32,
                 "context": 32,
                 "degradation": {"operator": "gaussian", "blur_sigma": [0.0, 1.0], "noise_std": [0.0, 0.001]}},
        "batch": 2, "ae_steps": 3, "denoiser_steps": 3, "val_every": 3, "val_batches": 1, "log_every": 1}}
    cfg = tmp_path / "m.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "o"), "--threads", "1"]) == 0
    assert (tmp_path / "o" / "denoiser.safetensors").is_file()
    assert main(["train", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]) == 2
    doc["train"]["bacth"] = 2  # a typo is a one-line error naming the key, not a silent default
    cfg.write_text(yaml.safe_dump(doc))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "o2")]) == 2


def test_bad_training_inputs(tmp_path):
    from pydantic import ValidationError

    with pytest.raises(InputNotFoundError):
        PatchSampler(DataSpec(files=(str(tmp_path / "none.tif"),)), 4)
    with pytest.raises(ValidationError):
        Degradation(operator="bicubic")
    f = _write_tif(tmp_path / "a.tif", h=40, w=40)
    with pytest.raises(ConfigError):
        PatchSampler(DataSpec(files=(f,), patch=30, context=30), 4)
