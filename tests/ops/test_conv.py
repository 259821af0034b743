"""Causal depthwise conv: against F.conv1d, decode step, final state, document masking."""

import pytest
import torch
import torch.nn.functional as F

from transmamba.ops.conv import causal_conv1d, causal_conv1d_update


def _conv_ref(x, weight, bias, activation):
    """Direct F.conv1d with left padding width-1, depthwise (groups=dim)."""
    dim, width = weight.shape
    y = F.conv1d(F.pad(x, (width - 1, 0)), weight.unsqueeze(1), bias, groups=dim)
    return F.silu(y) if activation == "silu" else y


@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_conv1d(width, activation, with_bias):
    x, w = torch.randn(2, 5, 11), torch.randn(5, width)
    bias = torch.randn(5) if with_bias else None
    y = causal_conv1d(x, w, bias, activation=activation)
    torch.testing.assert_close(y, _conv_ref(x, w, bias, activation))


def test_gradients_match_conv1d():
    x, w, bias = (torch.randn(2, 3, 7, requires_grad=True), torch.randn(3, 4, requires_grad=True),
                  torch.randn(3, requires_grad=True))
    g = torch.randn(2, 3, 7)
    ours = torch.autograd.grad((causal_conv1d(x, w, bias, activation="silu") * g).sum(), (x, w, bias))
    ref = torch.autograd.grad((_conv_ref(x, w, bias, "silu") * g).sum(), (x, w, bias))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)


def test_update_iterated_equals_full_and_final_state():
    x, w, bias = torch.randn(2, 5, 9), torch.randn(5, 4), torch.randn(5)
    full, final = causal_conv1d(x, w, bias, activation="silu", return_final_state=True)
    state = torch.zeros(2, 5, 3)
    ys = []
    for t in range(9):
        y, state = causal_conv1d_update(x[:, :, t], state, w, bias, activation="silu")
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys, -1), full)
    torch.testing.assert_close(state, final)
    torch.testing.assert_close(final, x[:, :, -3:])


def test_initial_state_continues_and_short_chunks():
    x, w = torch.randn(1, 3, 8), torch.randn(3, 4)
    full = causal_conv1d(x, w)
    y1, s1 = causal_conv1d(x[:, :, :2], w, return_final_state=True)  # shorter than width - 1
    y2, s2 = causal_conv1d(x[:, :, 2:], w, initial_state=s1, return_final_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], -1), full)
    torch.testing.assert_close(s2, x[:, :, -3:])


def test_seq_idx_packed_equals_separate():
    lens = [3, 1, 6]
    docs = [torch.randn(1, 4, n) for n in lens]
    w, bias = torch.randn(4, 4), torch.randn(4)
    seq_idx = torch.cat([torch.full((1, n), i) for i, n in enumerate(lens)], 1)
    y, final = causal_conv1d(torch.cat(docs, -1), w, bias, activation="silu", seq_idx=seq_idx,
                             return_final_state=True)
    torch.testing.assert_close(y, torch.cat([causal_conv1d(d, w, bias, activation="silu") for d in docs], -1))
    torch.testing.assert_close(final, causal_conv1d(docs[-1], w, return_final_state=True)[1])
    # a final state whose last document is shorter than the window holds zeros for the earlier documents
    _, f2 = causal_conv1d(torch.cat(docs[:2], -1), w, seq_idx=seq_idx[:, :4], return_final_state=True)
    torch.testing.assert_close(f2, torch.cat([torch.zeros(1, 4, 2), docs[1]], -1))


def test_errors():
    with pytest.raises(ValueError, match=r"causal_conv1d: x must be \(batch, dim, seqlen\)"):
        causal_conv1d(torch.randn(3, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"causal_conv1d: bias must have shape \(3\), got \(4,\)"):
        causal_conv1d(torch.randn(1, 3, 4), torch.randn(3, 4), torch.randn(4))
    with pytest.raises(ValueError, match=r"causal_conv1d_update: conv_state must have shape \(1, 3, 3\)"):
        causal_conv1d_update(torch.randn(1, 3), torch.randn(1, 3, 2), torch.randn(3, 4))
    with pytest.raises(ValueError, match="activation must be one of"):
        causal_conv1d(torch.randn(1, 3, 4), torch.randn(3, 4), activation="relu")
