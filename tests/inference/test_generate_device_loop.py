"""`generate`'s device-side decode loop (tokens in a device buffer, stop flags read back every few steps,
CUDA-graph steps) gives exactly what the plain per-step loop gives."""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch

from transmamba.inference.generate import generate, prefill
from transmamba.inference.sampling import make_generator, sample_next
from transmamba.models.config import ModelConfig
from transmamba.models.lm import CausalLM

SMALL = dict(vocab_size=53, d_model=32, n_heads=4, n_kv_heads=2, d_ff=48, d_state=8, headdim=8, ngroups=2,
             chunk_size=4, max_seq_len=128)


def _model(seed: int = 0, device: str = "cpu") -> CausalLM:
    torch.manual_seed(seed)
    with torch.device(device):
        return CausalLM(ModelConfig(pattern="T-*-MT-", transpoints=[5, 9], **SMALL)).eval()


def reference_loop(model, prompts, n, *, greedy, stops, seed=None, streamer=None, **kw):
    """The executable spec: sample, record while the row is live, stop a row at a stop token (kept),
    end when every row has stopped or after n tokens; `model.step` between tokens."""
    cache, logits, order = prefill(model, prompts, max(map(len, prompts)) + n)
    gen = make_generator(seed, logits.device)
    out = [[] for _ in prompts]
    done = [False] * len(prompts)
    with torch.no_grad():
        for step in range(n):
            nxt = sample_next(logits, greedy=greedy, generator=gen, **kw)
            toks = nxt.tolist()
            live = [not d for d in done]
            nxt = torch.tensor([t if a else stops[0] if stops else 0 for t, a in zip(toks, live)])
            if streamer is not None:
                caller_t = [0] * len(prompts)
                caller_a = [False] * len(prompts)
                for r, i in enumerate(order):
                    caller_t[i], caller_a[i] = int(nxt[r]), live[r]
                streamer(torch.tensor(caller_t), torch.tensor(caller_a))
            for r, (t, a) in enumerate(zip(toks, live)):
                if a:
                    out[order[r]].append(t)
                    done[r] = t in stops
            if all(done) or step == n - 1:
                break
            logits = model.step(nxt, cache).float()
    return [p + o for p, o in zip(prompts, out)]


PROMPTS = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10], [11, 12]]


@pytest.mark.parametrize("n", [1, 7, 40])
def test_greedy_equals_reference(n):
    model = _model()
    ref = reference_loop(model, PROMPTS, n, greedy=True, stops=[])
    assert generate(model, PROMPTS, n, greedy=True) == ref


@pytest.mark.parametrize("greedy", [True, False])
@pytest.mark.parametrize("pick", [2, 20, "first"])
def test_stop_tokens_equal_reference(greedy, pick):
    """Rows stop at different steps (stop ids taken from the free-running continuation, so they do occur);
    the loop reads the flags only every 16 tokens, and the result is the same. "first": every row stops at
    its first token, so the loop must end early."""
    model = _model(1)
    kw = {} if greedy else dict(top_k=10, top_p=0.9, temperature=0.7, seed=3)
    seed = kw.pop("seed", None)
    free = reference_loop(model, PROMPTS, 40, greedy=greedy, stops=[], seed=seed, **kw)
    cont = [f[len(p):] for f, p in zip(free, PROMPTS)]
    stops = sorted({c[0] for c in cont}) if pick == "first" else [cont[0][pick]]
    ref = reference_loop(model, PROMPTS, 40, greedy=greedy, stops=stops, seed=seed, **kw)
    assert any(len(r) - len(p) < 40 for r, p in zip(ref, PROMPTS))  # some row did stop early
    got = generate(model, PROMPTS, 40, greedy=greedy, stop_tokens=stops, seed=seed, **kw)
    assert got == ref


def test_sampled_with_seed_and_streamer_equal_reference():
    model = _model(2)
    seen_ref, seen = [], []
    ref = reference_loop(model, PROMPTS, 20, greedy=False, stops=[7], seed=11, top_p=0.8,
                         streamer=lambda t, a: seen_ref.append((t.tolist(), a.tolist())))
    got = generate(model, PROMPTS, 20, seed=11, top_p=0.8, stop_tokens=[7],
                   streamer=lambda t, a: seen.append((t.tolist(), a.tolist())))
    assert got == ref and seen == seen_ref


def test_tensor_output_padding_unchanged():
    model = _model(3)
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    ref = reference_loop(model, ids.tolist(), 12, greedy=True, stops=[9])
    out = generate(model, ids, 12, greedy=True, stop_tokens=[9], pad_token_id=0)
    width = max(len(r) for r in ref)
    assert out.tolist() == [r + [0] * (width - len(r)) for r in ref]


@pytest.mark.gpu
def test_graph_generate_equals_eager_gpu():
    """Greedy CUDA-graph generate (one replay of the captured step per token) across the TransPoints
    against eager generate (fp32: identical argmax)."""
    model = _model(4, device="cuda")
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10]]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        graph = generate(model, prompts, 80, greedy=True, cuda_graph=True)
    assert graph == generate(model, prompts, 80, greedy=True, cuda_graph=False)


def test_workspace_reuse_equals_fresh_cache(monkeypatch):
    """Calls whose prompts have one length keep the cache buffers and the decoder between calls (for CUDA
    graphs); run on the CPU through the same code (StaticDecoder, no graphs): repeated calls with new prompts
    of the same shape, then another shape, then different TransPoints give what `model.step` decoding on a
    fresh cache gives. init_std 0.5 makes the logits sharp (top-2 gaps far above the rounding differences
    of KV buffers of other lengths), so greedy tokens are equal."""
    gen_mod = importlib.import_module("transmamba.inference.generate")  # the package re-exports generate()

    torch.manual_seed(7)
    model = CausalLM(ModelConfig(pattern="T-*-MT-", transpoints=[5, 9], init_std=0.5, **SMALL)).eval()
    monkeypatch.setattr(gen_mod, "_WORKSPACE_ON_CPU", True)
    made = []
    real = gen_mod.StaticDecoder
    monkeypatch.setattr(gen_mod, "StaticDecoder", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    gen = torch.Generator().manual_seed(0)
    runs = [((3, 4), 20, None), ((3, 4), 20, None), ((3, 7), 17, None), ((3, 4), 20, None),
            ((2, 6), 30, None), ((2, 6), 30, [3, 0])]
    for (b, n), new, points in runs:
        if points is not None:
            model.set_transpoints(points)
        ids = torch.randint(0, 53, (b, n), generator=gen)
        monkeypatch.setattr(gen_mod, "_WORKSPACE_ON_CPU", True)
        got = generate(model, ids, new, greedy=True, stop_tokens=[7])
        monkeypatch.setattr(gen_mod, "_WORKSPACE_ON_CPU", False)
        assert torch.equal(got, generate(model, ids, new, greedy=True, stop_tokens=[7]))
    # one decoder per key (batch, prompt + new tokens, TransPoints): 3 x 24 serves the first four calls
    # (prompts of 4 and 7 tokens), then 2 x 36, then 2 x 36 with new TransPoints
    assert len(made) == 3
    gen_mod.release_decode_workspace(model)
    assert model not in gen_mod._WORKSPACES


@pytest.mark.gpu
def test_workspace_graph_reuse_equals_eager_gpu():
    """Greedy CUDA-graph calls of one shape (batch 3, prompt + new = 24) reuse the workspace: the second and
    third calls replay the graphs the first captured (no new capture) and equal eager decoding; a seeded
    sampled call through the same workspace equals its eager twin. init_std 0.5: sharp logits."""
    gen_mod = importlib.import_module("transmamba.inference.generate")
    torch.manual_seed(8)
    with torch.device("cuda"):
        model = CausalLM(ModelConfig(pattern="T-*-MT-", transpoints=[5, 9], init_std=0.5, **SMALL)).eval()
    gen = torch.Generator().manual_seed(0)
    captures = []
    for n in (4, 7, 4):
        ids = torch.randint(0, 53, (3, n), generator=gen).cuda()
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            got = generate(model, ids, 24 - n, greedy=True, cuda_graph=True)
        assert torch.equal(got, generate(model, ids, 24 - n, greedy=True, cuda_graph=False))
        captures.append(gen_mod._WORKSPACES[model].decoder.captures)
    assert captures[0] >= 1 and captures[0] == captures[1] == captures[2]
    for seed in (4, 5, 4):  # the workspace's graphs draw from its generator, re-seeded per call
        kw = dict(seed=seed, top_k=20, top_p=0.9)
        assert torch.equal(generate(model, ids, 20, cuda_graph=True, **kw),
                           generate(model, ids, 20, cuda_graph=False, **kw))
    streamed = []
    got = generate(model, ids, 20, greedy=True, cuda_graph=True, streamer=lambda t, a: streamed.append(t))
    assert torch.equal(got, generate(model, ids, 20, greedy=True, cuda_graph=False)) and len(streamed) == 20
    gen_mod.release_decode_workspace(model)


def test_workspace_does_not_keep_its_model_alive(monkeypatch):
    """The per-model workspace (a WeakKeyDictionary entry) goes away with its model: nothing in it holds the
    model, so a model's cache and graphs are freed when the model is."""
    import gc
    import weakref

    gen_mod = importlib.import_module("transmamba.inference.generate")
    monkeypatch.setattr(gen_mod, "_WORKSPACE_ON_CPU", True)
    model = _model(9)
    generate(model, [[1, 2, 3], [4, 5, 6]], 6, greedy=True)
    assert model in gen_mod._WORKSPACES
    ref = weakref.ref(model)
    n = len(gen_mod._WORKSPACES)
    del model
    gc.collect()
    assert ref() is None and len(gen_mod._WORKSPACES) == n - 1


def test_busy_workspace_falls_back_to_own_cache(monkeypatch):
    """While one call holds the model's workspace (another thread), a second call decodes on a cache of
    its own instead of sharing the buffers, with the same result."""
    gen_mod = importlib.import_module("transmamba.inference.generate")
    monkeypatch.setattr(gen_mod, "_WORKSPACE_ON_CPU", True)
    model = _model(10)
    prompts = [[1, 2, 3], [4, 5, 6]]
    first = generate(model, prompts, 8, greedy=True)
    ws = gen_mod._WORKSPACES[model]
    assert ws.lock.acquire(blocking=False)  # as if another call were running
    try:
        assert generate(model, prompts, 8, greedy=True) == first
        assert gen_mod._WORKSPACES[model] is ws
    finally:
        ws.lock.release()
    assert generate(model, prompts, 8, greedy=True) == first


def test_workspace_made_in_inference_mode_is_not_reused_outside(monkeypatch):
    """Tensors made under torch.inference_mode() cannot be updated in place outside it, so a workspace
    made there is not reused by a call outside (and the calls agree)."""
    gen_mod = importlib.import_module("transmamba.inference.generate")
    monkeypatch.setattr(gen_mod, "_WORKSPACE_ON_CPU", True)
    model = _model(11)
    with torch.inference_mode():
        inside = generate(model, [[1, 2, 3]], 10, greedy=True)
    assert generate(model, [[1, 2, 3]], 10, greedy=True) == inside
    with torch.inference_mode():
        assert generate(model, [[1, 2, 3]], 10, greedy=True) == inside
