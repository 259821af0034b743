"""`transmamba serve` over loopback: a real uvicorn server in a thread, a real HTTP client (httpx).

Every streamed token sequence is compared with `model.generate` on the same prompt alone (same seed for the
sampled request). The server batches the requests together, so the only difference is the rounding of
batched matmuls; the model is built with init_std 0.5 so its logits are sharp (the smallest top-2 gap along
these greedy continuations is 7e-4 of the largest logit, against fp32 rounding of ~1e-6 relative) and the
argmax / the multinomial draw cannot flip between the two runs.
"""

from __future__ import annotations

import asyncio
import copy
import json
import socket
import threading
import time

import pytest
import torch

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from transmamba.models.lm import CausalLM  # noqa: E402
from transmamba.serving import ByteTokenizer, Engine, Limits, create_app, peak_state_bytes  # noqa: E402

NAME = "transmamba-tiny"
EOS = 256


def _serve(device: str = "cpu", cuda_graph: bool = False):
    """A server for transmamba-tiny on `device` in a thread -> (base url, engine, reference model, stop)."""
    torch.manual_seed(0)
    model = CausalLM.from_preset(NAME, init_std=0.5).to(device).eval()
    reference = copy.deepcopy(model)  # the test's own copy: the served model belongs to the batcher thread
    limits = Limits(max_tokens=48, max_prompt_tokens=64, max_body_bytes=4096)
    engine = Engine(model, ByteTokenizer(model.config.vocab_size), name=NAME, limits=limits, max_batch=8,
                    cuda_graph=cuda_graph)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, "the server did not start"
        time.sleep(0.02)

    def stop():
        server.should_exit = True
        thread.join(10)
        sock.close()

    return f"http://127.0.0.1:{port}", engine, reference, stop


@pytest.fixture(scope="module")
def served():
    base, engine, reference, stop = _serve()
    yield base, engine, reference
    stop()


def _expected(model, prompt: list[int], n: int, points=None, graph: str = "off", **kw) -> list[int]:
    m = model
    if points is not None:
        m = copy.deepcopy(model)
        m.set_transpoints(list(points))
    out = m.generate([prompt], n, stop_tokens=[EOS], cuda_graph=graph, **kw)[0]
    return out[len(prompt):]


async def _stream(client, url: str, body: dict) -> tuple[list[int], str, dict]:
    """POST a streaming request -> (token ids, text, last chunk)."""
    ids, text, last = [], "", None
    async with client.stream("POST", url, json=body) as resp:
        assert resp.status_code == 200, await resp.aread()
        assert resp.headers["content-type"].startswith("text/event-stream")
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            choice = chunk["choices"][0]
            ids += choice.get("token_ids", [])
            text += choice["text"] if "text" in choice else choice["delta"].get("content", "")
            last = chunk
    return ids, text, last


def test_concurrent_streams_equal_generate(served):
    _check_concurrent_streams(*served)


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_concurrent_streams_equal_generate_gpu(cuda_graph):
    """The same on CUDA (fp32): the batcher decodes through StaticDecoder, optionally CUDA graphs."""
    base, engine, reference, stop = _serve("cuda", cuda_graph)
    try:
        # the server decodes CUDA rows through StaticDecoder: compare with generate's StaticDecoder path
        _check_concurrent_streams(base, engine, reference, graph="on")
    finally:
        stop()


def _check_concurrent_streams(base, engine, reference, graph: str = "off"):
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 256, (int(n),), generator=g).tolist() for n in (3, 7, 7, 12, 5, 20, 9, 1)]
    lengths = [24, 16, 30, 8, 24, 12, 20, 24]
    bodies = [{"model": NAME, "prompt": p, "max_tokens": n, "temperature": 0, "stream": True,
               "return_token_ids": True} for p, n in zip(prompts, lengths)]
    # one seeded sampling request among them
    bodies[4] = {**bodies[4], "temperature": 0.8, "top_k": 40, "top_p": 0.95, "seed": 1234}

    async def run():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(_stream(client, f"{base}/v1/completions", b) for b in bodies))

    steps_before = engine.batcher.steps
    results = asyncio.run(run())
    for i, ((ids, text, last), body) in enumerate(zip(results, bodies)):
        kw = (dict(greedy=True) if body["temperature"] == 0
              else dict(temperature=0.8, top_k=40, top_p=0.95, seed=1234))
        want = _expected(reference, body["prompt"], body["max_tokens"], graph=graph, **kw)
        assert ids == want, f"request {i}: streamed {ids}, generate gave {want}"
        assert last["choices"][0]["finish_reason"] == ("stop" if want[-1] == EOS else "length")
        assert last["usage"]["completion_tokens"] == len(want)
        assert text == ByteTokenizer(512).decode([t for t in want if t != EOS])
    assert engine.batcher.max_rows_seen > 1, "the requests were never decoded in one batch"
    assert engine.batcher.steps > steps_before


def test_non_streaming_and_chat(served):
    base, _, reference = served
    with httpx.Client(base_url=base, timeout=60) as client:
        r = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 10, "temperature": 0,
                                                 "return_token_ids": True})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "text_completion"
        want = _expected(reference, list(b"Hello"), 10, greedy=True)
        assert body["choices"][0]["token_ids"] == want
        assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": len(want),
                                 "total_tokens": 5 + len(want)}
        msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
        r = client.post("/v1/chat/completions", json={"messages": msgs, "max_tokens": 6, "temperature": 0,
                                                      "return_token_ids": True})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["message"]["role"] == "assistant"
        prompt = list(b"system: Be brief.\nuser: Hi\nassistant:")
        assert choice["token_ids"] == _expected(reference, prompt, 6, greedy=True)
        assert client.get("/health").json()["status"] == "ok"
        models = client.get("/v1/models").json()
        assert [m["id"] for m in models["data"]] == [NAME]


def test_stop_string_truncates(served):
    base, _, reference = served
    want = _expected(reference, list(b"abc"), 20, greedy=True)
    text = ByteTokenizer(512).decode([t for t in want if t != EOS])
    # a stop string from the continuation itself: two characters (so one is held back while streaming) not
    # at the very start, else one
    pairs = [text[i:i + 2] for i in range(1, len(text) - 1) if "\ufffd" not in text[i:i + 2]]
    singles = [c for c in text[1:] if c != "\ufffd"]
    assert pairs or singles, f"the continuation {text!r} has no plain character to stop at"
    stop = pairs[0] if pairs else singles[0]
    with httpx.Client(base_url=base, timeout=60) as client:
        r = client.post("/v1/completions", json={"prompt": "abc", "max_tokens": 20, "temperature": 0,
                                                 "stop": stop})
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["text"] == text[:text.find(stop)]


def test_transpoints_and_kv_budget(served):
    base, engine, reference = served
    prompt = list(range(40, 70))
    with httpx.Client(base_url=base, timeout=60) as client:
        r = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 12, "temperature": 0,
                                                 "transpoints": [0, 64, 8, 0], "return_token_ids": True})
        assert r.status_code == 200, r.text
        assert r.json()["transpoints"] == [0, 64, 8, 0]
        assert r.json()["choices"][0]["token_ids"] == _expected(reference, prompt, 12, [0, 64, 8, 0],
                                                                greedy=True)
        cfg = reference.config
        full = peak_state_bytes(cfg, [0, 64, 8, 0], 42)
        floor = peak_state_bytes(cfg, [0, 0, 0, 0], 42)
        budget = (full + floor) // 2
        r = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 12, "temperature": 0,
                                                 "transpoints": [0, 64, 8, 0], "max_kv_bytes": budget,
                                                 "return_token_ids": True})
        assert r.status_code == 200, r.text
        points = r.json()["transpoints"]
        assert peak_state_bytes(cfg, points, 42) <= budget < full
        assert r.json()["choices"][0]["token_ids"] == _expected(reference, prompt, 12, points, greedy=True)
        r = client.post("/v1/completions", json={"prompt": prompt, "max_kv_bytes": floor - 1})
        assert r.status_code == 400 and "floor" in r.json()["error"]["message"]
    assert engine.batcher.default_points == tuple(reference.config.resolved_transpoints())


@pytest.mark.parametrize("body,status,param", [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (json.dumps({"prompt": "hi", "max_tokens": 49}).encode(), 400, "max_tokens"),
    (json.dumps({"prompt": "hi", "max_tokens": 0}).encode(), 400, "max_tokens"),
    (json.dumps({"prompt": "x" * 65}).encode(), 400, "prompt"),
    (json.dumps({"prompt": ""}).encode(), 400, "prompt"),
    (json.dumps({"prompt": [1, 2, 9999]}).encode(), 400, "prompt"),
    (json.dumps({"prompt": "hi", "temperature": -1}).encode(), 400, "temperature"),
    (json.dumps({"prompt": "hi", "top_p": 1.5}).encode(), 400, "top_p"),
    (json.dumps({"prompt": "hi", "n": 2}).encode(), 400, "n"),
    (json.dumps({"prompt": "hi", "stream": "yes"}).encode(), 400, "stream"),
    (json.dumps({"prompt": "hi", "transpoints": [1, 2]}).encode(), 400, "transpoints"),
    (json.dumps({"prompt": "hi", "transpoints": "V99"}).encode(), 400, "transpoints"),
    (json.dumps({"prompt": "hi", "model": "gpt-4"}).encode(), 404, "model"),
    (json.dumps({"prompt": "y" * 5000}).encode(), 413, None),
])
def test_bad_requests_get_4xx_and_server_keeps_serving(served, body, status, param):
    base, _, _ = served
    with httpx.Client(base_url=base, timeout=60) as client:
        r = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["message"] and "\n" not in err["message"]
        assert err["param"] == param
        ok = client.post("/v1/completions", json={"prompt": "ok", "max_tokens": 2})
        assert ok.status_code == 200, ok.text


def test_bad_chat_and_unknown_route(served):
    base, _, _ = served
    with httpx.Client(base_url=base, timeout=60) as client:
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "robot", "content": "x"}]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
        r = client.get("/v1/nothing")
        assert r.status_code == 404 and "Not Found" in r.json()["error"]["message"]


def test_disconnected_clients_free_their_rows():
    """A client that goes away (a non-streaming request timing out, a stream closed after two events) has
    its row dropped long before its 48 tokens: steps are slowed to 50 ms, so the whole request would take
    2.4 s; the client leaves after 0.3 s (or two events) and the server looks every 0.5 s."""
    base, engine, _, stop = _serve()
    real = engine.batcher._step_fn

    def slow_step_fn(cache):
        fn = real(cache)

        def step(ids):
            time.sleep(0.05)
            return fn(ids)

        return step

    engine.batcher._step_fn = slow_step_fn
    body = {"prompt": "abc", "max_tokens": 48, "temperature": 0}
    try:
        for stream in (False, True):
            start = engine.batcher.steps
            with httpx.Client(base_url=base, timeout=httpx.Timeout(0.3)) as client:
                if stream:
                    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                        lines = r.iter_lines()
                        next(lines), next(lines)  # then close the connection
                else:
                    with pytest.raises(httpx.ReadTimeout):
                        client.post("/v1/completions", json=body)
            deadline = time.time() + 10
            while engine.batcher.running or engine.batcher.pending:
                assert time.time() < deadline, "the row of a disconnected client was never dropped"
                time.sleep(0.05)
            ran = engine.batcher.steps - start
            assert ran < 40, f"stream={stream}: the row ran {ran} of its 47 steps"
    finally:
        stop()
