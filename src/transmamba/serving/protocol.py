"""OpenAI-compatible request parsing and response shapes for `transmamba serve`.

Requests are plain JSON objects checked field by field here (not by a schema library), so every bad field
gets one line naming the field, what was wrong and what is allowed, in OpenAI's error shape:

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": null}}

Fields read (everything else OpenAI defines is accepted and ignored, except `n` != 1, which is refused):

    /v1/completions        prompt: a string, or a list of token ids (one prompt per request)
    /v1/chat/completions   messages: [{"role": "system" | "user" | "assistant", "content": str}, ...]
    both                   max_tokens (alias max_completion_tokens), temperature (0 = greedy), top_p, top_k,
                           seed, stop (a string or up to 4), stream, n (1 only)
    extensions             transpoints: a TransPoint schedule for this request, a name "V1".."V9" or one int
                           per TransMamba layer; max_kv_bytes: the most bytes this request's decode state may
                           hold (TransPoints are lowered until it fits); return_token_ids: add the generated
                           token ids to every choice (and stream chunk) as `token_ids`.

Chat messages are joined with a plain template (`format_chat`): one "role: content" line per message, then
"assistant:"; the models here are base LMs without a chat template of their own.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

ROLES = ("system", "user", "assistant")
MAX_STOP_STRINGS = 4


class RequestError(ValueError):
    """A bad request: `status` (4xx), a one-line message, and the offending field (or None)."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind

    def body(self) -> dict[str, Any]:
        return error_body(self.message, param=self.param, kind=self.kind)


def error_body(message: str, *, param: str | None = None, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


@dataclasses.dataclass
class Limits:
    """Server-wide bounds on one request (`transmamba serve` flags)."""

    max_tokens: int = 512  # most new tokens one request may ask for
    default_max_tokens: int = 64  # when the request gives none
    max_prompt_tokens: int = 2048  # longest prompt after tokenisation
    max_body_bytes: int = 1 << 20  # largest JSON body
    max_kv_bytes: int | None = None  # cap on one request's decode state (None: no cap)


@dataclasses.dataclass
class GenerationRequest:
    """One parsed request, ready for the batcher."""

    prompt_ids: list[int]
    max_tokens: int
    greedy: bool
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = dataclasses.field(default_factory=list)
    stream: bool = False
    transpoints: list[int] | str | None = None
    max_kv_bytes: int | None = None
    return_token_ids: bool = False
    chat: bool = False
    model: str = ""


# ------------------------------------------------------------------------------------------- field checks
def _int(body: dict, name: str, *, lo: int | None = None, hi: int | None = None, default=None):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"'{name}' must be an integer, got {value!r}", param=name)
    if lo is not None and value < lo:
        raise RequestError(f"'{name}' must be >= {lo}, got {value}", param=name)
    if hi is not None and value > hi:
        raise RequestError(f"'{name}' must be <= {hi} (this server's limit), got {value}", param=name)
    return value


def _float(body: dict, name: str, default=None):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"'{name}' must be a number, got {value!r}", param=name)
    return float(value)


def _bool(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(f"'{name}' must be true or false, got {value!r}", param=name)
    return value


def _stop(body: dict) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if (not isinstance(value, list) or not all(isinstance(s, str) and s for s in value)
            or len(value) > MAX_STOP_STRINGS):
        raise RequestError(f"'stop' must be a non-empty string or a list of up to {MAX_STOP_STRINGS} such "
                           f"strings, got {value!r}", param="stop")
    return list(value)


def _transpoints(body: dict) -> list[int] | str | None:
    value = body.get("transpoints")
    if value is None:
        return None
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    raise RequestError(f"'transpoints' must be a schedule name like \"V9\" or a list of ints (one per "
                       f"TransMamba layer), got {value!r}", param="transpoints")


def format_chat(messages: list[dict[str, str]]) -> str:
    """The plain chat template: "role: content" per line, then "assistant:" for the reply to follow."""
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nassistant:"


def _messages(body: dict) -> str:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RequestError("'messages' must be a non-empty list of {\"role\", \"content\"} objects",
                           param="messages")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise RequestError(f"messages[{i}] must be {{\"role\": one of {list(ROLES)}, \"content\": a "
                               f"string}}, got {m!r}", param="messages")
    return format_chat(msgs)


def parse_request(body: Any, *, chat: bool, tokenizer, vocab_size: int, limits: Limits) -> GenerationRequest:
    """Check a JSON body and tokenise its prompt -> GenerationRequest; RequestError on the first bad field."""
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    n = _int(body, "n", lo=1, default=1)
    if n != 1:
        raise RequestError(f"'n' must be 1 (one choice per request; send several requests), got {n}",
                           param="n")
    if chat:
        ids = tokenizer.encode(_messages(body))
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str):
            ids = tokenizer.encode(prompt)
        elif (isinstance(prompt, list) and prompt
              and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)):
            bad = [t for t in prompt if not 0 <= t < vocab_size]
            if bad:
                raise RequestError(f"'prompt' token id {bad[0]} is outside the vocabulary [0, {vocab_size})",
                                   param="prompt")
            ids = list(prompt)
        else:
            raise RequestError("'prompt' must be a string or a non-empty list of token ids (one prompt per "
                               "request)", param="prompt")
    if not ids:
        raise RequestError("the prompt encodes to no tokens; give a non-empty prompt", param="prompt")
    if len(ids) > limits.max_prompt_tokens:
        raise RequestError(f"the prompt has {len(ids)} tokens, this server takes at most "
                           f"{limits.max_prompt_tokens}", param="prompt")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    max_tokens = _int({"max_tokens": max_tokens}, "max_tokens", lo=1, hi=limits.max_tokens,
                      default=min(limits.default_max_tokens, limits.max_tokens))
    temperature = _float(body, "temperature", default=1.0)
    if temperature < 0 or temperature > 100:
        raise RequestError(f"'temperature' must be in [0, 100] (0 is greedy), got {temperature}",
                           param="temperature")
    top_p = _float(body, "top_p")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise RequestError(f"'top_p' must be in (0, 1], got {top_p}", param="top_p")
    top_k = _int(body, "top_k", lo=1)
    if top_k is not None and top_k >= vocab_size:
        top_k = None  # keeps every token: the same as no top-k
    seed = _int(body, "seed", lo=0, hi=2**63 - 1)
    kv = _int(body, "max_kv_bytes", lo=1)
    if limits.max_kv_bytes is not None:
        kv = limits.max_kv_bytes if kv is None else min(kv, limits.max_kv_bytes)
    return GenerationRequest(
        prompt_ids=ids, max_tokens=max_tokens, greedy=temperature == 0.0, temperature=temperature or 1.0,
        top_k=top_k, top_p=None if top_p == 1.0 else top_p, seed=seed, stop=_stop(body),
        stream=_bool(body, "stream"), transpoints=_transpoints(body), max_kv_bytes=kv,
        return_token_ids=_bool(body, "return_token_ids"), chat=chat, model=str(body.get("model") or ""),
    )


# ---------------------------------------------------------------------------------------------- responses
def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _choice(chat: bool, text: str, finish: str | None, token_ids: list[int] | None, delta: bool) -> dict:
    if chat:
        key = "delta" if delta else "message"
        msg = {"content": text} if delta else {"role": "assistant", "content": text}
        c: dict[str, Any] = {"index": 0, key: msg, "finish_reason": finish}
    else:
        c = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    if token_ids is not None:
        c["token_ids"] = token_ids
    return c


def completion_body(rid: str, model: str, chat: bool, text: str, finish: str, prompt_tokens: int,
                    token_ids: list[int], extra: dict | None, return_ids: bool) -> dict:
    """The non-streaming response of /v1/completions or /v1/chat/completions."""
    choice = _choice(chat, text, finish, token_ids if return_ids else None, False)
    body = {"id": rid, "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": [choice],
            "usage": usage(prompt_tokens, len(token_ids))}
    if extra:
        body.update(extra)
    return body


def chunk_body(rid: str, model: str, chat: bool, text: str, finish: str | None,
               token_ids: list[int] | None, first: bool = False) -> dict:
    """One server-sent event of a streaming response."""
    choice = _choice(chat, text, finish, token_ids, True)
    if chat and first:
        choice["delta"]["role"] = "assistant"
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created":
            int(time.time()), "model": model, "choices": [choice]}


__all__ = ["GenerationRequest", "Limits", "RequestError", "chunk_body", "completion_body", "error_body",
           "format_chat", "new_id", "parse_request", "usage"]
