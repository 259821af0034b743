"""Plain references for the Mamba-2 / TransMamba layer tests, built directly from a layer's parameters
(F.conv1d with explicit padding, a per-token loop, explicit softmax) rather than through the layer's code."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def perturb(layer, seed: int = 1):
    """Move the init away from its defaults (D = 1, norm weight = 1, small dt) so tests are not trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.D.copy_(torch.randn(layer.D.shape, generator=g))
        layer.dt_bias.copy_(torch.randn(layer.dt_bias.shape, generator=g) - 1.0)
        layer.A_log.copy_(torch.randn(layer.A_log.shape, generator=g) * 0.5)
        layer.norm.weight.copy_(1.0 + 0.5 * torch.randn(layer.norm.weight.shape, generator=g))
        if layer.conv1d.bias is not None:
            layer.conv1d.bias.copy_(0.3 * torch.randn(layer.conv1d.bias.shape, generator=g))
    return layer


def features(layer, hidden):
    """hidden (b, t, D) -> z (b,t,d_inner), x (b,t,h,p), B, C (b,t,g,n), dt (b,t,h) (raw)."""
    b, t, _ = hidden.shape
    h, p, g, n = layer.nheads, layer.headdim, layer.ngroups, layer.d_state
    d_inner = h * p
    proj = hidden @ layer.in_proj.weight.T
    if layer.in_proj.bias is not None:
        proj = proj + layer.in_proj.bias
    z = proj[..., :d_inner]
    xbc = proj[..., d_inner : 2 * d_inner + 2 * g * n]
    dt = proj[..., 2 * d_inner + 2 * g * n :]
    w = layer.conv1d.weight  # (conv_dim, 1, width)
    xbc = F.conv1d(F.pad(xbc.transpose(1, 2), (w.shape[-1] - 1, 0)), w, layer.conv1d.bias, groups=w.shape[0])
    xbc = F.silu(xbc).transpose(1, 2)
    x = xbc[..., :d_inner].reshape(b, t, h, p)
    B = xbc[..., d_inner : d_inner + g * n].reshape(b, t, g, n)
    C = xbc[..., d_inner + g * n :].reshape(b, t, g, n)
    return z, x, B, C, dt


def norm_out(layer, y, z=None):
    """y (b, t, d_inner) [* silu(z)] -> grouped RMSNorm * weight -> out_proj."""
    if z is not None:
        y = y * F.silu(z)
    G = layer.ngroups
    yg = y.unflatten(-1, (G, -1))
    yg = yg / torch.sqrt(yg.pow(2).mean(-1, keepdim=True) + layer.norm.eps)
    y = yg.flatten(-2) * layer.norm.weight
    out = y @ layer.out_proj.weight.T
    return out if layer.out_proj.bias is None else out + layer.out_proj.bias


def mamba2_recurrent(layer, hidden):
    """Mamba-2 as a per-token loop: h = exp(dt A) h + dt x Bᵀ, y = h C + D x."""
    z, x, B, C, dt = features(layer, hidden)
    b, t, h, p = x.shape
    r = h // layer.ngroups
    Bh, Ch = B.repeat_interleave(r, dim=2), C.repeat_interleave(r, dim=2)  # (b, t, h, n)
    dt = F.softplus(dt + layer.dt_bias)
    A = -torch.exp(layer.A_log)
    state = x.new_zeros(b, h, p, layer.d_state)
    ys = []
    for s in range(t):
        decay = torch.exp(dt[:, s] * A)[:, :, None, None]
        state = decay * state + (dt[:, s, :, None] * x[:, s])[..., None] * Bh[:, s, :, None, :]
        ys.append((state * Ch[:, s, :, None, :]).sum(-1) + layer.D[:, None] * x[:, s])
    y = torch.stack(ys, 1).reshape(b, t, h * p)
    return norm_out(layer, y, z)


def attention_reference(layer, hidden, d_skip: bool = True):
    """TransMamba's attention path for every position: softmax(C Bᵀ/√N, causal) x (+ D x), ungated norm."""
    z, x, B, C, dt = features(layer, hidden)
    b, t, h, p = x.shape
    r = h // layer.ngroups
    Bh, Ch = B.repeat_interleave(r, dim=2), C.repeat_interleave(r, dim=2)
    scores = torch.einsum("bihn,bjhn->bhij", Ch, Bh) / layer.d_state**0.5
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    y = torch.einsum("bhij,bjhp->bihp", probs, x)
    if d_skip:
        y = y + layer.D[:, None] * x
    return norm_out(layer, y.reshape(b, t, h * p))


def assert_rel_close(actual, expected, tol=1e-5, what=""):
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= tol * max(scale, 1e-12), f"{what}: max abs err {err:.3e} vs scale {scale:.3e}"
