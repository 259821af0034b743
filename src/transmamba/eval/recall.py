"""Scorers for the synthetic recall tasks (PhoneBook, MQAR, selective copying).

A scorer takes a *model* and a :class:`~transmamba.data.synthetic.SyntheticBatch`. The model is either a
`CausalLM` (its output has `.logits`) or any callable ``ids (b, t) long -> logits (b, t, V)``.

Teacher-forced scoring: one forward pass over the whole row; the prediction for the token at position t is
``argmax(logits[:, t-1])`` (the `CausalLM` shift). A token is correct when that argmax equals the label; an
answer (a phone number, an MQAR value, a copied token) is correct when all its tokens are. Because greedy
decoding feeds its own argmax back, its exact match equals the teacher-forced one whenever the model is a
deterministic function of its prefix; :func:`phonebook_generate` checks that through `model.generate`
(the decode path with caches) or, for a plain callable, a greedy loop of full forward passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from transmamba.data.synthetic import IGNORE_INDEX, TASKS, SyntheticBatch, chance_accuracy, make_task

Model = Callable[[torch.Tensor], object]


def logits_of(model: Model, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits (b, t, V) of a CausalLM-like module or a plain callable."""
    out = model(input_ids)
    if hasattr(out, "logits"):
        out = out.logits
    elif isinstance(out, (tuple, list)):
        out = out[0]
    if not torch.is_tensor(out) or out.dim() != 3 or out.shape[:2] != input_ids.shape:
        raise ValueError(
            f"recall: model output must be logits of shape (b, t, V) = ({tuple(input_ids.shape)}, V); "
            f"got {getattr(out, 'shape', type(out))}"
        )
    return out


def _device_of(model) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


@torch.no_grad()
def predict(model: Model, input_ids: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
    """Teacher-forced argmax predictions (b, t): pred[:, t] is the model's guess for input_ids[:, t]
    (pred[:, 0] = -1, nothing predicts the first token)."""
    was_training = isinstance(model, torch.nn.Module) and model.training
    if was_training:
        model.eval()
    try:
        device = _device_of(model)
        n = input_ids.shape[0]
        step = n if not batch_size else batch_size
        preds = []
        for i in range(0, n, step):
            ids = input_ids[i : i + step].to(device)
            if hasattr(model, "argmax_tokens"):  # CausalLM: streamed, no (b, t, V) logits tensor
                preds.append(model.argmax_tokens(ids).cpu())
            else:
                preds.append(logits_of(model, ids).argmax(-1).cpu())
        arg = torch.cat(preds)
    finally:
        if was_training:
            model.train()
    pred = torch.full_like(input_ids, -1)
    pred[:, 1:] = arg[:, :-1]
    return pred


def answer_correct(batch: SyntheticBatch, pred: torch.Tensor) -> torch.Tensor:
    """(b, n_answers) bool: every token of the row's k-th answer predicted right."""
    tok_ok = pred == batch.input_ids
    n = batch.n_answers
    out = torch.ones(batch.input_ids.shape[0], n, dtype=torch.bool)
    for k in range(n):
        mask = batch.answer_index == k  # (b, t), same columns in every row
        out[:, k] = (tok_ok | ~mask).all(dim=1)
    return out


def score(model: Model, batch: SyntheticBatch, *, batch_size: int | None = None) -> dict:
    """Teacher-forced accuracy on a batch of any task.

    Returns token_accuracy (over all answer tokens), answer_accuracy (over all answers, each exact),
    per_answer (list: accuracy of the k-th answer of the rows), n_rows, n_answer_tokens, and, per task:
    phonebook: exact_match (= answer_accuracy), by_book_position (see :func:`by_position`);
    mqar: accuracy (= answer_accuracy, i.e. per query); selective-copy: exact_match (all tokens of a row).
    """
    pred = predict(model, batch.input_ids, batch_size=batch_size)
    mask = batch.labels != IGNORE_INDEX
    tok_ok = (pred == batch.labels) & mask
    ans_ok = answer_correct(batch, pred)
    res = {
        "task": batch.task,
        "seq_len": batch.seq_len,
        "n_rows": int(batch.input_ids.shape[0]),
        "n_answer_tokens": int(mask.sum()),
        "token_accuracy": float(tok_ok.sum()) / max(1, int(mask.sum())),
        "answer_accuracy": float(ans_ok.double().mean()),
        "per_answer": ans_ok.double().mean(0).tolist(),
    }
    if batch.task == "phonebook":
        res["exact_match"] = res["answer_accuracy"]
        res["n_entries"] = int(batch.meta["n_entries"][0])
        res["by_book_position"] = by_position(ans_ok, batch.meta["answer_entry"], res["n_entries"])
    elif batch.task == "mqar":
        res["accuracy"] = res["answer_accuracy"]
        res["n_pairs"] = int(batch.meta["key_index"].shape[1])
    elif batch.task == "selective-copy":
        res["exact_match"] = float(ans_ok.all(dim=1).double().mean())
    return res


def by_position(ans_ok: torch.Tensor, entry: torch.Tensor, n_entries: int, n_bins: int = 4) -> list[dict]:
    """Accuracy binned by where the answer sat in the book: bin i covers entries with
    floor(entry * n_bins / n_entries) == i (bin 0 = start of the book, last bin = just before the query)."""
    bins = (entry * n_bins) // n_entries
    out = []
    for i in range(n_bins):
        sel = bins == i
        n = int(sel.sum())
        acc = float(ans_ok[sel].double().mean()) if n else None
        out.append({"bin": i, "from": i / n_bins, "to": (i + 1) / n_bins, "n": n, "accuracy": acc})
    return out


@torch.no_grad()
def greedy_continue(model: Model, prefix: torch.Tensor, n_new: int) -> torch.Tensor:
    """(b, n_new) greedy tokens after `prefix` (b, t).

    Uses ``model.generate(prefix, max_new_tokens=n_new, greedy=True)`` when the model has one (the cached
    decode path); otherwise a loop of full forward passes.
    """
    device = _device_of(model)
    prefix = prefix.to(device)
    gen = getattr(model, "generate", None)
    if callable(gen):
        was_training = isinstance(model, torch.nn.Module) and model.training
        if was_training:
            model.eval()
        try:
            out = gen(prefix, max_new_tokens=n_new, greedy=True)
        finally:
            if was_training:
                model.train()
        out = out if torch.is_tensor(out) else out.sequences
        return out[:, -n_new:].cpu()
    ids = prefix
    for _ in range(n_new):
        nxt = logits_of(model, ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids[:, -n_new:].cpu()


def phonebook_generate(model: Model, batch: SyntheticBatch, *, batch_size: int | None = None) -> dict:
    """Generation-based exact match on PhoneBook: prompt up to the queried name's SEP, generate the number
    greedily, compare with the book's number. Scores the first query of each row."""
    if batch.task != "phonebook":
        raise ValueError(f"phonebook_generate: batch is {batch.task!r}, not phonebook")
    pos = batch.answer_positions(0)
    start, n_new = int(pos[0]), int(pos.numel())
    n = batch.input_ids.shape[0]
    step = n if not batch_size else batch_size
    outs = [greedy_continue(model, batch.input_ids[i : i + step, :start], n_new) for i in range(0, n, step)]
    gen = torch.cat(outs)
    ok = (gen == batch.input_ids[:, start : start + n_new]).all(dim=1)
    return {"generate_exact_match": float(ok.float().mean()), "n_rows": n}


def evaluate_lengths(
    model: Model,
    task: str,
    lengths: Sequence[int],
    *,
    n_rows: int = 256,
    vocab_size: int | None = None,
    seed: int = 1234,
    batch_size: int | None = 64,
    generate: bool = False,
    **task_kw,
) -> list[dict]:
    """Score `model` on fresh, seeded batches of `task` at each context length (one dict per length).

    vocab_size defaults to ``model.config.vocab_size``. With generate=True PhoneBook also gets
    generation-based exact match.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if vocab_size is None:
        vocab_size = int(model.config.vocab_size)
    rows = []
    for i, length in enumerate(lengths):
        batch = make_task(task, n_rows, int(length), vocab_size=vocab_size, seed=seed + i, **task_kw)
        res = score(model, batch, batch_size=batch_size)
        res["length"] = int(length)
        res["chance"] = chance_accuracy(task, vocab_size=vocab_size, number_len=task_kw.get("number_len", 4))
        if generate and task == "phonebook":
            res.update(phonebook_generate(model, batch, batch_size=batch_size))
        rows.append(res)
    return rows
