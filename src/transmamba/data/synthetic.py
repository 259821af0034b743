"""Synthetic recall tasks as integer token ids: PhoneBook, MQAR and selective copying.

No tokenizer is involved: every task writes ids from one shared vocabulary, so a single `CausalLM` with
`vocab_size >= min_vocab_size(...)` can train on any of them (or a mix) directly.

Vocabulary (ids)::

    0 PAD   1 BOS   2 SEP (":")   3 NL (end of line)   4 QUERY ("?")   5 COPY   6 NOISE   7 (reserved)
    8 .. 17                     the digits 0..9        (phone numbers)
    18 .. vocab_size - 1        symbols                (names, keys, values, tokens to copy)

Every generator is seeded (a `numpy.random.Generator` built from `seed`, so the result does not depend on
torch's global RNG) and returns a :class:`SyntheticBatch` whose `labels` equal `input_ids` at the answer
tokens and are -100 everywhere else. Labels follow the `CausalLM` contract (the model shifts: logits at
position t-1 are scored against labels[t]), so ``model(batch.input_ids, labels=batch.labels).loss`` is the
task loss. Within one batch all rows share one layout, so answers sit at the same positions in every row.

Layouts (one row):

* **PhoneBook** (Jelassi et al., 2024; the TransMamba and Mamba-2-Hybrid papers' recall test)::

      BOS  name_1 SEP number_1 NL  ...  name_n SEP number_n NL  QUERY name_q SEP [number_q] NL

  names are `name_len` symbols, distinct within a book; numbers are `number_len` digits. The answer is
  the number of the queried name; ``meta["answer_entry"]`` is its index in the book.

* **MQAR**, multi-query associative recall (Arora et al., 2023, "Zoology")::

      BOS  k_1 v_1 k_2 v_2 ... k_n v_n  q_1 [a_1] q_2 [a_2] ... q_m [a_m]

  keys come from the first half of the symbols (distinct within a row), values from the second half
  (uniform, with replacement); each query is one of the row's keys (distinct queries, random order) and
  the answer is its value. ``meta["key_index"]`` holds the queried pair's index. :func:`mqar_filler`
  draws the same task in whole-batch numpy calls and can put `filler` NOISE tokens between the last pair
  and the first query (recall over a longer distance with the number of pairs fixed).

* **Selective copying** (Gu & Dao, 2023, "Mamba")::

      BOS  [region: n_tokens data symbols at random positions, NOISE elsewhere]  COPY  [d_1 ... d_n]

  the answer is the data symbols in their order of appearance; ``meta["positions"]`` holds where they sat.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

PAD, BOS, SEP, NL, QUERY, COPY, NOISE = 0, 1, 2, 3, 4, 5, 6
DIGIT0 = 8  # ids 8..17 are the digits 0..9
SYMBOL0 = 18  # first symbol id
N_DIGITS = 10
IGNORE_INDEX = -100
DEFAULT_VOCAB = 64

TASKS = ("phonebook", "mqar", "selective-copy")


@dataclass
class SyntheticBatch:
    """One batch of a synthetic task.

    input_ids    (b, t) long   the tokens
    labels       (b, t) long   input_ids at answer tokens, -100 elsewhere
    answer_index (b, t) long   k at the tokens of the row's k-th answer (0-based), -1 elsewhere
    meta         task-specific tensors (see the module docstring)
    """

    task: str
    input_ids: torch.Tensor
    labels: torch.Tensor
    answer_index: torch.Tensor
    meta: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def n_answers(self) -> int:
        """Answers per row (the same in every row)."""
        return int(self.answer_index.max().item()) + 1

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def answer_positions(self, k: int = 0) -> torch.Tensor:
        """Positions (same in every row) of the k-th answer's tokens, ascending."""
        return torch.nonzero(self.answer_index[0] == k).flatten()

    def to(self, device) -> SyntheticBatch:
        return SyntheticBatch(
            self.task,
            self.input_ids.to(device),
            self.labels.to(device),
            self.answer_index.to(device),
            {k: v.to(device) for k, v in self.meta.items()},
        )


def n_symbols(vocab_size: int) -> int:
    """How many symbol ids a vocabulary of this size holds."""
    return vocab_size - SYMBOL0


def min_vocab_size(task: str, **kw) -> int:
    """Smallest vocab_size a task needs (PhoneBook needs at least 2 symbols, MQAR 2, copy 1)."""
    return SYMBOL0 + {"phonebook": 2, "mqar": 2, "selective-copy": 1}[task]


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _check_vocab(vocab_size: int, need: int, what: str) -> int:
    s = n_symbols(vocab_size)
    if s < need:
        raise ValueError(f"{what}: vocab_size={vocab_size} leaves {s} symbols, needs at least {need}")
    return s


def _finish(task: str, rows: np.ndarray, ans: np.ndarray, meta: dict[str, np.ndarray]) -> SyntheticBatch:
    input_ids = torch.from_numpy(rows.astype(np.int64))
    answer_index = torch.from_numpy(ans.astype(np.int64))
    labels = torch.where(answer_index >= 0, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    meta_t = {k: torch.from_numpy(v) for k, v in meta.items()}
    return SyntheticBatch(task, input_ids, labels, answer_index, meta_t)


# ----------------------------------------------------------------------------------------------- PhoneBook


def phonebook_length(n_entries: int, *, name_len: int = 3, number_len: int = 4, n_queries: int = 1) -> int:
    """Tokens in one PhoneBook row: BOS + entries + queries."""
    return 1 + n_entries * (name_len + number_len + 2) + n_queries * (name_len + number_len + 3)


def phonebook_entries_for_length(
    seq_len: int, *, name_len: int = 3, number_len: int = 4, n_queries: int = 1
) -> int:
    """Largest book whose row fits in `seq_len` tokens."""
    fixed = phonebook_length(0, name_len=name_len, number_len=number_len, n_queries=n_queries)
    n = (seq_len - fixed) // (name_len + number_len + 2)
    if n < 1:
        need = fixed + name_len + number_len + 2
        raise ValueError(f"phonebook: seq_len={seq_len} holds no entry (needs >= {need})")
    return n


def phonebook(
    batch_size: int,
    n_entries: int,
    *,
    name_len: int = 3,
    number_len: int = 4,
    n_queries: int = 1,
    vocab_size: int = DEFAULT_VOCAB,
    seed: int | np.random.Generator = 0,
) -> SyntheticBatch:
    """PhoneBook rows: `n_entries` lines `name SEP number NL`, then `n_queries` query lines
    `QUERY name SEP number NL`.

    meta: answer_entry (b, n_queries) long, index in the book of each queried name; n_entries (1,) long.
    """
    if n_queries > n_entries:
        raise ValueError(f"phonebook: n_queries={n_queries} > n_entries={n_entries}")
    s = _check_vocab(vocab_size, 2, "phonebook")
    if s**name_len < n_entries:
        raise ValueError(f"phonebook: {s}^{name_len} names cannot fill a book of {n_entries} distinct names")
    rng = _rng(seed)
    e_len, q_len = name_len + number_len + 2, name_len + number_len + 3
    t = phonebook_length(n_entries, name_len=name_len, number_len=number_len, n_queries=n_queries)
    rows = np.full((batch_size, t), PAD, dtype=np.int64)
    ans = np.full((batch_size, t), -1, dtype=np.int64)
    answer_entry = np.zeros((batch_size, n_queries), dtype=np.int64)
    place = s ** np.arange(name_len - 1, -1, -1)  # base-s digits of the name code
    for b in range(batch_size):
        codes = rng.choice(s**name_len, size=n_entries, replace=False)  # distinct names
        names = SYMBOL0 + (codes[:, None] // place) % s  # (n, name_len)
        numbers = DIGIT0 + rng.integers(0, N_DIGITS, size=(n_entries, number_len))
        book = np.concatenate(
            [names, np.full((n_entries, 1), SEP), numbers, np.full((n_entries, 1), NL)], axis=1
        )
        rows[b, 0] = BOS
        rows[b, 1 : 1 + n_entries * e_len] = book.reshape(-1)
        queried = rng.choice(n_entries, size=n_queries, replace=False)
        answer_entry[b] = queried
        for k, e in enumerate(queried):
            start = 1 + n_entries * e_len + k * q_len
            rows[b, start] = QUERY
            rows[b, start + 1 : start + 1 + name_len] = names[e]
            rows[b, start + 1 + name_len] = SEP
            num0 = start + 2 + name_len
            rows[b, num0 : num0 + number_len] = numbers[e]
            ans[b, num0 : num0 + number_len] = k
            rows[b, num0 + number_len] = NL
    meta = {"answer_entry": answer_entry, "n_entries": np.array([n_entries], dtype=np.int64)}
    return _finish("phonebook", rows, ans, meta)


# ----------------------------------------------------------------------------------------------- MQAR


def mqar_length(n_pairs: int, n_queries: int | None = None) -> int:
    return 1 + 2 * n_pairs + 2 * (n_pairs if n_queries is None else n_queries)


def mqar_pairs_for_length(seq_len: int) -> int:
    """Largest `n_pairs` (with n_queries = n_pairs) that fits in `seq_len` tokens."""
    n = (seq_len - 1) // 4
    if n < 1:
        raise ValueError(f"mqar: seq_len={seq_len} holds no pair (needs >= 5)")
    return n


def mqar_split(vocab_size: int) -> tuple[int, int]:
    """(number of key symbols, number of value symbols): the symbols split in two halves."""
    s = n_symbols(vocab_size)
    return s // 2, s - s // 2


def mqar(
    batch_size: int,
    n_pairs: int,
    *,
    n_queries: int | None = None,
    vocab_size: int = DEFAULT_VOCAB,
    seed: int | np.random.Generator = 0,
) -> SyntheticBatch:
    """MQAR rows: `n_pairs` key-value pairs, then `n_queries` (default n_pairs) queries `key value`.

    meta: key_index (b, n_queries) long, which pair each query asks for.
    """
    n_queries = n_pairs if n_queries is None else n_queries
    if n_queries > n_pairs:
        raise ValueError(f"mqar: n_queries={n_queries} > n_pairs={n_pairs}")
    _check_vocab(vocab_size, 2, "mqar")
    n_keys, n_values = mqar_split(vocab_size)
    if n_keys < n_pairs:
        raise ValueError(
            f"mqar: {n_keys} key symbols (vocab_size={vocab_size}) cannot make {n_pairs} distinct keys"
        )
    rng = _rng(seed)
    t = mqar_length(n_pairs, n_queries)
    rows = np.full((batch_size, t), PAD, dtype=np.int64)
    ans = np.full((batch_size, t), -1, dtype=np.int64)
    key_index = np.zeros((batch_size, n_queries), dtype=np.int64)
    q0 = 1 + 2 * n_pairs
    for b in range(batch_size):
        keys = SYMBOL0 + rng.choice(n_keys, size=n_pairs, replace=False)
        values = SYMBOL0 + n_keys + rng.integers(0, n_values, size=n_pairs)
        rows[b, 0] = BOS
        rows[b, 1:q0:2] = keys
        rows[b, 2:q0:2] = values
        asked = rng.choice(n_pairs, size=n_queries, replace=False)
        key_index[b] = asked
        rows[b, q0::2] = keys[asked]
        rows[b, q0 + 1 :: 2] = values[asked]
        ans[b, q0 + 1 :: 2] = np.arange(n_queries)
    return _finish("mqar", rows, ans, {"key_index": key_index})


def mqar_filler(
    batch_size: int,
    n_pairs: int,
    *,
    filler: int = 0,
    n_queries: int | None = None,
    vocab_size: int = DEFAULT_VOCAB,
    seed: int | np.random.Generator = 0,
) -> SyntheticBatch:
    """MQAR with `filler` NOISE tokens between the last pair and the first query (vectorized)::

        BOS  k_1 v_1 ... k_n v_n  NOISE x filler  q_1 [a_1] ... q_m [a_m]

    Same vocabulary and answer rules as :func:`mqar` (keys distinct within a row from the first half of the
    symbols, values uniform from the second half, queries distinct keys in random order), but drawn with
    whole-batch numpy calls, so it is cheap enough to feed a fast GPU training step; it draws its random
    numbers differently from :func:`mqar`, so the same seed gives different rows. The filler moves every
    query `filler` tokens further from its pair: accuracy against it measures recall over distance with
    the number of pairs fixed.

    meta: key_index (b, n_queries) long, which pair each query asks for; filler (1,) long.
    """
    n_queries = n_pairs if n_queries is None else n_queries
    if n_pairs < 1 or n_queries < 1 or n_queries > n_pairs:
        raise ValueError(f"mqar_filler: need 1 <= n_queries <= n_pairs, got {n_queries}, {n_pairs}")
    if filler < 0:
        raise ValueError(f"mqar_filler: filler must be >= 0, got {filler}")
    _check_vocab(vocab_size, 2, "mqar_filler")
    n_keys, n_values = mqar_split(vocab_size)
    if n_keys < n_pairs:
        raise ValueError(
            f"mqar_filler: {n_keys} key symbols (vocab_size={vocab_size}) cannot make {n_pairs} distinct keys"
        )
    rng = _rng(seed)
    b = batch_size
    keys = SYMBOL0 + np.argsort(rng.random((b, n_keys)), axis=1)[:, :n_pairs]  # distinct per row
    values = SYMBOL0 + n_keys + rng.integers(0, n_values, size=(b, n_pairs))
    asked = np.argsort(rng.random((b, n_pairs)), axis=1)[:, :n_queries]  # (b, m) distinct pair indices
    q0 = 1 + 2 * n_pairs + filler
    t = q0 + 2 * n_queries
    rows = np.full((b, t), NOISE, dtype=np.int64)
    ans = np.full((b, t), -1, dtype=np.int64)
    rows[:, 0] = BOS
    rows[:, 1 : 1 + 2 * n_pairs : 2] = keys
    rows[:, 2 : 2 + 2 * n_pairs : 2] = values
    rows[:, q0::2] = np.take_along_axis(keys, asked, axis=1)
    rows[:, q0 + 1 :: 2] = np.take_along_axis(values, asked, axis=1)
    ans[:, q0 + 1 :: 2] = np.arange(n_queries)
    meta = {"key_index": asked.astype(np.int64), "filler": np.array([filler], dtype=np.int64)}
    return _finish("mqar", rows, ans, meta)


# ----------------------------------------------------------------------------------------------- copying


def selective_copy_length(n_tokens: int, region_len: int) -> int:
    return 1 + region_len + 1 + n_tokens


def selective_copy(
    batch_size: int,
    n_tokens: int = 8,
    region_len: int = 64,
    *,
    vocab_size: int = DEFAULT_VOCAB,
    seed: int | np.random.Generator = 0,
) -> SyntheticBatch:
    """Selective-copy rows: a region of `region_len` tokens holding `n_tokens` data symbols among NOISE,
    then COPY and the data symbols in order. Each answer token is its own answer (k = 0..n_tokens-1).

    meta: positions (b, n_tokens) long, the data symbols' positions inside the region.
    """
    if n_tokens > region_len:
        raise ValueError(f"selective_copy: n_tokens={n_tokens} > region_len={region_len}")
    s = _check_vocab(vocab_size, 1, "selective_copy")
    rng = _rng(seed)
    t = selective_copy_length(n_tokens, region_len)
    rows = np.full((batch_size, t), NOISE, dtype=np.int64)
    ans = np.full((batch_size, t), -1, dtype=np.int64)
    positions = np.zeros((batch_size, n_tokens), dtype=np.int64)
    a0 = region_len + 2
    for b in range(batch_size):
        pos = np.sort(rng.choice(region_len, size=n_tokens, replace=False))
        data = SYMBOL0 + rng.integers(0, s, size=n_tokens)
        rows[b, 0] = BOS
        rows[b, 1 + pos] = data
        rows[b, region_len + 1] = COPY
        rows[b, a0:] = data
        ans[b, a0:] = np.arange(n_tokens)
        positions[b] = pos
    return _finish("selective-copy", rows, ans, {"positions": positions})


# ----------------------------------------------------------------------------------------------- by length


def make_task(
    task: str, batch_size: int, seq_len: int, *, vocab_size: int = DEFAULT_VOCAB, seed=0, **kw
) -> SyntheticBatch:
    """A batch of `task` whose rows fill (at most) `seq_len` tokens.

    phonebook: as many entries as fit (kw: name_len, number_len, n_queries);
    mqar: as many pairs as fit, n_queries = n_pairs, capped by the key symbols available;
    selective-copy: region = seq_len - 2 - n_tokens (kw: n_tokens, default 8).
    """
    if task == "phonebook":
        n = phonebook_entries_for_length(
            seq_len,
            name_len=kw.get("name_len", 3),
            number_len=kw.get("number_len", 4),
            n_queries=kw.get("n_queries", 1),
        )
        return phonebook(batch_size, n, vocab_size=vocab_size, seed=seed, **kw)
    if task == "mqar":
        n = min(mqar_pairs_for_length(seq_len), mqar_split(vocab_size)[0])
        return mqar(batch_size, n, vocab_size=vocab_size, seed=seed, **kw)
    if task in ("selective-copy", "selective_copy"):
        n_tokens = kw.pop("n_tokens", 8)
        return selective_copy(
            batch_size, n_tokens, seq_len - 2 - n_tokens, vocab_size=vocab_size, seed=seed, **kw
        )
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def chance_accuracy(task: str, *, vocab_size: int = DEFAULT_VOCAB, number_len: int = 4) -> dict[str, float]:
    """Expected accuracy of a constant model (one fixed token at every answer position), exactly.

    A fixed guess matches a uniformly drawn answer token with probability 1/(number of candidates):
    phonebook digits 1/10, a whole number (10^-number_len); MQAR values 1/n_values; copy 1/n_symbols.
    (A constant guess outside the answer alphabet scores 0; these are the best constant guesses.)
    """
    if task == "phonebook":
        return {"token_accuracy": 1 / N_DIGITS, "exact_match": float(N_DIGITS) ** (-number_len)}
    if task == "mqar":
        p = 1 / mqar_split(vocab_size)[1]
        return {"token_accuracy": p, "exact_match": p}
    if task in ("selective-copy", "selective_copy"):
        p = 1 / n_symbols(vocab_size)
        return {"token_accuracy": p, "exact_match": None}
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


class SyntheticStream:
    """An endless, seeded stream of training batches of one task (fresh data every step).

    >>> stream = SyntheticStream("mqar", batch_size=32, seq_len=128, seed=0)
    >>> batch = next(stream)   # SyntheticBatch
    """

    def __init__(self, task: str, batch_size: int, seq_len: int, *, vocab_size: int = DEFAULT_VOCAB,
                 seed: int = 0, **kw):
        self.task, self.batch_size, self.seq_len = task, batch_size, seq_len
        self.vocab_size, self.kw = vocab_size, kw
        self.rng = np.random.default_rng(seed)

    def __iter__(self):
        return self

    def __next__(self) -> SyntheticBatch:
        return make_task(self.task, self.batch_size, self.seq_len, vocab_size=self.vocab_size,
                         seed=self.rng, **dict(self.kw))
