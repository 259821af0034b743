"""save_pretrained(format="hf") from the library's own presets: HF transformers loads each directory and
computes the same logits (fp32), with the model_type that fits the pattern."""

import pytest
import torch

from transmamba import CausalLM
from transmamba.interop.parity import rel_err

transformers = pytest.importorskip("transformers")

PRESETS = {
    "jamba-tiny": "jamba",
    "mamba2-hybrid-8b-tiny": "nemotron_h",
    "transformer-tiny": "llama",
    "mamba2-8b-tiny": "mamba2",
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_round_trips_through_hf(preset, tmp_path):
    torch.manual_seed(0)
    ours = CausalLM.from_preset(preset).eval()
    with torch.no_grad():  # move every parameter off its init value
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ours.save_pretrained(tmp_path, format="hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert hf.config.model_type == PRESETS[preset]
    ids = torch.randint(0, ours.config.vocab_size, (2, 41))
    with torch.no_grad():
        assert rel_err(ours(ids).logits, hf(ids).logits) <= 1e-4
    back = CausalLM.from_pretrained(tmp_path)
    assert back.config.pattern == ours.config.pattern


def test_pattern_without_hf_counterpart_lists_every_reason(tmp_path):
    """'M-' pairs with SwiGLU MLPs: Bamba's layout, but HF's Bamba needs an attention layer."""
    with pytest.raises(ValueError) as err:
        CausalLM.from_preset("mamba2-tiny").save_pretrained(tmp_path, format="hf")
    msg = str(err.value)
    assert "fits no HF architecture" in msg and "bamba: needs at least one attention layer" in msg
    assert "nemotron_h: needs mlp_act relu2 or gelu" in msg
