"""`transmamba serve`: an OpenAI-compatible HTTP server on FastAPI + uvicorn (imported only when called).

    engine = Engine(model, tokenizer, name="transmamba-tiny", limits=Limits(), max_batch=16)
    app = create_app(engine)            # an ASGI app; `run_server(engine, host, port)` serves it with uvicorn

Routes:
    GET  /health                 {"status": "ok", "running": ..., "pending": ...}
    GET  /v1/models              the one served model, with its pattern and TransPoint schedule
    POST /v1/completions         prompt -> text; "stream": true sends server-sent events ("data: {...}")
    POST /v1/chat/completions    messages -> assistant message; streams "chat.completion.chunk" events
Request fields and the error shape are in `serving/protocol.py`; decoding is `serving/batcher.py`.

Bounds: bodies over `limits.max_body_bytes` get 413, prompts over `max_prompt_tokens` and max_tokens over
`limits.max_tokens` get 400, a `model` other than the served one 404, a schedule of the wrong length or a
`max_kv_bytes` under the model's floor 400; every error is OpenAI's JSON error object with one message.
"""

# no `from __future__ import annotations` here: FastAPI reads the route functions' annotations (Request) as
# objects, and Request is imported inside create_app so that importing this module needs no FastAPI.
import asyncio
import json
import time
from typing import Any

from transmamba.serving.batcher import Batcher
from transmamba.serving.memory import fit_transpoints
from transmamba.serving.protocol import (
    GenerationRequest,
    Limits,
    RequestError,
    chunk_body,
    completion_body,
    error_body,
    new_id,
    parse_request,
)

DISCONNECT_POLL_S = 0.5  # non-streaming requests: how often to check whether the client is still there


class Engine:
    """The model, its tokenizer, the request bounds and the batcher (started by the app's lifespan)."""

    def __init__(self, model, tokenizer, *, name: str, limits: Limits | None = None, max_batch: int = 16,
                 cuda_graph: bool = False, seed: int = 0):
        model.eval()
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.limits = limits or Limits()
        self.batcher = Batcher(model, tokenizer, max_batch=max_batch, cuda_graph=cuda_graph, seed=seed)
        self.created = int(time.time())

    def schedule_for(self, req: GenerationRequest) -> tuple[int, ...]:
        """The request's TransPoints: its `transpoints` (or the model's), lowered to fit `max_kv_bytes`."""
        from transmamba.models.schedules import resolve_schedule

        cfg = self.model.config
        n = len(self.batcher.layers)
        points = list(self.batcher.default_points)
        if req.transpoints is not None:
            if n == 0:
                raise RequestError(f"'transpoints' applies to TransMamba layers; {self.name} has none "
                                   f"(pattern {cfg.pattern!r})", param="transpoints")
            try:
                points = resolve_schedule(req.transpoints, n, train_len=cfg.schedule_train_len)
            except ValueError as err:
                raise RequestError(f"'transpoints': {err}", param="transpoints") from None
        if req.max_kv_bytes is not None:
            total = len(req.prompt_ids) + req.max_tokens
            try:
                points = fit_transpoints(cfg, points, total, req.max_kv_bytes, self.model.dtype)
            except ValueError as err:
                raise RequestError(str(err), param="max_kv_bytes") from None
        return tuple(points)

    def model_card(self) -> dict[str, Any]:
        cfg = self.model.config
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "transmamba",
                "pattern": cfg.pattern, "vocab_size": cfg.vocab_size,
                "transpoints": list(self.batcher.default_points)}


def _json_error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
    from fastapi.responses import JSONResponse

    return JSONResponse(error_body(message, param=param, kind=kind), status_code=status)


async def _read_body(request, limit: int) -> Any:
    """The JSON body, refusing more than `limit` bytes (413) and bad JSON (400)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"the request body has {declared} bytes, this server takes at most {limit}",
                           status=413)
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > limit:
            raise RequestError(f"the request body exceeds this server's limit of {limit} bytes", status=413)
    try:
        return json.loads(bytes(data) or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(f"the request body is not valid JSON: {err.msg if hasattr(err, 'msg') else err}")\
            from None


def create_app(engine: Engine):
    """The FastAPI app serving `engine` (FastAPI imported here, so the library imports without it)."""
    import contextlib

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.batcher.start()
        try:
            yield
        finally:
            engine.batcher.stop()

    app = FastAPI(title="transmamba", lifespan=lifespan)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):  # 404 / 405 in OpenAI's error shape
        return _json_error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    @app.exception_handler(RequestError)
    async def request_error(request, exc: RequestError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": engine.name, "running": engine.batcher.running,
                "pending": engine.batcher.pending}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [engine.model_card()]}

    async def handle(request: Request, chat: bool):
        body = await _read_body(request, engine.limits.max_body_bytes)
        cfg = engine.model.config
        req = parse_request(body, chat=chat, tokenizer=engine.tokenizer, vocab_size=cfg.vocab_size,
                            limits=engine.limits)
        if req.model and req.model != engine.name:
            raise RequestError(f"model {req.model!r} is not served here; this server serves {engine.name!r}",
                               param="model", status=404, kind="model_not_found")
        points = engine.schedule_for(req)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        job = engine.batcher.submit(req, points, lambda ev: loop.call_soon_threadsafe(queue.put_nowait, ev))
        rid = new_id(chat)
        extra = {"transpoints": list(points)} if points else None
        if req.stream:
            return StreamingResponse(_stream(job, queue, rid, engine.name, chat, extra),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        text, finish = [], None
        checked = loop.time()
        try:
            while True:
                try:
                    kind, value, delta = await asyncio.wait_for(queue.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    kind = None
                if loop.time() - checked >= DISCONNECT_POLL_S:  # still someone to answer?
                    checked = loop.time()
                    if await request.is_disconnected():  # no: free the row
                        job.cancel()
                        return _json_error(499, "the client closed the connection")
                if kind is None:
                    continue
                if kind == "error":
                    return _json_error(500, str(value), kind="server_error")
                text.append(delta)
                if kind == "done":
                    finish = value
                    break
        except asyncio.CancelledError:
            job.cancel()
            raise
        return completion_body(rid, engine.name, chat, "".join(text), finish, len(req.prompt_ids), job.ids,
                               extra, req.return_token_ids)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await handle(request, chat=True)

    return app


async def _stream(job, queue: asyncio.Queue, rid: str, name: str, chat: bool, extra: dict | None):
    """Server-sent events: one chunk per token (text may be empty while held back), a last chunk with the
    finish reason and usage, then `data: [DONE]`."""
    ids = job.req.return_token_ids
    first = True
    try:
        while True:
            kind, value, delta = await queue.get()
            if kind == "error":
                yield _sse({"error": error_body(str(value), kind="server_error")["error"]})
                break
            if kind == "token":
                if delta or ids:
                    yield _sse(chunk_body(rid, name, chat, delta, None, [value] if ids else None, first))
                    first = False
                continue
            last = chunk_body(rid, name, chat, "", value, None, first)
            last["usage"] = {"prompt_tokens": len(job.req.prompt_ids), "completion_tokens": len(job.ids),
                             "total_tokens": len(job.req.prompt_ids) + len(job.ids)}
            if extra:
                last.update(extra)
            yield _sse(last)
            break
        yield "data: [DONE]\n\n"
    finally:
        if job.finish_reason is None:
            job.cancel()  # the client went away: free its row


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def run_server(engine: Engine, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve `engine` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(engine), host=host, port=port, log_level=log_level)


__all__ = ["Engine", "create_app", "run_server"]
