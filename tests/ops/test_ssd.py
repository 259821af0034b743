"""SSD ops: the chunked algorithm against the recurrent spec (outputs, final states and gradients of every
input), documents, decode steps, the Memory Converter, chunk-size invariance, dtypes, dispatch, errors.

The reference is `ssd_naive` run in fp64 on the same (fp32) inputs; the fp32 results must match it to a
relative error max|a - b| / max|b| <= 1e-5.
"""

from __future__ import annotations

import pytest
import torch

from transmamba.ops.ssd import ssd, ssd_chunked, ssd_final_state, ssd_naive, ssd_step

TOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    b = b.to(torch.float64)
    return ((a.to(torch.float64) - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def make_inputs(
    b=2, l=37, h=4, p=3, g=2, n=5, *, init=False, D=None, z=False, dt_bias=False, seq_idx=None, seed=0
) -> dict:
    """Random fp32 inputs (no zeros); dt is positive and A negative, as in Mamba-2."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen)

    inp = dict(
        x=rnd(b, l, h, p),
        dt=torch.rand(b, l, h, generator=gen) * 0.4 + 0.05,
        A=-(torch.rand(h, generator=gen) * 1.5 + 0.1),
        B=rnd(b, l, g, n),
        C=rnd(b, l, g, n),
    )
    if init:
        inp["initial_state"] = rnd(b, h, p, n)
    if D == "h":
        inp["D"] = rnd(h)
    elif D == "hp":
        inp["D"] = rnd(h, p)
    if z:
        inp["z"] = rnd(b, l, h, p)
    if dt_bias:
        inp["dt_bias"] = rnd(h) * 0.5
    if seq_idx is not None:
        inp["seq_idx"] = seq_idx
    return inp


def seq_idx_from_lengths(rows: list[list[int]]) -> torch.Tensor:
    return torch.stack(
        [torch.cat([torch.full((k,), i, dtype=torch.long) for i, k in enumerate(r)]) for r in rows]
    )


def split(inp: dict):
    """(tensor kwargs that take gradients, non-differentiable kwargs)."""
    grads = {k: v for k, v in inp.items() if k != "seq_idx"}
    rest = {k: v for k, v in inp.items() if k == "seq_idx"}
    return grads, rest


def run_with_grads(fn, inp: dict, dtype: torch.dtype, **kw):
    """Run fn on copies of `inp` in `dtype`; return y, final state and the gradients of a random loss."""
    tens, rest = split(inp)
    leaves = {k: v.detach().to(dtype).requires_grad_(True) for k, v in tens.items()}
    y, final = fn(**leaves, **rest, return_final_state=True, **kw)
    gen = torch.Generator().manual_seed(123)
    wy = torch.randn(y.shape, generator=gen).to(dtype)
    ws = torch.randn(final.shape, generator=gen).to(dtype)
    ((y * wy).sum() + (final * ws).sum()).backward()
    return y.detach(), final.detach(), {k: v.grad for k, v in leaves.items()}


# (b, l, h, p, g, n, chunk, extras, seq_idx lengths per row or None)
CASES = [
    (2, 37, 4, 3, 1, 5, 16, {}, None),
    (2, 37, 4, 3, 2, 5, 16, {"init": True}, None),
    (1, 37, 4, 3, 4, 4, 16, {"init": True, "D": "hp", "z": True, "dt_bias": True, "softplus": True}, None),
    (2, 32, 4, 2, 2, 3, 8, {"D": "h", "dt_bias": True}, None),
    (2, 5, 4, 3, 2, 4, 16, {"init": True}, None),
    (1, 1, 4, 3, 1, 4, 16, {"init": True, "z": True}, None),
    (1, 64, 8, 4, 2, 8, 64, {"init": True, "D": "h"}, None),
    # documents: boundary mid-chunk and on a chunk boundary (16), several per row, a length-1 document
    (2, 37, 4, 3, 2, 5, 16, {}, [[10, 6, 21], [16, 1, 20]]),
    (2, 37, 4, 3, 4, 3, 16, {"init": True, "D": "h", "z": True}, [[16, 16, 5], [3, 30, 4]]),
    (2, 37, 4, 2, 1, 4, 8, {"init": True, "dt_bias": True, "softplus": True}, [[37], [9, 9, 9, 10]]),
]


def _case_inputs(case):
    b, l, h, p, g, n, chunk, extras, lengths = case
    extras = dict(extras)
    softplus = extras.pop("softplus", False)
    seq = seq_idx_from_lengths(lengths) if lengths else None
    return make_inputs(b, l, h, p, g, n, seq_idx=seq, **extras), chunk, softplus


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_chunked_matches_naive_forward_and_backward(case):
    inp, chunk, softplus = _case_inputs(case)
    y_ref, s_ref, g_ref = run_with_grads(ssd_naive, inp, torch.float64, dt_softplus=softplus)
    y, s, grads = run_with_grads(ssd_chunked, inp, torch.float32, dt_softplus=softplus, chunk_size=chunk)
    assert y.dtype == torch.float32 and s.dtype == torch.float32
    assert rel_err(y, y_ref) <= TOL
    assert rel_err(s, s_ref) <= TOL
    for k, g in grads.items():
        assert g is not None, k
        assert rel_err(g, g_ref[k]) <= TOL, k


@pytest.mark.parametrize("case", CASES[:3] + CASES[7:9], ids=lambda c: f"l{c[1]}g{c[4]}")
def test_naive_fp32_matches_fp64(case):
    inp, _, softplus = _case_inputs(case)
    y_ref, s_ref, _ = run_with_grads(ssd_naive, inp, torch.float64, dt_softplus=softplus)
    y, s = ssd_naive(**inp, dt_softplus=softplus, return_final_state=True)
    assert rel_err(y, y_ref) <= TOL and rel_err(s, s_ref) <= TOL


@pytest.mark.parametrize("with_init", [False, True])
def test_packed_documents_equal_documents_alone(with_init):
    lengths = [7, 16, 14]  # boundaries at 7 (mid-chunk) and 23, chunk 8 -> also crosses chunk edges
    inp = make_inputs(1, sum(lengths), 4, 3, 2, 5, init=with_init, D="h", z=True,
                      seq_idx=seq_idx_from_lengths([lengths]))
    y, final = ssd_chunked(**inp, chunk_size=8, return_final_state=True)
    start = 0
    for i, k in enumerate(lengths):
        part = {key: inp[key][:, start:start + k] for key in ("x", "dt", "B", "C", "z")}
        init = inp.get("initial_state") if i == 0 else None
        y_doc, s_doc = ssd_chunked(**part, A=inp["A"], D=inp["D"], initial_state=init, chunk_size=8,
                                   return_final_state=True)
        assert rel_err(y[:, start:start + k], y_doc) <= TOL
        start += k
    assert rel_err(final, s_doc) <= TOL


def test_non_contiguous_inputs():
    """Slices of a fused projection (as in a Mamba-2 layer) are accepted without copies by the caller."""
    inp = make_inputs(2, 20, 4, 3, 2, 4, init=True, z=True)
    h, p, g, n = 4, 3, 2, 4
    fused = torch.cat([inp["z"].flatten(2), inp["x"].flatten(2), inp["B"].flatten(2), inp["C"].flatten(2),
                       inp["dt"]], dim=-1)
    d = h * p
    sl = dict(
        z=fused[..., :d].unflatten(-1, (h, p)), x=fused[..., d:2 * d].unflatten(-1, (h, p)),
        B=fused[..., 2 * d:2 * d + g * n].unflatten(-1, (g, n)),
        C=fused[..., 2 * d + g * n:2 * d + 2 * g * n].unflatten(-1, (g, n)), dt=fused[..., -h:],
    )
    assert not sl["x"].is_contiguous()
    rest = dict(A=inp["A"], initial_state=inp["initial_state"].transpose(2, 3).contiguous().transpose(2, 3))
    y_ref = ssd_naive(**inp)
    for chunk in (20, 8):  # 20: no padding, so no copy happens inside
        assert rel_err(ssd_chunked(**sl, **rest, chunk_size=chunk), y_ref) <= TOL
    assert rel_err(ssd_final_state(sl["x"], sl["dt"], inp["A"], sl["B"], initial_state=rest["initial_state"]),
                   ssd_naive(**inp, return_final_state=True)[1]) <= TOL


def test_seq_idx_constant_equals_no_seq_idx():
    inp = make_inputs(2, 21, 4, 3, 2, 4, init=True)
    seq = torch.full((2, 21), 3, dtype=torch.int32)
    y0, s0 = ssd_chunked(**inp, chunk_size=8, return_final_state=True)
    y1, s1 = ssd_chunked(**inp, chunk_size=8, return_final_state=True, seq_idx=seq)
    assert rel_err(y1, y0) <= TOL and rel_err(s1, s0) <= TOL


@pytest.mark.parametrize("g", [1, 2, 4])
def test_step_iterated_equals_ssd(g):
    inp = make_inputs(2, 13, 4, 3, g, 5, init=True, D="hp", z=True, dt_bias=True)
    y_ref, s_ref = ssd_naive(**inp, dt_softplus=True, return_final_state=True)
    state = inp["initial_state"].clone()
    before = state.clone()
    ys = []
    for t in range(13):
        y_t, state_new = ssd_step(
            state, inp["x"][:, t], inp["dt"][:, t], inp["A"], inp["B"][:, t], inp["C"][:, t],
            D=inp["D"], z=inp["z"][:, t], dt_bias=inp["dt_bias"], dt_softplus=True,
        )
        if t == 0:
            assert torch.equal(state, before)  # functional: the input state is not modified
        state = state_new
        ys.append(y_t)
    assert rel_err(torch.stack(ys, 1), y_ref) <= TOL
    assert rel_err(state, s_ref) <= TOL


@pytest.mark.parametrize("lengths", [None, [[5, 20, 12], [16, 21]], [[30, 7], [37]]])
@pytest.mark.parametrize("chunk", [8, 256])
def test_final_state_equals_ssd_final_state(lengths, chunk):
    seq = seq_idx_from_lengths(lengths) if lengths else None
    inp = make_inputs(2, 37, 4, 3, 2, 5, init=True, dt_bias=True, seq_idx=seq)
    _, s_ref = ssd_naive(**inp, dt_softplus=True, return_final_state=True)
    kw = {k: v for k, v in inp.items() if k != "C"}
    s = ssd_final_state(**kw, dt_softplus=True, chunk_size=chunk)
    assert s.shape == (2, 4, 3, 5)
    assert rel_err(s, s_ref) <= TOL


def test_final_state_gradients_match_naive():
    inp = make_inputs(2, 29, 4, 3, 2, 4, init=True, dt_bias=True,
                      seq_idx=seq_idx_from_lengths([[8, 21], [29]]))
    tens, rest = split(inp)

    def grads(fn, dtype):
        leaves = {k: v.detach().to(dtype).requires_grad_(True) for k, v in tens.items() if k != "C"}
        s = fn(leaves)
        w = torch.randn(s.shape, generator=torch.Generator().manual_seed(5)).to(dtype)
        (s * w).sum().backward()
        return s.detach(), {k: v.grad for k, v in leaves.items()}

    def naive(lv):
        C = tens["C"].to(lv["x"].dtype)
        return ssd_naive(**lv, C=C, **rest, return_final_state=True)[1]

    s_ref, g_ref = grads(naive, torch.float64)
    s, g = grads(lambda lv: ssd_final_state(**lv, **rest, chunk_size=8), torch.float32)
    assert rel_err(s, s_ref) <= TOL
    for k in g:
        assert rel_err(g[k], g_ref[k]) <= TOL, k


def test_chunk_size_invariance():
    inp = make_inputs(2, 37, 4, 3, 2, 5, init=True, D="h", seq_idx=seq_idx_from_lengths([[10, 27], [37]]))
    y0, s0 = ssd_naive(**inp, return_final_state=True)
    for chunk in (1, 3, 8, 16, 37, 64, 256):
        y, s = ssd_chunked(**inp, chunk_size=chunk, return_final_state=True)
        assert rel_err(y, y0) <= TOL and rel_err(s, s0) <= TOL, chunk


def test_strong_decay_is_finite_forward_and_backward():
    """exp never overflows: large dt*|A| inside long chunks gives finite values and gradients."""
    inp = make_inputs(1, 64, 4, 3, 2, 4, init=True, seq_idx=seq_idx_from_lengths([[20, 44]]))
    inp["dt"] = inp["dt"] * 20
    inp["A"] = inp["A"] * 10
    y_ref, s_ref, g_ref = run_with_grads(ssd_naive, inp, torch.float64)
    y, s, g = run_with_grads(ssd_chunked, inp, torch.float32, chunk_size=64)
    assert torch.isfinite(y).all() and all(torch.isfinite(v).all() for v in g.values())
    assert rel_err(y, y_ref) <= TOL and rel_err(s, s_ref) <= TOL


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_computed_in_fp32(dtype):
    inp = make_inputs(1, 20, 4, 3, 2, 4, init=True, D="h")
    half = {k: v.to(dtype) for k, v in inp.items()}
    y, s = ssd_chunked(**half, chunk_size=8, return_final_state=True)
    assert y.dtype == dtype and s.dtype == torch.float32
    y_ref, s_ref = ssd_naive(**{k: v.to(torch.float32) for k, v in half.items()}, return_final_state=True)
    assert rel_err(y, y_ref) <= 1e-2 and rel_err(s, s_ref) <= 1e-5


def test_empty_sequence():
    inp = make_inputs(2, 0, 4, 3, 2, 4, init=True)
    for fn in (ssd_naive, ssd_chunked):
        y, s = fn(**inp, return_final_state=True)
        assert y.shape == (2, 0, 4, 3) and torch.equal(s, inp["initial_state"])


def test_dispatch_on_cpu():
    inp = make_inputs(1, 19, 4, 3, 2, 4, init=True)
    y_auto = ssd(**inp, chunk_size=8)
    assert torch.equal(y_auto, ssd_chunked(**inp, chunk_size=8))
    long = make_inputs(1, 150, 4, 3, 2, 4, init=True)
    assert torch.equal(ssd(**long), ssd_chunked(**long, chunk_size=64))  # CPU caps the chunk at 64
    assert rel_err(ssd(**long), ssd_chunked(**long, chunk_size=256)) <= TOL
    assert torch.equal(ssd(**inp, impl="naive"), ssd_naive(**inp))
    with pytest.raises(ValueError, match="impl"):
        ssd(**inp, impl="fast")


def test_step_and_final_state_impl_argument():
    inp = make_inputs(1, 6, 4, 3, 2, 4, init=True)
    kw = {k: v for k, v in inp.items() if k != "C"}
    assert torch.equal(ssd_final_state(**kw, impl="torch"), ssd_final_state(**kw))
    with pytest.raises(ValueError, match="ssd_final_state: impl"):
        ssd_final_state(**kw, impl="naive")
    args = (inp["initial_state"], inp["x"][:, 0], inp["dt"][:, 0], inp["A"], inp["B"][:, 0], inp["C"][:, 0])
    assert all(torch.equal(a, b) for a, b in zip(ssd_step(*args, impl="torch"), ssd_step(*args)))
    with pytest.raises(ValueError, match="ssd_step: impl"):
        ssd_step(*args, impl="chunked")


@pytest.mark.gpu
def test_cuda_step_and_final_state_match_reference():
    inp = make_inputs(2, 150, 8, 16, 2, 16, init=True, D="h", z=True, dt_bias=True,
                      seq_idx=seq_idx_from_lengths([[40, 110], [150]]))
    cuda = {k: v.cuda() for k, v in inp.items()}
    kw = {k: v for k, v in cuda.items() if k not in ("C", "D", "z")}
    s_ref = ssd_final_state(**{k: v for k, v in inp.items() if k not in ("C", "D", "z")}, dt_softplus=True)
    with torch.no_grad():
        s = ssd_final_state(**kw, dt_softplus=True, chunk_size=64)
    assert rel_err(s.cpu(), s_ref) <= 1e-4
    c0 = {k: cuda[k][:, 0] for k in ("x", "dt", "B", "C")}
    args = [cuda["initial_state"], c0["x"], c0["dt"], cuda["A"], c0["B"], c0["C"]]
    step_kw = dict(D=cuda["D"], z=cuda["z"][:, 0], dt_bias=cuda["dt_bias"], dt_softplus=True)
    with torch.no_grad():
        y, new = ssd_step(*args, **step_kw)
    y_ref, new_ref = ssd_step(*[a.cpu() for a in args], **{k: v.cpu() if torch.is_tensor(v) else v
                                                          for k, v in step_kw.items()}, impl="torch")
    assert rel_err(y.cpu(), y_ref) <= 1e-4 and rel_err(new.cpu(), new_ref) <= 1e-4


@pytest.mark.gpu
def test_cuda_dispatch_matches_reference():
    inp = make_inputs(2, 300, 8, 16, 2, 16, init=True, D="h", z=True, dt_bias=True,
                      seq_idx=seq_idx_from_lengths([[100, 200], [300]]))
    y_ref, s_ref = ssd_chunked(**{k: v.double() if v.is_floating_point() else v for k, v in inp.items()},
                               dt_softplus=True, return_final_state=True, chunk_size=64)
    cuda = {k: v.cuda() for k, v in inp.items()}
    y, s = ssd(**cuda, dt_softplus=True, return_final_state=True, chunk_size=64)
    assert rel_err(y.cpu(), y_ref) <= 1e-4 and rel_err(s.cpu(), s_ref) <= 1e-4


def _bad(key, value):
    def mutate(inp):
        inp[key] = value(inp) if callable(value) else value
    return mutate


ERRORS = [
    ("B", lambda i: i["B"][:, :, :1].expand(-1, -1, 3, -1).contiguous(), "ngroups"),  # 3 does not divide 4
    ("B", lambda i: i["B"][:, :5], r"ssd_chunked: B must have shape \(2, 9, \*, \*\)"),
    ("C", lambda i: i["C"][..., :2], r"ssd_chunked: C must have shape \(2, 9, 2, 4\), got \(2, 9, 2, 2\)"),
    ("dt", lambda i: i["dt"][:, :, :3], r"ssd_chunked: dt must have shape \(2, 9, 4\)"),
    ("A", lambda i: i["A"][None], r"ssd_chunked: A must have shape \(4\)"),
    ("x", lambda i: i["x"][0], r"ssd_chunked: x must have shape"),
    ("D", lambda i: i["A"][:3], r"ssd_chunked: D must have shape \(4\)"),
    ("D", lambda i: torch.ones(4, 2), r"ssd_chunked: D must have shape \(4, 3\)"),
    ("z", lambda i: i["x"][:, :3], r"ssd_chunked: z must have shape"),
    ("dt_bias", lambda i: torch.ones(2), r"ssd_chunked: dt_bias must have shape \(4\)"),
    ("initial_state", lambda i: torch.ones(2, 4, 3, 3),
     r"ssd_chunked: initial_state must have shape \(2, 4, 3, 4\)"),
    ("seq_idx", lambda i: torch.tensor([[0] * 5 + [1] * 4, [1] * 5 + [0] * 4]), "seq_idx .* non-decreasing"),
    ("seq_idx", lambda i: torch.zeros(2, 8, dtype=torch.long), r"seq_idx must have shape \(2, 9\)"),
    ("seq_idx", lambda i: torch.zeros(2, 9), "seq_idx must be an integer"),
    ("chunk_size", 0, "chunk_size must be a positive int"),
]


@pytest.mark.parametrize("key,value,match", ERRORS, ids=[f"{e[0]}{i}" for i, e in enumerate(ERRORS)])
def test_argument_errors(key, value, match):
    inp = make_inputs(2, 9, 4, 3, 2, 4)
    _bad(key, value)(inp)
    with pytest.raises(ValueError, match=match):
        ssd_chunked(**inp)
    with pytest.raises(ValueError, match=match.replace("ssd_chunked", "ssd_naive")):
        ssd_naive(**inp)


def test_final_state_and_step_errors():
    inp = make_inputs(2, 9, 4, 3, 2, 4)
    with pytest.raises(ValueError, match=r"ssd_final_state: initial_state must have shape"):
        ssd_final_state(inp["x"], inp["dt"], inp["A"], inp["B"], initial_state=torch.ones(2, 4, 3))
    with pytest.raises(ValueError, match=r"ssd_final_state: chunk_size"):
        ssd_final_state(inp["x"], inp["dt"], inp["A"], inp["B"], chunk_size=-1)
    state = torch.randn(2, 4, 3, 4)
    x, dt, B, C = inp["x"][:, 0], inp["dt"][:, 0], inp["B"][:, 0], inp["C"][:, 0]
    with pytest.raises(ValueError, match=r"ssd_step: state must have shape \(2, 4, 3, 4\)"):
        ssd_step(state[..., :2], x, dt, inp["A"], B, C)
    with pytest.raises(ValueError, match=r"ssd_step: dt must have shape \(2, 4\)"):
        ssd_step(state, x, dt[:, :1], inp["A"], B, C)
    with pytest.raises(ValueError, match=r"ssd_step: C must have shape \(2, 2, 4\)"):
        ssd_step(state, x, dt, inp["A"], B, C[:, :1])
    with pytest.raises(ValueError, match=r"ssd_step: ngroups"):
        ssd_step(state, x, dt, inp["A"], torch.ones(2, 3, 4), C)
