"""The memory-bounded CPU selective scan (custom autograd) against the sequential spec, forward and backward.

Tolerance. The fp32 chunked scan forms every state with at most L + M/L + 2 fused multiply-adds of numbers
whose decays lie in [0, 1] (L = sub-chunk ≤ 16 here), so a state's error is about k·u·max|h| with k ≤ 40 and
u = 2^-24 ≈ 6e-8, i.e. ≤ 2.4e-6 relative; reductions over n, over a group's channels and (for ∂A) over
b·l terms use torch's blocked summation, adding O(log(terms)·u). Against the fp64 recurrence we therefore
require max|err| ≤ 1e-5 · max|ref| per tensor (a 4x margin), for y, the final state and every gradient.
In fp64 the chunked algebra must match the recurrence to 1e-10.
"""

import pytest
import torch

from transmamba.ops.selective_scan import selective_scan_chunked, selective_scan_ref
from transmamba.ops.selective_scan.chunked import auto_chunk, scan_states


def _inputs(b, d, n, l, g, *, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    return {
        "u": rnd(b, d, l),
        "delta": rnd(b, d, l, scale=0.5),
        "A": -(torch.rand(d, n, generator=gen, dtype=torch.float64) * 2 + 0.1).to(dtype),
        "B": rnd(*((b, g, n, l) if g else (b, n, l))),
        "C": rnd(*((b, g, n, l) if g else (b, n, l))),
        "D": rnd(d),
        "z": rnd(b, d, l),
        "delta_bias": rnd(d, scale=0.5),
        "initial_state": rnd(b, d, n),
    }


def _seq_idx(b, l, cuts):
    """(b, l) document ids with new documents starting at `cuts` (row r shifts them by r)."""
    idx = torch.zeros(b, l, dtype=torch.long)
    for r in range(b):
        for c in cuts:
            if 0 < c + r < l:
                idx[r, c + r:] += 1
    return idx


def _run(fn, t, seq_idx, **kw):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in t.items()}
    y, s = fn(**leaves, delta_softplus=True, return_last_state=True, seq_idx=seq_idx, **kw)
    gen = torch.Generator().manual_seed(1)
    gy = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.dtype)
    gs = torch.randn(s.shape, generator=gen, dtype=torch.float64).to(s.dtype)
    grads = torch.autograd.grad((y * gy).sum() + (s * gs).sum(), list(leaves.values()))
    return {"y": y, "state": s, **{f"d{k}": g for k, g in zip(leaves, grads)}}


CASES = [
    # b, d, n, l, g, chunk, document cuts
    (2, 6, 4, 37, 0, 8, ()),  # odd length, several chunks, a short last chunk
    (2, 8, 3, 53, 4, 16, ()),  # grouped B/C
    (3, 4, 5, 41, 2, 8, (7, 8, 24)),  # packed documents (one of length 1), cuts at chunk edges
    (1, 6, 2, 5, 3, 64, (2,)),  # one chunk longer than the sequence
    (2, 4, 16, 130, 1, None, (64,)),  # automatic chunk
]


@pytest.mark.parametrize("b,d,n,l,g,chunk,cuts", CASES)
def test_fp32_forward_and_gradients_match_the_fp64_recurrence(b, d, n, l, g, chunk, cuts):
    t64 = _inputs(b, d, n, l, g, dtype=torch.float64)
    t32 = {k: v.float() for k, v in t64.items()}
    seq_idx = _seq_idx(b, l, cuts) if cuts else None
    ref = _run(selective_scan_ref, t64, seq_idx)
    new = _run(selective_scan_chunked, t32, seq_idx, chunk_size=chunk)
    ref32 = _run(selective_scan_ref, t32, seq_idx)
    for name, r in ref.items():
        assert new[name].dtype == torch.float32
        scale = r.abs().max().item()
        err = (new[name].double() - r).abs().max().item()
        assert err <= 1e-5 * scale, (name, err, scale)
        # and the fp32 sequential reference the issue names, with the same bound
        err32 = (new[name] - ref32[name]).abs().max().item()
        assert err32 <= 1e-5 * scale, (name, err32, scale)


def test_fp64_chunked_equals_the_recurrence():
    t = _inputs(2, 4, 3, 29, 2, dtype=torch.float64, seed=3)
    seq_idx = _seq_idx(2, 29, (5, 13))
    ref = _run(selective_scan_ref, t, seq_idx)
    new = _run(selective_scan_chunked, t, seq_idx, chunk_size=4)
    for name, r in ref.items():
        torch.testing.assert_close(new[name], r, rtol=1e-10, atol=1e-10, msg=name)


def test_result_does_not_depend_on_the_chunk():
    t = _inputs(1, 4, 4, 50, 0, dtype=torch.float64, seed=5)
    outs = [_run(selective_scan_chunked, t, None, chunk_size=c) for c in (1, 3, 16, 50, 128)]
    for o in outs[1:]:
        for name in o:
            torch.testing.assert_close(o[name], outs[0][name], rtol=1e-11, atol=1e-11, msg=name)


def test_scan_states_is_the_recurrence():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(23, 3, 2, generator=gen, dtype=torch.float64)  # time-major
    x = torch.randn(23, 3, 2, generator=gen, dtype=torch.float64)
    h0 = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    h, want = h0, []
    for t in range(23):
        h = a[t] * h + x[t]
        want.append(h)
    torch.testing.assert_close(scan_states(a, x, h0), torch.stack(want), rtol=1e-12, atol=1e-12)


def _saved_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd saves for backward while `fn()` runs."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def test_saved_memory_is_linear_in_length_without_the_state_factor():
    """What autograd keeps is the inputs plus one (b, d, n) state per chunk, not (b, d, l, n) tensors."""
    b, d, n, g = 1, 32, 16, 1

    def saved(l):
        t = {k: v.requires_grad_(True) for k, v in _inputs(b, d, n, l, g).items()}
        return _saved_bytes(lambda: selective_scan_chunked(**t, delta_softplus=True, chunk_size=64))

    s1, s2 = saved(1024), saved(4096)
    per_token = (s2 - s1) / (4096 - 1024)
    # per token: u, Δ (twice: before and after softplus), z, y, B, C and a 1/64 share of a chunk state
    bound = 4 * (6 * d + 2 * n + 2 * d * n / 64)
    assert per_token <= bound, (per_token, bound)
    assert per_token < 4 * d * n / 2  # a single (b, d, l, n) fp32 tensor would cost 4·d·n per token


def test_auto_chunk_bounds_the_working_set():
    assert auto_chunk(1, 64, 16, 10_000) == 256
    assert auto_chunk(32, 1024, 16, 288) == 16
    assert 1 * 2048 * 16 * auto_chunk(1, 2048, 16, 4096) <= 1 << 22
    assert auto_chunk(1, 8, 4, 20) == 32  # no longer than the sequence needs


def test_bad_chunk_size_is_rejected():
    t = _inputs(1, 2, 2, 4, 0)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        selective_scan_chunked(**t, chunk_size=0)


def test_reverse_scan_states_is_the_backward_recurrence():
    gen = torch.Generator().manual_seed(2)
    a = torch.rand(19, 2, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(19, 2, 3, generator=gen, dtype=torch.float64)
    h0 = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    h, want = h0, [None] * 19
    for t in reversed(range(19)):
        h = a[t] * h + x[t]
        want[t] = h
    got = scan_states(a, x, h0, reverse=True)
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-12, atol=1e-12)
