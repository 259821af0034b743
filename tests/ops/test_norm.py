"""RMSNorm and gated RMSNorm against explicit formulas."""

import pytest
import torch
import torch.nn.functional as F

from transmamba.ops.norm import gated_rms_norm, rms_norm


def _ref(x, w, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def test_rms_norm():
    x, w = torch.randn(3, 4, 10), torch.randn(10)
    torch.testing.assert_close(rms_norm(x, w, 1e-6), _ref(x, w, 1e-6))
    torch.testing.assert_close(rms_norm(x, None), _ref(x, 1.0, 1e-5))


def test_grouped_rms_norm():
    x, w = torch.randn(2, 12), torch.randn(12)
    ref = _ref(x.view(2, 3, 4), 1.0, 1e-5).reshape(2, 12) * w
    torch.testing.assert_close(rms_norm(x, w, group_size=4), ref)
    torch.testing.assert_close(rms_norm(x, w, group_size=12), rms_norm(x, w))


@pytest.mark.parametrize("group_size", [None, 3])
def test_gated(group_size):
    x, z, w = torch.randn(2, 5, 6), torch.randn(2, 5, 6), torch.randn(6)
    gate_first = gated_rms_norm(x, z, w, group_size=group_size)
    torch.testing.assert_close(gate_first, rms_norm(x * F.silu(z), w, group_size=group_size))
    norm_first = gated_rms_norm(x, z, w, group_size=group_size, norm_before_gate=True)
    torch.testing.assert_close(norm_first, rms_norm(x, w, group_size=group_size) * F.silu(z))
    torch.testing.assert_close(gated_rms_norm(x, None, w), rms_norm(x, w))


def test_low_precision_computes_in_fp32():
    x, w = torch.randn(4, 16).to(torch.bfloat16), torch.randn(16)
    out = rms_norm(x, w)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, _ref(x.float(), w, 1e-5).to(torch.bfloat16))


def test_errors():
    with pytest.raises(ValueError, match="group_size=4 must divide the last dim 6"):
        rms_norm(torch.randn(2, 6), None, group_size=4)
    with pytest.raises(ValueError, match=r"gated_rms_norm: z must have x's shape \(2, 6\)"):
        gated_rms_norm(torch.randn(2, 6), torch.randn(2, 5), None)
