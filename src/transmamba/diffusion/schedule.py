"""The diffusion process around the network: diffusers' noise schedulers, the IDDPM loss, sampling, EMA.

Training (diffusers ``DDPMScheduler``, ``num_train_timesteps`` steps of a β schedule), ᾱ_t = Π_{s≤t}(1 − β_s):

    x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε,     ε ~ N(0, I),  t ~ U{0, …, T−1}    (``scheduler.add_noise``)
    L_simple = ‖ε − ε_θ(x_t, t, c)‖²

With a learned variance (``learn_sigma``, IDDPM's "learned range"), the network also outputs v ∈ [−1, 1] per
pixel and the reverse step's variance is ``log σ²_t = ((v+1)/2)·log β_t + (1 − (v+1)/2)·log β̃_t`` with β̃_t the
posterior variance (1 − ᾱ_{t−1})/(1 − ᾱ_t)·β_t. It is trained by the variational bound term

    L_vlb = KL( q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t) ) / log 2     (bits per dimension, pixel mean)

with the mean of p_θ computed from a *detached* ε_θ, so L_vlb trains only the variance (IDDPM's hybrid loss
``L_simple + L_vlb``; IDDPM scales L_vlb by T/1000 = 1 here). At t = 0 the KL uses β̃ clipped to β̃_1, as
diffusers' scheduler does, instead of the discretised-pixel decoder likelihood (inputs are not 8-bit).

Sampling: diffusers ``DPMSolverMultistepScheduler`` (DPM-Solver++, order 2), ``steps`` steps on the ε output,
or ``DDPMScheduler`` (ancestral, ``steps`` ≤ T spaced steps, using the learned variance when there is one).
Classifier-free guidance combines conditional and null-condition outputs as ``u + s·(c − u)``.

EMA: ``θ_ema ← d·θ_ema + (1 − d)·θ`` with ``d = min(decay, (1 + n)/(10 + n))`` after n updates, so early on
the average follows the weights instead of staying at the initialisation.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["BETA_SCHEDULES", "EMA", "make_train_scheduler", "make_sampler", "diffusion_loss", "sample"]

BETA_SCHEDULES = ("linear", "squaredcos_cap_v2", "scaled_linear")
SAMPLERS = ("dpm-solver", "ddpm")


def make_train_scheduler(
    beta_schedule: str = "linear", num_train_timesteps: int = 1000, learn_sigma: bool = True
):
    """diffusers DDPMScheduler: linear β from 1e-4 to 0.02 (the paper's) or another diffusers β schedule."""
    from diffusers import DDPMScheduler

    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"beta schedule {beta_schedule!r} not in {BETA_SCHEDULES}")
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        beta_start=0.0001,
        beta_end=0.02,
        variance_type="learned_range" if learn_sigma else "fixed_small",
        clip_sample=False,
        prediction_type="epsilon",
    )


def make_sampler(name: str, train_scheduler, *, clip_x0: bool = False):
    """A sampling scheduler with the training scheduler's β schedule. ``clip_x0`` (pixel space, data in
    [−1, 1]): DPM-Solver's x̂_0 = (x_t − σ_t ε̂)/α_t is clipped to [−1, 1] (diffusers' thresholding with
    ratio 1), which keeps the first steps of a cosine schedule (α_T ≈ 0, so ε errors are multiplied by
    1/α_T) from saturating; DDPM clips x̂_0 likewise."""
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    c = train_scheduler.config
    common = dict(
        num_train_timesteps=c.num_train_timesteps,
        beta_schedule=c.beta_schedule,
        beta_start=c.beta_start,
        beta_end=c.beta_end,
        prediction_type="epsilon",
    )
    if name == "dpm-solver":
        return DPMSolverMultistepScheduler(
            **common,
            algorithm_type="dpmsolver++",
            solver_order=2,
            thresholding=clip_x0,
            dynamic_thresholding_ratio=1.0,
            sample_max_value=1.0,
        )
    if name == "ddpm":
        return DDPMScheduler(
            **common, variance_type=c.variance_type, clip_sample=clip_x0, clip_sample_range=1.0
        )
    raise ValueError(f"sampler {name!r} not in {SAMPLERS}")


def _normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def _gather(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    return values.to(t.device)[t].float().view(-1, *([1] * (ndim - 1)))


def vlb_term(
    scheduler, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """L_vlb per sample (b,) in bits/dim for ε (detached by the caller) and variance output v (module doc)."""
    ac = scheduler.alphas_cumprod.to(x0.device).double()
    ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
    betas = scheduler.betas.to(x0.device).double()
    post_var = betas * (1 - ac_prev) / (1 - ac)
    post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]]))  # clipped at t = 0
    coef0 = betas * ac_prev.sqrt() / (1 - ac)
    coeft = (1 - ac_prev) * (1 - betas).sqrt() / (1 - ac)
    n = x0.dim()
    a_t, ac_t = _gather(ac, t, n), _gather(ac, t, n)
    true_mean = _gather(coef0, t, n) * x0 + _gather(coeft, t, n) * xt
    true_logvar = _gather(post_logvar, t, n)
    x0_pred = (xt - (1 - a_t).sqrt() * eps) / ac_t.sqrt()
    model_mean = _gather(coef0, t, n) * x0_pred + _gather(coeft, t, n) * xt
    frac = (v + 1) / 2
    model_logvar = frac * _gather(torch.log(betas), t, n) + (1 - frac) * true_logvar
    kl = _normal_kl(true_mean, true_logvar, model_mean, model_logvar)
    return kl.mean(dim=tuple(range(1, n))) / math.log(2.0)


def diffusion_loss(
    model: nn.Module,
    scheduler,
    x0: torch.Tensor,
    cond,
    *,
    mask=None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict]:
    """Training loss on clean x0 (b, C, H, W): L_simple (+ L_vlb with a learned variance) -> (loss, parts)."""
    b = x0.shape[0]
    T = scheduler.config.num_train_timesteps
    t = torch.randint(0, T, (b,), device=x0.device, generator=generator)
    noise = torch.randn(x0.shape, device=x0.device, generator=generator, dtype=x0.dtype)
    xt = scheduler.add_noise(x0, noise, t)
    out = model(xt, t, cond, mask=mask)
    c = x0.shape[1]
    eps = out[:, :c]
    mse = ((eps - noise) ** 2).mean()
    parts = {"mse": float(mse.detach())}
    if out.shape[1] == 2 * c:
        vlb = vlb_term(scheduler, x0, xt, t, eps.detach(), out[:, c:]).mean()
        parts["vlb"] = float(vlb.detach())
        return mse + vlb, parts
    return mse, parts


@torch.no_grad()
def sample(
    model: nn.Module,
    sampler,
    cond,
    shape: tuple[int, ...],
    *,
    steps: int = 20,
    cfg_scale: float = 4.5,
    mask=None,
    generator: torch.Generator | None = None,
    device=None,
) -> torch.Tensor:
    """Draw x_0 (shape) for ``cond`` (labels (b,) or features (b, L, E)): ``steps`` sampler steps, CFG."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = device or next(model.parameters()).device
    x = torch.randn(shape, generator=generator, device="cpu").to(device) * sampler.init_noise_sigma
    sampler.set_timesteps(steps, device=device)
    c = shape[1]
    for t in sampler.timesteps:
        tt = t.expand(shape[0]).to(device)
        if cfg_scale == 1.0:
            out = model(x, tt, cond, mask=mask, drop=torch.zeros(shape[0], dtype=torch.bool, device=device))
        else:
            out = model.forward_with_cfg(x, tt, cond, cfg_scale, mask=mask)
        learned = getattr(sampler.config, "variance_type", None) == "learned_range" and out.shape[1] == 2 * c
        model_out = out if learned else out[:, :c]  # DPM-Solver reads ε only
        x = sampler.step(model_out, t, x, generator=generator).prev_sample
    return x


class EMA:
    """Exponential moving average of a model's parameters (module doc); ``module`` is the averaged copy."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for e, p in zip(self.module.parameters(), model.parameters(), strict=True):
            e.lerp_(p.detach(), 1.0 - d)
        for e, b in zip(self.module.buffers(), model.buffers(), strict=True):
            e.copy_(b)
        self.updates += 1
