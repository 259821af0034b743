"""Diffusion process around Dimba: diffusers schedulers, the VLB term, sampling with guidance, EMA."""

from __future__ import annotations

import math

import pytest
import torch

from transmamba.diffusion.schedule import (
    EMA,
    diffusion_loss,
    make_sampler,
    make_train_scheduler,
    sample,
    vlb_term,
)


class _Oracle(torch.nn.Module):
    """Predicts the exact ε of a known x0 (so an exact sampler must return x0), with an optional variance."""

    def __init__(self, sched, x0, learned: bool = False):
        super().__init__()
        self.sched, self.x0, self.learned = sched, x0, learned
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0

    def forward(self, x, t, cond, mask=None, drop=None):
        self.calls += 1
        ac = self.sched.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        eps = (x - ac.sqrt() * self.x0[: x.shape[0]]) / (1 - ac).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], 1) if self.learned else eps

    def forward_with_cfg(self, x, t, cond, scale, mask=None):
        return self(x, t, cond)


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("name", ["dpm-solver", "ddpm"])
def test_sampler_returns_x0_for_an_exact_epsilon_model(schedule, name):
    """With the exact ε every DPM-Solver step / DDPM mean is x0-consistent, so the sample is x0 up to fp32
    rounding amplified by 1/α_T (≈ 160 for linear at T = 1000): tolerance 1e-3. DDPM adds noise with
    variance β̃_t at every step, but its final step (t = 0) has no noise and x̂0 is exact."""
    torch.manual_seed(0)
    x0 = torch.rand(2, 1, 4, 4) * 2 - 1
    tr = make_train_scheduler(schedule, 1000, learn_sigma=(name == "ddpm"))
    model = _Oracle(tr, x0, learned=(name == "ddpm"))
    out = sample(model, make_sampler(name, tr), torch.zeros(2, dtype=torch.long), (2, 1, 4, 4), steps=10,
                 cfg_scale=3.0)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-3)
    assert model.calls == 10


def test_sample_rejects_bad_steps_and_sampler():
    tr = make_train_scheduler("linear", 1000, False)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        sample(_Oracle(tr, torch.zeros(1, 1, 2, 2)), make_sampler("ddpm", tr), None, (1, 1, 2, 2), steps=0)
    with pytest.raises(ValueError, match="sampler"):
        make_sampler("euler", tr)
    with pytest.raises(ValueError, match="beta schedule"):
        make_train_scheduler("cosine")


def test_train_scheduler_is_the_papers_linear_schedule():
    s = make_train_scheduler()
    assert s.config.num_train_timesteps == 1000 and s.config.variance_type == "learned_range"
    torch.testing.assert_close(s.betas, torch.linspace(1e-4, 0.02, 1000))


def test_vlb_is_zero_for_the_exact_posterior_and_positive_otherwise():
    """With the true ε the model mean is the posterior mean; v = −1 selects log σ² = log β̃_t (the posterior
    variance), so KL = 0 for t ≥ 1 (coefficients fp64, products fp32: |KL| < 1e-6 bits). v = +1
    (σ² = β_t > β̃_t) must cost bits."""
    s = make_train_scheduler("linear")
    torch.manual_seed(0)
    x0, eps = torch.randn(4, 1, 4, 4), torch.randn(4, 1, 4, 4)
    t = torch.tensor([1, 10, 100, 500])
    xt = s.add_noise(x0, eps, t)
    exact = vlb_term(s, x0, xt, t, eps, -torch.ones_like(x0))
    assert exact.abs().max() < 1e-6
    too_wide = vlb_term(s, x0, xt, t, eps, torch.ones_like(x0))
    assert (too_wide > 0).all() and too_wide[0] > 1e-2  # β_1 ≈ 2 β̃_1; later β̃_t → β_t and the gap shrinks
    wrong_eps = vlb_term(s, x0, xt, t, eps + 0.1, -torch.ones_like(x0))
    assert (wrong_eps > 0).all()


def test_diffusion_loss_parts():
    s = make_train_scheduler("linear", learn_sigma=True)

    class Zero(torch.nn.Module):
        def __init__(self, ch):
            super().__init__()
            self.ch = ch
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, t, cond, mask=None):
            return torch.zeros(x.shape[0], self.ch, *x.shape[2:]) + self.w

    x0 = torch.randn(256, 1, 4, 4)
    loss, parts = diffusion_loss(Zero(2), s, x0, None, generator=torch.Generator().manual_seed(0))
    # ε ~ N(0, 1) against a zero prediction: MSE ≈ 1 (4096 samples: std of the mean ≈ 0.02)
    assert abs(parts["mse"] - 1.0) < 0.1 and parts["vlb"] > 0
    assert math.isclose(float(loss.detach()), parts["mse"] + parts["vlb"], rel_tol=1e-5)
    loss, parts = diffusion_loss(Zero(1), make_train_scheduler("linear", learn_sigma=False), x0, None)
    assert "vlb" not in parts


def test_ema_update_follows_the_warmed_up_decay():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.99)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0): early updates follow the weights
    ema.update(model)
    for e, s0, p in zip(ema.module.parameters(), start, model.parameters(), strict=True):
        torch.testing.assert_close(e, 0.1 * s0 + 0.9 * p)
        assert not e.requires_grad
    for _ in range(2000):
        ema.update(model)
    assert ema.current_decay() == 0.99
    for e, p in zip(ema.module.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(e, p)  # converged to constant weights
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)
