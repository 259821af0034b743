"""CausalLM: decode == full forward for random hybrid patterns, ragged batches, constant TransMamba cache
after the TransPoints, loss, checkpoints, TransPoint schedules."""

import random

import pytest
import torch

from transmamba.inference.generate import prefill
from transmamba.models.config import ModelConfig
from transmamba.models.lm import CausalLM


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny shapes: one intra-op thread is far faster than two fighting over a shared 2-core machine."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


SMALL = dict(vocab_size=61, d_model=32, n_heads=4, n_kv_heads=2, d_ff=48, d_state=8, headdim=8, ngroups=2,
             chunk_size=4, m1_d_state=4, n_experts=4, top_k=2, max_seq_len=64)


def random_config(rng: random.Random, seq_len: int, min_p: int = 0) -> ModelConfig:
    mixers = ["M", "*", "T", "S"]
    chans = ["-", "E"]
    n = rng.randint(3, 5)
    pattern = "".join(rng.choice(mixers) + (rng.choice(chans) if rng.random() < 0.6 else "")
                      for _ in range(n))
    if "T" not in pattern:
        pattern += "T"
    n_t = pattern.count("T")
    points = [rng.randint(min_p, seq_len + 1) for _ in range(n_t)]
    return ModelConfig(pattern=pattern, transpoints=points, **SMALL)


def _decode_logits(model, ids, n_prefill):
    cache = model.init_cache(ids.shape[0], ids.shape[1])
    out = [model(ids[:, :n_prefill], cache=cache).logits]
    for t in range(n_prefill, ids.shape[1]):
        out.append(model.step(ids[:, t], cache)[:, None])
    return torch.cat(out, dim=1), cache


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@torch.no_grad()
def test_prefill_then_decode_equals_full_forward(seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    T = 13
    n_prefill = rng.randint(1, 5)
    cfg = random_config(rng, T, min_p=n_prefill)  # TransPoints ahead of the prefill: decoding crosses them
    model = CausalLM(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, T))
    full = model(ids).logits
    got, cache = _decode_logits(model, ids, n_prefill)
    assert (got - full).abs().max().item() <= 1e-4, cfg.pattern
    assert cache.seqlen_offset.tolist() == [T, T]


@torch.no_grad()
def test_prefill_crossing_transpoints_and_random_schedules():
    torch.manual_seed(5)
    cfg = ModelConfig(pattern="T-T*T-SE", transpoints=[0, 4, 9], **SMALL)
    model = CausalLM(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (3, 12))
    full = model(ids).logits
    for n_prefill in (1, 6, 12):  # before, between and after the TransPoints
        got, _ = _decode_logits(model, ids, n_prefill)
        assert (got - full).abs().max().item() <= 1e-4
    for sched in ([3, 3, 3], "V9", "V4"):
        model.set_transpoints(sched, train_len=16)
        full = model(ids).logits
        got, _ = _decode_logits(model, ids, 2)
        assert (got - full).abs().max().item() <= 1e-4


@torch.no_grad()
def test_ragged_prompts_prefilled_separately_then_stacked():
    torch.manual_seed(7)
    cfg = ModelConfig(pattern="T-*-M-S-ET", transpoints=[4, 8], **SMALL)
    model = CausalLM(cfg).eval()
    lengths, n_new = [3, 7, 5, 7], 6
    rows = [torch.randint(0, cfg.vocab_size, (n + n_new,)) for n in lengths]
    prompts = [r[:n].tolist() for r, n in zip(rows, lengths)]
    cache, last, order = prefill(model, prompts, max(lengths) + n_new)
    assert sorted(order) == list(range(len(lengths)))
    assert cache.seqlen_offset.tolist() == [lengths[i] for i in order]
    step_logits = [last]
    for k in range(n_new - 1):  # teacher forcing: feed each row's own next token
        nxt = torch.stack([rows[i][lengths[i] + k] for i in order])
        step_logits.append(model.step(nxt, cache))
    for r, i in enumerate(order):
        full = model(rows[i][None]).logits[0]
        want = full[lengths[i] - 1 : lengths[i] - 1 + n_new]
        got = torch.stack([s[r] for s in step_logits])
        assert (got - want).abs().max().item() <= 1e-4, f"row {i} (length {lengths[i]})"


@torch.no_grad()
def test_cache_memory_constant_once_past_every_transpoint():
    torch.manual_seed(3)
    points = [2, 5, 9]
    cfg = ModelConfig(pattern="T-TMT-S", transpoints=points, **SMALL)
    model = CausalLM(cfg).eval()
    cache = model.init_cache(2, 64)
    tok = torch.randint(0, cfg.vocab_size, (2,))
    sizes = []
    for _ in range(30):
        model.step(tok, cache)
        sizes.append(cache.nbytes())
        tok = torch.randint(0, cfg.vocab_size, (2,))
    after = sizes[max(points):]  # the token at position max(P) converts the last layer
    assert len(set(after)) == 1, sizes
    assert after[0] < max(sizes[: max(points)])  # the KV caches were freed
    # a ragged batch stacked after prefill reaches the same constant size per row
    cache2 = model.init_cache(1, 64)
    model(torch.randint(0, cfg.vocab_size, (1, 12)), cache=cache2)
    assert cache2.nbytes() * 2 == after[0]


def test_loss_shift_ignore_index_and_aux():
    torch.manual_seed(0)
    cfg = ModelConfig(pattern="M-*E", **SMALL)
    model = CausalLM(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 9))
    labels = ids.clone()
    labels[0, 3:5] = -100
    out = model(ids, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, cfg.vocab_size)
    ce = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    assert out.aux_loss is not None and out.aux_loss.item() > 0
    assert torch.allclose(out.loss, ce + out.aux_loss, atol=1e-6)
    out.loss.backward()
    assert model.embed.weight.grad is not None
    dense = CausalLM(ModelConfig(pattern="M-*-", **SMALL))
    o = dense(ids, labels=labels)
    assert o.aux_loss is None or o.aux_loss.item() == 0.0


@pytest.mark.parametrize("tie", [True, False])
@torch.no_grad()
def test_save_load_round_trip(tmp_path, tie):
    torch.manual_seed(1)
    cfg = ModelConfig(pattern="T-*S-E", transpoints=[3], tie_embeddings=tie, **SMALL)
    model = CausalLM(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 8))
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    again = CausalLM.from_pretrained(tmp_path / "ckpt").eval()
    assert again.config == cfg
    assert torch.equal(again(ids).logits, model(ids).logits)
    if tie:
        assert again.lm_head.weight is again.embed.weight


def test_load_missing_or_mismatched_tensor_names_it(tmp_path):
    from safetensors.torch import load_file, save_file

    cfg = ModelConfig(pattern="M-*-", **SMALL)
    CausalLM(cfg).save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    name = next(k for k in tensors if k.endswith("out_proj.weight"))
    missing = {k: v for k, v in tensors.items() if k != name}
    save_file(missing, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=f"missing tensor '{name}'"):
        CausalLM.from_pretrained(tmp_path)
    bad = dict(tensors)
    bad[name] = torch.zeros(3, 5)
    bad["extra.weight"] = torch.zeros(2)
    save_file(bad, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError) as err:
        CausalLM.from_pretrained(tmp_path)
    msg = str(err.value)
    assert f"'{name}' has shape (3, 5)" in msg and str(tuple(tensors[name].shape)) in msg
    assert "unexpected tensor 'extra.weight'" in msg


def test_set_transpoints_validates_count_and_names():
    model = CausalLM(ModelConfig(pattern="T-T-T-", transpoints=[1, 2, 3], **SMALL))
    assert model.set_transpoints([0, 5, 7]) == [0, 5, 7]
    assert [m.transpoint for m in model.transmamba_layers()] == [0, 5, 7]
    assert model.set_transpoints("V9") == [0, 128, 256]
    assert model.set_transpoints("V9", train_len=512) == [0, 8, 16]
    assert model.config.transpoints == "V9"
    with pytest.raises(ValueError, match="2 TransPoints for 3 TransMamba layers"):
        model.set_transpoints([1, 2])


def test_init_and_presets_build():
    torch.manual_seed(0)
    model = CausalLM.from_preset("transmamba-tiny", init_std=0.05)
    assert abs(model.embed.weight.std().item() - 0.05) < 0.005
    outs = [p.std().item() for n, p in model.named_parameters() if n.endswith("out_proj.weight")]
    assert outs and max(outs) < 0.05 / (len(model.config.pattern) ** 0.5) * 1.3
    a_log = [p for n, p in model.named_parameters() if n.endswith("A_log")]
    assert a_log and all(bool((p > 0).all()) for p in a_log)  # Mamba's own init kept (A = -exp(A_log))
    assert model.num_parameters() > model.num_parameters(exclude_embeddings=True)


@torch.no_grad()
def test_last_logits_only_matches_the_full_forward_and_refuses_labels():
    model = CausalLM(random_config(random.Random(7), 12)).eval()
    ids = torch.randint(0, SMALL["vocab_size"], (2, 12))
    full = model(ids).logits
    last = model(ids, last_logits_only=True).logits
    assert last.shape == (2, 1, SMALL["vocab_size"])
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="last_logits_only"):
        model(ids, labels=ids, last_logits_only=True)
