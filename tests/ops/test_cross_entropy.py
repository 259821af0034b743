"""linear_cross_entropy (chunked LM head + CE) against F.cross_entropy of the full logits, fwd and grads."""

import pytest
import torch
import torch.nn.functional as F

from transmamba.ops.cross_entropy import linear_cross_entropy


def _ref(h, w, y):
    return F.cross_entropy(h @ w.T, y, ignore_index=-100)


@pytest.mark.parametrize("n,chunk", [(37, 8), (16, 16), (5, 64)])
def test_matches_full_logits(n, chunk):
    g = torch.Generator().manual_seed(n)
    h = torch.randn(n, 12, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 12, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 50, (n,), generator=g)
    y[::3] = -100
    out = linear_cross_entropy(h, w, y, chunk_size=chunk)
    ref = _ref(h, w, y)
    assert out.dtype == torch.float64 and torch.allclose(out, ref, rtol=1e-10)
    go = torch.tensor(1.7, dtype=torch.float64)
    gh, gw = torch.autograd.grad(out, (h, w), go)
    rh, rw = torch.autograd.grad(ref, (h, w), go)
    assert torch.allclose(gh, rh, rtol=1e-9, atol=1e-12)
    assert torch.allclose(gw, rw, rtol=1e-9, atol=1e-12)


def test_all_ignored_is_zero_with_zero_grads():
    h = torch.randn(6, 4, requires_grad=True)
    w = torch.randn(9, 4, requires_grad=True)
    y = torch.full((6,), -100)
    out = linear_cross_entropy(h, w, y, chunk_size=4)
    out.backward()
    assert out.item() == 0.0 and h.grad.abs().max() == 0 and w.grad.abs().max() == 0


def test_bf16_autocast_close_to_reference():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(40, 16, generator=g, requires_grad=True)
    w = torch.randn(30, 16, generator=g, requires_grad=True)
    y = torch.randint(0, 30, (40,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_cross_entropy(h, w, y, chunk_size=16)
        ref = F.cross_entropy(F.linear(h, w).float(), y)
    assert out.dtype == torch.float32
    assert abs(out.item() - ref.item()) < 1e-3 * abs(ref.item())
    gh, gw = torch.autograd.grad(out, (h, w))
    rh, rw = torch.autograd.grad(ref, (h, w))
    assert gh.dtype == h.dtype and gw.dtype == w.dtype
    assert (gh - rh).norm() / rh.norm() < 2e-2 and (gw - rw).norm() / rw.norm() < 2e-2


def test_bad_input():
    h, w = torch.randn(4, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match="chunk_size"):
        linear_cross_entropy(h, w, torch.zeros(4, dtype=torch.long), chunk_size=0)
    with pytest.raises(ValueError, match="labels"):
        linear_cross_entropy(h, w, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="int64"):
        linear_cross_entropy(h, w, torch.zeros(4, dtype=torch.int32))
