"""Training batches drawn on the device with torch ops only, so they can live inside a captured CUDA graph
(each replay draws fresh rows from the CUDA generator; no CPU work, no host-device copies per step).

Same tasks and vocabulary as `transmamba.data.synthetic` (which stays the reference and is what the runs
are scored on); here every row of a batch draws its own size, and rows are right-padded to one length:

* MQAR:      BOS  k_1 v_1 ... k_n v_n  NOISE x f  q_1 a_1 ... q_n a_n  PAD...
             n uniform in [n_lo, n_hi], f uniform in [f_lo, f_hi]; keys distinct within a row (first half
             of the symbols), values uniform (second half); every pair queried once, in random order —
             or, with `query_replacement`, n queries drawn independently among the row's keys (then a
             model cannot answer late queries by elimination, "a value not yet asked for").
* PhoneBook (one-symbol names):
             BOS  [name SEP d_1..d_L NL] x n  [QUERY name SEP d_1..d_L NL] x q  PAD...
             names distinct within a row, digits uniform, q = max(1, min(queries, n // 2)) distinct entries.

Labels are the ids at the answer tokens (values / digits of the queries) and -100 elsewhere.
"""

from __future__ import annotations

import torch

from transmamba.data.synthetic import BOS, DIGIT0, NL, NOISE, PAD, QUERY, SEP, SYMBOL0, mqar_split, n_symbols

KEY, VAL = -1, -2  # template slots: the entry's key, its value tokens (in order)


def templates(task: str, number_len: int = 2):
    """(entry template, query template, value-token count L) for the book and query lines."""
    if task == "mqar":
        return [KEY, VAL], [KEY, VAL], 1
    if task == "phonebook":
        vals = [VAL] * number_len
        return [KEY, SEP, *vals, NL], [QUERY, KEY, SEP, *vals, NL], number_len
    raise ValueError(f"device batches: unknown task {task!r}")


def max_queries(spec: dict, n: int) -> int:
    return n if spec["task"] == "mqar" else max(1, min(spec["queries"], n // 2))


def row_len(spec: dict) -> int:
    """The padded row length: the longest row the spec can draw."""
    ent, qry, _ = templates(spec["task"], spec.get("number_len", 2))
    n = spec["pairs_hi"]
    return 1 + len(ent) * n + spec.get("filler_hi", 0) + len(qry) * max_queries(spec, n)


def _fill(template, keys, vals):
    """template over (b, m) keys and (b, m, L) values -> (b, m, len(template)) tokens."""
    cols, v = [], 0
    for slot in template:
        if slot == KEY:
            cols.append(keys)
        elif slot == VAL:
            cols.append(vals[..., v])
            v += 1
        else:
            cols.append(torch.full_like(keys, slot))
    return torch.stack(cols, dim=-1)


def recall_batch(spec: dict, batch: int, device, generator=None):
    """ids (b, T) long, labels (b, T) long, meta {n, f, q: (b,) long} for spec['task'] in mqar/phonebook.

    spec: task, vocab, pairs_lo, pairs_hi, filler_lo, filler_hi (MQAR), number_len, queries (PhoneBook).
    """
    task, vocab = spec["task"], spec["vocab"]
    ent, qry, L = templates(task, spec.get("number_len", 2))
    E, Q = len(ent), len(qry)
    n_hi = spec["pairs_hi"]
    q_hi = max_queries(spec, n_hi)
    T = row_len(spec)
    g = dict(device=device, generator=generator)
    b = batch
    n = torch.randint(spec["pairs_lo"], n_hi + 1, (b,), **g)
    f_lo, f_hi = spec.get("filler_lo", 0), spec.get("filler_hi", 0)
    f = torch.randint(f_lo, f_hi + 1, (b,), **g)
    if task == "mqar":
        n_keys, n_values = mqar_split(vocab)
        q = n
        val_base, val_count = SYMBOL0 + n_keys, n_values
    else:
        n_keys = n_symbols(vocab)
        q = torch.clamp(torch.minimum(n // 2, torch.full_like(n, spec["queries"])), min=1)
        val_base, val_count = DIGIT0, 10
    if n_keys < n_hi:
        raise ValueError(f"device batches: {n_keys} key symbols cannot make {n_hi} distinct keys")
    keys = SYMBOL0 + torch.argsort(torch.rand(b, n_keys, **g), dim=1)[:, :n_hi]  # (b, n_hi) distinct
    vals = val_base + torch.randint(0, val_count, (b, n_hi, L), **g)
    j = torch.arange(n_hi, device=device)
    if spec.get("query_replacement"):  # each query an independent draw among the row's entries: a key may be
        # asked twice and another never, so the unanswered pairs tell nothing (no answer by elimination)
        asked = (torch.rand(b, q_hi, **g) * n[:, None]).long().clamp(max=n_hi - 1)
    else:
        r = torch.rand(b, n_hi, **g).masked_fill(j[None, :] >= n[:, None], 2.0)
        asked = torch.argsort(r, dim=1)[:, :q_hi]  # (b, q_hi): a random order of the row's valid entries
    book = _fill(ent, keys, vals)  # (b, n_hi, E)
    qk = keys.gather(1, asked)
    qv = vals.gather(1, asked[..., None].expand(-1, -1, L))
    queries = _fill(qry, qk, qv)  # (b, q_hi, Q)

    dump = T  # invalid writes go to an extra column, dropped at the end
    book_pos = 1 + E * j[:, None] + torch.arange(E, device=device)  # (n_hi, E)
    book_pos = torch.where((j[None, :] < n[:, None])[..., None], book_pos, dump)  # (b, n_hi, E)
    k = torch.arange(f_hi, device=device)
    fill_pos = torch.where(k[None, :] < f[:, None], 1 + E * n[:, None] + k, dump)  # (b, f_hi)
    i = torch.arange(q_hi, device=device)
    q0 = 1 + E * n + f  # (b,)
    q_pos = q0[:, None, None] + Q * i[None, :, None] + torch.arange(Q, device=device)  # (b, q_hi, Q)
    q_pos = torch.where((i[None, :] < q[:, None])[..., None], q_pos, dump)

    ids = torch.full((b, T + 1), PAD, dtype=torch.long, device=device)
    ids[:, 0] = BOS
    ids.scatter_(1, book_pos.flatten(1), book.flatten(1))
    ids.scatter_(1, fill_pos, torch.full_like(fill_pos, NOISE))
    ids.scatter_(1, q_pos.flatten(1), queries.flatten(1))
    v0 = qry.index(VAL)  # value tokens sit at v0 .. v0+L-1 of a query line (no host tensor: capturable)
    qi = torch.arange(Q, device=device)
    is_val = (qi >= v0) & (qi < v0 + L)  # (Q,)
    a_pos = torch.where(is_val, q_pos, dump)
    labels = torch.full((b, T + 1), -100, dtype=torch.long, device=device)
    labels.scatter_(1, a_pos.flatten(1), queries.flatten(1))
    return ids[:, :T], labels[:, :T], {"n": n, "f": f, "q": q}
