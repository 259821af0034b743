"""Triton selective scan (Mamba-1) against the sequential torch reference, forward, final state and every
gradient; and the decode step.

Two kinds of tests:
- `gpu`: random shapes on CUDA, fp32 and bf16, against the fp64 sequential reference `selective_scan_ref`.
- interpreter: tiny fp32 cases under the Triton interpreter (TRITON_INTERPRET=1) on the CPU, run in one
  subprocess (the flag must be set before the kernels are defined); skipped when triton is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None

_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def make_inputs(b, d, l, n, g, *, device, dtype, with_z=True, with_D=True, with_init=True, with_bias=True,
                channel_last=False, gen=None):
    """Random scan inputs (never zeros). g = 0: B, C of shape (b, n, l); else grouped (b, g, n, l).
    delta before softplus around -0.5..0.5, A in [-1.5, -0.5]. channel_last: u, delta, z, B, C are
    transposed views of (b, l, ·) tensors, as the Mamba1 layer passes them."""

    def r(*s, scale=1.0):
        return torch.randn(*s, generator=gen) * scale

    def seq3(*s, scale=1.0):  # (b, c, l), channel-last storage when asked
        if channel_last:
            return r(s[0], s[2], s[1], scale=scale).transpose(1, 2)
        return r(*s, scale=scale)

    def bc():
        if g == 0:
            return seq3(b, n, l)
        if channel_last:
            return r(b, l, g, n).permute(0, 2, 3, 1)
        return r(b, g, n, l)

    t = {"u": seq3(b, d, l), "delta": seq3(b, d, l, scale=0.5), "A": -(torch.rand(d, n, generator=gen) + 0.5),
         "B": bc(), "C": bc(), "D": r(d) if with_D else None, "z": seq3(b, d, l) if with_z else None,
         "delta_bias": r(d, scale=0.3) if with_bias else None,
         "initial_state": r(b, d, n) if with_init else None}
    out = {}
    for k, v in t.items():
        if v is None:
            out[k] = None
            continue
        dt_ = dtype if k in ("u", "B", "C", "z") else torch.float32
        out[k] = v.to(device=device, dtype=dt_).requires_grad_()
    return out


def random_seq_idx(b, l, ndocs, gen=None):
    """(b, l) non-decreasing document ids with ndocs documents per row."""
    rows = []
    for _ in range(b):
        cuts = torch.sort(torch.randperm(l - 1, generator=gen)[: ndocs - 1] + 1).values
        ids = torch.zeros(l, dtype=torch.int32)
        for c in cuts:
            ids[c:] += 1
        rows.append(ids)
    return torch.stack(rows)


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def run_case(impl, ref, t, seq_idx, softplus=True):
    """Forward + backward of impl and the fp64 ref on the same inputs (random cotangents for y and the final
    state); returns {name: relative error}."""
    names = [k for k in _NAMES if t[k] is not None]
    leaves = [t[k] for k in names]
    kw = dict(delta_softplus=softplus, return_last_state=True, seq_idx=seq_idx)
    y, f = impl(*[t[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")], **kw,
                initial_state=t["initial_state"])
    rt = {k: v.detach().double().requires_grad_() for k, v in zip(names, leaves)}
    yr, fr = ref(*[rt.get(k) for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")], **kw,
                 initial_state=rt.get("initial_state"))
    gy, gf = torch.randn_like(yr), torch.randn_like(fr)
    grads = torch.autograd.grad((y.double() * gy).sum() + (f.double() * gf).sum(), leaves)
    rgrads = torch.autograd.grad((yr * gy).sum() + (fr * gf).sum(), [rt[k] for k in names])
    err = {"y": rel(y, yr), "final": rel(f, fr)}
    for k, a, b in zip(names, grads, rgrads):
        err["d" + k] = rel(a, b)
    return err


def step_case(device, dtype, b, d, n, g, gen=None):
    """The Triton decode step (out of place and in place) against the torch step; returns rel errors."""
    from transmamba.ops.selective_scan import selective_state_update
    from transmamba.ops.selective_scan.triton import selective_state_update_triton

    def r(*s):
        return torch.randn(*s, generator=gen).to(device)

    state = r(b, d, n)
    bc = (b, n) if g == 0 else (b, g, n)
    args = (state, r(b, d).to(dtype), r(b, d), -torch.rand(d, n, generator=gen).to(device) - 0.5,
            r(*bc).to(dtype), r(*bc).to(dtype))
    kw = dict(D=r(d), z=r(b, d).to(dtype), dt_bias=r(d), dt_softplus=True)
    y, new = selective_state_update_triton(*args, **kw)
    yr, newr = selective_state_update(*[a.double() for a in args],
                                      **{k: (v.double() if torch.is_tensor(v) else v) for k, v in kw.items()},
                                      impl="torch")
    s2 = state.clone()
    y2, same = selective_state_update_triton(s2, *args[1:], **kw, inplace=True)
    return {"y": rel(y, yr), "state": rel(new, newr), "y_inplace": rel(y2, yr),
            "state_inplace": rel(s2, newr), "same_tensor": float(same.data_ptr() == s2.data_ptr())}


# ---------------------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------------------

GPU_CASES = [
    # b, d, l, n, g, ndocs, z, D, init, channel_last
    (2, 64, 256, 16, 0, 0, True, True, True, False),
    (1, 96, 1000, 16, 0, 0, False, False, False, True),
    (3, 40, 333, 8, 2, 3, True, True, False, False),
    (2, 128, 777, 16, 0, 4, True, True, True, True),
    (2, 48, 129, 5, 3, 0, False, True, True, False),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", GPU_CASES)
def test_selective_scan_triton_gpu(case, dtype):
    from transmamba.ops.selective_scan import selective_scan_ref
    from transmamba.ops.selective_scan.triton import selective_scan_triton

    b, d, l, n, g, ndocs, wz, wd, wi, cl = case
    gen = torch.Generator().manual_seed(hash(case) % 1000)
    t = make_inputs(b, d, l, n, g, device="cuda", dtype=dtype, with_z=wz, with_D=wd, with_init=wi,
                    channel_last=cl, gen=gen)
    seq = random_seq_idx(b, l, ndocs, gen).cuda() if ndocs else None
    err = run_case(selective_scan_triton, selective_scan_ref, t, seq)
    print(case, dtype, {k: f"{v:.2e}" for k, v in err.items()})
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    bad = {k: v for k, v in err.items() if not v <= tol}
    assert not bad, f"errors over tolerance: {bad} (all: {err})"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("g", [0, 2])
def test_selective_state_update_triton_gpu(dtype, g):
    err = step_case("cuda", dtype, 5, 96, 16, g, gen=torch.Generator().manual_seed(1))
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert err["same_tensor"] == 1.0
    assert err["state"] < 1e-5 and err["state_inplace"] < 1e-5, err
    assert err["y"] < tol and err["y_inplace"] < tol, err


@pytest.mark.gpu
def test_mamba1_layer_triton_matches_chunked_gpu():
    """The Mamba1 layer (channel-last views into the scan) with the auto (Triton) scan against the chunked
    torch scan, forward and every parameter gradient, and a decode step continuing a prefill."""
    from transmamba.layers.mamba1 import Mamba1

    torch.manual_seed(0)
    m = Mamba1(64, d_state=16).cuda()
    x = torch.randn(2, 300, 64, device="cuda")
    outs, grads = [], []
    for impl in ("auto", "chunked"):
        m.scan_impl = impl
        m.zero_grad()
        y = m(x)
        (y * torch.linspace(-1, 1, y.numel(), device="cuda").view_as(y)).sum().backward()
        outs.append(y.detach())
        grads.append({k: p.grad.clone() for k, p in m.named_parameters()})
    assert rel(outs[0], outs[1]) < 1e-4
    for k in grads[1]:
        assert rel(grads[0][k], grads[1][k]) < 1e-4, k
    with torch.no_grad():
        st_a, st_c = m.init_state(2), m.init_state(2)
        m.scan_impl = "auto"
        m(x, state=st_a)
        m.scan_impl = "chunked"
        m(x, state=st_c)
        assert rel(st_a.ssm_state, st_c.ssm_state) < 1e-4
        h = torch.randn(2, 64, device="cuda")
        ya = m.step(h, st_a)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TRANSMAMBA_DISABLE_TRITON", "1")
            yc = m.step(h, st_c)
        assert rel(ya, yc) < 1e-4 and rel(st_a.ssm_state, st_c.ssm_state) < 1e-4


# ---------------------------------------------------------------------------------------------------------
# CPU, Triton interpreter
# ---------------------------------------------------------------------------------------------------------

_INTERP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    import torch
    sys.path.insert(0, os.environ["TM_TEST_DIR"])
    from test_triton_selective_scan import make_inputs, random_seq_idx, run_case, step_case
    from transmamba.ops.selective_scan import selective_scan_ref
    from transmamba.ops.selective_scan import triton as S
    from transmamba.ops.selective_scan.triton import selective_scan_triton
    # small tiles: several tiles per row, several channel blocks, partial blocks
    S.CONFIG["tile"]["TT"] = 8
    S.CONFIG["fwd"]["BD"] = 4
    S.CONFIG["bwd"]["BD"] = 4
    gen = torch.Generator().manual_seed(0)
    out = {}
    # b, d, l, n, g, ndocs, z, D, init, bias, softplus, channel_last
    cases = {"z_D_init": (2, 6, 21, 5, 0, 0, True, True, True, True, True, False),
             "groups_seq_idx": (2, 8, 19, 4, 2, 3, False, False, False, True, True, True),
             "groups_split_block": (1, 6, 17, 4, 3, 2, True, True, True, False, False, False)}
    for name, (b, d, l, n, g, nd, wz, wd, wi, wb, sp, cl) in cases.items():
        t = make_inputs(b, d, l, n, g, device="cpu", dtype=torch.float32, with_z=wz, with_D=wd, with_init=wi,
                        with_bias=wb, channel_last=cl, gen=gen)
        seq = random_seq_idx(b, l, nd, gen) if nd else None
        out[name] = run_case(selective_scan_triton, selective_scan_ref, t, seq, softplus=sp)
    # time split into segments (state-only / carry-only passes + the carry across segments)
    S.CONFIG["seg"].update(warps=256, min_tiles=1)
    S.CONFIG["fwd"]["prefetch"] = 1  # and the forward's next-tile prefetch
    t = make_inputs(2, 6, 29, 4, 0, device="cpu", dtype=torch.float32, gen=gen)
    out["segments"] = run_case(selective_scan_triton, selective_scan_ref, t, random_seq_idx(2, 29, 2, gen))
    # segments with grouped B/C and no z (prefetch off: grouped channel blocks do not prefetch)
    t = make_inputs(1, 6, 17, 4, 3, device="cpu", dtype=torch.float32, with_z=False, gen=gen)
    out["segments_groups"] = run_case(selective_scan_triton, selective_scan_ref, t, None, softplus=False)
    out["step"] = step_case("cpu", torch.float32, 2, 6, 5, 2, gen=gen)
    out["step"].pop("same_tensor")
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def interpreter_results():
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    env = dict(os.environ, TM_TEST_DIR=os.path.dirname(__file__), TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", _INTERP_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


INTERP_CASES = ["z_D_init", "groups_seq_idx", "groups_split_block", "segments", "segments_groups",
                "step"]


@pytest.mark.parametrize("case", INTERP_CASES)
def test_selective_scan_triton_interpreter(interpreter_results, case):
    err = interpreter_results[case]
    bad = {k: v for k, v in err.items() if not v < 1e-5}
    assert not bad, f"{case}: {bad}"
