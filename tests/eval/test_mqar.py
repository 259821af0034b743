"""Zoology MQAR (`transmamba.eval.mqar`): the row layout read back against the definition, the power-law
query placement, the label convention against `CausalLM`'s own loss, input checks, the CLI's zoology
layout."""

import json

import pytest
import torch

from transmamba.eval import mqar


def test_rows_follow_zoologys_definition():
    V, T, n = 256, 64, 6
    b = mqar.zoology_mqar(50, T, n, vocab_size=V, seed=3)
    ids, labels = b.input_ids, b.labels
    assert ids.shape == labels.shape == (50, T)
    ctx = 2 * n
    for r in range(50):
        keys, values = ids[r, 0:ctx:2], ids[r, 1:ctx:2]
        assert len(set(keys.tolist())) == n and all(1 <= k < V // 2 for k in keys.tolist())
        assert len(set(values.tolist())) == n and all(V // 2 <= v < V for v in values.tolist())
        region = ids[r, ctx:]
        qpos = (region != 0).nonzero().flatten()
        assert len(qpos) == n and bool((qpos % 2 == 0).all())  # queries at even offsets, the rest 0
        assert sorted(region[qpos].tolist()) == sorted(keys.tolist())  # every key queried once
        want = torch.full((T,), -100)
        for p in qpos.tolist():
            k = int(region[p])
            want[ctx + p + 1] = values[keys.tolist().index(k)]  # CausalLM: logits at the query predict it
        assert torch.equal(labels[r], want)
    assert int((labels != -100).sum()) == 50 * n
    same = mqar.zoology_mqar(50, T, n, vocab_size=V, seed=3)
    assert torch.equal(same.input_ids, ids) and not torch.equal(mqar.zoology_mqar(50, T, n, vocab_size=V,
                                                                                   seed=4).input_ids, ids)


def test_random_non_queries_fill_only_empty_slots():
    V, T, n = 256, 64, 6
    a = mqar.zoology_mqar(20, T, n, vocab_size=V, seed=1)
    b = mqar.zoology_mqar(20, T, n, vocab_size=V, seed=1, random_non_queries=True)
    kept = a.input_ids != 0
    assert torch.equal(b.input_ids[kept], a.input_ids[kept]) and torch.equal(a.labels, b.labels)
    assert float((b.input_ids[~kept] != 0).float().mean()) > 0.9


def test_query_gaps_follow_the_power_law():
    # one pair: its slot g is one draw from P(g) ∝ g^(a-1) over g = 1..S. Each frequency from 40 000 rows has
    # sd sqrt(p(1-p)/40000) <= 0.0025; 5 sd bounds a false alarm below 1e-6 per slot.
    T, rows, a = 24, 40_000, 0.01
    b = mqar.zoology_mqar(rows, T, 1, vocab_size=64, seed=0, power_a=a)
    slot = ((b.input_ids[:, 2:] != 0).float().argmax(1)) // 2
    S = (T - 2) // 2
    p = torch.arange(1, S + 1, dtype=torch.float64) ** (a - 1)
    p /= p.sum()
    freq = torch.bincount(slot, minlength=S).double() / rows
    assert torch.all((freq - p).abs() <= 5 * torch.sqrt(p * (1 - p) / rows))


def test_answer_logits_loss_equals_the_models_own_loss():
    spec = mqar.ModelSpec("transmamba", 32, transpoints=(0.5, 1.0), d_state=8, headdim=8)
    model = mqar.build_model(spec, vocab_size=128, seq_len=32, seed=0)
    batch = mqar.zoology_mqar(4, 32, 4, vocab_size=128, seed=0)
    logits, tgt = mqar.answer_logits(model, batch)
    assert logits.shape == (16, 128) and torch.equal(tgt, batch.labels[batch.labels != -100])
    own = model(batch.input_ids, labels=batch.labels).loss
    # the same fp32 ops on the same rows; only the mean over 16 terms is ordered differently
    torch.testing.assert_close(torch.nn.functional.cross_entropy(logits, tgt), own, rtol=1e-5, atol=1e-5)


def test_patterns_and_schedules():
    assert mqar.pattern_for(mqar.ModelSpec("attention", 64)) == "**"
    assert mqar.pattern_for(mqar.ModelSpec("hybrid", 64)) == "M*"
    assert mqar.pattern_for(mqar.ModelSpec("hybrid", 64, n_layers=4, mlp=True)) == "M-M-*-M-"
    spec = mqar.ModelSpec("transmamba", 32, transpoints=(0.25, 1.0))
    m = mqar.build_model(spec, vocab_size=128, seq_len=64)
    assert [x.transpoint for x in m.transmamba_layers()] == [16, 64]
    mqar.set_fractions(m, (1.0, 0.25), 64)
    assert [x.transpoint for x in m.transmamba_layers()] == [64, 16]


@pytest.mark.parametrize("seq,n,V,match", [(63, 4, 512, "even"), (64, 17, 512, "4 \\* n_pairs"),
                                           (64, 4, 64, "vocab_size")])
def test_bad_settings_are_named(seq, n, V, match):
    with pytest.raises(ValueError, match=match):
        mqar.zoology_mqar(2, seq, n, vocab_size=V)


def test_eval_cli_zoology_layout(tmp_path, capsys):
    from transmamba import cli
    from transmamba.models.config import ModelConfig
    from transmamba.models.lm import CausalLM

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=300, d_model=16, pattern="T-M-", d_state=8, headdim=8, transpoints=[24])
    CausalLM(cfg).save_pretrained(str(tmp_path / "ck"))
    out = tmp_path / "r.json"
    rc = cli.main(["eval", "mqar", "--checkpoint", str(tmp_path / "ck"), "--layout", "zoology", "--lengths",
                   "64", "128", "--n-rows", "8", "--device", "cpu", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())["results"]
    assert [(r["length"], r["n_pairs"], r["n_answers"]) for r in res] == [(64, 4, 32), (128, 8, 64)]
    assert all(0 <= r["accuracy"] <= 1 for r in res) and "pairs" in capsys.readouterr().out
    rc = cli.main(["eval", "mqar", "--checkpoint", str(tmp_path / "ck"), "--layout", "zoology", "--lengths",
                   "64", "--n-pairs", "40", "--device", "cpu"])
    assert rc == 2 and "n_pairs=40" in capsys.readouterr().err
