"""Bad checkpoints: errors name the tensor / field and what is supported; .bin files only via weights_only."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from transmamba import CausalLM
from transmamba.interop import detect_format, files
from transmamba.interop.hf import SUPPORTED, config_from_hf
from transmamba.interop.parity import build

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def mamba2_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mamba2")
    build("mamba2", d)
    return d


def _copy(src, dst, *, config=None, tensors=None):
    dst.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "config.json").read_text()) if config is None else config
    (dst / "config.json").write_text(json.dumps(cfg))
    save_file(
        load_file(str(src / "model.safetensors")) if tensors is None else tensors,
        str(dst / "model.safetensors"),
    )
    return dst


@pytest.mark.parametrize("model_type", ["zamba2", "falcon_h1", "granitemoehybrid", "gpt2"])
def test_unsupported_model_type_names_supported_ones(model_type):
    with pytest.raises(ValueError) as err:
        config_from_hf({"model_type": model_type, "vocab_size": 10, "hidden_size": 8})
    msg = str(err.value)
    assert repr(model_type) in msg and all(mt in msg for mt in SUPPORTED)


def test_nemotron_latent_moe_is_refused_by_name():
    hf = {
        "model_type": "nemotron_h",
        "vocab_size": 10,
        "hidden_size": 32,
        "layers_block_type": ["mamba", "moe"],
        "num_attention_heads": 4,
        "mamba_num_heads": 4,
        "mamba_head_dim": 16,
        "ssm_state_size": 8,
        "intermediate_size": 16,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 8,
        "moe_latent_size": 16,
    }
    with pytest.raises(ValueError, match="'moe_latent_size' = 16"):
        config_from_hf(hf)


def test_unsupported_field_value_is_named():
    hf = {
        "model_type": "llama",
        "vocab_size": 10,
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "intermediate_size": 16,
        "rope_parameters": {"rope_type": "llama3"},
    }
    with pytest.raises(ValueError, match="rope_parameters.rope_type.*'llama3'.*only 'default'"):
        config_from_hf(hf)
    with pytest.raises(ValueError, match="'hidden_act' = 'gelu'"):
        config_from_hf({**hf, "rope_parameters": None, "hidden_act": "gelu"})


def test_config_and_tensor_shape_disagree(mamba2_dir, tmp_path):
    cfg = json.loads((mamba2_dir / "config.json").read_text())
    cfg["state_size"] = 4  # the tensors were made with 8
    bad = _copy(mamba2_dir, tmp_path / "bad", config=cfg)
    with pytest.raises(ValueError, match=r"tensor 'backbone\.layers\.0\.mixer\.in_proj\.weight' has shape"):
        CausalLM.from_pretrained(bad)


def test_missing_and_unexpected_tensors_are_listed(mamba2_dir, tmp_path):
    tensors = load_file(str(mamba2_dir / "model.safetensors"))
    tensors.pop("backbone.layers.1.mixer.D")
    tensors["backbone.layers.0.mixer.extra"] = torch.zeros(3)
    bad = _copy(mamba2_dir, tmp_path / "bad", tensors=tensors)
    with pytest.raises(ValueError) as err:
        CausalLM.from_pretrained(bad)
    msg = str(err.value)
    assert "missing tensor 'backbone.layers.1.mixer.D'" in msg
    assert "unexpected tensor 'backbone.layers.0.mixer.extra'" in msg


def test_bin_weights_load_only_with_weights_only(mamba2_dir, tmp_path, monkeypatch):
    d = tmp_path / "bin"
    d.mkdir()
    (d / "config.json").write_text((mamba2_dir / "config.json").read_text())
    torch.save(load_file(str(mamba2_dir / "model.safetensors")), d / "pytorch_model.bin")
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    model = CausalLM.from_pretrained(d)
    assert calls == [True]
    ref = CausalLM.from_pretrained(mamba2_dir)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


class _NotATensor:
    pass


def test_bin_with_arbitrary_objects_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba2"}))
    torch.save({"w": _NotATensor()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="never unpickled"):
        files.read_tensors(tmp_path)


def test_unknown_directory_kind(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"foo": 1}))
    with pytest.raises(ValueError, match="not a transmamba, HF transformers or mamba_ssm config"):
        detect_format(tmp_path)


def test_transmamba_keeps_native_format(tmp_path):
    model = CausalLM.from_preset("transmamba-tiny")
    with pytest.raises(ValueError, match="TransMamba .* native format"):
        model.save_pretrained(tmp_path, format="hf")
    model.save_pretrained(tmp_path)  # native still works
    assert detect_format(tmp_path) == "native"


def test_checkpoint_dtype_is_kept_unless_asked(tmp_path):
    """bf16 tensors load as a bf16 model (HF's dtype="auto"); dtype= casts; nothing is left on meta."""
    model = CausalLM.from_preset("mamba2-hybrid-8b-tiny").to(torch.bfloat16)
    model.save_pretrained(tmp_path, format="hf", model_type="nemotron_h")
    loaded = CausalLM.from_pretrained(tmp_path)
    assert loaded.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    assert not any(p.is_meta for p in loaded.parameters())
    assert CausalLM.from_pretrained(tmp_path, dtype=torch.float32).dtype == torch.float32
    ids = torch.randint(0, 512, (1, 9))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
