"""LTSF-style data pipeline: splits and windows against hand-computed indices, train-only scaling,
time features, malformed CSVs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transmamba.forecasting.data import (
    ForecastDataError,
    StandardScaler,
    load_forecast_data,
    read_csv,
    split_borders,
    synthetic_series,
    time_features,
)


def _write_csv(path, n_rows=50, *, start="2016-07-01 00:00:00", cols=("a", "b", "OT"), fn=None):
    base = np.datetime64(start.replace(" ", "T"), "s")
    lines = ["date," + ",".join(cols)]
    for r in range(n_rows):
        d = str(base + np.timedelta64(3600 * r, "s")).replace("T", " ")
        vals = fn(r) if fn else [r, 10 * r + 1, -r]
        lines.append(d + "," + ",".join(str(v) for v in vals))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_ratio_split_and_windows_hand_computed(tmp_path):
    # 50 rows, seq_len 4: n_train = int(35) = 35, n_test = int(10) = 10, n_val = 5
    csv = _write_csv(tmp_path / "toy.csv")
    data = load_forecast_data(csv, seq_len=4, label_len=1, pred_len=2, scale=False)
    assert data.borders == {"train": (0, 35), "val": (31, 40), "test": (36, 50)}
    # windows per split: rows - L - H + 1
    assert (len(data.train), len(data.val), len(data.test)) == (30, 4, 9)
    # column 'a' holds the file row index, so windows can be read off directly
    x, y, xm, ym = data.val[2]  # val starts at row 31: x = rows 33..36, y = rows 36..38
    assert x[:, 0].tolist() == [33, 34, 35, 36]
    assert y[:, 0].tolist() == [36, 37, 38]
    assert x[:, 1].tolist() == [331, 341, 351, 361]
    x, y, _, _ = data.test[len(data.test) - 1]  # the last window ends on the last row (49)
    assert x[:, 0].tolist() == [44, 45, 46, 47] and y[:, 0].tolist() == [47, 48, 49]
    # the first val target follows the last train row; the first test target follows the last val row
    assert data.val[0][1][-2, 0].item() == 35 and data.test[0][1][-2, 0].item() == 40
    # batched gather agrees with item access
    bx, by, bxm, bym = data.train.batch([0, 7, 29])
    for k, i in enumerate([0, 7, 29]):
        ix, iy, ixm, iym = data.train[i]
        assert torch.equal(bx[k], ix) and torch.equal(by[k], iy)
        assert torch.equal(bxm[k], ixm) and torch.equal(bym[k], iym)
    assert xm.shape == (4, 4) and ym.shape == (3, 4)  # hourly -> 4 time features


def test_ett_borders_hand_computed():
    assert split_borders(17420, 96, "ett-hour") == {
        "train": (0, 8640),
        "val": (8544, 11520),
        "test": (11424, 14400),
    }
    assert split_borders(69680, 192, "ett-minute") == {
        "train": (0, 34560),
        "val": (34368, 46080),
        "test": (45888, 57600),
    }
    with pytest.raises(ForecastDataError, match="at least 14400 rows"):
        split_borders(1000, 96, "ett-hour")


def test_scaler_sees_only_train_rows(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.normal(size=(60, 3)) * [1, 5, 2] + [0, 3, -1]
    csv1 = _write_csv(tmp_path / "one.csv", 60, fn=lambda r: base[r])
    # same train rows (first int(0.7*60) = 42), wildly different val/test rows
    csv2 = _write_csv(tmp_path / "two.csv", 60, fn=lambda r: base[r] if r < 42 else base[r] * 100 + 1e4)
    d1 = load_forecast_data(csv1, seq_len=4, pred_len=2)
    d2 = load_forecast_data(csv2, seq_len=4, pred_len=2)
    assert d1.borders["train"] == (0, 42)
    np.testing.assert_array_equal(d1.scaler.mean, d2.scaler.mean)
    np.testing.assert_array_equal(d1.scaler.std, d2.scaler.std)
    np.testing.assert_allclose(d1.scaler.mean, base[:42].mean(0))
    np.testing.assert_allclose(d1.scaler.std, base[:42].std(0))
    # train windows are standardised with those stats; val windows differ between the files
    torch.testing.assert_close(d1.train.data, d2.train.data)
    assert not torch.allclose(d1.test.data, d2.test.data)
    s = StandardScaler().fit(base[:42])
    np.testing.assert_allclose(s.inverse_transform(s.transform(base)), base)


def test_time_features_timef():
    dates = np.array(["2016-07-01T00:00", "2016-07-03T23:00", "2017-01-01T12:00"], dtype="datetime64[s]")
    f = time_features(dates, "h")  # hour, weekday, day-of-month, day-of-year
    # 2016-07-01 is a Friday (4), day-of-year 183; 2016-07-03 Sunday (6); 2017-01-01 Sunday, day 1
    expected = [[0 / 23, 4 / 6, 0 / 30, 182 / 365], [23 / 23, 6 / 6, 2 / 30, 184 / 365], [12 / 23, 1, 0, 0]]
    np.testing.assert_allclose(f, np.array(expected) - 0.5, atol=1e-6)
    assert time_features(dates, "d").shape == (3, 3)
    assert f.min() >= -0.5 and f.max() <= 0.5


def test_slash_dates_and_daily_freq(tmp_path):
    p = tmp_path / "fx.csv"
    p.write_text("date,0,OT\n1990/1/1 0:00,1.0,2.0\n1990/1/2 0:00,1.5,2.5\n1990/1/3 0:00,1.2,2.1\n")
    fr = read_csv(p)
    assert str(fr.dates[2]) == "1990-01-03T00:00:00" and fr.columns == ["0", "OT"]


def test_features_s_and_synthetic_default():
    d = load_forecast_data(None, seq_len=24, pred_len=12, features="S", synthetic_steps=600)
    assert d.columns == ["OT"] and d.train.data.shape[1] == 1
    a, b = synthetic_series(300, 3, seed=5), synthetic_series(300, 3, seed=5)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.allclose(a.values, synthetic_series(300, 3, seed=6).values)
    assert (np.diff(a.dates.astype(np.int64)) == 3600).all()


def test_missing_date_column(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("time,a\n2016-07-01 00:00:00,1\n")
    with pytest.raises(ForecastDataError, match="no 'date' column"):
        load_forecast_data(p)


def test_non_numeric_value_names_column_and_row(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("date,a,b\n2016-07-01 00:00:00,1,2\n2016-07-01 01:00:00,1,2\n2016-07-01 02:00:00,1,abc\n")
    with pytest.raises(ForecastDataError, match=r"row 3 \(line 4\), column 'b': non-numeric value 'abc'"):
        read_csv(p)
    p.write_text("date,a\n2016-07-01 00:00:00,1\nyesterday,2\n")
    with pytest.raises(ForecastDataError, match="row 2.*cannot parse date 'yesterday'"):
        read_csv(p)


def test_too_few_rows_for_a_window(tmp_path):
    csv = _write_csv(tmp_path / "short.csv", 30)
    # 30 rows: test = int(6) rows + seq_len 4 = 10 rows < 4 + 8
    with pytest.raises(ForecastDataError, match="one window needs seq_len \\+ pred_len"):
        load_forecast_data(csv, seq_len=4, pred_len=8)
    with pytest.raises(ForecastDataError, match="too few"):
        load_forecast_data(csv, seq_len=25, pred_len=1)
