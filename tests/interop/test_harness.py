"""The lm-evaluation-harness adapter, offline: tiny model + tokenizer, local YAML tasks over a jsonl file."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval")

from transmamba import CausalLM  # noqa: E402
from transmamba.data.tokenizer import TextTokenizer  # noqa: E402
from transmamba.models.presets import get_preset  # noqa: E402

TASK_DIR = Path(__file__).parent / "lm_eval_task"
TASKS = ["transmamba_tiny_mc", "transmamba_tiny_rolling", "transmamba_tiny_gen"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    docs = [json.loads(line) for line in (TASK_DIR / "tiny.jsonl").read_text().splitlines()]
    texts = [doc["text"] + doc["question"] for doc in docs] * 4
    tok = TextTokenizer.train(texts, vocab_size=300)
    tok.save(d / "tokenizer.json")
    torch.manual_seed(0)
    CausalLM(get_preset("mamba2-hybrid-8b-tiny", vocab_size=300, max_seq_len=24)).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tasks")
    for y in TASK_DIR.glob("*.yaml"):
        text = y.read_text().replace("JSONL_PATH", str(TASK_DIR / "tiny.jsonl"))
        text = text.replace("  data_files:", f"  cache_dir: {d / 'hf_cache'}\n  data_files:")
        (d / y.name).write_text(text)
    return d


@pytest.fixture(scope="module")
def adapter(checkpoint):
    from transmamba.interop.harness import TransMambaLM

    return TransMambaLM(pretrained=str(checkpoint), batch_size=2)


def _direct_loglik(model, ids: list[int], n_cont: int) -> float:
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([ids[:-1]])).logits[0].float(), -1)
    return float(sum(logp[i, ids[i + 1]] for i in range(len(ids) - 1 - n_cont, len(ids) - 1)))


def _instance(args):
    from lm_eval.api.instance import Instance

    return Instance(request_type="x", doc={}, arguments=args, idx=0)


def test_loglikelihood_matches_the_model(adapter):
    reqs = [_instance(("The cat sat on the", " mat")), _instance(("Rain falls", " from the clouds and"))]
    got = adapter.loglikelihood(reqs)
    for (ctx, cont), (ll, greedy) in zip([r.args for r in reqs], got):
        c, w = adapter.tok_encode(ctx), adapter.tok_encode(ctx + cont)
        assert ll == pytest.approx(_direct_loglik(adapter.model, w, len(w) - len(c)), abs=1e-4)
        assert isinstance(greedy, bool)


def test_rolling_loglikelihood_covers_every_token_across_windows(adapter):
    text = "The cat sat on the mat. The dog lay by the door. Rain falls from the clouds."
    ids = adapter.tok_encode(text)
    assert len(ids) > adapter.max_length  # several windows of max_length = 24 tokens
    (total,) = adapter.loglikelihood_rolling([_instance((text,))])
    # recompute: window k predicts tokens [k*L, (k+1)*L) from the tokens before them in the window
    L, expect, prev = adapter.max_length, 0.0, [adapter.eot_token_id]
    for start in range(0, len(ids), L):
        chunk = ids[start : start + L]
        ctx = (prev + ids[:start])[-(L + 1 - len(chunk)) :] if start else prev
        expect += _direct_loglik(adapter.model, ctx + chunk, len(chunk))
    assert total == pytest.approx(expect, abs=1e-3)


def test_generate_until_is_greedy_and_cut_at_stop(adapter):
    (out,) = adapter.generate_until([_instance(("Two plus two is", {"until": ["o"], "max_gen_toks": 5}))])
    ids = adapter.tok_encode("Two plus two is")
    full = adapter.model.generate(
        [ids], max_new_tokens=5, do_sample=False, eos_token_id=adapter.eot_token_id
    )[0]
    new = full[len(ids) :]
    expect = adapter.tok_decode(new[:-1] if new and new[-1] == adapter.eot_token_id else new).split("o", 1)[0]
    assert out == expect and "o" not in out


def test_lm_eval_runs_local_yaml_tasks(checkpoint, task_dir, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    import transmamba.interop.harness  # noqa: F401  registers "transmamba"

    results = lm_eval.simple_evaluate(
        model="transmamba",
        model_args=f"pretrained={checkpoint},batch_size=2",
        tasks=TASKS,
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        log_samples=False,
    )
    res = results["results"]
    assert 0.0 <= res["transmamba_tiny_mc"]["acc,none"] <= 1.0
    assert res["transmamba_tiny_rolling"]["word_perplexity,none"] > 1.0
    assert 0.0 <= res["transmamba_tiny_gen"]["exact_match,none"] <= 1.0
