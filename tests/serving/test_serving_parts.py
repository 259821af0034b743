"""The server's parts without HTTP: ModelCache.select, fit_transpoints, request parsing, the CLI parser."""

from __future__ import annotations

import pytest
import torch

from transmamba.inference.cache import ModelCache
from transmamba.models.lm import CausalLM
from transmamba.serving import ByteTokenizer, Limits, RequestError, fit_transpoints, parse_request
from transmamba.serving.memory import peak_state_bytes


@pytest.mark.parametrize("preset", ["transmamba-tiny", "mamba2-hybrid-8b-tiny"])
def test_select_then_step_equals_full_batch(preset):
    """Dropping rows from a cache leaves the kept rows decoding exactly as in the full batch (rows are
    independent, so the logits agree to fp32 rounding of a smaller matmul: 1e-5)."""
    model = CausalLM.from_preset(preset).eval()
    if preset == "transmamba-tiny":
        model.set_transpoints([0, 2, 6, 40])  # rows below, across and past the TransPoints
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11, 12]]
    with torch.no_grad():
        from transmamba.inference.generate import prefill

        cache, _, order = prefill(model, prompts, 32)
        keep = [2, 0]
        small = cache.select(keep)
        ids = torch.tensor([5, 6, 7])
        full_logits = model.step(ids, cache)
        small_logits = model.step(ids[keep], small)
    torch.testing.assert_close(small_logits, full_logits[keep], atol=1e-5, rtol=1e-5)
    assert small.batch_size == 2
    assert torch.equal(small.seqlen_offset, cache.seqlen_offset[keep])


def test_select_drops_converted_kv_cache():
    model = CausalLM.from_preset("transmamba-tiny").eval()
    model.set_transpoints([4, 4, 4, 4])
    from transmamba.inference.generate import prefill

    with torch.no_grad():
        cache, _, order = prefill(model, [[1] * 8, [2, 3]], 16)  # one row past P = 4, one before
    row_past = order.index(0)
    layer = cache.states[0]
    assert layer.kv_B is not None
    small = cache.select([row_past])
    assert small.states[0].kv_B is None  # the kept row has converted: its KV cache is gone
    assert ModelCache.stack([small, cache.select([1 - row_past])]).batch_size == 2


def test_fit_transpoints_lowers_largest_first():
    cfg = CausalLM.from_preset("transmamba-tiny").config
    points = [0, 8, 64, 256]
    full = peak_state_bytes(cfg, points, 300)
    floor = peak_state_bytes(cfg, [0, 0, 0, 0], 300)
    assert fit_transpoints(cfg, points, 300, full) == points
    fitted = fit_transpoints(cfg, points, 300, (full + floor) // 2)
    assert peak_state_bytes(cfg, fitted, 300) <= (full + floor) // 2
    cap = max(fitted)
    assert cap < 256 and fitted == [min(p, cap) for p in points]  # one cap: the small P's keep their value
    bigger = [min(p, cap + 1) for p in points]
    assert peak_state_bytes(cfg, bigger, 300) > (full + floor) // 2  # the cap is the largest that fits
    with pytest.raises(ValueError, match="floor"):
        fit_transpoints(cfg, points, 300, floor - 1)


def test_parse_request_fields():
    tok = ByteTokenizer(512)
    req = parse_request({"prompt": "ab", "max_tokens": 3, "temperature": 0, "stop": "x", "seed": 5},
                        chat=False, tokenizer=tok, vocab_size=512, limits=Limits())
    assert req.prompt_ids == [97, 98] and req.greedy and req.stop == ["x"] and req.seed == 5
    req = parse_request({"prompt": ["hi"], "top_p": 1.0, "top_k": 10_000}, chat=False, tokenizer=tok,
                        vocab_size=512, limits=Limits(max_kv_bytes=100))
    assert req.top_p is None and req.top_k is None and req.max_kv_bytes == 100 and not req.greedy
    with pytest.raises(RequestError, match="'max_tokens' must be <= 8"):
        parse_request({"prompt": "a", "max_tokens": 9}, chat=False, tokenizer=tok, vocab_size=512,
                      limits=Limits(max_tokens=8))
    with pytest.raises(RequestError, match="messages"):
        parse_request({"messages": []}, chat=True, tokenizer=tok, vocab_size=512, limits=Limits())


def test_serve_command_parses():
    from transmamba.cli import build_parser

    args = build_parser().parse_args(["serve", "--preset", "transmamba-tiny", "--port", "0",
                                      "--max-kv-bytes", "1000"])
    assert args.preset == "transmamba-tiny" and args.max_kv_bytes == 1000 and callable(args.func)


def test_batcher_takes_jobs_first_come_first_served():
    """Jobs join the running batch in arrival order up to the first job with another schedule."""
    from transmamba.serving.batcher import Batcher
    from transmamba.serving.protocol import GenerationRequest

    model = CausalLM.from_preset("transmamba-tiny").eval()
    batcher = Batcher(model, ByteTokenizer(512), max_batch=3)  # not started: _take is called by hand
    req = GenerationRequest(prompt_ids=[1], max_tokens=1, greedy=True)
    a, b = (0, 4, 8, 16), (0, 0, 0, 0)
    jobs = [batcher.submit(req, p, lambda ev: None) for p in (a, a, b, a, a, a)]
    jobs[1].cancel()
    assert batcher._take(None, 0) == [jobs[0]]  # stops at the first job of schedule b
    assert batcher._take(a, 1) == []  # the running batch (schedule a) drains before b
    assert batcher._take(None, 0) == [jobs[2]]
    assert batcher._take(None, 0) == jobs[3:6]  # max_batch 3
