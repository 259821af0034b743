"""Time-series forecasting data: LTSF-style CSVs, splits, scaling, time features and sliding windows.

The conventions are those of the long-sequence forecasting benchmarks (Informer / Autoformer / LTSF
code, which the Mambaformer paper reuses), re-implemented here without pandas:

* A CSV has a ``date`` column and one column per variable (ETT, Exchange-Rate, Electricity, ...).
* Splits (``split_borders``), as row ranges ``[start, end)`` over the file:

  - ``"ett-hour"``: 12 / 4 / 4 months of 30 days × 24 rows. train ``[0, 8640)``,
    val ``[8640 - seq_len, 11520)``, test ``[11520 - seq_len, 14400)``; rows after 14400 are unused.
  - ``"ett-minute"``: the same with 4 rows per hour (×4).
  - ``"ratio"`` (everything else): ``n_train = int(0.7 n)``, ``n_test = int(0.2 n)``,
    ``n_val = n - n_train - n_test``;
    train ``[0, n_train)``, val ``[n_train - seq_len, n_train + n_val)``, test ``[n - n_test - seq_len, n)``.

  Val and test start ``seq_len`` rows early so that their first target follows the previous split
  directly; those look-back rows are inputs only.
* ``StandardScaler`` is fitted on the train rows only and applied to the whole file.
* Time features ("timeF"): each calendar field scaled to [-0.5, 0.5]
  (hour/23, weekday/6, (day-1)/30, (day_of_year-1)/365, minute/59), chosen by the sampling frequency.
* A window starting at ``s`` (inside a split) gives ``x = data[s : s+L]``, ``y = data[s+L-label_len : s+L+H]``
  and their time features ``x_mark`` / ``y_mark``. A split of ``n`` rows holds ``n - L - H + 1`` windows.

``load_forecast_data(None)`` needs no file: it builds a deterministic synthetic hourly series
(daily and weekly seasonality, trend and noise) so that everything runs out of the box.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from transmamba.errors import UsageError

__all__ = [
    "TimeSeriesFrame",
    "read_csv",
    "synthetic_series",
    "infer_freq",
    "time_features",
    "split_borders",
    "StandardScaler",
    "ForecastWindows",
    "ForecastData",
    "load_forecast_data",
]

SPLITS = ("train", "val", "test")
_DATE_RE = re.compile(
    r"^\s*(\d{4})[-/](\d{1,2})[-/](\d{1,2})(?:[ T](\d{1,2}):(\d{1,2})(?::(\d{1,2})(?:\.\d+)?)?)?\s*$"
)


class ForecastDataError(UsageError, ValueError):
    """A CSV or a split that cannot feed a forecaster; the message says what and where."""


# --------------------------------------------------------------------------------------------- frames


@dataclass
class TimeSeriesFrame:
    """A multivariate series: ``dates`` (T,) datetime64[s], ``values`` (T, C) float64, ``columns``."""

    dates: np.ndarray
    values: np.ndarray
    columns: list[str]
    name: str = "series"

    def __len__(self) -> int:
        return len(self.dates)


def _parse_date(text: str) -> np.datetime64 | None:
    m = _DATE_RE.match(text)
    if not m:
        return None
    y, mo, d, h, mi, s = (int(g) if g is not None else 0 for g in m.groups())
    try:
        return np.datetime64(f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}", "s")
    except ValueError:
        return None


def read_csv(path: str | Path, *, date_column: str = "date") -> TimeSeriesFrame:
    """Read an LTSF-format CSV: a header, a ``date`` column, numeric columns for the variables.

    Raises ``ForecastDataError`` for a missing file or date column, an unparseable date, or a non-numeric
    value (naming the column and the 1-based data row, with the file line), or a file with no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise ForecastDataError(f"{path}: no such file")
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ForecastDataError(f"{path}: the file is empty (expected a header with 'date')") from None
        if date_column not in header:
            raise ForecastDataError(
                f"{path}: no '{date_column}' column in the header {header}; the LTSF format needs a "
                f"'{date_column}' column followed by one numeric column per variable"
            )
        di = header.index(date_column)
        value_idx = [i for i in range(len(header)) if i != di]
        if not value_idx:
            raise ForecastDataError(f"{path}: only a '{date_column}' column, no variables")
        columns = [header[i] for i in value_idx]
        dates: list[np.datetime64] = []
        rows: list[list[float]] = []
        for r, rec in enumerate(reader, start=1):
            line = r + 1
            if not rec or all(not c.strip() for c in rec):
                continue
            if len(rec) != len(header):
                raise ForecastDataError(
                    f"{path}: row {r} (line {line}) has {len(rec)} fields, the header has {len(header)}"
                )
            d = _parse_date(rec[di])
            if d is None:
                raise ForecastDataError(
                    f"{path}: row {r} (line {line}), column '{date_column}': cannot parse date {rec[di]!r} "
                    "(expected YYYY-MM-DD[ HH:MM[:SS]] or YYYY/M/D H:MM)"
                )
            vals = []
            for i in value_idx:
                try:
                    v = float(rec[i])
                except ValueError:
                    raise ForecastDataError(
                        f"{path}: row {r} (line {line}), column '{header[i]}': non-numeric value {rec[i]!r}"
                    ) from None
                if not math.isfinite(v):
                    raise ForecastDataError(
                        f"{path}: row {r} (line {line}), column '{header[i]}': non-finite value {rec[i]!r}"
                    )
                vals.append(v)
            dates.append(d)
            rows.append(vals)
    if not rows:
        raise ForecastDataError(f"{path}: the header is there but there are no data rows")
    return TimeSeriesFrame(
        np.array(dates, dtype="datetime64[s]"), np.array(rows, dtype=np.float64), columns, name=path.stem
    )


def synthetic_series(
    n_steps: int = 4000, n_vars: int = 7, *, seed: int = 0, start: str = "2020-01-01T00:00:00"
) -> TimeSeriesFrame:
    """A deterministic hourly multivariate series: per variable ``level + trend·t + a·sin(2πt/24 + φ)
    + b·sin(2πt/168 + ψ) + AR(1) noise``, real hourly timestamps from ``start``; last column ``OT``."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_steps, dtype=np.float64)
    cols = []
    for _ in range(n_vars):
        level, trend = rng.normal(0, 5), rng.normal(0, 2e-3)
        a, b = rng.uniform(0.5, 3.0), rng.uniform(0.2, 2.0)
        phi, psi = rng.uniform(0, 2 * np.pi, size=2)
        eps = rng.normal(0, 0.3, size=n_steps)
        noise = np.empty(n_steps)
        acc = 0.0
        for i in range(n_steps):  # AR(1), rho = 0.7
            acc = 0.7 * acc + eps[i]
            noise[i] = acc
        cols.append(
            level
            + trend * t
            + a * np.sin(2 * np.pi * t / 24 + phi)
            + b * np.sin(2 * np.pi * t / 168 + psi)
            + noise
        )
    dates = np.datetime64(start, "s") + np.arange(n_steps) * np.timedelta64(3600, "s")
    names = [f"x{i}" for i in range(n_vars - 1)] + ["OT"]
    return TimeSeriesFrame(dates, np.stack(cols, axis=1), names, name=f"synthetic-s{seed}")


# --------------------------------------------------------------------------------------- time features

_FEATURES_BY_FREQ = {
    "t": ("minute", "hour", "weekday", "day", "yearday"),
    "h": ("hour", "weekday", "day", "yearday"),
    "d": ("weekday", "day", "yearday"),
    "b": ("weekday", "day", "yearday"),
}


def infer_freq(dates: np.ndarray) -> str:
    """'t' (sub-hourly), 'h' (hourly .. sub-daily) or 'd' (daily or coarser) from the median step."""
    if len(dates) < 2:
        return "h"
    step = np.median(np.diff(dates.astype("datetime64[s]").astype(np.int64)))
    if step < 3600:
        return "t"
    if step < 86400:
        return "h"
    return "d"


def time_features(dates: np.ndarray, freq: str = "h") -> np.ndarray:
    """'timeF' calendar features, (T, F) float32, each in [-0.5, 0.5].

    minute/59 − .5, hour/23 − .5, weekday/6 − .5 (Monday = 0), (day − 1)/30 − .5, (day_of_year − 1)/365 − .5;
    which fields depends on ``freq`` ('t': 5, 'h': 4, 'd' or 'b': 3), as in the LTSF 'timeF' encoding.
    """
    if freq not in _FEATURES_BY_FREQ:
        raise ValueError(f"time_features: freq {freq!r} not in {sorted(_FEATURES_BY_FREQ)}")
    d = dates.astype("datetime64[s]")
    day = d.astype("datetime64[D]")
    secs_in_day = (d - day).astype(np.int64)
    fields = {
        "minute": (secs_in_day // 60) % 60 / 59.0 - 0.5,
        "hour": secs_in_day // 3600 / 23.0 - 0.5,
        "weekday": ((day.astype(np.int64) + 3) % 7) / 6.0 - 0.5,  # 1970-01-01 was a Thursday (3)
        "day": (day - day.astype("datetime64[M]")).astype(np.int64) / 30.0 - 0.5,
        "yearday": (day - day.astype("datetime64[Y]")).astype(np.int64) / 365.0 - 0.5,
    }
    return np.stack([fields[k] for k in _FEATURES_BY_FREQ[freq]], axis=1).astype(np.float32)


# ----------------------------------------------------------------------------------------------- splits


def split_borders(n_rows: int, seq_len: int, split: str = "ratio") -> dict[str, tuple[int, int]]:
    """Row ranges ``{"train": (a, b), "val": ..., "test": ...}`` as in the LTSF code (see module doc)."""
    if split in ("ett-hour", "ett-minute"):
        per_month = 30 * 24 * (4 if split == "ett-minute" else 1)
        a, b, c = 12 * per_month, 16 * per_month, 20 * per_month
        if n_rows < c:
            raise ForecastDataError(
                f"split {split!r} needs at least {c} rows (20 months of 30 days), the data has {n_rows}"
            )
        borders = {"train": (0, a), "val": (a - seq_len, b), "test": (b - seq_len, c)}
    elif split == "ratio":
        n_train, n_test = int(n_rows * 0.7), int(n_rows * 0.2)
        n_val = n_rows - n_train - n_test
        borders = {
            "train": (0, n_train),
            "val": (n_train - seq_len, n_train + n_val),
            "test": (n_rows - n_test - seq_len, n_rows),
        }
    else:
        raise ValueError(f"split_borders: split {split!r} not in ('ratio', 'ett-hour', 'ett-minute')")
    for name, (lo, _) in borders.items():
        if lo < 0:
            raise ForecastDataError(
                f"the {name} split would start at row {lo}: {n_rows} rows are too few for seq_len={seq_len}"
            )
    return borders


def auto_split(name: str) -> str:
    """'ett-hour' for ETTh*, 'ett-minute' for ETTm*, else 'ratio' (the LTSF 'custom' datasets)."""
    if name.lower().startswith("etth"):
        return "ett-hour"
    if name.lower().startswith("ettm"):
        return "ett-minute"
    return "ratio"


# ---------------------------------------------------------------------------------------------- scaling


class StandardScaler:
    """Per-column ``(x − mean) / std`` with the population std (as scikit-learn); std 0 is taken as 1."""

    def __init__(self) -> None:
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def fit(self, data: np.ndarray) -> StandardScaler:
        data = np.asarray(data, dtype=np.float64)
        self.mean = data.mean(axis=0)
        std = data.std(axis=0)
        self.std = np.where(std > 0, std, 1.0)
        return self

    def _check(self) -> None:
        if self.mean is None:
            raise RuntimeError("StandardScaler: call fit() first")

    def transform(self, data):
        self._check()
        if isinstance(data, torch.Tensor):
            mean, std = (torch.as_tensor(a, dtype=data.dtype) for a in (self.mean, self.std))
            return (data - mean) / std
        return (np.asarray(data) - self.mean) / self.std

    def inverse_transform(self, data):
        self._check()
        if isinstance(data, torch.Tensor):
            mean, std = (torch.as_tensor(a, dtype=data.dtype) for a in (self.mean, self.std))
            return data * std + mean
        return np.asarray(data) * self.std + self.mean

    def state_dict(self) -> dict:
        self._check()
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_state_dict(cls, state: dict) -> StandardScaler:
        s = cls()
        s.mean, s.std = np.asarray(state["mean"]), np.asarray(state["std"])
        return s


# ---------------------------------------------------------------------------------------------- windows


class ForecastWindows(torch.utils.data.Dataset):
    """Sliding windows over one split: item ``i`` is ``(x, y, x_mark, y_mark)`` with
    x (L, C) = rows [i, i+L), y (label_len + H, C) = rows [i+L−label_len, i+L+H), marks alike (.., F)."""

    def __init__(
        self,
        data: np.ndarray,
        stamps: np.ndarray,
        seq_len: int,
        label_len: int,
        pred_len: int,
        *,
        name: str = "split",
        row_offset: int = 0,
    ):
        if not 0 <= label_len <= seq_len:
            raise ValueError(f"label_len must be in [0, seq_len={seq_len}], got {label_len}")
        if seq_len < 1 or pred_len < 1:
            raise ValueError(f"seq_len and pred_len must be >= 1, got {seq_len}, {pred_len}")
        n = len(data)
        if n < seq_len + pred_len:
            raise ForecastDataError(
                f"the {name} split has {n} rows, but one window needs seq_len + pred_len = "
                f"{seq_len} + {pred_len} = {seq_len + pred_len}; use a longer series or shorter windows"
            )
        self.data = torch.as_tensor(np.asarray(data), dtype=torch.float32)  # (n, C)
        self.stamps = torch.as_tensor(np.asarray(stamps), dtype=torch.float32)  # (n, F)
        self.seq_len, self.label_len, self.pred_len = seq_len, label_len, pred_len
        self.name, self.row_offset = name, row_offset  # row_offset: file row of data[0]

    def __len__(self) -> int:
        return len(self.data) - self.seq_len - self.pred_len + 1

    def __getitem__(self, i: int):
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        i = i % len(self)
        L, lab, H = self.seq_len, self.label_len, self.pred_len
        r0 = i + L - lab
        return (
            self.data[i : i + L],
            self.data[r0 : i + L + H],
            self.stamps[i : i + L],
            self.stamps[r0 : i + L + H],
        )

    def batch(self, index: torch.Tensor | Sequence[int]):
        """Stack windows ``index`` (B,) at once: x (B, L, C), y (B, label_len + H, C), x_mark, y_mark."""
        index = torch.as_tensor(index, dtype=torch.long)
        L, lab, H = self.seq_len, self.label_len, self.pred_len
        xi = index[:, None] + torch.arange(L)
        yi = index[:, None] + (L - lab) + torch.arange(lab + H)
        return self.data[xi], self.data[yi], self.stamps[xi], self.stamps[yi]

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
        limit: int | None = None,
    ) -> Iterator[tuple]:
        """Iterate batches; ``limit`` caps the number of windows: a random subset when shuffling, else
        ``limit`` windows evenly spaced over the split."""
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=generator)[:limit]
        elif limit is not None and limit < n:  # evenly spaced windows over the whole split
            order = torch.linspace(0, n - 1, limit).round().long().unique()
        else:
            order = torch.arange(n)
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for s in range(0, stop, batch_size):
            yield self.batch(order[s : s + batch_size])


@dataclass
class ForecastData:
    """Everything a forecaster needs: the three window sets, the fitted scaler and metadata."""

    train: ForecastWindows
    val: ForecastWindows
    test: ForecastWindows
    scaler: StandardScaler | None
    columns: list[str]
    freq: str
    borders: dict[str, tuple[int, int]]
    name: str
    meta: dict = field(default_factory=dict)

    @property
    def n_vars(self) -> int:
        return len(self.columns)

    @property
    def n_time_features(self) -> int:
        return self.train.stamps.shape[1]

    def split(self, name: str) -> ForecastWindows:
        if name not in SPLITS:
            raise ValueError(f"split {name!r} not in {SPLITS}")
        return getattr(self, name)


def load_forecast_data(
    path: str | Path | None = None,
    *,
    seq_len: int = 192,
    pred_len: int = 96,
    label_len: int | None = None,
    features: str = "M",
    target: str = "OT",
    split: str = "auto",
    scale: bool = True,
    freq: str | None = None,
    synthetic_steps: int = 4000,
    synthetic_vars: int = 7,
    seed: int = 0,
) -> ForecastData:
    """Load a CSV (or, with ``path=None``, the synthetic series) into train/val/test windows.

    features: "M" (all variables in and out) or "S" (the ``target`` column only).
    label_len: how many known rows ``y`` repeats before the horizon (default ``seq_len``, the decoder-only
    setting of Mambaformer, where the decoder input is the whole look-back plus H placeholders).
    split: "auto" (from the file name), "ratio", "ett-hour" or "ett-minute". freq: None infers it.
    """
    if path is not None:
        frame = read_csv(path)
    else:
        frame = synthetic_series(synthetic_steps, synthetic_vars, seed=seed)
    if features not in ("M", "S"):
        raise ValueError(f"features must be 'M' or 'S', got {features!r}")
    values, columns = frame.values, list(frame.columns)
    if features == "S":
        if target not in columns:
            raise ForecastDataError(f"{frame.name}: target column {target!r} not in {columns}")
        values, columns = values[:, [columns.index(target)]], [target]
    label_len = seq_len if label_len is None else label_len
    split = auto_split(frame.name) if split == "auto" else split
    borders = split_borders(len(frame), seq_len, split)
    scaler = None
    if scale:
        a, b = borders["train"]
        scaler = StandardScaler().fit(values[a:b])  # train rows only
        values = scaler.transform(values)
    freq = freq or infer_freq(frame.dates)
    stamps = time_features(frame.dates, freq)
    sets = {
        name: ForecastWindows(
            values[lo:hi], stamps[lo:hi], seq_len, label_len, pred_len, name=name, row_offset=lo
        )
        for name, (lo, hi) in borders.items()
    }
    return ForecastData(
        sets["train"],
        sets["val"],
        sets["test"],
        scaler,
        columns,
        freq,
        borders,
        frame.name,
        meta={
            "path": str(path) if path else None,
            "features": features,
            "split": split,
            "n_rows": len(frame),
            "dates": frame.dates,
        },
    )
