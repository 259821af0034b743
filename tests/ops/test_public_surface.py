"""The public op names of DESIGN.md §4b: `transmamba.ops.ssd(...)` etc. with mamba_ssm layouts."""

import torch

import transmamba.ops as ops
from transmamba.ops.selective_scan import selective_scan_ref
from transmamba.ops.ssd import ssd_naive


def test_ssd_is_callable_from_the_package_and_matches_the_spec():
    b, l, h, p, g, n = 2, 13, 4, 3, 2, 5
    x = torch.randn(b, l, h, p)
    dt = torch.rand(b, l, h) * 0.5
    A = -torch.rand(h) - 0.1
    B, C = torch.randn(b, l, g, n), torch.randn(b, l, g, n)
    y, state = ops.ssd(x, dt, A, B, C, chunk_size=4, return_final_state=True)
    y_ref, state_ref = ssd_naive(x, dt, A, B, C, return_final_state=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, state_ref, rtol=1e-5, atol=1e-5)
    # one more token through ssd_step continues the same recurrence
    x1, dt1, B1, C1 = torch.randn(b, h, p), torch.rand(b, h), torch.randn(b, g, n), torch.randn(b, g, n)
    y1, _ = ops.ssd_step(state, x1, dt1, A, B1, C1)
    y_full = ssd_naive(
        torch.cat([x, x1[:, None]], 1), torch.cat([dt, dt1[:, None]], 1), A,
        torch.cat([B, B1[:, None]], 1), torch.cat([C, C1[:, None]], 1),
    )
    torch.testing.assert_close(y1, y_full[:, -1], rtol=1e-5, atol=1e-5)


def test_selective_scan_is_callable_from_the_package_and_matches_the_reference():
    b, d, n, l = 2, 6, 4, 11
    u, delta = torch.randn(b, d, l), torch.rand(b, d, l)
    A, B, C, D = -torch.rand(d, n), torch.randn(b, n, l), torch.randn(b, n, l), torch.randn(d)
    torch.testing.assert_close(
        ops.selective_scan(u, delta, A, B, C, D), selective_scan_ref(u, delta, A, B, C, D),
        rtol=1e-5, atol=1e-5,
    )
