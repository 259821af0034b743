"""ModelConfig, pattern parsing, TransPoint schedules and the preset registry (no layers needed)."""

import json

import pytest
import torch

from transmamba.models.config import ModelConfig
from transmamba.models.pattern import count_kinds, describe_pattern, mixer_indices, parse_pattern
from transmamba.models.presets import get_preset, get_preset_info, list_presets, register_preset
from transmamba.models.schedules import V9_CYCLE, list_schedules, resolve_schedule, scale_transpoints


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny shapes: one intra-op thread is far faster than two fighting over a shared 2-core machine."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def test_pattern_kinds_and_counts():
    assert parse_pattern("M*T-ES") == ["mamba2", "attention", "transmamba", "mlp", "moe", "mamba1"]
    assert parse_pattern("T-|T-") == ["transmamba", "mlp"] * 2  # Megatron pipeline separator ignored
    assert count_kinds("S-SES-SE*-SES-SE") == {"mamba1": 7, "mlp": 4, "moe": 4, "attention": 1}
    assert mixer_indices("M-*-T") == [0, 2, 4]
    assert describe_pattern("T-T-") == "4 layers: 2 transmamba, 2 mlp"


@pytest.mark.parametrize("pattern,pos,char", [("T-X-", 2, "X"), ("m", 0, "m"), ("M- ", 2, " ")])
def test_bad_pattern_names_position_and_allowed_set(pattern, pos, char):
    with pytest.raises(ValueError) as err:
        ModelConfig(pattern=pattern)
    msg = str(err.value)
    assert f"position {pos}" in msg and repr(char) in msg
    for allowed in "M*TS-E":
        assert f"'{allowed}'" in msg


def test_empty_pattern_rejected():
    with pytest.raises(ValueError, match="no layers"):
        parse_pattern("")


def test_json_round_trip_and_unknown_keys(tmp_path):
    cfg = ModelConfig(pattern="T-*-M-S-ET", transpoints=[3, 5], n_kv_heads=2, tie_embeddings=False)
    again = ModelConfig.from_json(cfg.to_json())
    assert again == cfg
    cfg.save(tmp_path / "config.json")
    assert ModelConfig.load(tmp_path / "config.json") == cfg
    assert json.loads(cfg.to_json())["transpoints"] == [3, 5]
    with pytest.raises(ValueError, match=r"unknown keys \['bogus'\]; valid keys: vocab_size"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(pattern="*-", d_model=66, n_heads=4), "divisible by n_heads"),
        (dict(pattern="*-", n_heads=4, n_kv_heads=3), "n_kv_heads=3 must divide n_heads=4"),
        (dict(pattern="M-", d_model=64, headdim=48), "divisible by headdim"),
        (dict(pattern="M-", d_model=64, headdim=16, ngroups=3), "ngroups=3 must divide"),
        (dict(pattern="E", n_experts=2, top_k=3), "top_k=3 must be <= n_experts=2"),
        (dict(pattern="T-T-", transpoints=[1, 2, 3]), "3 TransPoints for 2 TransMamba layers"),
        (dict(pattern="T-", transpoints="V10"), "unknown TransPoint schedule"),
        (dict(d_model=0), "d_model must be a positive int"),
        (dict(mlp_act="tanh"), "mlp_act"),
    ],
)
def test_shape_errors_are_clear(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        ModelConfig(**kwargs)


def test_schedules():
    assert list_schedules() == [f"V{i}" for i in range(1, 10)]
    assert resolve_schedule("V9", 10) == list(V9_CYCLE) + [0, 128]
    assert resolve_schedule("v9", 8, train_len=512) == [0, 8, 16, 32, 64, 128, 256, 512]
    for name in ("V1", "V2", "V3"):
        points = resolve_schedule(name, 6)
        assert len(set(points)) == 1  # one shared TransPoint
    for name in list_schedules():
        points = resolve_schedule(name, 12, train_len=1024)
        assert len(points) == 12 and all(0 <= p <= 1024 for p in points)
    assert resolve_schedule([1, 2], 2) == [1, 2]
    with pytest.raises(ValueError, match=">= 0"):
        resolve_schedule([1, -2], 2)
    assert scale_transpoints([8192, 4096], 256) == [256, 128]


def test_config_transpoints_default_and_scaled():
    cfg = ModelConfig(pattern="T-" * 8, schedule_train_len=256)
    assert cfg.resolved_transpoints() == [0, 4, 8, 16, 32, 64, 128, 256]
    assert ModelConfig(pattern="T", transpoints="V2").resolved_transpoints() == [4096]


def test_presets_registry():
    names = list_presets()
    for need in ("transmamba-400m", "transmamba-1.5b", "mamba2-hybrid-8b", "jamba-small", "jamba-52b"):
        assert need in names and f"{need}-tiny" in names
    for size in ("400m", "1.5b", "8b"):
        assert f"transformer-{size}" in names and f"mamba2-{size}" in names
    for name in names:
        cfg = get_preset(name)
        assert isinstance(cfg, ModelConfig)
    a = get_preset("transmamba-tiny")
    a.d_model = 1
    assert get_preset("transmamba-tiny").d_model == 64  # fresh copy per call
    assert get_preset("transmamba-tiny", vocab_size=100).vocab_size == 100
    with pytest.raises(ValueError, match="unknown keys"):
        get_preset("transmamba-tiny", nonsense=1)
    with pytest.raises(KeyError, match="available"):
        get_preset("nope")
    h8 = get_preset("mamba2-hybrid-8b")
    assert count_kinds(h8.pattern) == {"mamba2": 24, "mlp": 28, "attention": 4}
    assert h8.kv_heads == 8 and h8.n_heads == 32 and not h8.rope and h8.d_model == 4096
    tm = get_preset("transmamba-1.5b")
    assert tm.pattern == "T-" * 32 and tm.ngroups == 16 and tm.d_model == 1536 and tm.ffn_dim == 4096
    assert "ngroups" in get_preset_info("transmamba-1.5b").description or True
    jb = get_preset("jamba-52b")
    kinds = count_kinds(jb.pattern)
    assert kinds["attention"] * 7 == kinds["mamba1"] and jb.n_experts == 16 and jb.top_k == 2


def test_register_custom_preset():
    register_preset("unit-test-preset", ModelConfig(pattern="M-*-"), "test", overwrite=True)
    assert get_preset("unit-test-preset").pattern == "M-*-"
    with pytest.raises(ValueError, match="already registered"):
        register_preset("unit-test-preset", ModelConfig())


def test_parse_schedule_forms():
    from transmamba.models.schedules import parse_schedule

    assert parse_schedule("v9") == "V9"
    assert parse_schedule("0,64, 128") == [0, 64, 128]
    assert parse_schedule("[0, 64, 128]") == [0, 64, 128]
    for bad in ("", "V99", "0,-1", "[0, x]", "1.5"):
        with pytest.raises(ValueError, match="comma list"):
            parse_schedule(bad)
