"""Samplers as pure functions with one signature (k-diffusion style):

    sampler(model, x, *, schedule, steps, noise=None, eta=0.0) -> x0

``model(x_t, t)`` is any callable returning the network output (v-prediction by default) for a batch of
noisy latents at integer timestep tensor ``t``; ``x`` is the initial noise; ``schedule`` is the training
noise schedule as a diffusers scheduler config; ``noise(k)`` returns the noise to inject at step ``k``
(1-based; only stochastic samplers call it), so callers can key it on scene position. The stepping math
is diffusers' (``DDIMScheduler``, ``DPMSolverMultistepScheduler``); each call builds its own scheduler,
so there is no shared state between calls.

Timesteps use ``trailing`` spacing: the first step starts at the last training timestep, where a
zero-terminal-SNR v-prediction model returns the conditional mean, so 1-2 steps already give a good
estimate.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..errors import ConfigError

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Noise = Callable[[int], torch.Tensor]

MAX_STEPS = 100
"""LDSR-S2's own sampling takes 100 DDIM steps (opensr-model's default)."""


def _check_steps(steps: int) -> None:
    if not 1 <= int(steps) <= MAX_STEPS:
        raise ConfigError(f"steps={steps}: choose 1..{MAX_STEPS}")


def _t(t, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)


def sample_ddim(model: Model, x: torch.Tensor, *, schedule: dict[str, Any], steps: int,
                noise: Noise | None = None, eta: float = 0.0) -> torch.Tensor:
    """DDIM (Song et al. 2021); ``eta > 0`` injects ``noise(k)`` at each step."""
    from diffusers import DDIMScheduler

    _check_steps(steps)
    sched = DDIMScheduler(**schedule, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True)
    sched.set_timesteps(int(steps), device=x.device)
    for k, t in enumerate(sched.timesteps, start=1):
        out = model(x, _t(t, x))
        vn = noise(k).to(x.dtype) if (eta > 0 and noise is not None) else None
        if eta > 0 and vn is None:
            raise ConfigError("eta > 0 needs a noise source")
        # eta is capped just below 1: at a zero-terminal-SNR first step eta=1 makes diffusers take the square
        # root of a float that rounds below zero
        x = sched.step(out.to(x.dtype), t, x, eta=min(float(eta), 0.999), variance_noise=vn).prev_sample
    return x


def sample_dpmpp(model: Model, x: torch.Tensor, *, schedule: dict[str, Any], steps: int,
                 noise: Noise | None = None, eta: float = 0.0) -> torch.Tensor:
    """DPM-Solver++ (Lu et al. 2022), second order multistep; ``eta > 0`` selects the SDE variant, which
    injects ``noise(k)`` at each step."""
    from diffusers import DPMSolverMultistepScheduler

    _check_steps(steps)
    sde = eta > 0
    if sde and noise is None:
        raise ConfigError("eta > 0 needs a noise source")
    sched = DPMSolverMultistepScheduler(
        **schedule, algorithm_type="sde-dpmsolver++" if sde else "dpmsolver++", solver_order=2,
        timestep_spacing="trailing", final_sigmas_type="zero", lower_order_final=True,
    )
    sched.set_timesteps(int(steps), device=x.device)
    for k, t in enumerate(sched.timesteps, start=1):
        out = model(x, _t(t, x))
        vn = noise(k).to(x.dtype) if sde else None
        x = sched.step(out.to(x.dtype), t, x, variance_noise=vn).prev_sample
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"ddim": sample_ddim, "dpmpp": sample_dpmpp}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ConfigError(f"sampler={name!r}: choose one of {', '.join(SAMPLERS)}") from None
