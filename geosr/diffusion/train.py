"""Training as stage functions over one loop helper.

:func:`train` runs the stages in order — :func:`mean_stage` (the regression mean predictor),
:func:`autoencoder_stage` (a learned residual code; a fixed ``shuffle`` code only calibrates its scale),
:func:`denoiser_stage` (v-prediction latent denoiser with EMA), :func:`finetune_stage` (one-step pixel-loss
fine-tuning) — each a :class:`Stage` (its parameters, optimiser, learning rate and a loss of one step) that
:func:`fit` drives: batches seeded by (seed, stage, step), cosine schedule, gradient clipping, checkpoints,
validation, and one wall-clock deadline for the whole run (``time_limit_s``).

Everything is resumable: every ``checkpoint_every`` steps the run directory gets the loadable model
(``config.json`` + safetensors, :func:`geosr.diffusion.weights_io.load_model`) and ``train/`` the raw weights,
optimiser moments (safetensors) and counters (``state.json``); nothing is pickled. Batches are drawn from an
RNG seeded by (seed, stage, step), so a resumed run sees the same data as an uninterrupted one.

A band-shared model (``bands: 0``) trains in per-tile normalised units (:class:`~geosr.diffusion.data.Batch`
carries each patch's statistics), on batches of varying band count.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError, ModelError
from .consistency import consistent_base, project
from .data import Batch, DataSpec, PatchSampler, manifest_scenes
from .model import LatentSR, count_parameters
from .spec import ModelSpec
from .weights_io import AE_FILE, DENOISER_FILE, MEAN_FILE, load_tensors, save_model, save_tensors

log = logging.getLogger(__name__)

MEAN_BEST_FILE = "mean_best.safetensors"  # in the run's train/ folder: the best mean predictor so far (keep_best)
STAGES = ("mean", "autoencoder", "denoiser", "finetune")


class TrainSpec(BaseModel):
    """The ``train:`` section of a ``configs/model-*.yaml`` recipe."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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
    val_batches: int = 4  # validation: about val_batches * batch fixed patches per source
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 = torch default
    device: str = "cpu"
    log_every: int = 25
    time_limit_s: float = 0.0  # save and stop the run after this long (all stages together); 0 = none
    finetune_steps: int = 0  # stage 3: one-step fine-tuning with a pixel loss (0 = off)
    finetune_lr: float = 2e-4
    finetune_v_weight: float = 0.5  # weight of the ordinary v-prediction loss kept during stage 3
    keep_best: bool = False  # stage 0 ends with the mean predictor of its best validation score
    warmup: int = 100


def train_spec_from_dict(d: dict[str, Any]) -> TrainSpec:
    """The ``train:`` mapping of a recipe -> :class:`TrainSpec` (one-line :class:`ConfigError` if invalid)."""
    from pydantic import ValidationError

    try:
        return TrainSpec.model_validate(d)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"invalid train config: train.{where}: {err['msg']}") from None


# -- the run ------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """A training run: the model being trained, its EMA denoiser, optimisers, counters and data."""

    spec: ModelSpec
    cfg: TrainSpec
    out: Path
    model: LatentSR
    train_data: PatchSampler
    val_data: PatchSampler
    log: Callable[[str], None]
    deadline: float  # time.monotonic() after which the run saves and stops (inf: none)
    ema: dict[str, torch.Tensor] = field(default_factory=dict)
    optims: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    losses: dict[str, list[float]] = field(default_factory=dict)  # this process's losses per stage
    _val: dict[str, list[Batch]] | None = None

    @property
    def dev(self) -> torch.device:
        return torch.device(self.cfg.device)

    @property
    def state_dir(self) -> Path:
        return self.out / "train"

    def val_batches(self) -> dict[str, list[Batch]]:
        if self._val is None:
            self._val = self.val_data.fixed(self.cfg.val_batches * self.cfg.batch, self.cfg.seed + 7919,
                                            self.spec.bands or None)
        return self._val

    def batch(self, n: int, stage: int, step: int) -> tuple[Batch, np.random.Generator]:
        rng = np.random.default_rng([self.cfg.seed, stage, step])
        bands = self.spec.bands or None
        return self.train_data.batch(n, rng, bands=bands, exact=bands is not None).to(self.dev), rng

    def ema_model(self) -> LatentSR:
        m = LatentSR(self.spec).to(self.dev)
        m.autoencoder.load_state_dict(self.model.autoencoder.state_dict())
        m.denoiser.load_state_dict(self.ema)
        if self.model.mean is not None:
            m.mean.load_state_dict(self.model.mean.state_dict())
        return m.eval()


def normalised(model: LatentSR, b: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(lr, hr, noise) in the units the model's methods take: per-patch normalised for a band-shared model,
    reflectance otherwise."""
    if not model.shared:
        return b.lr, b.hr, None
    mu, sd = b.mu[:, :, None, None], b.sigma[:, :, None, None]
    return (b.lr - mu) / sd, (b.hr - mu) / sd, b.noise


def open_run(spec: ModelSpec, cfg: TrainSpec, out_dir: str | Path, log_fn: Callable[[str], None] | None = None) -> Run:
    """A new run, or the one saved in ``out_dir`` (same architecture) resumed where it stopped."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if spec.bands and cfg.data.band_counts != {spec.bands: 1.0}:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"band_counts": {spec.bands: 1.0}})})
    train_data = PatchSampler(cfg.data, spec.scale, "train")
    val_data = PatchSampler(cfg.data, spec.scale, "val") if _has_val(cfg.data) else train_data
    if spec.bands and train_data.max_bands < spec.bands:
        raise ConfigError(f"training images have at most {train_data.max_bands} bands; the model expects {spec.bands}")
    torch.manual_seed(cfg.seed)  # reproducible initialisation (batches are seeded per step)
    out = Path(out_dir)
    say = log_fn or (lambda m: print(m, file=sys.stderr, flush=True))
    run = Run(spec, cfg, out, LatentSR(spec).to(cfg.device), train_data, val_data, say,
              time.monotonic() + cfg.time_limit_s if cfg.time_limit_s else math.inf)
    run.ema = {k: v.detach().clone() for k, v in run.model.denoiser.state_dict().items()}
    run.state = {"stage": "mean" if spec.mean is not None else "autoencoder", "mean_step": 0, "ae_step": 0,
                 "denoiser_step": 0, "finetune_step": 0, "history": [], "elapsed_s": 0.0}
    _make_optimisers(run)
    _resume(run)
    return run


def _has_val(d: DataSpec) -> bool:
    return bool(d.files) or (bool(d.manifest) and d.val_fraction > 0) or \
        any(f.val or f.val_fraction > 0 for f in d.folders)


def _make_optimisers(run: Run) -> None:
    m, cfg = run.model, run.cfg
    run.optims = {"optim_denoiser": torch.optim.AdamW(m.denoiser.parameters(), lr=cfg.lr, weight_decay=0.0)}
    if any(True for _ in m.autoencoder.parameters()):
        run.optims["optim_ae"] = torch.optim.AdamW(m.autoencoder.parameters(), lr=cfg.ae_lr, weight_decay=0.0)
    if m.mean is not None:
        run.optims["optim_mean"] = torch.optim.Adam(m.mean.parameters(), lr=cfg.mean_lr)


# -- persistence --------------------------------------------------------------------------------------------
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


def _arch_digest(spec: ModelSpec) -> str:
    """Digest of what a run cannot change midway (everything but training outputs)."""
    return replace(spec, trained={}, sampling={},
                   autoencoder=replace(spec.autoencoder, scaling_factor=1.0)).digest()


def _resume(run: Run) -> None:
    st = run.state_dir / "state.json"
    if not st.is_file():
        return
    saved = json.loads(st.read_text())
    saved_spec = ModelSpec.from_dict(saved["spec"])
    if _arch_digest(saved_spec) != _arch_digest(run.spec):
        raise ModelError(f"{run.out} holds a run of a different architecture; use another --out or delete it")
    run.spec = saved_spec
    run.model = LatentSR(saved_spec).to(run.dev)
    run.model.autoencoder.load_state_dict(load_tensors(run.state_dir / AE_FILE))
    run.model.denoiser.load_state_dict(load_tensors(run.state_dir / DENOISER_FILE))
    if run.model.mean is not None:
        run.model.mean.load_state_dict(load_tensors(run.state_dir / MEAN_FILE))
    run.ema = load_tensors(run.out / DENOISER_FILE) if (run.out / DENOISER_FILE).is_file() else \
        {k: v.detach().clone() for k, v in run.model.denoiser.state_dict().items()}
    _make_optimisers(run)
    for name, opt in run.optims.items():
        f = run.state_dir / f"{name}.safetensors"
        if f.is_file() and name in saved:
            _restore_optim(opt, load_tensors(f), saved[name])
    run.state = {"mean_step": 0, "finetune_step": 0, **saved["state"]}
    run.log(f"resumed {run.out}: stage {run.state['stage']}, mean step {run.state['mean_step']}, "
            f"autoencoder step {run.state['ae_step']}, denoiser step {run.state['denoiser_step']}, "
            f"finetune step {run.state['finetune_step']}")


def save(run: Run) -> None:
    """Checkpoint: raw weights + optimisers + counters in ``train/``, the loadable (EMA) model beside."""
    run.state_dir.mkdir(parents=True, exist_ok=True)
    save_tensors(run.model.autoencoder.state_dict(), run.state_dir / AE_FILE)
    save_tensors(run.model.denoiser.state_dict(), run.state_dir / DENOISER_FILE)
    if run.model.mean is not None:
        save_tensors(run.model.mean.state_dict(), run.state_dir / MEAN_FILE)
    meta = {"spec": run.spec.to_dict(), "state": run.state, "train": run.cfg.model_dump(mode="json")}
    for name, opt in run.optims.items():
        tensors, m = _optim_state(opt)
        if tensors:
            save_tensors(tensors, run.state_dir / f"{name}.safetensors")
        meta[name] = m
    save_model(run.ema_model(), run.out, provenance(run))
    tmp = run.state_dir / "state.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(run.state_dir / "state.json")


def provenance(run: Run) -> ModelSpec:
    d, cfg = run.cfg.data, run.cfg
    trained = {
        "files": [Path(f).name for f in d.files], "manifest": Path(d.manifest).name if d.manifest else None,
        "folders": [{"path": f.path, "glob": f.glob, "bands": list(f.bands), "test": f.test, "val": f.val,
                     "val_fraction": f.val_fraction, "weight": f.weight, "gsd_m": f.gsd_m} for f in d.folders],
        "train_images": len(run.train_data.names), "val_images": len(run.val_data.names),
        "heldout_scenes": [sc["name"] for sc in manifest_scenes(d.manifest, "heldout")] if d.manifest else [],
        # whole scenes and files that trained (image folders are described by their split rules in ``folders``)
        "train_scenes": ([sc["name"] for sc in manifest_scenes(d.manifest, "train")] if d.manifest else [])
        + [Path(f).name for f in d.files],
        "validation": _validation_kind(d), "mean_best": run.state.get("mean_best"),
        "train_pixels_hr": run.train_data.pixels, "val_pixels_hr": run.val_data.pixels,
        "patch": d.patch, "context": d.context, "band_counts": {str(k): v for k, v in d.band_counts.items()},
        "pyramid": list(d.pyramid), "batch": cfg.batch, "mean_batch": cfg.mean_batch or cfg.batch,
        "degradation": d.degradation.model_dump(mode="json"),
        "mean_steps": run.state.get("mean_step", 0), "autoencoder_steps": run.state["ae_step"],
        "denoiser_steps": run.state["denoiser_step"], "finetune_steps": run.state.get("finetune_step", 0),
        "elapsed_s": round(run.state["elapsed_s"], 1), "device": cfg.device, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "autoencoder_params": count_parameters(run.model.autoencoder),
        "denoiser_params": count_parameters(run.model.denoiser),
        "mean_params": count_parameters(run.model.mean) if run.model.mean is not None else 0,
        "history": run.state["history"][-40:],
    }
    return replace(run.spec, trained=trained)


def _validation_kind(d: DataSpec) -> str:
    parts = []
    if d.manifest and d.val_fraction > 0:
        parts.append(f"east {d.val_fraction:g} of each registry training scene")
    for f in d.folders:
        if f.val:
            parts.append(f"{f.path} files matching {f.val!r}")
        elif f.val_fraction > 0:
            parts.append(f"east {f.val_fraction:g} of each {f.path} image")
    if d.files:
        parts.append(f"east {d.holdout:g} of each file")
    return "; ".join(parts) + " (test splits and held-out scenes untouched)" if parts else "training data"


# -- the loop -----------------------------------------------------------------------------------------------
class TimeLimit(Exception):
    """The run's ``time_limit_s`` was reached (after a checkpoint)."""


@dataclass
class Stage:
    """One stage for :func:`fit`: ``loss(step)`` computes one step's loss (drawing its own batch)."""

    name: str  # one of STAGES; the counter is state[f"{counter}_step"]
    counter: str
    steps: int
    params: Callable[[], Any]  # the parameters to clip
    optim: str  # key in run.optims
    lr: float
    loss: Callable[[int], torch.Tensor]
    after_step: Callable[[int], None] = lambda step: None
    validate: Callable[[int], dict[str, float]] | None = None
    warmup: int = 100


def _cosine(step: int, total: int, warmup: int = 50) -> float:
    if step < warmup:
        return step / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup)))) * 0.95 + 0.05


def _hms(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def fit(run: Run, st: Stage) -> None:
    """Drive ``st`` from its saved counter to ``st.steps``: schedule, clip, step, validate, checkpoint. Raises
    :class:`TimeLimit` after a checkpoint once the run's deadline has passed."""
    cfg = run.cfg
    key = f"{st.counter}_step"
    start = int(run.state.get(key, 0))
    if start >= st.steps:
        return
    run.state["stage"] = st.name
    opt = run.optims[st.optim]
    t0 = t_log = time.perf_counter()
    recent: list[float] = []
    for step in range(start + 1, st.steps + 1):
        loss = st.loss(step)
        for g in opt.param_groups:
            g["lr"] = st.lr * _cosine(step, st.steps, st.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(st.params()), 1.0)
        opt.step()
        with torch.no_grad():
            st.after_step(step)
        run.state[key] = step
        value = float(loss.detach())
        run.losses.setdefault(st.name, []).append(value)
        recent.append(value)
        extra = ""
        if st.validate is not None and (step % cfg.val_every == 0 or step == st.steps):
            val = st.validate(step)
            run.state["history"].append({"step": f"{st.name} {step}", **val})
            extra = " ".join(f"{k} {v:.4f}" for k, v in val.items())
        if step % cfg.log_every == 0 or step == st.steps or extra:
            el = time.perf_counter() - t_log
            rate = len(recent) / el if el > 0 else float("nan")
            eta = (st.steps - step) / rate if rate > 0 else float("nan")
            run.log(f"[{st.name}] step {step}/{st.steps} loss {np.mean(recent):.5f} {rate:.2f} steps/s "
                    f"ETA {_hms(eta)} {extra}".rstrip())
            recent, t_log = [], time.perf_counter()
        stop = time.monotonic() > run.deadline
        if step % cfg.checkpoint_every == 0 or step == st.steps or stop:
            run.state["elapsed_s"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            save(run)
            if stop:
                run.log("time limit reached; checkpoint saved, rerun the same command to continue")
                raise TimeLimit


# -- validation ---------------------------------------------------------------------------------------------
def _psnr(mse: float) -> float:
    return -10 * math.log10(max(mse, 1e-12))


@torch.no_grad()
def validate(run: Run, model: LatentSR, few_steps: int | None = None) -> dict[str, float]:
    """On the fixed validation patches of every source: PSNR (reflectance) of the consistent interpolation
    (``val_psnr_base``), of the mean predictor (``val_psnr_mean``) and, with ``few_steps``, of that many
    sampler steps (``val_psnr``); ``val_gain`` is the mean over sources of the mean predictor's gain over the
    interpolation (what ``keep_best`` maximises: every source counts, whatever its size)."""
    from .pipeline import SamplingOptions, super_resolve

    s = run.spec
    acc: dict[str, list[float]] = {"base": [], "mean": [], "sample": []}
    gains = []
    for src, batches in run.val_batches().items():
        se = {"base": 0.0, "mean": 0.0, "n": 0}
        for b in batches:
            b = b.to(run.dev)
            x, h, noise = normalised(model, b)
            sd = b.sigma[:, :, None, None] if model.shared else 1.0
            base = consistent_base(x, s.scale, s.base, "average", s.base_iterations)
            err_b = float((((base - h) * sd) ** 2).mean())
            se["base"] += err_b * len(b.lr)
            acc["base"].append(err_b)
            if model.mean is not None:
                err_m = float((((model.base(x, noise=noise) - h) * sd) ** 2).mean())
                se["mean"] += err_m * len(b.lr)
                acc["mean"].append(err_m)
            if few_steps:
                origins = np.zeros((b.lr.shape[0], 2), dtype=np.int64)
                sr = super_resolve(model, b.lr, origins, seed=0, options=SamplingOptions(steps=few_steps))
                acc["sample"].append(float(F.mse_loss(sr, b.hr)))
            se["n"] += len(b.lr)
        if model.mean is not None and se["n"]:
            gains.append(_psnr(se["mean"] / se["n"]) - _psnr(se["base"] / se["n"]))
    out = {"val_psnr_base": _psnr(float(np.mean(acc["base"])))}
    if acc["mean"]:
        out["val_psnr_mean"] = _psnr(float(np.mean(acc["mean"])))
        out["val_gain"] = float(np.mean(gains))
    if acc["sample"]:
        out["val_psnr"] = _psnr(float(np.mean(acc["sample"])))
    return out


# -- stages -------------------------------------------------------------------------------------------------
def mean_stage(run: Run) -> Stage:
    """Stage 0: the regression mean predictor, L1 on the projected high-res estimate (so it only learns what
    the exact block-average projection cannot restore), Adam with a cosine schedule; with ``keep_best`` the
    stage ends with its best validation checkpoint."""
    cfg, s = run.cfg, run.spec

    def loss(step: int) -> torch.Tensor:
        m = run.model
        b, _ = run.batch(cfg.mean_batch or cfg.batch, 5, step)
        x, h, noise = normalised(m, b)
        return (m.base(x, noise=noise) - h).abs().mean() / s.residual_scale

    def check(step: int) -> dict[str, float]:
        run.model.mean.eval()
        val = validate(run, run.model)
        run.model.mean.train()
        _keep_if_best(run, step, val)
        return val

    return Stage("mean", "mean", cfg.mean_steps, lambda: run.model.mean.parameters(), "optim_mean", cfg.mean_lr,
                 loss, validate=check, warmup=cfg.warmup)


def _keep_if_best(run: Run, step: int, val: dict[str, float]) -> None:
    best = run.state.get("mean_best")
    score = val.get("val_gain", float("-inf"))
    if not run.cfg.keep_best or (best and best.get("val_gain", float("-inf")) >= score):
        return
    run.state_dir.mkdir(parents=True, exist_ok=True)
    save_tensors(run.model.mean.state_dict(), run.state_dir / MEAN_BEST_FILE)
    run.state["mean_best"] = {"step": step, **val}


def _finish_mean(run: Run) -> None:
    best, f = run.state.get("mean_best"), run.state_dir / MEAN_BEST_FILE
    if run.cfg.keep_best and best and f.is_file():
        run.model.mean.load_state_dict(load_tensors(f))
        run.log(f"mean predictor: kept step {best['step']} (validation gain {best.get('val_gain', float('nan')):.4f} dB)")
    run.model.mean.eval().requires_grad_(False)


@torch.no_grad()
def _residual_latents(run: Run, step: int, stage: int) -> tuple[torch.Tensor, torch.Tensor, np.random.Generator]:
    """(z0, cond, rng) of a batch: the truth's residual over the mean, encoded, and the denoiser's condition."""
    m = run.model
    b, rng = run.batch(run.cfg.batch, stage, step)
    x, h, noise = normalised(m, b)
    base = m.base(x, noise=noise)
    z0 = m.encode(h - base)
    cond = m.condition(x, tuple(z0.shape[-2:]), base, noise) if m.shared else \
        m.condition(x, tuple(z0.shape[-2:]), base)
    return z0, cond, rng


def autoencoder_stage(run: Run) -> Stage | None:
    """Stage 1: the residual autoencoder (L1 + L2 reconstruction); None for a fixed code (``shuffle``)."""
    if "optim_ae" not in run.optims:
        return None
    cfg = run.cfg

    def loss(step: int) -> torch.Tensor:
        m = run.model
        b, _ = run.batch(cfg.batch, 0, step)
        x, h, noise = normalised(m, b)
        with torch.no_grad():
            r = h - m.base(x, noise=noise)
        z = m.encode(r)
        rec = m.decode(z)
        sc = run.spec.residual_scale
        return F.l1_loss(rec / sc, r / sc) + F.mse_loss(rec / sc, r / sc) + 1e-4 * z.pow(2).mean()

    return Stage("autoencoder", "ae", cfg.ae_steps, lambda: run.model.autoencoder.parameters(), "optim_ae",
                 cfg.ae_lr, loss, warmup=50)


@torch.no_grad()
def calibrate_latent(run: Run) -> None:
    """Set the latent scaling factor so the denoiser sees unit-variance latents."""
    m = run.model
    m.autoencoder.eval()
    zs = []
    for i in range(8):
        b, _ = run.batch(run.cfg.batch, 2, i)
        x, h, noise = normalised(m, b)
        zs.append(m.encode(h - m.base(x, noise=noise)) / run.spec.autoencoder.scaling_factor)
    std = float(torch.cat([z.flatten() for z in zs]).std())
    sf = 1.0 / max(std, 1e-6)
    run.spec = replace(run.spec, autoencoder=replace(run.spec.autoencoder, scaling_factor=sf))
    m.spec = run.spec
    run.log(f"latent std {std:.4f} -> scaling_factor {sf:.4f}")


def _timesteps(run: Run, n: int, rng: np.random.Generator) -> torch.Tensor:
    T = run.spec.schedule.num_train_timesteps
    t = rng.integers(0, T, size=n)
    few = np.array([int(round(T - 1 - k * T / run.cfg.few_steps)) for k in range(run.cfg.few_steps)])
    pick = rng.random(n) < run.cfg.high_t_fraction
    t[pick] = rng.choice(few, size=int(pick.sum()))
    return torch.from_numpy(t.astype(np.int64))


def _ema_update(run: Run, step: int) -> None:
    d = min(run.cfg.ema, (1 + step) / (10 + step))
    for k, v in run.model.denoiser.state_dict().items():
        if v.dtype.is_floating_point:
            run.ema[k].mul_(d).add_(v.detach(), alpha=1 - d)
        else:
            run.ema[k].copy_(v)


@torch.no_grad()
def _zero_denoiser_output(run: Run) -> None:
    """Behind a mean predictor the denoiser starts from v = 0: with the zero-terminal-SNR schedule one sampler
    step from pure noise then returns x0 = 0, i.e. the model starts *exactly* at the mean predictor's estimate
    and training can only add what the data supports (not an untrained UNet's noise)."""
    out = run.model.denoiser.conv_out
    out.weight.zero_()
    if out.bias is not None:
        out.bias.zero_()
    run.ema = {k: v.detach().clone() for k, v in run.model.denoiser.state_dict().items()}


def denoiser_stage(run: Run) -> Stage:
    """Stage 2: the v-prediction denoiser on the encoded residual, EMA weights saved."""
    from diffusers import DDPMScheduler

    cfg = run.cfg
    sched = DDPMScheduler(**run.spec.schedule.scheduler_config())

    def loss(step: int) -> torch.Tensor:
        m = run.model
        z0, cond, rng = _residual_latents(run, step, 1)
        noise = torch.from_numpy(rng.standard_normal(z0.shape).astype(np.float32)).to(run.dev)
        t = _timesteps(run, z0.shape[0], rng).to(run.dev)
        x_t = sched.add_noise(z0, noise, t)
        return F.mse_loss(m.denoise(x_t, t, cond), sched.get_velocity(z0, noise, t))

    def check(step: int) -> dict[str, float]:
        val = validate(run, run.ema_model(), few_steps=cfg.few_steps)
        run.model.denoiser.train()
        return val

    return Stage("denoiser", "denoiser", cfg.denoiser_steps, lambda: run.model.denoiser.parameters(),
                 "optim_denoiser", cfg.lr, loss, after_step=lambda step: _ema_update(run, step), validate=check,
                 warmup=cfg.warmup)


def finetune_stage(run: Run) -> Stage:
    """Stage 3 (optional): fine-tune the denoiser so that ONE sampler step from pure noise, decoded and
    projected, minimises the pixel MSE against the truth (back-propagating through the frozen decoder and the
    exact block-average projection), while keeping the v-prediction loss at random timesteps with weight
    ``finetune_v_weight``. The 1-step sampler becomes a PSNR-oriented refinement of the mean."""
    from diffusers import DDPMScheduler

    cfg, s = run.cfg, run.spec
    sched = DDPMScheduler(**s.schedule.scheduler_config())
    ac = sched.alphas_cumprod.to(run.dev)
    T = s.schedule.num_train_timesteps - 1

    def loss(step: int) -> torch.Tensor:
        m = run.model
        b, rng = run.batch(cfg.batch, 4, step)
        x, h, noise_n = normalised(m, b)
        with torch.no_grad():
            base = m.base(x, noise=noise_n)
            z0 = m.encode(h - base)
            cond = m.condition(x, tuple(z0.shape[-2:]), base, noise_n) if m.shared else \
                m.condition(x, tuple(z0.shape[-2:]), base)
        noise = torch.from_numpy(rng.standard_normal(z0.shape).astype(np.float32)).to(run.dev)
        tT = torch.full((z0.shape[0],), T, device=run.dev, dtype=torch.long)
        x_T = sched.add_noise(z0, noise, tT)
        v = m.denoise(x_T, tT, cond)
        x0 = ac[T].sqrt() * x_T - (1 - ac[T]).sqrt() * v
        out = project(base + m.decode(x0), x, s.scale, "average", iterations=0)
        pix = F.mse_loss(out, h) / s.residual_scale ** 2
        t = _timesteps(run, z0.shape[0], rng).to(run.dev)
        noise2 = torch.from_numpy(rng.standard_normal(z0.shape).astype(np.float32)).to(run.dev)
        vloss = F.mse_loss(m.denoise(sched.add_noise(z0, noise2, t), t, cond), sched.get_velocity(z0, noise2, t))
        return pix + cfg.finetune_v_weight * vloss

    def check(step: int) -> dict[str, float]:
        val = validate(run, run.ema_model(), few_steps=1)
        run.model.denoiser.train()
        return val

    return Stage("finetune", "finetune", cfg.finetune_steps, lambda: run.model.denoiser.parameters(),
                 "optim_denoiser", cfg.finetune_lr, loss, after_step=lambda step: _ema_update(run, step),
                 validate=check, warmup=50)


def train(spec: ModelSpec, cfg: TrainSpec, out_dir: str | Path, log_fn: Callable[[str], None] | None = None) -> Run:
    """Run (or resume) every stage in order, each from its saved counter to its step count; returns the run
    (its ``out`` holds the loadable model)."""
    run = open_run(spec, cfg, out_dir, log_fn)
    m = run.model
    run.log(f"training data: {run.train_data.pixels} HR px in {len(run.train_data.names)} images (train), "
            f"{run.val_data.pixels} HR px (validation); mean {count_parameters(m.mean) if m.mean else 0} params, "
            f"autoencoder {count_parameters(m.autoencoder)}, denoiser {count_parameters(m.denoiser)}")
    st = run.state
    try:
        if run.model.mean is not None:
            if st["mean_step"] < cfg.mean_steps:
                run.model.mean.train()
                fit(run, mean_stage(run))
            _finish_mean(run)
        ae = autoencoder_stage(run)
        if ae is not None and st["ae_step"] < cfg.ae_steps:
            run.model.autoencoder.train()
            fit(run, ae)
        run.model.autoencoder.eval().requires_grad_(False)
        if not (st.get("calibrated") or st["denoiser_step"] or st["stage"] in ("denoiser", "finetune", "done")):
            calibrate_latent(run)
            st["calibrated"] = True
            save(run)
        if st["denoiser_step"] < cfg.denoiser_steps:
            if st["denoiser_step"] == 0 and run.model.mean is not None:
                _zero_denoiser_output(run)
            run.model.denoiser.train()
            fit(run, denoiser_stage(run))
        if st.get("finetune_step", 0) < cfg.finetune_steps:
            if st.get("finetune_step", 0) == 0:  # from the EMA weights, with a fresh optimiser
                run.model.denoiser.load_state_dict(run.ema)
                run.optims["optim_denoiser"] = torch.optim.AdamW(run.model.denoiser.parameters(),
                                                                 lr=cfg.finetune_lr, weight_decay=0.0)
            run.model.denoiser.train()
            fit(run, finetune_stage(run))
            run.spec = replace(run.spec, sampling={**run.spec.sampling, "steps": 1, "sampler": "dpmpp"})
            run.model.spec = run.spec
        st["stage"] = "done"
        save(run)
    except TimeLimit:
        pass
    return run


__all__ = ["TrainSpec", "Stage", "Run", "train", "fit", "open_run", "mean_stage", "autoencoder_stage",
           "denoiser_stage", "finetune_stage", "train_spec_from_dict", "validate"]
