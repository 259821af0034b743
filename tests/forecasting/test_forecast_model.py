"""Mambaformer family: layer order, embedding without positions, placeholder tokens, no target leak,
mixer kinds, persistence, and a few training steps on ETTh1 that lower the loss."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from transmamba.forecasting.data import load_forecast_data
from transmamba.forecasting.loop import TrainConfig, forecast_step, train_forecaster
from transmamba.forecasting.model import ARCHS, Mambaformer, MambaformerConfig


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny ops: one thread is far faster than two on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(**kw) -> Mambaformer:
    base = dict(n_vars=3, n_time_features=4, d_model=16, n_heads=2, d_state=4, dropout=0.0)
    base.update(kw)
    return Mambaformer(MambaformerConfig(**base))


def _shared_data() -> Path:
    env = os.environ.get("TRANSMAMBA_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def test_layer_order_per_arch():
    kinds = {a: Mambaformer.sublayer_kinds(MambaformerConfig(arch=a, d_model=16, n_heads=2)) for a in ARCHS}
    assert kinds == {
        "mambaformer": ["mamba", "attention", "mamba"],
        "attention-mamba": ["attention", "mamba"],
        "mamba-attention": ["mamba", "attention"],
        "mamba": ["mamba", "mamba"],
        "transformer": ["attention", "ffn"],
    }
    m = _tiny(arch="mambaformer", n_layers=2)
    assert [layer.kind for layer in m.layers] == ["mamba", "attention", "mamba", "attention", "mamba"]
    assert all(isinstance(layer.norm, torch.nn.LayerNorm) for layer in m.layers)


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_shapes(arch):
    m = _tiny(arch=arch)
    x, mark = torch.randn(2, 20, 3), torch.rand(2, 20, 4) - 0.5
    assert m(x, mark).shape == (2, 20, 3)


@pytest.mark.parametrize("mixer", ["mamba2", "transmamba"])
def test_other_mixers(mixer):
    m = _tiny(mixer=mixer, transpoint=8)
    out = m(torch.randn(2, 20, 3), torch.rand(2, 20, 4) - 0.5)
    assert out.shape == (2, 20, 3) and torch.isfinite(out).all()
    assert type(m.layers[0].fn.layer).__name__ == {"mamba2": "Mamba2", "transmamba": "TransMamba"}[mixer]


def test_mambaformer_has_no_positional_encoding():
    m = _tiny().eval()
    assert m.config.use_positional is False and _tiny(arch="transformer").config.use_positional is True
    x, mark = torch.randn(2, 12, 3), torch.rand(2, 12, 4) - 0.5
    torch.testing.assert_close(m.embed(x, mark), m.value_embedding(x) + m.time_embedding(mark))
    m_val = _tiny(time_features=False).eval()
    torch.testing.assert_close(m_val.embed(x, mark), m_val.value_embedding(x))
    # value embedding: kernel-3 conv with circular padding along time
    conv = m.value_embedding.conv
    assert conv.kernel_size == (3,) and conv.padding_mode == "circular" and conv.bias is None


def test_placeholders_and_no_target_leak():
    torch.manual_seed(1)
    m = _tiny().eval()
    L, H = 16, 8
    y = torch.randn(2, L + H, 3)
    y_mark = torch.rand(2, L + H, 4) - 0.5
    pred = forecast_step(m, y, y_mark, H)
    assert pred.shape == (2, H, 3)
    # the targets never reach the model: change them, same forecast
    y2 = y.clone()
    y2[:, L:] = torch.randn(2, H, 3) * 10
    torch.testing.assert_close(forecast_step(m, y2, y_mark, H), pred)
    # the placeholders carry zeros plus the future time features, which the model does use
    dec = torch.cat([y[:, :L], torch.zeros(2, H, 3)], 1)
    torch.testing.assert_close(m(dec, y_mark)[:, -H:], pred)
    torch.testing.assert_close(m.forecast(y[:, :L], y_mark[:, :L], y_mark[:, L:]), pred)
    mark2 = y_mark.clone()
    mark2[:, L:] = -mark2[:, L:]
    assert not torch.allclose(forecast_step(m, y, mark2, H), pred)


def test_save_load_roundtrip(tmp_path):
    m = _tiny(arch="attention-mamba").eval()
    m.save_pretrained(tmp_path / "ck", {"note": 1})
    m2, meta = Mambaformer.from_pretrained(tmp_path / "ck")
    assert meta["note"] == 1 and m2.config == m.config
    x, mark = torch.randn(1, 10, 3), torch.rand(1, 10, 4)
    torch.testing.assert_close(m2.eval()(x, mark), m(x, mark))


def test_config_errors():
    with pytest.raises(ValueError, match="arch 'bogus'"):
        MambaformerConfig(arch="bogus")
    with pytest.raises(ValueError, match="mixer"):
        MambaformerConfig(mixer="rnn")
    with pytest.raises(ValueError, match="divisible"):
        MambaformerConfig(d_model=30, n_heads=8)
    with pytest.raises(ValueError, match=r"x must be \(b, t, 3\)"):
        _tiny()(torch.randn(1, 5, 4), torch.rand(1, 5, 4))


def test_training_on_etth1_lowers_loss():
    path = _shared_data() / "ETT-small" / "ETTh1.csv"
    if not path.is_file():
        path = _shared_data() / "ETTh1.csv"
    if not path.is_file():
        pytest.skip(f"ETTh1.csv not found under {_shared_data()} (set TRANSMAMBA_SHARED_DATA)")
    torch.manual_seed(0)
    data = load_forecast_data(path, seq_len=48, pred_len=24)
    m = Mambaformer(
        MambaformerConfig(
            n_vars=data.n_vars,
            n_time_features=data.n_time_features,
            d_model=16,
            n_heads=2,
            d_state=8,
            dropout=0.0,
        )
    )
    probe = data.train.batch(torch.arange(0, 6400, 100))  # 64 fixed training windows

    def probe_loss():
        with torch.no_grad():
            m.eval()
            return torch.nn.functional.mse_loss(
                forecast_step(m, probe[1], probe[3], 24), probe[1][:, -24:]
            ).item()

    before = probe_loss()
    cfg = TrainConfig(epochs=1, batch_size=16, lr=3e-3, max_train_windows=16 * 25, max_eval_windows=32)
    hist = train_forecaster(m, data, cfg, log=None)
    after = probe_loss()
    assert hist["steps"] == 25
    assert after < 0.8 * before, (before, after)


def test_revin_forecast_is_equivariant_to_each_variables_scale_and_level():
    """With instance normalisation the model sees (known - μ) / σ per window and variable, so rescaling and
    shifting a variable's known rows rescales and shifts its forecast the same way (exactly, up to fp32
    rounding of the normalisation)."""
    torch.manual_seed(2)
    m = _tiny(revin=True).eval()
    known, mark = torch.randn(2, 16, 3), torch.rand(2, 24, 4) - 0.5
    scale, shift = torch.tensor([3.0, 0.5, 10.0]), torch.tensor([-4.0, 2.0, 100.0])
    with torch.no_grad():
        base = m.forecast_window(known, mark)
        moved = m.forecast_window(known * scale + shift, mark)
    assert base.shape == (2, 8, 3)
    torch.testing.assert_close(moved, base * scale + shift, rtol=1e-4, atol=1e-3)
    plain = _tiny(revin=False).eval()  # the same check fails without it
    with torch.no_grad():
        assert not torch.allclose(plain.forecast_window(known * scale + shift, mark),
                                  plain.forecast_window(known, mark) * scale + shift, atol=1e-2)


def test_revin_round_trips_through_a_checkpoint(tmp_path):
    m = _tiny(revin=True).eval()
    m.save_pretrained(tmp_path / "ck")
    m2, _ = Mambaformer.from_pretrained(tmp_path / "ck")
    assert m2.config.revin is True
