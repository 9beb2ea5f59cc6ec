"""Staged training: the mean predictor (if the model has one), the residual autoencoder (if learned), then
the v-prediction latent denoiser (with EMA), then optional one-step fine-tuning.

Everything is resumable: every ``checkpoint_every`` steps the run directory gets the current weights
(``config.json`` + safetensors, loadable by :func:`geosr.diffusion.weights_io.load_model`) and
``train/`` with the raw weights, the optimiser state (safetensors) and the counters (``state.json``).
Batches are drawn from an RNG seeded by (seed, stage, step), so a resumed run sees the same data as an
uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, ModelError
from .consistency import consistent_base
from .data import DataSpec, Degradation, PairSampler, manifest_scenes
from .model import LatentSR, count_parameters
from .spec import AutoencoderSpec, ModelSpec
from .weights_io import AE_FILE, DENOISER_FILE, MEAN_FILE, load_tensors, save_model, save_tensors

log = logging.getLogger(__name__)

MEAN_BEST_FILE = "mean_best.safetensors"  # in the run's train/ folder: the best mean predictor so far (keep_best)


@dataclass(frozen=True)
class TrainSpec:
    data: DataSpec
    batch: int = 8
    mean_steps: int = 0  # stage 0: the regression mean predictor (models with ``mean`` only)
    mean_lr: float = 1e-3
    mean_batch: int = 0  # 0: same as ``batch``
    ae_steps: int = 1000
    denoiser_steps: int = 4000
    lr: float = 1e-3
    ae_lr: float = 1e-3
    ema: float = 0.999
    high_t_fraction: float = 0.5  # share of denoiser samples at the few-step sampler's timesteps
    few_steps: int = 2  # the sampler step count those timesteps come from
    checkpoint_every: int = 250
    val_every: int = 500
    val_batches: int = 4
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 = torch default
    device: str = "cpu"
    log_every: int = 25
    time_limit_s: float = 0.0  # stop the current stage (and save) after this long; 0 = none
    finetune_steps: int = 0  # stage 3: one-step fine-tuning with a pixel loss (0 = off)
    finetune_lr: float = 2e-4
    finetune_v_weight: float = 0.5  # weight of the ordinary v-prediction loss kept during stage 3
    keep_best: bool = False  # stage 0 ends with the mean predictor of its best validation PSNR (early stopping)


def _batch_rng(seed: int, stage: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, stage, step])


def _optim_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        meta["state"][str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v
            else:
                meta["state"][str(pid)][k] = v
    return tensors, meta


def _restore_optim(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    for pid, extra in meta["state"].items():
        state.setdefault(int(pid), {}).update(extra)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class Progress:
    """One log line every ``every`` steps: loss (running mean), steps/s, ETA."""

    def __init__(self, stage: str, total: int, start: int, every: int, out=None) -> None:
        self.stage, self.total, self.start, self.every = stage, total, start, every
        self.t0 = time.perf_counter()
        self.losses: list[float] = []
        self.out = out or sys.stderr

    def update(self, step: int, loss: float, extra: str = "") -> None:
        self.losses.append(loss)
        if step % self.every and step != self.total:
            return
        done = step - self.start
        el = time.perf_counter() - self.t0
        rate = done / el if el > 0 else float("nan")
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        mean = float(np.mean(self.losses[-self.every:]))
        print(f"[{self.stage}] step {step}/{self.total} loss {mean:.5f} {rate:.2f} steps/s "
              f"ETA {_hms(eta)} {extra}".rstrip(), file=self.out, flush=True)


def _hms(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Trainer:
    def __init__(self, spec: ModelSpec, train: TrainSpec, out_dir: str | Path,
                 log_fn: Callable[[str], None] | None = None) -> None:
        if train.threads:
            torch.set_num_threads(train.threads)
        self.spec, self.cfg = spec, train
        self.out = Path(out_dir)
        self.dev = torch.device(train.device)
        self.state_dir = self.out / "train"
        self.train_data = PairSampler(train.data, spec.scale, "train")
        self.val_data = PairSampler(train.data, spec.scale, "val")
        if self.train_data.bands != spec.bands:
            raise ConfigError(f"training rasters have {self.train_data.bands} bands; the model expects {spec.bands}")
        torch.manual_seed(train.seed)  # reproducible initialisation (batches are seeded per step)
        self.model = LatentSR(spec).to(self.dev)
        self.ema = {k: v.detach().clone() for k, v in self.model.denoiser.state_dict().items()}
        self.state = {"stage": "mean" if spec.mean is not None else "autoencoder", "mean_step": 0, "ae_step": 0,
                      "denoiser_step": 0, "history": [], "elapsed_s": 0.0}
        self._make_optimisers()
        self.log = log_fn or (lambda m: print(m, file=sys.stderr, flush=True))
        self.losses: dict[str, list[float]] = {"mean": [], "autoencoder": [], "denoiser": []}  # this process's
        self._resume()

    def _make_optimisers(self) -> None:
        m, cfg = self.model, self.cfg
        self.opt_ae = torch.optim.AdamW(m.autoencoder.parameters(), lr=cfg.ae_lr, weight_decay=0.0) \
            if any(True for _ in m.autoencoder.parameters()) else None
        self.opt_dn = torch.optim.AdamW(m.denoiser.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.opt_mean = torch.optim.Adam(m.mean.parameters(), lr=cfg.mean_lr) if m.mean is not None else None

    def _optimisers(self) -> dict[str, torch.optim.Optimizer]:
        named = {"optim_ae": self.opt_ae, "optim_denoiser": self.opt_dn, "optim_mean": self.opt_mean}
        return {k: v for k, v in named.items() if v is not None}

    # -- persistence ------------------------------------------------------------------------------------
    def _resume(self) -> None:
        st = self.state_dir / "state.json"
        if not st.is_file():
            return
        saved = json.loads(st.read_text())
        saved_spec = ModelSpec.from_dict(saved["spec"])
        if _arch_digest(saved_spec) != _arch_digest(self.spec):
            raise ModelError(f"{self.out} holds a run of a different architecture; use another --out or delete it")
        self.spec = saved_spec
        self.model = LatentSR(saved_spec).to(self.dev)
        self.model.autoencoder.load_state_dict(load_tensors(self.state_dir / AE_FILE))
        self.model.denoiser.load_state_dict(load_tensors(self.state_dir / DENOISER_FILE))
        if self.model.mean is not None:
            self.model.mean.load_state_dict(load_tensors(self.state_dir / MEAN_FILE))
        self.ema = load_tensors(self.out / DENOISER_FILE) if (self.out / DENOISER_FILE).is_file() else \
            {k: v.detach().clone() for k, v in self.model.denoiser.state_dict().items()}
        self._make_optimisers()
        for name, opt in self._optimisers().items():
            f = self.state_dir / f"{name}.safetensors"
            if f.is_file() and name in saved:
                _restore_optim(opt, load_tensors(f), saved[name])
        self.state = {"mean_step": 0, **saved["state"]}
        self.log(f"resumed {self.out}: stage {self.state['stage']}, mean step {self.state['mean_step']}, "
                 f"autoencoder step {self.state['ae_step']}, denoiser step {self.state['denoiser_step']}")

    def save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        save_tensors(self.model.autoencoder.state_dict(), self.state_dir / AE_FILE)
        save_tensors(self.model.denoiser.state_dict(), self.state_dir / DENOISER_FILE)
        if self.model.mean is not None:
            save_tensors(self.model.mean.state_dict(), self.state_dir / MEAN_FILE)
        meta = {"spec": self.spec.to_dict(), "state": self.state, "train": _jsonable(asdict(self.cfg))}
        for name, opt in self._optimisers().items():
            tensors, m = _optim_state(opt)
            if tensors:
                save_tensors(tensors, self.state_dir / f"{name}.safetensors")
            meta[name] = m
        # the loadable model: raw autoencoder + EMA denoiser
        ema_model = LatentSR(self.spec)
        ema_model.autoencoder.load_state_dict(self.model.autoencoder.state_dict())
        ema_model.denoiser.load_state_dict(self.ema)
        if self.model.mean is not None:
            ema_model.mean.load_state_dict(self.model.mean.state_dict())
        save_model(ema_model, self.out, self._provenance())
        tmp = self.state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(self.state_dir / "state.json")

    def _provenance(self) -> ModelSpec:
        d = self.cfg.data
        trained = {
            "files": [Path(f).name for f in d.files], "bands": list(d.bands) if d.bands else None,
            "manifest": Path(d.manifest).name if d.manifest else None,
            "train_scenes": list(self.train_data.names), "validation": self._validation_kind(),
            "val_scenes": list(self.val_data.names), "heldout_scenes": self._heldout_names(),
            "mean_best": self.state.get("mean_best"),
            "dn_scale": d.dn_scale, "holdout_east_fraction": d.holdout, "train_pixels_hr": self.train_data.pixels,
            "val_pixels_hr": self.val_data.pixels, "patch": d.patch, "batch": self.cfg.batch,
            "degradation": asdict(d.degradation), "mean_steps": self.state.get("mean_step", 0),
            "autoencoder_steps": self.state["ae_step"],
            "denoiser_steps": self.state["denoiser_step"], "finetune_steps": self.state.get("finetune_step", 0),
            "elapsed_s": round(self.state["elapsed_s"], 1),
            "device": self.cfg.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "autoencoder_params": count_parameters(self.model.autoencoder),
            "denoiser_params": count_parameters(self.model.denoiser),
            "mean_params": count_parameters(self.model.mean) if self.model.mean is not None else 0,
            "history": self.state["history"][-20:],
        }
        return replace(self.spec, trained=trained)

    def _validation_kind(self) -> str:
        d = self.cfg.data
        if d.manifest and d.val_fraction > 0:
            return f"east {d.val_fraction:g} of each training scene (held-out scenes untouched)"
        return "held-out scenes (monitor only)" if d.manifest else f"east {d.holdout:g} of each raster"

    def _heldout_names(self) -> list[str]:
        d = self.cfg.data
        return [sc["name"] for sc in manifest_scenes(d.manifest, "heldout")] if d.manifest else []

    def _keep_if_best(self, step: int, val: dict[str, float]) -> None:
        """With ``keep_best``: remember the mean predictor of the best validation PSNR so far (on disk, so a
        resumed run still knows it)."""
        best = self.state.get("mean_best")
        score = val.get("val_psnr_mean", float("-inf"))
        if not self.cfg.keep_best or (best and best["val_psnr_mean"] >= score):
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        save_tensors(self.model.mean.state_dict(), self.state_dir / MEAN_BEST_FILE)
        self.state["mean_best"] = {"step": step, "val_psnr_mean": score}

    def _restore_best_mean(self) -> None:
        best, f = self.state.get("mean_best"), self.state_dir / MEAN_BEST_FILE
        if not (self.cfg.keep_best and best and f.is_file()):
            return
        self.model.mean.load_state_dict(load_tensors(f))
        self.log(f"mean predictor: kept step {best['step']} (best validation PSNR {best['val_psnr_mean']:.4f} dB)")

    # -- stages -----------------------------------------------------------------------------------------
    def _base_residual(self, lr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return hr - self.model.base(lr)

    def _stage_budget_ok(self, t0: float) -> bool:
        return not (self.cfg.time_limit_s and time.perf_counter() - t0 > self.cfg.time_limit_s)

    def train_mean(self) -> None:
        """Stage 0: the regression mean predictor, L1 on the projected high-res estimate (so it only learns
        what the exact block-average projection cannot restore), Adam with a cosine schedule."""
        from .consistency import project

        cfg, m = self.cfg, self.model
        start = int(self.state.get("mean_step", 0))
        if m.mean is None or start >= cfg.mean_steps:
            return
        self.state["stage"] = "mean"
        m.mean.train()
        prog = Progress("mean", cfg.mean_steps, start, cfg.log_every)
        t0 = time.perf_counter()
        rs, s = self.spec.residual_scale, self.spec.scale
        for step in range(start + 1, cfg.mean_steps + 1):
            lr, hr, have = self.train_data.batch(cfg.mean_batch or cfg.batch, _batch_rng(cfg.seed, 5, step), True)
            lr, hr, have = lr.to(self.dev), hr.to(self.dev), have.to(self.dev)[:, :, None, None]
            with torch.no_grad():
                plain = consistent_base(lr, s, self.spec.base, "average", self.spec.base_iterations)
            out = project(plain + m.mean(m.normalise(lr)) * rs, lr, s, "average", 0)
            err = (out - hr).abs() * have / rs  # bands a scene lacks (filled) carry no loss
            loss = err.sum() / (have.sum() * hr.shape[-2] * hr.shape[-1]).clamp_min(1.0)
            for g in self.opt_mean.param_groups:
                g["lr"] = cfg.mean_lr * _cosine(step, cfg.mean_steps, warmup=100)
            self.opt_mean.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.mean.parameters(), 1.0)
            self.opt_mean.step()
            self.state["mean_step"] = step
            self.losses["mean"].append(float(loss.detach()))
            extra = ""
            if step % cfg.val_every == 0 or step == cfg.mean_steps:
                m.mean.eval()
                val = self.validate(mean_only=True)
                m.mean.train()
                self.state["history"].append({"step": f"mean {step}", **val})
                self._keep_if_best(step, val)
                extra = " ".join(f"{k} {v:.4f}" for k, v in val.items())
            prog.update(step, float(loss.detach()), extra)
            stop = not self._stage_budget_ok(t0)
            if step % cfg.checkpoint_every == 0 or step == cfg.mean_steps or stop:
                self.state["elapsed_s"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.save()
                if stop:
                    self.log("time limit reached; checkpoint saved, rerun the same command to continue")
                    raise _TimeLimit
        self._restore_best_mean()
        m.mean.eval().requires_grad_(False)
        self.state["stage"] = "autoencoder"
        self.save()

    def train_autoencoder(self) -> None:
        cfg, m = self.cfg, self.model
        if m.mean is not None:
            m.mean.eval().requires_grad_(False)
        start = self.state["ae_step"]
        if self.opt_ae is None:  # a fixed code (shuffle): nothing to learn, only the latent scale
            if self.state["stage"] in ("mean", "autoencoder"):
                self._calibrate_latent()
                self.state["stage"] = "denoiser"
                self.save()
            return
        if start >= cfg.ae_steps:
            return
        m.autoencoder.train()
        prog = Progress("autoencoder", cfg.ae_steps, start, cfg.log_every)
        t0 = time.perf_counter()
        for step in range(start + 1, cfg.ae_steps + 1):
            lr, hr = self.train_data.batch(cfg.batch, _batch_rng(cfg.seed, 0, step))
            r = self._base_residual(lr.to(self.dev), hr.to(self.dev))
            z = m.encode(r)
            rec = m.decode(z)
            scale = self.spec.residual_scale
            loss = F.l1_loss(rec / scale, r / scale) + F.mse_loss(rec / scale, r / scale) + 1e-4 * z.pow(2).mean()
            for g in self.opt_ae.param_groups:
                g["lr"] = cfg.ae_lr * _cosine(step, cfg.ae_steps)
            self.opt_ae.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.autoencoder.parameters(), 1.0)
            self.opt_ae.step()
            self.state["ae_step"] = step
            self.losses["autoencoder"].append(float(loss.detach()))
            prog.update(step, float(loss.detach()))
            if step % cfg.checkpoint_every == 0 or step == cfg.ae_steps:
                self.state["elapsed_s"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.save()
        self._calibrate_latent()
        self.state["stage"] = "denoiser"
        self.save()

    @torch.no_grad()
    def _calibrate_latent(self) -> None:
        """Set the latent scaling factor so the denoiser sees unit-variance latents."""
        m = self.model
        m.autoencoder.eval()
        zs = []
        for i in range(8):
            lr, hr = self.train_data.batch(self.cfg.batch, _batch_rng(self.cfg.seed, 2, i))
            zs.append(m.encode(self._base_residual(lr.to(self.dev), hr.to(self.dev))) / self.spec.autoencoder.scaling_factor)
        std = float(torch.cat(zs).std())
        sf = 1.0 / max(std, 1e-6)
        ae = replace(self.spec.autoencoder, scaling_factor=sf)
        self.spec = replace(self.spec, autoencoder=ae)
        m.spec = self.spec
        self.log(f"latent std {std:.4f} -> scaling_factor {sf:.4f}")

    def _timesteps(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        T = self.spec.schedule.num_train_timesteps
        t = rng.integers(0, T, size=n)
        few = np.array([int(round(T - 1 - k * T / self.cfg.few_steps)) for k in range(self.cfg.few_steps)])
        pick = rng.random(n) < self.cfg.high_t_fraction
        t[pick] = rng.choice(few, size=int(pick.sum()))
        return torch.from_numpy(t.astype(np.int64))

    def train_denoiser(self) -> None:
        from diffusers import DDPMScheduler

        cfg, m = self.cfg, self.model
        start = self.state["denoiser_step"]
        if start >= cfg.denoiser_steps:
            return
        sched = DDPMScheduler(**self.spec.schedule.scheduler_config())
        m.autoencoder.eval().requires_grad_(False)
        if start == 0 and m.mean is not None:
            self._zero_denoiser_output()
        m.denoiser.train()
        prog = Progress("denoiser", cfg.denoiser_steps, start, cfg.log_every)
        t0 = time.perf_counter()
        for step in range(start + 1, cfg.denoiser_steps + 1):
            rng = _batch_rng(cfg.seed, 1, step)
            lr, hr = self.train_data.batch(cfg.batch, rng)
            lr, hr = lr.to(self.dev), hr.to(self.dev)
            with torch.no_grad():
                base = m.base(lr)
                z0 = m.encode(hr - base)
                cond = m.condition(lr, tuple(z0.shape[-2:]), base)
            noise = torch.from_numpy(rng.standard_normal(z0.shape).astype(np.float32)).to(self.dev)
            t = self._timesteps(z0.shape[0], rng).to(self.dev)
            x_t = sched.add_noise(z0, noise, t)
            target = sched.get_velocity(z0, noise, t)
            loss = F.mse_loss(m.denoise(x_t, t, cond), target)
            self._denoiser_step(loss, cfg.lr * _cosine(step, cfg.denoiser_steps, warmup=100), step)
            self.state["denoiser_step"] = step
            self.losses["denoiser"].append(float(loss.detach()))
            extra = ""
            if step % cfg.val_every == 0 or step == cfg.denoiser_steps:
                val = self.validate()
                self.state["history"].append({"step": step, **val})
                extra = " ".join(f"{k} {v:.4f}" for k, v in val.items())
            prog.update(step, float(loss.detach()), extra)
            if step % cfg.checkpoint_every == 0 or step == cfg.denoiser_steps or not self._stage_budget_ok(t0):
                self.state["elapsed_s"] += time.perf_counter() - t0
                stop = not self._stage_budget_ok(t0)
                t0 = time.perf_counter()
                self.save()
                if stop:
                    self.log("time limit reached; checkpoint saved, rerun the same command to continue")
                    raise _TimeLimit
        self.state["stage"] = "done"
        self.save()

    @torch.no_grad()
    def _zero_denoiser_output(self) -> None:
        """Behind a mean predictor the denoiser starts from v = 0: with the zero-terminal-SNR schedule one
        sampler step from pure noise then returns x0 = 0, i.e. the model starts *exactly* at the mean
        predictor's estimate and training can only add what the data supports (not an untrained UNet's noise)."""
        out = self.model.denoiser.conv_out
        out.weight.zero_()
        if out.bias is not None:
            out.bias.zero_()
        self.ema = {k: v.detach().clone() for k, v in self.model.denoiser.state_dict().items()}

    @torch.no_grad()
    def _denoiser_step(self, loss, lr: float, step: int) -> None:
        """One optimiser step of the denoiser (both training stages): set lr, backprop, clip, step, EMA."""
        for g in self.opt_dn.param_groups:
            g["lr"] = lr
        self.opt_dn.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.denoiser.parameters(), 1.0)
        self.opt_dn.step()
        self._ema_update(step)

    def _ema_update(self, step: int) -> None:
        d = min(self.cfg.ema, (1 + step) / (10 + step))
        for k, v in self.model.denoiser.state_dict().items():
            if v.dtype.is_floating_point:
                self.ema[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.ema[k].copy_(v)

    @torch.no_grad()
    def validate(self, steps: int | None = None, mean_only: bool = False) -> dict[str, float]:
        """PSNR of the EMA model (``few_steps``-step DPM-Solver++) and of the consistent bicubic base on
        held-out patches."""
        from .pipeline import SamplingOptions, super_resolve

        ema_model = LatentSR(self.spec).to(self.dev)
        ema_model.autoencoder.load_state_dict(self.model.autoencoder.state_dict())
        ema_model.denoiser.load_state_dict(self.ema)
        if self.model.mean is not None:
            ema_model.mean.load_state_dict(self.model.mean.state_dict())
        ema_model.eval()
        mse_m, mse_b, mse_mean = [], [], []
        for i in range(self.cfg.val_batches):
            lr, hr = self.val_data.batch(self.cfg.batch, _batch_rng(self.cfg.seed, 3, i))
            lr, hr = lr.to(self.dev), hr.to(self.dev)
            origins = np.zeros((lr.shape[0], 2), dtype=np.int64)
            if not mean_only:
                sr = super_resolve(ema_model, lr, origins, seed=0,
                                   options=SamplingOptions(steps=steps or self.cfg.few_steps))
                mse_m.append(float(F.mse_loss(sr, hr)))
            base = consistent_base(lr, self.spec.scale, self.spec.base, "average", self.spec.base_iterations)
            mse_b.append(float(F.mse_loss(base, hr)))
            if ema_model.mean is not None:
                mse_mean.append(float(F.mse_loss(ema_model.base(lr), hr)))
        self.model.denoiser.train()
        out = {"val_psnr_base": _psnr(mse_b)}
        if mse_mean:
            out["val_psnr_mean"] = _psnr(mse_mean)
        if mse_m:
            out["val_psnr"] = _psnr(mse_m)
        return out

    def run(self) -> Path:
        self.log(f"training data: {self.train_data.pixels} HR px (train), {self.val_data.pixels} HR px (held out); "
                 f"autoencoder {count_parameters(self.model.autoencoder)} params, "
                 f"denoiser {count_parameters(self.model.denoiser)} params")
        try:
            self.train_mean()
            self.train_autoencoder()
            self.train_denoiser()
            self.finetune_one_step()
        except _TimeLimit:
            pass
        return self.out

    def finetune_one_step(self) -> None:
        """Stage 3 (optional): fine-tune the denoiser so that ONE sampler step from pure noise, decoded and
        projected, minimises the pixel MSE against the truth (back-propagating through the frozen decoder
        and the exact block-average projection), while keeping the v-prediction loss at random timesteps
        with weight ``finetune_v_weight``. It turns the 1-step sampler into a PSNR-oriented conditional-mean
        estimator (multi-step sampling stays available); the model's recommended sampling becomes 1 step."""
        from diffusers import DDPMScheduler

        from .consistency import project

        cfg, m = self.cfg, self.model
        start = int(self.state.get("finetune_step", 0))
        if cfg.finetune_steps <= 0 or start >= cfg.finetune_steps:
            return
        if start == 0:  # start from the EMA weights, with a fresh optimiser
            m.denoiser.load_state_dict(self.ema)
            self.opt_dn = torch.optim.AdamW(m.denoiser.parameters(), lr=cfg.finetune_lr, weight_decay=0.0)
            self.state["stage"] = "finetune"
        sched = DDPMScheduler(**self.spec.schedule.scheduler_config())
        ac = sched.alphas_cumprod.to(self.dev)
        T = self.spec.schedule.num_train_timesteps - 1
        m.autoencoder.eval().requires_grad_(False)
        m.denoiser.train()
        prog = Progress("finetune", cfg.finetune_steps, start, cfg.log_every)
        t0 = time.perf_counter()
        s2 = self.spec.residual_scale ** 2
        for step in range(start + 1, cfg.finetune_steps + 1):
            rng = _batch_rng(cfg.seed, 4, step)
            lr, hr = self.train_data.batch(cfg.batch, rng)
            lr, hr = lr.to(self.dev), hr.to(self.dev)
            with torch.no_grad():
                base = m.base(lr)
                z0 = m.encode(hr - base)
                cond = m.condition(lr, tuple(z0.shape[-2:]), base)
            noise = torch.from_numpy(rng.standard_normal(z0.shape).astype(np.float32)).to(self.dev)
            tT = torch.full((z0.shape[0],), T, device=self.dev, dtype=torch.long)
            x_T = sched.add_noise(z0, noise, tT)
            v = m.denoise(x_T, tT, cond)
            x0 = ac[T].sqrt() * x_T - (1 - ac[T]).sqrt() * v
            out = project(base + m.decode(x0), lr, self.spec.scale, "average", iterations=0)
            pix = F.mse_loss(out, hr) / s2
            t = self._timesteps(z0.shape[0], rng).to(self.dev)
            noise2 = torch.from_numpy(rng.standard_normal(z0.shape).astype(np.float32)).to(self.dev)
            vloss = F.mse_loss(m.denoise(sched.add_noise(z0, noise2, t), t, cond), sched.get_velocity(z0, noise2, t))
            loss = pix + cfg.finetune_v_weight * vloss
            self._denoiser_step(loss, cfg.finetune_lr * _cosine(step, cfg.finetune_steps, warmup=50), step)
            self.state["finetune_step"] = step
            self.losses.setdefault("finetune", []).append(float(pix.detach()))
            extra = ""
            if step % cfg.val_every == 0 or step == cfg.finetune_steps:
                val = self.validate(steps=1)
                self.state["history"].append({"step": f"finetune {step}", **val})
                extra = " ".join(f"{k} {v:.4f}" for k, v in val.items())
            prog.update(step, float(pix.detach()), extra)
            if step % cfg.checkpoint_every == 0 or step == cfg.finetune_steps:
                self.state["elapsed_s"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                if step == cfg.finetune_steps:
                    self.state["stage"] = "done"
                    self.spec = replace(self.spec, sampling={**self.spec.sampling, "steps": 1, "sampler": "dpmpp"})
                    m.spec = self.spec
                self.save()


class _TimeLimit(Exception):
    """Raised inside a stage when ``time_limit_s`` is reached (after a checkpoint)."""


def _psnr(mses: list[float]) -> float:
    return -10 * math.log10(max(float(np.mean(mses)), 1e-12))


def _arch_digest(spec: ModelSpec) -> str:
    """Digest of what a run cannot change midway (everything but training outputs)."""
    return replace(spec, trained={}, sampling={},
                   autoencoder=replace(spec.autoencoder, scaling_factor=1.0)).digest()


def _cosine(step: int, total: int, warmup: int = 50) -> float:
    if step < warmup:
        return step / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup)))) * 0.95 + 0.05


def _jsonable(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _jsonable(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_jsonable(v) for v in d]
    return d


def train_spec_from_dict(d: dict[str, Any]) -> TrainSpec:
    """The ``train:`` mapping of a ``configs/model-*.yaml`` file -> :class:`TrainSpec`."""
    try:
        d = dict(d)
        data = dict(d.pop("data"))
        deg = Degradation(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.pop("degradation", {}).items()})
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return TrainSpec(data=DataSpec(degradation=deg, **data), **d)
    except (TypeError, KeyError) as e:
        raise ConfigError(f"invalid train config: {e}") from None


__all__ = ["Trainer", "TrainSpec", "train_spec_from_dict", "AutoencoderSpec"]
