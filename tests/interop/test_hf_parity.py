"""Parity with HF transformers: tiny random HF models saved, loaded here, and compared in fp32.

For every supported model_type: logits at a length that is not a multiple of the SSD chunk (≤ 1e-4 relative;
fp32 reorderings of the same sums give ~1e-6), identical greedy generation of 32 tokens for one prompt and
for a left-padded batch of two prompts of different lengths, and the round trip back to HF.
"""

import pytest
import torch

from transmamba import CausalLM
from transmamba.interop.parity import CHUNK, VOCAB, build, rel_err

transformers = pytest.importorskip("transformers")

MODEL_TYPES = ["mamba2", "mamba", "nemotron_h", "jamba", "bamba", "llama", "qwen2", "mistral"]
EXPECTED_PATTERNS = {
    "mamba2": "MM",
    "mamba": "SS",
    "nemotron_h": "M-*EM",
    "jamba": "S-SE*-SE",
    "bamba": "M-*-M-",
    "llama": "*-*-",
    "qwen2": "*-*-",
    "mistral": "*-*-",
}
LENGTH = 2 * CHUNK + 5  # not a multiple of the chunk length
TOL = 1e-4


@pytest.fixture(scope="module", params=MODEL_TYPES)
def pair(request, tmp_path_factory):
    """(model_type, HF model, our model loaded from the HF directory)."""
    d = tmp_path_factory.mktemp(request.param)
    hf = build(request.param, d)
    ours = CausalLM.from_pretrained(d).eval()
    return request.param, hf, ours


def test_config_maps_to_the_expected_pattern(pair):
    model_type, _, ours = pair
    assert ours.config.pattern == EXPECTED_PATTERNS[model_type]


def test_logits_match(pair):
    _, hf, ours = pair
    ids = torch.randint(3, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = hf(ids).logits, ours(ids).logits
    assert rel_err(ref, got) <= TOL


def _greedy(hf, ours, ids, mask=None):
    kw = dict(max_new_tokens=32, do_sample=False, eos_token_id=1, pad_token_id=0)
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=mask if mask is not None else torch.ones_like(ids), **kw)
    got = ours.generate(ids, attention_mask=mask, **kw)
    return ref, got


def test_greedy_generate_matches(pair):
    _, hf, ours = pair
    ids = torch.randint(3, VOCAB, (1, 11), generator=torch.Generator().manual_seed(2))
    ref, got = _greedy(hf, ours, ids)
    assert ref.shape[1] > ids.shape[1]
    assert torch.equal(ref, got)


def test_greedy_generate_left_padded_batch_matches(pair):
    _, hf, ours = pair
    gen = torch.Generator().manual_seed(3)
    long, short = torch.randint(3, VOCAB, (13,), generator=gen), torch.randint(3, VOCAB, (6,), generator=gen)
    ids = torch.zeros(2, 13, dtype=torch.long)
    mask = torch.zeros(2, 13, dtype=torch.long)
    ids[0], mask[0] = long, 1
    ids[1, 7:], mask[1, 7:] = short, 1  # left padding with pad id 0
    ref, got = _greedy(hf, ours, ids, mask)
    assert torch.equal(ref, got)
    # each row is what the unpadded prompt alone produces
    alone = ours.generate(short[None], max_new_tokens=32, do_sample=False, eos_token_id=1)
    n = alone.shape[1] - 6
    assert torch.equal(got[1, 13 : 13 + n], alone[0, 6:])


def test_round_trip_back_to_hf(pair, tmp_path):
    model_type, hf, ours = pair
    ours.save_pretrained(tmp_path, format="hf", model_type=model_type)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert back.config.model_type == model_type
    ids = torch.randint(3, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert rel_err(hf(ids).logits, back(ids).logits) <= 1e-6  # the same weights, the same HF code


def test_time_step_limit_matches(tmp_path):
    """A clamp that binds (dt = softplus(dt + dt_bias) ≈ 1.0-1.7 here, clamped to [0.2, 1.2])."""
    hf = build("mamba2", tmp_path, time_step_limit=(0.2, 1.2))
    ours = CausalLM.from_pretrained(tmp_path).eval()
    assert ours.config.time_step_limit == [0.2, 1.2]
    ids = torch.randint(3, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref, got = hf(ids).logits, ours(ids).logits
        unclamped = CausalLM(ours.config.replace(time_step_limit=None))
        unclamped.load_state_dict(ours.state_dict())
        assert rel_err(ref, unclamped(ids).logits) > 1e-2  # the clamp matters at these weights
    assert rel_err(ref, got) <= TOL


def test_sharded_safetensors_load(tmp_path):
    hf = build("bamba", tmp_path, seed=7)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    ours = CausalLM.from_pretrained(tmp_path / "sharded").eval()
    ids = torch.randint(3, VOCAB, (1, LENGTH), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert rel_err(hf(ids).logits, ours(ids).logits) <= TOL


def test_jamba_fused_expert_tensors_load(tmp_path):
    """Experts stored as transformers' fused tensors (experts.gate_up_proj (E, 2I, D), experts.down_proj
    (E, D, I)) load as the per-expert ones do."""
    import json

    from safetensors.torch import load_file, save_file

    hf = build("jamba", tmp_path / "hf")
    tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
    fused = {}
    for layer in (1, 3):
        head = f"model.layers.{layer}.feed_forward.experts"
        n = 4
        gate = [tensors.pop(f"{head}.{e}.gate_proj.weight") for e in range(n)]
        up = [tensors.pop(f"{head}.{e}.up_proj.weight") for e in range(n)]
        fused[f"{head}.gate_up_proj"] = torch.stack([torch.cat([g, u]) for g, u in zip(gate, up)])
        down = [tensors.pop(f"{head}.{e}.down_proj.weight") for e in range(n)]
        fused[f"{head}.down_proj"] = torch.stack(down)
    d = tmp_path / "fused"
    d.mkdir()
    save_file({**tensors, **fused}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(json.loads((tmp_path / "hf" / "config.json").read_text())))
    ours = CausalLM.from_pretrained(d).eval()
    ids = torch.randint(3, VOCAB, (1, LENGTH), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        assert rel_err(hf(ids).logits, ours(ids).logits) <= TOL


def test_automatic_model_type_is_the_first_that_fits(tmp_path):
    """Without model_type, a Mistral-shaped model (no biases, full attention) is written as llama."""
    hf = build("mistral", tmp_path / "m")
    CausalLM.from_pretrained(tmp_path / "m").save_pretrained(tmp_path / "out", format="hf")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert back.config.model_type == "llama"
    ids = torch.randint(3, VOCAB, (1, LENGTH), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert rel_err(hf(ids).logits, back(ids).logits) <= 1e-6
