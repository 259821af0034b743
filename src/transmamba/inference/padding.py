"""Padded batches <-> ragged prompts, for Hugging Face-style `generate(input_ids, attention_mask=...)`.

    prompts = unpad(input_ids, attention_mask)        (b, T) + (b, T) 0/1 mask -> b lists of the real tokens
    out = append_new_tokens(input_ids, new, pad)      (b, T) + b lists of new tokens -> (b, T + n)

Generation itself works on ragged prompts (each row keeps its own position, see `inference/generate.py`),
so padding never enters the model: left-padded rows compute exactly what the unpadded prompt would. The
result keeps HF's layout: the input as given (padding included), then each row's new tokens, rows that
stopped early filled with `pad`.
"""

from __future__ import annotations

import torch


def unpad(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[list[int]]:
    """input_ids (b, T) long, attention_mask (b, T) of 0/1 -> the tokens of each row where the mask is 1."""
    if input_ids.ndim != 2:
        raise ValueError(
            f"generate: input_ids must be (batch, len) with attention_mask, got shape "
            f"{tuple(input_ids.shape)}"
        )
    if tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"generate: attention_mask shape {tuple(attention_mask.shape)} must equal input_ids "
            f"shape {tuple(input_ids.shape)}"
        )
    mask = attention_mask.to(torch.bool).cpu()
    ids = input_ids.cpu()
    prompts = [ids[r][mask[r]].tolist() for r in range(ids.shape[0])]
    for r, p in enumerate(prompts):
        if not p:
            raise ValueError(f"generate: row {r} of attention_mask is all zeros (no prompt token)")
    return prompts


def append_new_tokens(input_ids: torch.Tensor, new_tokens: list[list[int]], pad: int) -> torch.Tensor:
    """(b, T) + b lists of new tokens -> (b, T + max len) long on input_ids' device, short rows padded."""
    width = max((len(t) for t in new_tokens), default=0)
    tail = torch.full((input_ids.shape[0], width), int(pad), dtype=torch.long)
    for r, toks in enumerate(new_tokens):
        if toks:
            tail[r, : len(toks)] = torch.tensor(toks, dtype=torch.long)
    return torch.cat([input_ids.to(torch.long), tail.to(input_ids.device)], dim=1)
