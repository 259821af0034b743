"""share_prefix: the same values and gradient as plain use of t and t[:, :n], random inputs, fp64."""

import pytest
import torch

from transmamba.layers.shared_prefix import share_prefix


@pytest.mark.parametrize("n", [1, 4, 7])
@pytest.mark.parametrize("use_full", ["fresh", "strided", "unused"])
def test_share_prefix_grad_matches_slicing(n, use_full):
    torch.manual_seed(n)
    t = torch.randn(2, 7, 3, 4, dtype=torch.float64, requires_grad=True)
    wf = torch.randn(2, 7, 3, 4, dtype=torch.float64)
    wp = torch.randn(2, n, 3, 4, dtype=torch.float64)

    def loss(full, pre):
        out = (pre * wp).sum()
        if use_full == "fresh":
            out = out + (full * wf).sum()
        elif use_full == "strided":  # the consumer's gradient arrives as a non-contiguous view
            out = out + (full.transpose(2, 3).contiguous().transpose(2, 3) * wf).sum()
        return out

    (g_ref,) = torch.autograd.grad(loss(t, t[:, :n]), t)
    full, pre = share_prefix(t, n)
    assert full.data_ptr() == t.data_ptr() and pre.shape == (2, n, 3, 4)
    (g,) = torch.autograd.grad(loss(full, pre), t)
    assert torch.allclose(g, g_ref, rtol=0, atol=1e-12)


def test_share_prefix_bad_n():
    with pytest.raises(ValueError, match="share_prefix"):
        share_prefix(torch.randn(2, 5, 3), 0)
    with pytest.raises(ValueError, match="share_prefix"):
        share_prefix(torch.randn(2, 5, 3), 6)
