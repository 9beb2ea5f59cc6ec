"""The mean predictor + space-to-depth latent model: invariants, weights files, training stage 0, eval on a
corpus manifest (whole held-out scenes), and the default model being the bundled diffusion model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geosr import metrics
from geosr.diffusion.consistency import consistent_base
from geosr.diffusion.data import DataSpec, FolderSource, PatchSampler, folder_files
from geosr.diffusion.evaluate import BackProjected, hf_energy_ratio
from geosr.diffusion.mean import dihedral, self_ensemble
from geosr.diffusion.model import LatentSR
from geosr.diffusion.pipeline import SamplingOptions, super_resolve
from geosr.diffusion.spec import AutoencoderSpec, DenoiserSpec, MeanSpec, ModelSpec
from geosr.diffusion.train import TrainSpec, open_run, train
from geosr.diffusion.weights_io import MEAN_FILE, load_model, save_model
from geosr.errors import ConfigError, ModelError
from geosr.upsamplers import TileBatch

torch.set_num_threads(1)

SPEC = ModelSpec(
    bands=4, scale=4, residual_scale=0.05, cond_offset=0.3, cond_scale=0.2,
    mean=MeanSpec(features=8, blocks=2),
    autoencoder=AutoencoderSpec(kind="shuffle", factor=4, latent_channels=64),
    denoiser=DenoiserSpec(block_out_channels=(16, 16), down_block_types=("DownBlock2D",) * 2,
                          up_block_types=("UpBlock2D",) * 2, norm_num_groups=8),
)


SHARED = ModelSpec(
    bands=0, scale=4, residual_scale=1.0,
    mean=MeanSpec(kind="band_shared", features=8, blocks=1, band_features=8, band_blocks=1),
    autoencoder=AutoencoderSpec(kind="shuffle", factor=4, latent_channels=16),
    denoiser=DenoiserSpec(block_out_channels=(16, 16), down_block_types=("DownBlock2D",) * 2,
                          up_block_types=("UpBlock2D",) * 2, norm_num_groups=8),
)


def _smooth(rng, shape, sigma=2.0):
    from scipy import ndimage

    a = ndimage.gaussian_filter(rng.random(shape), (0,) * (len(shape) - 2) + (sigma, sigma))
    return ((a - a.min()) / (a.max() - a.min()) * 0.6 + 0.1).astype(np.float32)


def _write(path, a, scale=255.0):
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.open(path, "w", driver="GTiff", height=a.shape[1], width=a.shape[2], count=a.shape[0],
                       dtype="uint8", crs="EPSG:32618", transform=from_origin(0, 0, 1, 1)) as ds:
        ds.write(np.clip(a * scale, 0, 255).astype(np.uint8))
    return str(path)


@pytest.fixture()
def manifest(tmp_path):
    """Two 4-band training scenes, one RGB-only training scene and two held-out scenes (other files)."""
    rng = np.random.default_rng(0)
    scenes = []
    for i, (bands, split) in enumerate([(4, "train"), (4, "train"), (3, "train"), (4, "holdout"), (4, "holdout")]):
        a = _smooth(rng, (bands, 96, 112), sigma=1.5 + i * 0.3)
        f = _write(tmp_path / f"s{i}.tif", a)
        scenes.append({"name": f"s{i}", "path": f, "bands": ["red", "green", "blue", "nir"][:bands],
                       "value_scale": 1 / 255, "split": split, "sensor": "synthetic"})
    p = tmp_path / "manifest.json"
    p.write_text(json.dumps({"scenes": scenes}))
    return p


# -- invariants ---------------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_shuffle_code_is_lossless(b, h, w, seed):
    m = LatentSR(SPEC)
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((b, 4, 4 * h, 4 * w)).astype(np.float32))
    z = m.encode(x)
    assert z.shape == (b, 64, h, w)
    torch.testing.assert_close(m.decode(z), x, rtol=0, atol=1e-6)


def test_untrained_mean_predictor_returns_the_consistent_base():
    """The tail is zero-initialised: a fresh model's base is the back-projected bicubic, exactly."""
    torch.manual_seed(0)
    m = LatentSR(SPEC).eval()
    lr = torch.from_numpy(_smooth(np.random.default_rng(1), (2, 4, 16, 20)))
    with torch.no_grad():
        torch.testing.assert_close(m.base(lr), consistent_base(lr, 4, "bicubic", "average", SPEC.base_iterations))


def _trained_like() -> LatentSR:
    """A model whose mean predictor has random (non-zero) weights, as after training."""
    torch.manual_seed(0)
    m = LatentSR(SPEC).eval()
    for p in m.mean.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return m


def test_base_reproduces_the_input_after_training_like_weights():
    m = _trained_like()
    lr = torch.from_numpy(_smooth(np.random.default_rng(2), (2, 4, 12, 12)))
    with torch.no_grad():
        base = m.base(lr)
    assert float((torch.nn.functional.avg_pool2d(base, 4) - lr).abs().max()) < 1e-5


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 7), st.integers(1, 6), st.integers(1, 6))
def test_dihedral_is_undone_by_its_inverse(k, h, w):
    x = torch.arange(2 * h * w, dtype=torch.float32).reshape(1, 2, h, w)
    assert torch.equal(dihedral(dihedral(x, k), k, inverse=True), x)
    sq = torch.arange(9.0).reshape(1, 1, 3, 3)  # no symmetry of its own: the 8 transforms are all different
    assert len({tuple(dihedral(sq, j).flatten().tolist()) for j in range(8)}) == 8


def test_self_ensemble_of_eight_is_equivariant_and_of_one_is_the_net():
    """Averaged over all 8 symmetries, the mean predictor commutes with them: a flipped or rotated scene
    gives the flipped or rotated result (up to float rounding of the sum's order); ensemble=1 is the net."""
    m = _trained_like()
    x = torch.from_numpy(_smooth(np.random.default_rng(3), (1, 4, 10, 14)))
    with torch.no_grad():
        assert torch.equal(self_ensemble(m.mean, x, 1), m.mean(x))
        e = self_ensemble(m.mean, x, 8)
        plain = m.mean(x)
        for k in range(1, 8):
            torch.testing.assert_close(self_ensemble(m.mean, dihedral(x, k), 8), dihedral(e, k), rtol=0, atol=1e-6)
            assert float((m.mean(dihedral(x, k)) - dihedral(plain, k)).abs().max()) > 1e-4  # the net alone is not
        base = m.base(x, 8)
    assert float((torch.nn.functional.avg_pool2d(base, 4) - x).abs().max()) < 1e-5  # still reproduces the input
    with pytest.raises(ModelError, match="ensemble=3"):
        self_ensemble(m.mean, x, 3)
    with pytest.raises(ConfigError, match="ensemble=5"):
        SamplingOptions(ensemble=5)


def test_shuffle_latent_channels_are_validated():
    with pytest.raises(ModelError, match="latent_channels=64"):
        ModelSpec(bands=4, scale=4, autoencoder=AutoencoderSpec(kind="shuffle", factor=4, latent_channels=4))


def test_hf_energy_ratio():
    rng = np.random.default_rng(3)
    hr = rng.random((3, 32, 32)).astype(np.float32)
    assert hf_energy_ratio(hr, hr, 4) == pytest.approx(1.0)
    flat = np.repeat(np.repeat(metrics.degrade(hr, 4), 4, 1), 4, 2)
    assert hf_energy_ratio(flat, hr, 4) == pytest.approx(0.0, abs=1e-12)
    assert 0.0 < hf_energy_ratio(0.5 * hr + 0.5 * flat, hr, 4) < 1.0


def test_lanczos_back_projection_reproduces_its_input():
    lr = _smooth(np.random.default_rng(4), (2, 4, 16, 16))
    out = BackProjected(4, "lanczos")(TileBatch(lr, np.zeros((2, 2), dtype=np.int64), seed=0))
    assert out.shape == (2, 4, 64, 64)
    np.testing.assert_allclose(metrics.degrade(out[0], 4), lr[0], atol=1e-6)


# -- weights files -------------------------------------------------------------------------------------------


def test_weights_round_trip_and_bad_files_are_one_line_errors(tmp_path):
    torch.manual_seed(0)
    m = LatentSR(SPEC)
    for p in m.mean.parameters():
        torch.nn.init.normal_(p, std=0.05)
    save_model(m, tmp_path / "w")
    back = load_model(tmp_path / "w")
    for k, v in m.mean.state_dict().items():
        assert torch.equal(back.mean.state_dict()[k], v)
    (tmp_path / "w" / MEAN_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match=MEAN_FILE) as e:
        load_model(tmp_path / "w")
    assert "\n" not in str(e.value)
    (tmp_path / "w" / MEAN_FILE).unlink()
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "w")
    other = LatentSR(ModelSpec(**{**SPEC.__dict__, "mean": MeanSpec(features=12, blocks=2)}))
    save_model(other, tmp_path / "o")
    (tmp_path / "o" / "config.json").write_text((tmp_path / "w" / "config.json").read_text())
    with pytest.raises(ModelError, match="config.json"):
        load_model(tmp_path / "o")


# -- data and training ---------------------------------------------------------------------------------------


def test_manifest_scenes_keep_their_own_bands(manifest):
    data = DataSpec(manifest=str(manifest), patch=32, context=32, gain=(1.0, 1.0), val_fraction=0.0)
    tr = PatchSampler(data, 4, "train")
    assert tr.names == ["s0", "s1", "s2"]  # held-out scenes are never read for training
    assert [im.pixels.shape[0] for im in tr.images] == [4, 4, 3] and tr.images[2].bands == ("red", "green", "blue")
    four = tr.batch(6, np.random.default_rng(0), bands=4)
    assert four.lr.shape == (6, 4, 8, 8) and four.hr.shape == (6, 4, 32, 32)
    three = tr.batch(6, np.random.default_rng(0), bands=3, exact=True)  # exactly-3-band images: s2 only
    assert three.hr.shape[1] == 3


def _trainable(tmp_path, manifest, **kw) -> TrainSpec:
    data = DataSpec(manifest=str(manifest), patch=32, context=64, gain=(1.0, 1.0), val_fraction=0.3,
                    band_counts={1: 0.2, 3: 0.4, 4: 0.4})
    base = dict(data=data, batch=4, mean_steps=60, mean_lr=3e-3, ae_steps=0, denoiser_steps=4, warmup=10,
                checkpoint_every=20, val_every=30, val_batches=2, log_every=30, threads=1)
    return TrainSpec(**{**base, **kw})


@pytest.mark.parametrize("spec", [SPEC, SHARED], ids=["joint", "band_shared"])
def test_mean_stage_learns_resumes_and_saves_a_loadable_model(manifest, tmp_path, spec):
    cfg = _trainable(tmp_path, manifest)
    out = tmp_path / "run"
    train(spec, cfg.model_copy(update={"mean_steps": 30}), out, log_fn=lambda m: None)
    st = json.loads((out / "train" / "state.json").read_text())
    assert st["state"]["mean_step"] == 30 and st["state"]["denoiser_step"] == 4
    # a second run with more mean steps resumes stage 0 where it stopped
    assert open_run(spec, cfg, out, log_fn=lambda m: None).state["mean_step"] == 30
    r = train(spec, cfg, out, log_fn=lambda m: None)
    assert r.state["mean_step"] == 60
    hist = [h for h in r.state["history"] if str(h["step"]).startswith("mean")]
    assert hist and hist[-1]["val_psnr_mean"] > hist[-1]["val_psnr_base"]  # learned something real, held out
    model = load_model(out)
    assert model.mean is not None and (out / MEAN_FILE).is_file()
    lr = torch.from_numpy(_smooth(np.random.default_rng(5), (1, 4, 16, 16)))
    with torch.no_grad():
        y = super_resolve(model, lr, np.zeros((1, 2), dtype=np.int64), options=SamplingOptions(steps=1))
        m = super_resolve(model, lr, np.zeros((1, 2), dtype=np.int64), options=SamplingOptions(diffusion=False))
    assert y.shape == m.shape == (1, 4, 64, 64)
    assert float((torch.nn.functional.avg_pool2d(m, 4) - lr).abs().max()) < 1e-5


# -- the band-shared model: any band count --------------------------------------------------------------------


def _shared_trained_like(seed: int = 0) -> LatentSR:
    torch.manual_seed(seed)
    m = LatentSR(SHARED).eval()
    for p in list(m.mean.parameters()) + list(m.denoiser.parameters()):
        torch.nn.init.normal_(p, std=0.1)
    return m


@pytest.mark.parametrize("bands", [1, 2, 3, 4, 10])
@pytest.mark.parametrize("diffusion", [False, True])
def test_band_shared_model_takes_any_band_count_and_reproduces_every_band(bands, diffusion):
    m = _shared_trained_like()
    lr = torch.from_numpy(_smooth(np.random.default_rng(bands), (2, bands, 12, 12)))
    org = np.array([[0, 0], [8, 4]], dtype=np.int64)
    with torch.no_grad():
        y = super_resolve(m, lr, org, options=SamplingOptions(diffusion=diffusion, steps=2, eta=1.0))
        y2 = super_resolve(m, lr, org, options=SamplingOptions(diffusion=diffusion, steps=2, eta=1.0))
    assert y.shape == (2, bands, 48, 48) and torch.equal(y, y2)
    assert float((torch.nn.functional.avg_pool2d(y, 4) - lr).abs().max()) < 1e-5  # every band LR-consistent
    plain = consistent_base(lr, 4, "bicubic", "average", SHARED.base_iterations)
    assert float((y - plain).abs().max()) > 1e-3  # the networks really act


def test_band_shared_model_is_equivariant_to_band_order_and_to_gain_and_offset_per_band():
    """One set of weights for every band beside a guide symmetric in the bands: permuting the input's bands
    permutes the output's; each tile is normalised per band, so a gain and an offset per band carry through."""
    m = _shared_trained_like(1)
    lr = torch.from_numpy(_smooth(np.random.default_rng(9), (1, 4, 16, 16)))
    org = np.zeros((1, 2), dtype=np.int64)
    opts = SamplingOptions(diffusion=False, ensemble=2)
    with torch.no_grad():
        y = super_resolve(m, lr, org, options=opts)
        perm = [2, 0, 3, 1]
        torch.testing.assert_close(super_resolve(m, lr[:, perm], org, options=opts), y[:, perm], rtol=0, atol=2e-5)
        gain = torch.tensor([2.0, 0.5, 1.0, 3.0]).view(1, 4, 1, 1)
        off = torch.tensor([0.1, -0.05, 0.0, 0.2]).view(1, 4, 1, 1)
        torch.testing.assert_close(super_resolve(m, lr * gain + off, org, options=opts), y * gain + off,
                                   rtol=0, atol=2e-3)


def test_band_shared_spec_is_validated():
    with pytest.raises(ModelError, match="bands=0"):
        ModelSpec(bands=0, mean=MeanSpec(kind="joint"), autoencoder=AutoencoderSpec(kind="shuffle", latent_channels=16))
    with pytest.raises(ModelError, match="latent_channels must be"):
        ModelSpec(bands=0, mean=MeanSpec(kind="band_shared"), autoencoder=AutoencoderSpec(kind="shuffle", latent_channels=64))
    with pytest.raises(ModelError, match="set bands: 0"):
        ModelSpec(bands=4, mean=MeanSpec(kind="band_shared"))


def _folder(tmp_path, name, n, bands, size=64):
    from PIL import Image

    d = tmp_path / name / "cls"
    d.mkdir(parents=True)
    rng = np.random.default_rng(len(name))
    for i in range(n):
        a = (_smooth(rng, (bands, size, size), 1.5) * 255).astype(np.uint8)
        if bands == 3:
            Image.fromarray(a.transpose(1, 2, 0)).save(d / f"cls{i:02d}.png")
        else:
            _write(d / f"cls{i:02d}.tif", a / 255.0)
    return tmp_path / name


def test_image_folders_split_by_name_and_train_a_band_shared_model(tmp_path):
    """An image folder beside the registry corpus (here: RGB PNGs and RGBN GeoTIFFs): files matching ``test``
    are never read for training or validation, ``val`` files validate, the rest train, each with its own
    band count; the band-shared model trains on the mix and loads."""
    _folder(tmp_path, "rgb", 10, 3)
    _folder(tmp_path, "rgbn", 4, 4, size=128)
    rgb = FolderSource(path="rgb", glob="*/*.png", bands=("red", "green", "blue"), test=r"0[89]\.png$",
                       val=r"07\.png$")
    rgbn = FolderSource(path="rgbn", glob="*/*.tif", bands=("red", "green", "blue", "nir"), val_fraction=0.25)
    data = DataSpec(corpus_root=str(tmp_path), folders=(rgb, rgbn), patch=32, context=64,
                    band_counts={1: 0.3, 3: 0.4, 4: 0.3}, gain=(1.0, 1.0))
    names = lambda part: [f.name for f in folder_files(rgb, tmp_path, part)]  # noqa: E731
    assert names("test") == ["cls08.png", "cls09.png"] and names("val") == ["cls07.png"]
    assert set(names("train")) == {f"cls0{i}.png" for i in range(7)}
    tr, va = PatchSampler(data, 4, "train"), PatchSampler(data, 4, "val")
    assert not any("cls08" in n or "cls09" in n for n in tr.names + va.names)
    assert sorted(n for n in va.names if n.startswith("rgb/")) == ["rgb/cls07.png"]
    assert len([n for n in va.names if n.startswith("rgbn/")]) == 4  # east strips of the RGBN images
    cfg = TrainSpec(data=data, batch=4, mean_steps=40, mean_lr=3e-3, ae_steps=0, denoiser_steps=0, warmup=10,
                    checkpoint_every=40, val_every=20, val_batches=2, log_every=40, threads=1, keep_best=True)
    r = train(SHARED, cfg, tmp_path / "run", log_fn=lambda m: None)
    assert r.state["mean_best"]["val_gain"] > 0
    assert load_model(tmp_path / "run").spec.band_shared
    with pytest.raises(Exception, match="does not exist"):
        PatchSampler(data.model_copy(update={"corpus_root": str(tmp_path / "nowhere")}), 4, "train")


def test_eval_manifest_reports_every_heldout_scene_and_method(manifest, tmp_path, capsys):
    from geosr.cli import main

    torch.manual_seed(0)
    save_model(LatentSR(SPEC), tmp_path / "w")
    rc = main(["eval", "--manifest", str(manifest), "--weights", str(tmp_path / "w"), "--scene-tile", "16",
               "--scene-overlap", "4", "--texture-steps", "2", "--json", str(tmp_path / "e.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "ΔPSNR vs lanczos+bp" in out
    # the per-scene summary: baseline and model side by side, ablations as differences, the goal counted
    assert "| held-out scene | lanczos+bp PSNR / SSIM | **ldm** PSNR / SSIM |" in out
    assert "ldm mean, 8x self-ensemble Δ" in out and "held-out scenes." in out
    res = json.loads((tmp_path / "e.json").read_text())
    assert set(res["rows"]) == {"bicubic", "lanczos", "lanczos+bp", "ldm", "ldm mean only (no diffusion)",
                                "ldm mean, 8x self-ensemble", "ldm 1-step diffusion", "ldm 2-step ddim eta=1"}
    for name, per in res["rows"].items():
        assert set(per) == {"s3", "s4"}, name
        for r in per.values():
            assert set(r) >= {"psnr", "ssim", "lr_l1", "hf_ratio", "seam_ratio", "seconds"}
            assert np.isfinite(r["seam_ratio"]) and r["psnr"] > 10
    # the back-projected baseline and the model reproduce the input; plain interpolation does not
    assert res["rows"]["lanczos+bp"]["s3"]["lr_l1"] < 1e-5 and res["rows"]["ldm"]["s3"]["lr_l1"] < 1e-5
    assert res["rows"]["bicubic"]["s3"]["lr_l1"] > 1e-4
    # an untrained mean predictor is the back-projected bicubic: the ablation row equals bicubic+bp's quality
    assert res["rows"]["ldm mean only (no diffusion)"]["s3"]["psnr"] > res["rows"]["bicubic"]["s3"]["psnr"]


def test_default_model_is_the_bundled_diffusion_model():
    from geosr.config import load_config
    from geosr.diffusion.weights_io import bundled_dir

    cfg = load_config()
    assert cfg.model.name == "ldm"
    spec = json.loads((Path(bundled_dir()) / "config.json").read_text())
    assert spec["mean"] is not None and spec["autoencoder"]["kind"] == "shuffle"
    assert spec["trained"]["mean_steps"] > 0 and spec["trained"]["denoiser_steps"] > 0


def test_default_model_same_seed_same_bytes_whatever_the_block_size(tmp_path):
    """`geosr run` with the bundled default: rerun -> identical bytes; another block partition -> identical bytes."""
    from geosr.config import load_config
    from geosr.lifecycle import run_scene

    src = _write(tmp_path / "in.tif", _smooth(np.random.default_rng(7), (4, 72, 80)))
    base = {"tiling.tile": 32, "tiling.overlap": 8, "tiling.chunk": 64, "model.device": "cpu", "workers": 1,
            "input.bands": [1, 2, 3, 4]}  # uint8 RGBA-looking: take band 4 as data (nir), not alpha
    outs = []
    for i, block in enumerate((128, 128, 64)):
        out = tmp_path / f"o{i}.zarr"
        run_scene(src, str(out), load_config(None, {**base, "tiling.block": block}))
        outs.append(out)

    def chunks(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "reflectance").rglob("*"))
                if p.is_file() and not p.name.startswith(".z")}

    first = chunks(outs[0])
    # same seed: the same bytes on a rerun and for another block partition (on CPU the model runs one tile per
    # call, so no tile's arithmetic depends on which other tiles share its block)
    assert first and chunks(outs[1]) == first and chunks(outs[2]) == first


def test_pyramid_adds_coarser_copies_of_training_scenes_only(manifest):
    data = DataSpec(manifest=str(manifest), patch=24, context=24, pyramid=(1, 4), gain=(1.0, 1.0), val_fraction=0.0)
    tr = PatchSampler(data, 4, "train")
    assert tr.names == ["s0", "s1", "s2", "s0/4", "s1/4", "s2/4"]
    np.testing.assert_allclose(tr.images[3].pixels, metrics.degrade(tr.images[0].pixels, 4), atol=1e-6)
    assert tr.images[5].bands == ("red", "green", "blue")


def test_gpu_session_check_passes_on_cpu(capsys):
    """bench/gpu_check.py (the device session's first step) on CPU: the bundled model is LR-consistent,
    repeatable and batch-size independent, in both samplings."""
    import runpy

    main = runpy.run_path(str(Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"), run_name="check")["main"]
    assert main(["--quick"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["mean"]["same_twice"] and res["diffusion_1step"]["same_twice"]


def test_val_fraction_carves_validation_from_training_scenes_and_leaves_heldout_untouched(manifest):
    from geosr.diffusion.data import manifest_scenes, read_scene

    data = DataSpec(manifest=str(manifest), patch=32, context=32, val_fraction=0.3)
    tr, va = (PatchSampler(data, 4, part) for part in ("train", "val"))
    assert tr.names == va.names == ["s0", "s1", "s2"]  # held-out scenes s3, s4: never read
    full, _ = read_scene(manifest_scenes(str(manifest), "train")[0])
    cut = int(round(full.shape[-1] * 0.7))
    np.testing.assert_array_equal(tr.images[0].pixels, full[..., :cut])  # west: training
    np.testing.assert_array_equal(va.images[0].pixels, full[..., cut:])  # east: validation, disjoint from it
    with pytest.raises(ValueError, match="val_fraction"):
        DataSpec(manifest=str(manifest), patch=32, val_fraction=0.6)


def test_keep_best_ends_the_mean_stage_with_its_best_validation_checkpoint(manifest, tmp_path):
    from geosr.diffusion.train import MEAN_BEST_FILE
    from geosr.diffusion.weights_io import load_tensors

    cfg = _trainable(tmp_path, manifest, mean_steps=40, denoiser_steps=0, val_every=10, keep_best=True)
    out = tmp_path / "run"
    r = train(SHARED, cfg, out, log_fn=lambda m: None)
    hist = [h for h in r.state["history"] if str(h["step"]).startswith("mean")]
    best = max(hist, key=lambda h: h["val_gain"])
    assert r.state["mean_best"]["step"] == int(best["step"].split()[1])
    assert r.state["mean_best"]["val_gain"] == best["val_gain"]
    kept = load_tensors(out / "train" / MEAN_BEST_FILE)
    shipped = load_model(out).mean.state_dict()
    assert all(torch.equal(kept[k], shipped[k]) for k in kept)  # the saved model carries the best weights
    cfg_json = json.loads((out / "config.json").read_text())["trained"]
    assert cfg_json["heldout_scenes"] == ["s3", "s4"] and cfg_json["val_images"] == 3
    assert "held-out scenes untouched" in cfg_json["validation"] and cfg_json["mean_best"] == r.state["mean_best"]


def test_bundle_script_copies_a_run_with_its_heldout_summary(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bundle_model", Path(__file__).parents[1] / "scripts/bundle_model.py")
    bundle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bundle)
    torch.manual_seed(0)
    save_model(LatentSR(SPEC), tmp_path / "run")
    ev = {"rows": {"lanczos+bp": {"a": {"psnr": 30.0, "ssim": 0.90}},
                   "ldm": {"a": {"psnr": 30.25, "ssim": 0.91}}, "bicubic": {"a": {"psnr": 29.0, "ssim": 0.8}}}}
    (tmp_path / "e.json").write_text(json.dumps(ev))
    assert bundle.main([str(tmp_path / "run"), str(tmp_path / "e.json"), "--dest", str(tmp_path / "b"),
                        "--sampling", '{"ensemble": 2, "diffusion": false}']) == 0
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert cfg["sampling"]["ensemble"] == 2 and cfg["sampling"]["diffusion"] is False
    assert cfg["trained"]["heldout_eval"]["psnr_gain_db"] == {"ldm": {"a": 0.25}}
    assert load_model(tmp_path / "b").mean is not None
    assert bundle.main([str(tmp_path / "nothing"), str(tmp_path / "e.json"), "--dest", str(tmp_path / "c")]) == 2


def test_mean_only_sampling_loads_no_denoiser_until_samples_are_asked_for(tmp_path):
    """``diffusion: false`` (the band-shared default) builds no denoiser (no diffusers import, less memory); a
    call that needs it (uncertainty samples, or diffusion switched on) loads it from the same directory."""
    from geosr.upsamplers import build_upsampler

    m = _shared_trained_like(2)
    save_model(m, tmp_path / "w")
    up = build_upsampler("ldm", scale=4, device="cpu", bands=3, params={"weights": str(tmp_path / "w"),
                                                                          "diffusion": False})
    assert up.model.denoiser is None and up.bands is None
    lr = _smooth(np.random.default_rng(11), (2, 3, 12, 12))
    batch = TileBatch(lr, np.array([[0, 0], [0, 12]], dtype=np.int64), seed=0)
    out = up(batch)
    assert out.shape == (2, 3, 48, 48) and up.model.denoiser is None
    mean, std = up.sample_with_std(batch, 2)
    assert up.model.denoiser is not None and mean.shape == std.shape == out.shape and float(std.max()) > 0
    for k, v in m.denoiser.state_dict().items():
        assert torch.equal(up.model.denoiser.state_dict()[k], v)


# -- any scale: read-outs and cascades of the x4 model; the input's noise level ------------------------------


@pytest.mark.parametrize("scale", [2, 3, 4, 8, 12, 16])
def test_any_scale_from_the_x4_model_reproduces_the_input(scale):
    from geosr.diffusion.pipeline import scale_stages

    m = _shared_trained_like(3)
    lr = torch.from_numpy(_smooth(np.random.default_rng(scale), (1, 3, 6, 6)))
    with torch.no_grad():
        y = super_resolve(m, lr, np.zeros((1, 2), np.int64), options=SamplingOptions(diffusion=False), scale=scale)
    assert y.shape == (1, 3, 6 * scale, 6 * scale)
    assert float((torch.nn.functional.avg_pool2d(y, scale) - lr).abs().max()) < 2e-5
    assert np.prod(scale_stages(4, scale)) == scale


def test_read_out_is_the_area_average_of_the_x4_estimate_and_unsupported_scales_are_refused():
    from geosr.diffusion.consistency import area_resample
    from geosr.upsamplers import build_upsampler

    m = _shared_trained_like(4)
    lr = torch.from_numpy(_smooth(np.random.default_rng(5), (1, 2, 9, 9)))
    org = np.zeros((1, 2), np.int64)
    opts = SamplingOptions(diffusion=False)
    with torch.no_grad():
        y4 = super_resolve(m, lr, org, options=opts)
        torch.testing.assert_close(super_resolve(m, lr, org, options=opts, scale=2),
                                   torch.nn.functional.avg_pool2d(y4, 2), rtol=0, atol=1e-5)
        y3 = area_resample(y4, 3, 4)
    assert y3.shape[-1] == 27
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(y3, 3), lr, rtol=0, atol=1e-5)  # integrals kept
    with pytest.raises(ConfigError, match="scale=5"):
        super_resolve(m, lr, org, options=opts, scale=5)
    with pytest.raises(ConfigError, match="tiling.scale=6"):
        build_upsampler("ldm", scale=6, device="cpu", params={"diffusion": False})


def test_noise_estimate_finds_white_noise_under_structure():
    from geosr.diffusion.noise_estimate import noise_sigma

    rng = np.random.default_rng(0)
    clean = torch.from_numpy(_smooth(rng, (2, 3, 128, 128), sigma=3.0))
    for sigma in (0.005, 0.01, 0.03):
        noisy = clean + sigma * torch.from_numpy(rng.standard_normal(clean.shape).astype(np.float32))
        est = noise_sigma(noisy)
        assert est.shape == (2, 3)
        assert float((est / sigma - 1).abs().max()) < 0.15, (sigma, est)
    assert float(noise_sigma(clean).max()) < 0.002  # smooth structure is not mistaken for noise
    with pytest.raises(ConfigError, match="noise_sigma"):
        SamplingOptions(noise_sigma="loud")
    m = _shared_trained_like(6)
    x = (clean[:1] + 0.01 * torch.from_numpy(rng.standard_normal((1, 3, 128, 128)).astype(np.float32)))[..., :32, :32]
    with torch.no_grad():
        auto = super_resolve(m, x, np.zeros((1, 2), np.int64), options=SamplingOptions(diffusion=False, noise_sigma="auto"))
        zero = super_resolve(m, x, np.zeros((1, 2), np.int64), options=SamplingOptions(diffusion=False))
    assert float((auto - zero).abs().max()) > 1e-4  # the noise level reaches the network


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp"])
def test_projecting_every_step_keeps_the_measurement_without_a_final_projection(sampler):
    """project_x0: every step's clean-latent estimate is projected onto the LR input, so even with the final
    projection off the sample reproduces the input; without it, it does not."""
    m = _shared_trained_like(7)
    lr = torch.from_numpy(_smooth(np.random.default_rng(12), (1, 3, 10, 10)))
    org = np.zeros((1, 2), np.int64)
    err = {}
    for px0 in (False, True):
        opts = SamplingOptions(steps=3, sampler=sampler, eta=1.0, projection=False, project_x0=px0)
        with torch.no_grad():
            y = super_resolve(m, lr, org, options=opts)
        err[px0] = float((torch.nn.functional.avg_pool2d(y, 4) - lr).abs().max())
    assert err[True] < 1e-4 < err[False]


def test_eval_test_split_scores_only_the_recipe_test_images_in_both_protocols(tmp_path, capsys):
    import yaml

    from geosr.cli import main

    _folder(tmp_path, "rgb", 6, 3)
    m = _shared_trained_like(8)
    save_model(m, tmp_path / "w")
    recipe = {"model": SHARED.to_dict(), "train": {"data": {
        "corpus_root": str(tmp_path), "patch": 32, "context": 32,
        "folders": [{"path": "rgb", "glob": "*/*.png", "bands": ["red", "green", "blue"], "test": r"0[45]\.png$"}]}}}
    rp = tmp_path / "recipe.yaml"
    rp.write_text(yaml.safe_dump(recipe))
    rc = main(["eval", "--test-split", str(rp), "--weights", str(tmp_path / "w"), "--json", str(tmp_path / "e.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "2 test images, protocol average" in out and "2 test images, protocol bicubic-uint8" in out
    res = json.loads((tmp_path / "e.json").read_text())
    for protocol in ("average", "bicubic-uint8"):
        rows = res[protocol]
        assert {"bicubic", "lanczos", "lanczos+bp", "ldm"} <= set(rows)
        assert all(r["images"] == 2 and np.isfinite(r["psnr"]) for r in rows.values())
    assert res["average"]["lanczos+bp"]["psnr"] > res["average"]["bicubic"]["psnr"]
    assert main(["eval", "--test-split", str(tmp_path / "none.yaml")]) == 2
