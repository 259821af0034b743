"""LM-head projection + cross-entropy without the (tokens, vocab) logits tensor.

    loss = (1 / |I|) Σ_{i ∈ I} [ logsumexp_v (h_i · W_v) - h_i · W_{y_i} ],   I = {i : y_i != ignore_index}

    g_i = softmax(h_i Wᵀ) - onehot(y_i),   dL/dh_i = g_i W / |I|,   dL/dW = Σ_i g_iᵀ h_i / |I|

The forward walks the tokens in chunks of `chunk_size`: one chunk's logits (c, V) are made, reduced to their
fp32 log-sum-exp and target logit, and turned at once into that chunk's gradient g = softmax - onehot, from
which dh (c, d) and a contribution to dW (V, d, accumulated in fp32) are taken. The backward only scales
the stored dh, dW by the incoming gradient of the (scalar) loss. Extra memory is one chunk's logits in the
compute dtype and in fp32 (with a 152K vocabulary and 4096-token chunks about 3.7 GB) instead of every
token's logits, their fp32 copy, the saved log-softmax and its gradient (about 40 GB at 32K tokens).

On CUDA the per-chunk softmax / gradient is one Triton row kernel (`ops/triton/cross_entropy.py`) that
writes the gradient over the chunk's logits in the compute dtype (no fp32 copy of the chunk).

Matmuls run in `compute_dtype` (default: the autocast dtype when autocast is on, else h's dtype), like
`F.linear` under autocast; the log-sum-exp and the softmax are fp32, like `F.cross_entropy(logits.float())`.
"""

from __future__ import annotations

import torch

from transmamba.ops import backend
from transmamba.ops.checks import check_shape

__all__ = ["linear_cross_entropy"]


def _triton_rows(h: torch.Tensor, acc: torch.dtype):
    """`ops.triton.cross_entropy.ce_rows_` for CUDA tensors (lazily imported), else None (torch code).
    `ops.backend.use_triton` decides."""
    if acc != torch.float32 or not backend.use_triton(h):
        return None
    from transmamba.ops.triton.cross_entropy import ce_rows_

    return ce_rows_


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, labels, chunk_size: int, ignore_index: int, compute_dtype):
        # h (n, d), weight (V, d), labels (n,) long -> scalar fp32 loss
        n = h.shape[0]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.autocast(h.device.type, enabled=False):
            hc, wc = h.to(compute_dtype), weight.to(compute_dtype)
            acc = torch.promote_types(compute_dtype, torch.float32)  # fp32 (fp64 for fp64 inputs)
            valid = labels != ignore_index  # (n,)
            denom = valid.sum().clamp_min(1).to(acc)
            safe = torch.where(valid, labels, torch.zeros_like(labels))
            dh = torch.empty_like(hc) if need_h else None
            dw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
            loss = torch.zeros((), dtype=acc, device=h.device)
            row_kernel = _triton_rows(h, acc) if (need_h or need_w) else None
            for s in range(0, n, chunk_size):
                e = min(n, s + chunk_size)
                if row_kernel is not None:  # loss rows + gradient in place in the compute dtype
                    keep = valid[s:e].to(acc)
                    gc = hc[s:e] @ wc.T  # (c, V), overwritten by the gradient
                    loss += (row_kernel(gc, safe[s:e], keep / denom) * keep).sum()
                    if need_h:
                        dh[s:e] = gc @ wc
                    if need_w:
                        dw += gc.T @ hc[s:e]
                    continue
                logits = (hc[s:e] @ wc.T).to(acc)  # (c, V)
                lse = torch.logsumexp(logits, dim=-1)  # (c,)
                tgt = logits.gather(1, safe[s:e, None])[:, 0]
                keep = valid[s:e].to(acc)
                loss += ((lse - tgt) * keep).sum()
                if not (need_h or need_w):
                    continue
                g = logits.sub_(lse[:, None]).exp_()  # softmax, in place (c, V)
                rows = torch.arange(e - s, device=g.device)
                g[rows, safe[s:e]] -= 1.0
                g.mul_((keep / denom)[:, None])
                gc = g.to(compute_dtype)
                del logits, g
                if need_h:
                    dh[s:e] = gc @ wc
                if need_w:
                    dw += gc.T @ hc[s:e]
        ctx.grads = (dh, dw)
        ctx.dtypes = (h.dtype, weight.dtype)
        return loss / denom

    @staticmethod
    def backward(ctx, grad_loss):
        dh, dw = ctx.grads
        ctx.grads = None
        gh = None if dh is None else (dh * grad_loss.to(dh.dtype)).to(ctx.dtypes[0])
        gw = None if dw is None else (dw * grad_loss).to(ctx.dtypes[1])
        return gh, gw, None, None, None, None


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    chunk_size: int = 4096,
    ignore_index: int = -100,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of logits h Wᵀ against labels, computed chunk by chunk (see module docstring).

    h (n, d), weight (V, d), labels (n,) long (ignore_index entries are skipped) -> scalar fp32 loss.
    Equal to `F.cross_entropy((h @ weight.T).float(), labels, ignore_index=ignore_index)`; with no counted
    label the loss is 0 (and so are the gradients). The loss is fp32 (fp64 for fp64 inputs). Not twice
    differentiable.
    """
    if h.dim() != 2:
        raise ValueError(f"linear_cross_entropy: h must be (tokens, d), got shape {tuple(h.shape)}")
    check_shape("linear_cross_entropy", "weight", weight, (None, h.shape[1]))
    check_shape("linear_cross_entropy", "labels", labels, (h.shape[0],))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"linear_cross_entropy: chunk_size must be a positive int, got {chunk_size!r}")
    if labels.dtype != torch.long:
        raise ValueError(f"linear_cross_entropy: labels must be int64, got {labels.dtype}")
    if compute_dtype is None:
        dev = h.device.type
        compute_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
    return _LinearCrossEntropy.apply(h, weight, labels, chunk_size, ignore_index, compute_dtype)
