"""Perplexity of a causal LM over a stream of token ids.

The ids are cut into non-overlapping windows of `seq_len` tokens; in each window the logits at positions
0..L-2 are scored against the tokens at 1..L-1 (each window starts fresh, so the first token of a window is
not predicted). With N scored tokens and per-token negative log-likelihoods nll_i (natural log),

    loss = (1/N) Σ nll_i,      perplexity = exp(loss),      bits per token = loss / ln 2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from transmamba.eval.recall import _device_of, logits_of


@torch.no_grad()
def perplexity(
    model,
    ids: torch.Tensor,
    *,
    seq_len: int = 256,
    batch_size: int = 8,
    max_windows: int | None = None,
    progress: bool = False,
) -> dict:
    """Mean next-token loss and perplexity of `model` (CausalLM or callable ids -> logits) over 1-D `ids`.

    Returns {"loss", "perplexity", "bits_per_token", "tokens" (scored), "windows", "seq_len"}.
    progress: a tqdm bar over the windows (on stderr).
    """
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if seq_len < 2:
        raise ValueError(f"perplexity: seq_len must be >= 2, got {seq_len}")
    n_win = ids.numel() // seq_len
    if n_win == 0:
        raise ValueError(f"perplexity: {ids.numel()} tokens is shorter than one window of seq_len={seq_len}")
    if max_windows is not None:
        n_win = min(n_win, max_windows)
    windows = ids[: n_win * seq_len].view(n_win, seq_len)
    device = _device_of(model)
    was_training = isinstance(model, torch.nn.Module) and model.training
    if was_training:
        model.eval()
    total, count = 0.0, 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_win, desc="perplexity", unit="window", dynamic_ncols=True, leave=False)
    try:
        for i in range(0, n_win, batch_size):
            x = windows[i : i + batch_size].to(device)
            logits = logits_of(model, x)[:, :-1].float()
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
            total += float(nll)
            count += x[:, 1:].numel()
            if bar is not None:
                bar.update(x.shape[0])
    finally:
        if bar is not None:
            bar.close()
        if was_training:
            model.train()
    loss = total / count
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_token": loss / math.log(2),
        "tokens": count,
        "windows": n_win,
        "seq_len": seq_len,
    }
