"""Dimba network: the bidirectional Mamba wrapper, shapes and gradients, zero init, guidance, presets, I/O."""

from __future__ import annotations

import math

import pytest
import torch

from transmamba.diffusion.model import (
    BiMamba,
    Dimba,
    DimbaBlock,
    DimbaConfig,
    cfg_combine,
    count_parameters,
    equal_params_config,
    preset_config,
    sincos_pos_embed_2d,
)
from transmamba.layers.mamba1 import Mamba1


def tiny(**kw) -> DimbaConfig:
    base = dict(
        image_size=8,
        in_channels=1,
        patch_size=2,
        d_model=32,
        depth=2,
        n_heads=4,
        num_classes=10,
        d_state=4,
        headdim=16,
        chunk_size=8,
    )
    return DimbaConfig(**{**base, **kw})


# ----------------------------------------------------------------------------------------------- BiMamba


@pytest.mark.parametrize("impl", ["ref", "chunked"])
def test_bimamba_is_forward_scan_plus_flipped_scan_flipped_back(impl):
    """BiMamba(u)[t] must equal fwd's causal output at t over u[:t+1] plus bwd's causal output at the last
    position of the reversed suffix u[t:] (computed token set by token set, independently of the flip code).
    Tolerance: fp32 scans of ≤ 7 tokens, differences are rounding of identical sums (≤ ~1e-6 relative)."""
    torch.manual_seed(0)
    fwd, bwd = Mamba1(16, d_state=4, scan_impl=impl), Mamba1(16, d_state=4, scan_impl=impl)
    layer = BiMamba(fwd, bwd)
    u = torch.randn(2, 7, 16)
    out = layer(u)
    for t in range(u.shape[1]):
        f = fwd(u[:, : t + 1])[:, -1]
        b = bwd(u[:, t:].flip(1))[:, -1]
        torch.testing.assert_close(out[:, t], f + b, rtol=1e-5, atol=1e-5)
    # and as whole sequences, forward and backward (gradients of both branches reach the input)
    u1, u2 = u.clone().requires_grad_(True), u.clone().requires_grad_(True)
    layer(u1).square().sum().backward()
    (fwd(u2) + bwd(u2.flip(1)).flip(1)).square().sum().backward()
    torch.testing.assert_close(u1.grad, u2.grad, rtol=1e-5, atol=1e-5)


def test_bimamba_directions_have_separate_parameters_and_see_the_whole_sequence():
    layer = BiMamba.from_config(tiny())
    assert {id(p) for p in layer.fwd.parameters()}.isdisjoint(id(p) for p in layer.bwd.parameters())
    u = torch.randn(1, 6, 32, requires_grad=True)
    layer(u)[:, 0].sum().backward()  # the first token depends on the last through the backward scan
    assert u.grad[:, -1].abs().sum() > 0
    with pytest.raises(ValueError, match=r"\(b, T, D\)"):
        layer(torch.randn(6, 32))


# ----------------------------------------------------------------------------------------------- network


def _randomize_zero_init(model: Dimba) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)


@pytest.mark.parametrize(
    "kw",
    [
        dict(arch="dimba"),
        dict(arch="dimba", mamba_per_attention=2),
        dict(arch="attention"),
        dict(arch="mamba"),
        dict(arch="dimba", mixer="mamba2"),
        dict(arch="dimba", mixer="transmamba", transpoint=4),
        dict(arch="dimba", learn_sigma=False),
        dict(arch="dimba", cond_dim=12, max_cond_tokens=5),
    ],
)
def test_shapes_and_every_parameter_gets_a_gradient(kw):
    cfg = tiny(**kw)
    model = Dimba(cfg)
    _randomize_zero_init(model)  # at init the zero gates block some gradients (tested below)
    x = torch.randn(3, 1, 8, 8)
    t = torch.tensor([0, 500, 999])
    if cfg.cond_dim:
        cond, mask = (
            torch.randn(3, 5, 12),
            torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]).bool(),
        )
    else:
        cond, mask = torch.tensor([1, 2, 9]), None
    out = model(x, t, cond, mask=mask, drop=torch.tensor([False, True, False]))
    assert out.shape == (3, cfg.out_channels, 8, 8)
    out.square().mean().backward()
    for name, p in model.named_parameters():
        if cfg.cond_dim and name == "cond_embedder.null":
            continue  # reached only through dropped rows of a text batch
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_layer_layout_follows_the_ratio():
    kinds = [type(m).__name__ for m in Dimba(tiny(depth=2, mamba_per_attention=3)).layers]
    assert kinds == ["DimbaBlock"] + ["MambaBlock"] * 3 + ["DimbaBlock"] + ["MambaBlock"] * 3
    kinds = [type(m).__name__ for m in Dimba(tiny(depth=4, attention_per_mamba=2)).layers]  # 2:1
    assert kinds == ["DimbaBlock", "DimbaBlock", "MambaBlock"] * 2
    assert tiny(depth=4, attention_per_mamba=2, mamba_per_attention=3).n_mamba_blocks == 6
    assert [type(m).__name__ for m in Dimba(tiny(arch="attention")).layers] == ["DimbaBlock"] * 2
    assert [type(m).__name__ for m in Dimba(tiny(arch="mamba")).layers] == ["AdaMambaBlock"] * 2


def test_adaln_zero_init_every_dimba_block_is_identity_and_output_is_zero():
    model = Dimba(tiny())
    h, c = torch.randn(2, 16, 32), torch.randn(2, 1, 32)
    s = model.t_block(torch.randn(2, 32))  # the shared adaLN projection of any embedding: zero at init
    assert s.abs().max() == 0
    for layer in model.layers:
        if isinstance(layer, DimbaBlock):
            torch.testing.assert_close(layer(h, s, c), h, rtol=0, atol=0)
    out = model(torch.randn(2, 1, 8, 8), torch.tensor([3, 700]), torch.tensor([0, 1]))
    assert out.abs().max() == 0
    # the gates are zero but trainable: one SGD step makes the network non-trivial
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    target = torch.randn(2, 2, 8, 8)
    for _ in range(2):
        loss = (
            (model(torch.randn(2, 1, 8, 8), torch.tensor([3, 700]), torch.tensor([0, 1])) - target)
            .square()
            .mean()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert any(layer.table[2].abs().sum() > 0 for layer in model.layers if isinstance(layer, DimbaBlock))


def test_classifier_free_guidance_combination():
    torch.manual_seed(1)
    model = Dimba(tiny()).eval()
    _randomize_zero_init(model)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([10, 900]), torch.tensor([4, 7])
    with torch.no_grad():
        c = model(x, t, y, drop=torch.tensor([False, False]))
        u = model(x, t, y, drop=torch.tensor([True, True]))
        assert not torch.allclose(c, u)  # the condition matters
        for s in (0.0, 1.0, 4.5):
            g = model.forward_with_cfg(x, t, y, s)
            torch.testing.assert_close(g[:, :1], u[:, :1] + s * (c[:, :1] - u[:, :1]), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(g[:, 1:], c[:, 1:], rtol=1e-5, atol=1e-5)  # variance: conditional
    torch.testing.assert_close(cfg_combine(torch.ones(2), torch.zeros(2), 3.0), torch.full((2,), 3.0))


def test_condition_dropout_uses_the_null_class_in_training_only():
    cfg = tiny(class_dropout=0.5)
    model = Dimba(cfg)
    emb = model.cond_embedder
    tokens, _ = emb(torch.tensor([3, 3]), torch.tensor([True, False]))
    torch.testing.assert_close(tokens[0, 0], emb.table.weight[cfg.num_classes])
    torch.testing.assert_close(tokens[1, 0], emb.table.weight[3])
    model.eval()
    x, t, y = torch.randn(64, 1, 8, 8), torch.full((64,), 5), torch.zeros(64, dtype=torch.long)
    _randomize_zero_init(model)
    with torch.no_grad():
        a, b = model(x, t, y), model(x, t, y)
    torch.testing.assert_close(a, b)  # eval: no random dropping


# ----------------------------------------------------------------------------------------------- presets


def _mamba1_params(d: int, d_state: int = 16, expand: int = 2, d_conv: int = 4) -> int:
    di, r = expand * d, math.ceil(d / 16)
    return d * 2 * di + di * d_conv + di + di * (r + 2 * d_state) + r * di + di + di * d_state + di + di * d


def _dimba_params(
    d: int, depth: int, patch: int = 2, c: int = 4, cond_dim: int = 4096, tokens: int = 120
) -> int:
    """Independent count from the module doc's shapes (Dimba, text mode, learned variance, ratio 1:1)."""
    attn_block = (
        (3 * d * d + 3 * d)
        + (d * d + d)
        + (d * d + d)
        + (2 * d * d + 2 * d)
        + (d * d + d)
        + (d * 4 * d + 4 * d)
        + (4 * d * d + d)
        + 6 * d
    )
    mamba_block = d + 2 * _mamba1_params(d)
    embed = (c * patch * patch * d + d) + (256 * d + d + d * d + d) + (d * 6 * d + 6 * d)
    cond = cond_dim * d + d + d * d + d + tokens * cond_dim
    final = 2 * d + d * patch * patch * 2 * c + patch * patch * 2 * c
    return depth * (attn_block + mamba_block) + embed + cond + final


def test_preset_parameter_counts():
    l2 = count_parameters(preset_config("dimba-l/2"))
    assert l2 == _dimba_params(1152, 28)
    assert 1.0e9 < l2 < 1.1e9  # docstring: 1.08 B (the paper's ~0.9 B shares the two directions' projections)
    g2 = count_parameters(preset_config("dimba-g/2"))
    assert g2 == _dimba_params(1408, 40)
    assert 2.2e9 < g2 < 2.4e9
    for name in ("dimba-tiny", "dimba-l/2-tiny", "dimba-g/2-tiny"):
        cfg = preset_config(name)
        assert count_parameters(cfg) == Dimba(cfg).num_parameters()
    with pytest.raises(ValueError, match="unknown Dimba preset"):
        preset_config("dimba-xl")


def test_equal_params_baselines_are_the_closest_depth():
    from dataclasses import replace

    cfg = preset_config("dimba-l/2-tiny")
    target = count_parameters(cfg)
    for arch in ("attention", "mamba"):
        base = equal_params_config(cfg, arch)
        assert base.arch == arch and base.d_model == cfg.d_model
        gap = abs(count_parameters(base) - target)
        for depth in (base.depth - 1, base.depth + 1):
            if depth >= 1:
                assert gap <= abs(count_parameters(replace(base, depth=depth)) - target)


# ----------------------------------------------------------------------------------------------- misc


def test_sincos_pos_embed_is_2d_and_distinct():
    pe = sincos_pos_embed_2d(16, 4)
    assert pe.shape == (16, 16)
    # first half depends on the column only, second half on the row only (row-major tokens)
    torch.testing.assert_close(pe[0, :8], pe[4, :8])
    torch.testing.assert_close(pe[0, 8:], pe[1, 8:])
    assert torch.cdist(pe, pe).add(torch.eye(16)).min() > 0


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="arch"):
        tiny(arch="unet")
    with pytest.raises(ValueError, match="mixer"):
        tiny(mixer="lstm")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        tiny(image_size=9)
    with pytest.raises(ValueError, match="divisible by n_heads"):
        tiny(n_heads=5)
    model = Dimba(tiny())
    with pytest.raises(ValueError, match=r"x must be \(b, 1, H, W\)"):
        model(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="multiples of patch"):
        model(torch.randn(2, 1, 7, 7), torch.tensor([1, 2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 10\)"):
        model(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 10]))
    with pytest.raises(ValueError, match=r"t must be \(b,\)"):
        model(torch.randn(2, 1, 8, 8), torch.tensor([1, 2, 3]), torch.tensor([0, 1]))
    text = Dimba(tiny(cond_dim=12, max_cond_tokens=5))
    with pytest.raises(ValueError, match="text condition must be"):
        text(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), torch.randn(2, 6, 12))


def test_save_and_load_round_trip(tmp_path):
    model = Dimba(tiny(mamba_per_attention=2))
    _randomize_zero_init(model)
    model.save_pretrained(tmp_path / "m", extra={"note": 1})
    loaded, meta = Dimba.from_pretrained(tmp_path / "m")
    assert meta["note"] == 1 and loaded.config == model.config
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1])
    model.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, y), model(x, t, y), rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="config.json"):
        Dimba.from_pretrained(tmp_path / "nothing")
