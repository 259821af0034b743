"""Mamba-1 selective scan: the chunk-parallel version against the sequential spec, forward and backward."""

import pytest
import torch
import torch.nn.functional as F

from transmamba.ops.selective_scan import (
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
    selective_state_update,
)


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def _inputs(b, d, n, l, g, *, with_D, with_z, with_bias, dtype=torch.float32):
    """Random inputs; B/C grouped when g > 0, else (b, n, l)."""
    t = {
        "u": torch.randn(b, d, l, dtype=dtype),
        "delta": torch.randn(b, d, l, dtype=dtype) * 0.5,
        "A": -torch.rand(d, n, dtype=dtype) * 2 - 0.1,
        "B": torch.randn(*((b, g, n, l) if g else (b, n, l)), dtype=dtype),
        "C": torch.randn(*((b, g, n, l) if g else (b, n, l)), dtype=dtype),
    }
    if with_D:
        t["D"] = torch.randn(d, dtype=dtype)
    if with_z:
        t["z"] = torch.randn(b, d, l, dtype=dtype)
    if with_bias:
        t["delta_bias"] = torch.randn(d, dtype=dtype) * 0.5
    return t


CASES = [
    # b, d, n, l, g, D, z, bias+softplus, chunk
    (2, 4, 3, 1, 0, False, False, False, None),
    (1, 6, 4, 17, 0, True, False, True, 4),
    (2, 4, 2, 33, 2, True, True, True, 8),
    (2, 8, 5, 23, 4, False, True, False, None),
    (3, 6, 3, 64, 3, True, True, True, 16),
    (1, 4, 4, 9, 1, True, False, True, 64),
]


@pytest.mark.parametrize("b,d,n,l,g,with_D,with_z,with_bias,chunk", CASES)
def test_chunked_matches_reference_forward_backward(b, d, n, l, g, with_D, with_z, with_bias, chunk):
    t = _inputs(b, d, n, l, g, with_D=with_D, with_z=with_z, with_bias=with_bias)
    for v in t.values():
        v.requires_grad_(True)
    kw = dict(delta_softplus=with_bias, return_last_state=True)
    y_ref, s_ref = selective_scan_ref(**t, **kw)
    y, s = selective_scan_chunked(**t, **kw, chunk_size=chunk)
    assert y.shape == (b, d, l) and s.shape == (b, d, n)
    assert _rel(y, y_ref) <= 1e-5 and _rel(s, s_ref) <= 1e-5
    gy, gs = torch.randn_like(y), torch.randn_like(s)
    names = list(t)
    g_ref = torch.autograd.grad((y_ref * gy).sum() + (s_ref * gs).sum(), [t[k] for k in names])
    g_new = torch.autograd.grad((y * gy).sum() + (s * gs).sum(), [t[k] for k in names])
    for name, a, r in zip(names, g_new, g_ref):
        assert _rel(a, r) <= 1e-5, (name, _rel(a, r))


def test_reference_is_the_recurrence_fp64():
    """The spec itself against a literal per-channel loop, and chunked == ref to fp64 precision."""
    t = _inputs(1, 2, 2, 5, 0, with_D=True, with_z=True, with_bias=True, dtype=torch.float64)
    y = selective_scan_ref(**t, delta_softplus=True)
    dt = F.softplus(t["delta"] + t["delta_bias"][:, None])
    out = torch.zeros(1, 2, 5, dtype=torch.float64)
    for d in range(2):
        h = torch.zeros(2, dtype=torch.float64)
        for s in range(5):
            h = torch.exp(dt[0, d, s] * t["A"][d]) * h + dt[0, d, s] * t["B"][0, :, s] * t["u"][0, d, s]
            o = (h * t["C"][0, :, s]).sum() + t["D"][d] * t["u"][0, d, s]
            out[0, d, s] = o * F.silu(t["z"][0, d, s])
    torch.testing.assert_close(y, out)
    y2 = selective_scan_chunked(**t, delta_softplus=True, chunk_size=2)
    torch.testing.assert_close(y2, out, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ["ref", "chunked"])
def test_seq_idx_packed_equals_separate(impl):
    lens = [5, 1, 11, 3]
    docs = [_inputs(1, 4, 3, n, 2, with_D=True, with_z=True, with_bias=True) for n in lens]
    packed = {k: torch.cat([doc[k] for doc in docs], -1) for k in ("u", "delta", "B", "C", "z")}
    shared = {k: docs[0][k] for k in ("A", "D", "delta_bias")}
    for doc in docs:
        doc.update(shared)
    seq_idx = torch.cat([torch.full((1, n), i) for i, n in enumerate(lens)], 1)
    y, s = selective_scan(
        **packed, **shared, delta_softplus=True, return_last_state=True, seq_idx=seq_idx, impl=impl,
        chunk_size=4,
    )
    sep = [selective_scan_ref(**doc, delta_softplus=True, return_last_state=True) for doc in docs]
    assert _rel(y, torch.cat([o for o, _ in sep], -1)) <= 1e-5
    assert _rel(s, sep[-1][1]) <= 1e-5  # the last state is the last document's


def test_initial_state_continues_a_split_sequence():
    t = _inputs(2, 4, 3, 20, 0, with_D=True, with_z=False, with_bias=True)
    full, s_full = selective_scan(**t, delta_softplus=True, return_last_state=True)
    first = {k: (v[..., :7] if v.dim() == 3 else v) for k, v in t.items()}
    rest = {k: (v[..., 7:] if v.dim() == 3 else v) for k, v in t.items()}
    y1, s1 = selective_scan(**first, delta_softplus=True, return_last_state=True)
    y2, s2 = selective_scan(**rest, delta_softplus=True, return_last_state=True, initial_state=s1)
    assert _rel(torch.cat([y1, y2], -1), full) <= 1e-5 and _rel(s2, s_full) <= 1e-5


@pytest.mark.parametrize("g", [0, 2])
def test_state_update_iterated_equals_scan(g):
    t = _inputs(2, 4, 3, 9, g, with_D=True, with_z=True, with_bias=True)
    y, s = selective_scan(**t, delta_softplus=True, return_last_state=True)
    state = torch.zeros(2, 4, 3)
    ys = []
    for i in range(9):
        yi, state = selective_state_update(
            state, t["u"][..., i], t["delta"][..., i], t["A"], t["B"][..., i], t["C"][..., i],
            D=t["D"], z=t["z"][..., i], dt_bias=t["delta_bias"], dt_softplus=True,
        )
        ys.append(yi)
    assert _rel(torch.stack(ys, -1), y) <= 1e-5 and _rel(state, s) <= 1e-5


def test_triton_dispatch_falls_back_on_cpu(monkeypatch):
    t = _inputs(1, 4, 2, 6, 0, with_D=False, with_z=False, with_bias=False)
    monkeypatch.setenv("TRANSMAMBA_DISABLE_TRITON", "1")
    torch.testing.assert_close(selective_scan(**t), selective_scan_ref(**t))
    with pytest.raises(ValueError, match="impl must be one of"):
        selective_scan(**t, impl="cuda")


def test_errors_name_argument_and_shape():
    t = _inputs(2, 4, 3, 5, 0, with_D=False, with_z=False, with_bias=False)
    msg = r"selective_scan_chunked: delta must have shape \(2, 4, 5\), got \(2, 4, 6\)"
    with pytest.raises(ValueError, match=msg):
        selective_scan(**{**t, "delta": torch.randn(2, 4, 6)})
    with pytest.raises(ValueError, match=r"B must have shape \(2, 3, 5\)"):
        selective_scan(**{**t, "B": torch.randn(2, 2, 5)})
    with pytest.raises(ValueError, match="ngroups=3 must be a positive divisor of dim=4"):
        selective_scan(**{**t, "B": torch.randn(2, 3, 3, 5), "C": torch.randn(2, 3, 3, 5)})
    with pytest.raises(ValueError, match=r"D must have shape \(4\)"):
        selective_scan_ref(**t, D=torch.randn(3))
    with pytest.raises(ValueError, match=r"seq_idx must have shape \(2, 5\)"):
        selective_scan(**t, seq_idx=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"selective_state_update: state must have shape \(2, 4, 3\)"):
        x0, dt0, B0, C0 = t["u"][..., 0], t["delta"][..., 0], t["B"][..., 0], t["C"][..., 0]
        selective_state_update(torch.zeros(2, 4, 2), x0, dt0, t["A"], B0, C0)


@pytest.mark.gpu
def test_cuda_auto_dispatch_matches_reference():
    t = _inputs(2, 64, 16, 300, 4, with_D=True, with_z=True, with_bias=True)
    seq_idx = torch.cat([torch.zeros(2, 100), torch.ones(2, 200)], 1).long()
    y_ref, s_ref = selective_scan_ref(**t, delta_softplus=True, return_last_state=True, seq_idx=seq_idx)
    cuda = {k: v.cuda() for k, v in t.items()}
    y, s = selective_scan(**cuda, delta_softplus=True, return_last_state=True, seq_idx=seq_idx.cuda())
    assert _rel(y.cpu(), y_ref) <= 1e-4 and _rel(s.cpu(), s_ref) <= 1e-4
