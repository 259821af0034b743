"""`CausalLM.step`, the one decode step (eager here, captured by `StaticDecoder`): its logits against the full
forward's on random inputs, for every layer kind, with rows of one batch at different positions, TransMamba
rows crossing their TransPoints (attn, mixed and ssm modes) and the options of converted Transformers; and the
static form (modes and constants given) against the eager one."""

from __future__ import annotations

import itertools

import pytest
import torch

from transmamba.inference.generate import prefill
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
LENGTHS = [2, 5, 1, 7]  # prompt lengths: the rows decode at different positions
STEPS = 9
# Tolerance: every path computes the same fp32 function, summed in another order (SDPA over the prompt vs the
# decode attention over a padded buffer, chunked SSD vs the recurrence, the Memory Converter's chunked sum vs
# SSD over the whole row). Each logit is a sum of O(10^2) products per layer over ~4 layers of O(1) values,
# so rounding differs by ~1e-6 relative (measured: at most 5e-7 over these cases); 1e-5 of the logits' scale
# leaves room for that and still fails on a real slip: a TransMamba row attending one slot too many moved
# the logits by 3e-2 of their scale, RoPE one position off in an attention layer by 4e-4.
RTOL = 1e-5


def _model(pattern: str, points: list[int], seed: int, **options) -> CausalLM:
    torch.manual_seed(seed)
    return CausalLM(ModelConfig(pattern=pattern, transpoints=points, **SMALL, **options)).eval()


@torch.no_grad()
def _step_errors(model: CausalLM, seed: int) -> tuple[float, set[str]]:
    """Prefill rows of LENGTHS, take STEPS eager steps with random tokens, and compare each step's logits
    with the full forward over that row's tokens so far. -> (largest error over the logits' scale, the
    TransMamba modes the steps ran in)."""
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.randint(0, 53, (n + STEPS,), generator=gen) for n in LENGTHS]
    full = [model(r[None]).logits[0] for r in rows]  # (n + STEPS, V) per row
    cache, _, order = prefill(model, [r[:n].tolist() for r, n in zip(rows, LENGTHS)], max(LENGTHS) + STEPS)
    worst, seen = 0.0, set()
    for t in range(STEPS):
        positions = cache.seqlen_offset.tolist()
        seen.update(m for m, k in zip(model.layer_modes(positions), model.kinds) if k == "transmamba")
        ids = torch.stack([rows[i][LENGTHS[i] + t] for i in order])
        logits = model.step(ids, cache)  # (b, V), rows in cache order
        ref = torch.stack([full[i][LENGTHS[i] + t] for i in order])
        worst = max(worst, float((logits - ref).abs().max() / ref.abs().max()))
    return worst, seen


# one case per layer kind (each mixer with an MLP or MoE after it), then a hybrid; TransPoints inside the
# positions the rows decode at (1 .. 15), so rows cross them at different steps
KINDS = [("*-", []), ("M-", []), ("S-", []), ("TE", [4]), ("T-T-", [0, 6]), ("T-*-S-MT-", [5, 8])]


@pytest.mark.parametrize("case", range(len(KINDS)), ids=[p for p, _ in KINDS])
def test_step_equals_forward_for_every_layer_kind(case):
    pattern, points = KINDS[case]
    model = _model(pattern, points, seed=case)
    err, seen = _step_errors(model, seed=case)
    assert err <= RTOL, pattern
    if points and max(points) > 0:
        assert seen == {"attn", "mixed", "ssm"} if pattern == "T-*-S-MT-" else "mixed" in seen


OPTIONS = [dict(tm_attn_rope=r, tm_attn_norm=n, tm_attn_d_skip=d, tm_conv_activation=a)
           for r, n, d, a in itertools.product([True, False], [True, False], [True, False], ["silu", "none"])
           if (r, n, d, a) != (False, True, True, "silu")]  # the defaults are covered above


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k[3:]}={v}" for k, v in o.items()))
def test_step_equals_forward_with_converted_options(options):
    """The options of Transformers converted to TransMamba (RoPE on the attention path, no norm, no D skip,
    no conv activation) in every mode, rows crossing both TransPoints at different steps."""
    model = _model("T-*T", [5, 8], seed=len(str(options)), **options)
    err, seen = _step_errors(model, seed=1)
    assert err <= RTOL
    assert seen == {"attn", "mixed", "ssm"}


@torch.no_grad()
def test_static_form_equals_eager():
    """With the modes and constants given (what a CUDA graph captures; rows past P converted beforehand,
    here by `prepare_step`) the step gives the eager step's logits bit for bit, and the constants change
    nothing."""
    model = _model("T*M-S", [3], seed=4)
    prompts = [[1, 2], [3, 4, 5, 6], [7]]
    caches = [prefill(model, prompts, 12)[0] for _ in range(3)]
    consts = model.step_constants()
    assert set(consts) == {0, 1, 2} and set(consts[0]) == {"A"} and set(consts[1]) == {"inv_freq"}
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):  # rows at 2, 4, 1 against P = 3: mixed, then ssm
        ids = torch.randint(0, 53, (3,), generator=gen)
        positions = caches[1].seqlen_offset.tolist()
        for c in caches[1:]:
            model.mixer(0).prepare_step(c.states[0], positions)  # the conversions a decoder does on the host
        modes = model.layer_modes(positions)
        eager = model.step(ids, caches[0])
        assert torch.equal(model.step(ids, caches[1], modes), eager)
        assert torch.equal(model.step(ids, caches[2], modes, consts), eager)


def test_step_errors():
    model = _model("T*", [2], seed=0)
    cache, _, _ = prefill(model, [[1, 2, 3]], 4)
    with torch.no_grad():
        model.step(torch.tensor([5]), cache)
        with pytest.raises(ValueError, match="larger max_len"):  # eager: the KV buffer is full
            model.step(torch.tensor([5]), cache)
        with pytest.raises(ValueError, match=r"input_ids must be \(batch,\)"):
            model.step(torch.tensor([[5]]), cache)
        with pytest.raises(ValueError, match="2 modes for 2 layers|1 modes for 2 layers"):
            model.step(torch.tensor([5]), cache, ("ssm",))
        with pytest.raises(ValueError, match="mode must be one of"):
            model.step(torch.tensor([5]), model.init_cache(1, 8), ("fast", "attention"))
