"""`StaticDecoder` (the host-side cache bookkeeping around `CausalLM.step`, and its CUDA-graph capture and
replay) against the eager step, and the CUDA-graph `generate()` against eager generation (GPU tests, skipped
without one). The step itself is tested against the full forward in tests/models/test_step.py."""

import importlib.util
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from transmamba.inference.generate import generate, prefill
from transmamba.inference.static_decode import StaticDecoder
from transmamba.models.config import ModelConfig
from transmamba.models.lm import CausalLM


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


SMALL = dict(vocab_size=53, d_model=32, n_heads=4, n_kv_heads=2, d_ff=48, d_state=8, headdim=8, ngroups=2,
             chunk_size=4, m1_d_state=4, n_experts=4, top_k=2, max_seq_len=64)

# (pattern, transpoints, prompt lengths): TransMamba layers cross P mid-generation, rows at different
# positions (mixed mode), a P = 0 layer, Mamba-1 (S), Mamba-2 (M), attention (*), MLP (-), MoE (E)
CASES = [
    ("T-*-S-MT-", [5, 8], [2, 4, 1, 3]),
    ("*MTT", [0, 9], [5, 5, 5]),
    ("TS*E", [4], [1, 3]),
]


def _model(pattern, points, seed, dtype=torch.float32, device="cpu"):
    torch.manual_seed(seed)
    with torch.device(device):
        return CausalLM(ModelConfig(pattern=pattern, transpoints=points, **SMALL)).to(dtype).eval()


@pytest.mark.parametrize("case", range(len(CASES)))
def test_decoder_equals_eager_step(case):
    """The decoder's host bookkeeping (conversions, modes, freed caches) runs the same step as the eager
    `model.step`, so the logits are identical bit for bit."""
    pattern, points, lengths = CASES[case]
    model = _model(pattern, points, seed=case)
    gen = torch.Generator().manual_seed(case)
    prompts = [torch.randint(0, 53, (n,), generator=gen).tolist() for n in lengths]
    steps = 12
    ref_cache, _, _ = prefill(model, prompts, max(lengths) + steps)
    cache, _, _ = prefill(model, prompts, max(lengths) + steps)
    dec = StaticDecoder(model, cache)
    seen = set()
    with torch.no_grad():
        for _ in range(steps):
            modes = model.layer_modes(dec.positions)
            seen.update(m for m, k in zip(modes, model.kinds) if k == "transmamba")
            ids = torch.randint(0, 53, (len(prompts),), generator=gen)
            ref = model.step(ids, ref_cache)
            out = dec.step(ids)
            assert torch.equal(out, ref)
    assert torch.equal(cache.seqlen_offset, ref_cache.seqlen_offset)
    if case == 0:
        assert seen == {"attn", "mixed", "ssm"}
    for i, kind in enumerate(model.kinds):  # every TransMamba layer converted and its KV cache freed
        if kind == "transmamba":
            assert bool(cache.states[i].converted.all()) and cache.states[i].kv_B is None


def test_static_decoder_errors_and_auto_off_on_cpu():
    model = _model("T*", [2], seed=0)
    cache, _, _ = prefill(model, [[1, 2, 3]], 4)
    dec = StaticDecoder(model, cache)
    dec.step(torch.tensor([5]))
    with pytest.raises(ValueError, match="larger max_len"):
        dec.step(torch.tensor([5]))
    with pytest.raises(ValueError, match="shape"):
        dec.step(torch.tensor([5, 6]))
    with pytest.raises(ValueError, match="CUDA"):
        StaticDecoder(model, cache, cuda_graph=True)
    with pytest.raises(ValueError, match="cuda_graph=True"):
        generate(model, [[1, 2]], 3, cuda_graph=True)
    with pytest.raises(ValueError, match="cuda_graph=True"):
        generate(model, [[1, 2]], 3, cuda_graph="on")
    with pytest.raises(ValueError, match="'auto', 'on', 'off'"):
        generate(model, [[1, 2]], 3, cuda_graph="yes")
    prompts = [[1, 2, 3], [4]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto on the CPU: eager, without a warning
        auto = generate(model, prompts, 9, greedy=True)
    assert auto == generate(model, prompts, 9, greedy=True, cuda_graph="off")
    assert auto == generate(model, prompts, 9, greedy=True, cuda_graph=False)


# ---------------------------------------------------------------------------------------------------------
# GPU: CUDA-graph generate() against eager generate()
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("case", range(len(CASES) - 1))  # the MoE case cannot be captured
def test_cuda_graph_generate_equals_eager_gpu(case):
    pattern, points, lengths = CASES[case]
    model = _model(pattern, points, seed=case, device="cuda")
    prompts = [list(range(1, n + 1)) for n in lengths]
    kw = dict(max_new_tokens=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a failed capture (silent eager fallback) fails
        graph_greedy = generate(model, prompts, greedy=True, cuda_graph=True, **kw)
    torch.randn(2, device="cuda")  # the CUDA RNG must be usable after graph decoding
    assert graph_greedy == generate(
        model, prompts, greedy=True, cuda_graph=False, **kw)
    assert generate(model, prompts, seed=5, top_k=20, top_p=0.9, cuda_graph=True, **kw) == generate(
        model, prompts, seed=5, top_k=20, top_p=0.9, cuda_graph=False, **kw)


@pytest.mark.gpu
def test_cuda_graph_replays_equal_static_eager_bf16_gpu():
    """bf16: graph replays launch the same kernels as the step run eagerly, so logits are identical."""
    pattern, points, lengths = CASES[0]
    model = _model(pattern, points, seed=1, dtype=torch.bfloat16, device="cuda")
    prompts = [list(range(3, n + 3)) for n in lengths]
    c1, _, _ = prefill(model, prompts, 40)
    c2, _, _ = prefill(model, prompts, 40)
    eager, graph = StaticDecoder(model, c1), StaticDecoder(model, c2, cuda_graph=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(20):
        ids = torch.randint(0, 53, (len(prompts),), device="cuda", generator=gen)
        a, b = eager.step(ids), graph.step(ids)
        assert torch.equal(a, b)
    assert graph.captures >= 2  # one per mode signature seen twice in a row


@pytest.mark.gpu
def test_cuda_graph_auto_gpu(monkeypatch):
    """cuda_graph="auto" (the default) captures on CUDA; a model with MoE layers decodes eagerly with one
    warning line, and both equal eager generation."""
    import importlib

    gen_mod = importlib.import_module("transmamba.inference.generate")  # the package re-exports generate()

    made = []
    real = gen_mod.StaticDecoder
    monkeypatch.setattr(gen_mod, "StaticDecoder", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    pattern, points, lengths = CASES[0]
    model = _model(pattern, points, seed=0, device="cuda")
    prompts = [list(range(1, n + 1)) for n in lengths]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = generate(model, prompts, 12, greedy=True)
    assert len(made) == 1 and made[0].captures >= 1 and made[0].capture_error is None
    assert out == generate(model, prompts, 12, greedy=True, cuda_graph="off")
    moe = _model(*CASES[2][:2], seed=2, device="cuda")
    with pytest.warns(RuntimeWarning, match="without CUDA graphs") as rec:
        out = generate(moe, [[1, 2], [3]], 10, greedy=True)
    msgs = [str(w.message) for w in rec if "without CUDA graphs" in str(w.message)]
    assert len(made) == 1 and len(msgs) == 1 and "\n" not in msgs[0]
    assert out == generate(moe, [[1, 2], [3]], 10, greedy=True, cuda_graph="off")


@pytest.mark.gpu
@pytest.mark.parametrize("where", ["before", "after"])
def test_cuda_graph_failed_capture_falls_back_gpu(monkeypatch, where):
    """A capture that raises (before any kernel is recorded, or after the whole step is) falls back to the
    step run eagerly with a warning: generate() still returns the eager result, and the CUDA RNG works
    afterwards (a failed capture must not leave the default generator in capture mode)."""
    pattern, points, lengths = CASES[0]
    model = _model(pattern, points, seed=0, device="cuda")
    real = model.step

    def failing(*args, **kwargs):
        capturing = torch.cuda.is_current_stream_capturing()
        if capturing and where == "before":
            raise RuntimeError("injected capture failure (before)")
        out = real(*args, **kwargs)
        if capturing:
            raise RuntimeError("injected capture failure (after)")
        return out

    prompts = [list(range(1, n + 1)) for n in lengths]
    ref_greedy = generate(model, prompts, 16, greedy=True, cuda_graph="off")
    ref_sampled = generate(model, prompts, 16, seed=3, top_k=20, cuda_graph="off")
    monkeypatch.setattr(model, "step", failing)  # what the decoder captures
    with pytest.warns(RuntimeWarning, match="capture failed") as rec:
        out = generate(model, prompts, 16, greedy=True, cuda_graph="on")
    assert out == ref_greedy
    msgs = [str(w.message) for w in rec if "capture failed" in str(w.message)]
    assert "injected capture failure" in msgs[0] and "\n" not in msgs[0]
    x = torch.randn(3, device="cuda")  # the default CUDA generator is usable
    assert torch.isfinite(x).all()
    with pytest.warns(RuntimeWarning, match="capture failed"):
        assert generate(model, prompts, 16, seed=3, top_k=20) == ref_sampled
    torch.manual_seed(0)
    a = torch.randn(4, device="cuda")
    torch.manual_seed(0)
    assert torch.equal(a, torch.randn(4, device="cuda"))


@pytest.mark.gpu
@pytest.mark.parametrize("split,act", [(None, "swiglu"), (2, "gelu"), (2, "relu2")])
def test_step_skinny_gemm_fp32_gpu(monkeypatch, split, act):
    """The step with every linear through the Triton skinny GEMM (fp32, forced) against the same step with
    nn.Linear (fp32's default) on the GPU; split=2 forces split-K everywhere, so the output projections hand
    their partial sums to the add + RMSNorm kernel and the MLP's GELU runs in the reduction."""
    import transmamba.ops.skinny_linear as sl
    import transmamba.ops.triton.skinny_gemm as sg

    base = sl.DTYPES
    monkeypatch.setattr(sl, "DTYPES", base)  # restored after the test
    if split:
        cfg = {"BN": 16, "BK": 16, "split": split, "num_warps": 4, "num_stages": 2}
        monkeypatch.setattr(sg, "skinny_config", lambda *a: dict(cfg))
    pattern, points, lengths = CASES[0]
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = CausalLM(ModelConfig(pattern=pattern, transpoints=points, **dict(SMALL, mlp_act=act))).eval()
    prompts = [list(range(2, n + 2)) for n in lengths]
    steps = 12
    ref_cache, _, _ = prefill(model, prompts, max(lengths) + steps)
    cache, _, _ = prefill(model, prompts, max(lengths) + steps)
    dec = StaticDecoder(model, cache)
    gen = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.randint(0, 53, (len(prompts),), device="cuda", generator=gen)
            sl.DTYPES = base  # fp32 through nn.Linear
            ref = model.step(ids, ref_cache)
            sl.DTYPES = (*base, torch.float32)  # fp32 through the skinny GEMM too
            out = dec.step(ids)
            assert float((out - ref).norm() / ref.norm()) < 1e-5


_SKINNY_INTERP = textwrap.dedent(
    """
    import sys
    import torch
    sys.path.insert(0, "tests/inference")
    import transmamba.ops.skinny_linear as sl
    import transmamba.ops.triton.skinny_gemm as sg
    plain = sl.skinny_enabled  # False on CPU tensors: nn.Linear
    forced = lambda x, w: True  # the Triton path on CPU tensors (interpreter)
    sg.skinny_config = lambda *a: {"BN": 16, "BK": 16, "split": 2, "num_warps": 4, "num_stages": 2}
    from test_static_decode import CASES, SMALL
    from transmamba.inference.generate import prefill
    from transmamba.inference.static_decode import StaticDecoder
    from transmamba.models.config import ModelConfig
    from transmamba.models.lm import CausalLM
    pattern, points, lengths = CASES[0]
    torch.manual_seed(0)
    model = CausalLM(ModelConfig(pattern=pattern, transpoints=points, **dict(SMALL, mlp_act="gelu"))).eval()
    prompts = [list(range(2, n + 2)) for n in lengths]
    c1, _, _ = prefill(model, prompts, 8)
    c2, _, _ = prefill(model, prompts, 8)
    dec = StaticDecoder(model, c2)
    worst = 0.0
    with torch.no_grad():
        for _ in range(3):
            ids = torch.randint(0, 53, (len(prompts),))
            sl.skinny_enabled = plain
            ref = model.step(ids, c1)
            sl.skinny_enabled = forced
            out = dec.step(ids)
            worst = max(worst, float((out - ref).norm() / ref.norm()))
    print("RESULT", worst)
    """
)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_step_skinny_split_k_interpreter():
    """The step with every linear through the skinny GEMM split over K (GELU in the reduction, output
    projections' partials summed by the add + RMSNorm kernel) against nn.Linear, fp32 under
    TRITON_INTERPRET=1."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", _SKINNY_INTERP], capture_output=True, text=True, env=env,
                          timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    worst = float([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1].split()[1])
    assert worst < 1e-5


def test_generate_through_the_decoder_equals_eager_for_converted_model():
    """generate() through StaticDecoder (what CUDA decoding runs) equals the eager model.step loop, for a
    Transformer converted to TransMamba (RoPE on the attention path, no norm, no D skip, no conv
    activation)."""
    torch.manual_seed(4)
    model = CausalLM(ModelConfig(pattern="T-*T", transpoints=[5, 8], tm_attn_rope=True, tm_attn_norm=False,
                                 tm_attn_d_skip=False, tm_conv_activation="none", **SMALL)).eval()
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10]]
    eager = generate(model, prompts, 12, greedy=True, cuda_graph="off")
    cache, logits, order = prefill(model, prompts, 6 + 12)
    dec = StaticDecoder(model, cache)
    toks = logits.argmax(-1)
    out = [[t] for t in toks.tolist()]
    with torch.no_grad():
        for _ in range(11):
            toks = dec.step(toks).argmax(-1)
            for r, t in enumerate(toks.tolist()):
                out[r].append(t)
    static = [prompts[i] + out[r] for r, i in enumerate(order)]
    static = [static[order.index(i)] for i in range(len(prompts))]
    assert static == eager
