"""CausalLM keeps torch's default init for the in_proj of Mamba-2 / TransMamba mixers (mamba_ssm's and HF's
choice) instead of N(0, init_std): at d_model 64 the old N(0, 0.02) made the C·B products 1/13 as large."""

import math

import torch

from transmamba.models.config import ModelConfig
from transmamba.models.lm import CausalLM


def test_ssm_in_proj_keeps_torchs_default_init_other_linears_get_init_std():
    torch.manual_seed(0)
    d = 64
    model = CausalLM(ModelConfig(vocab_size=128, d_model=d, pattern="M-T-*-", init_std=0.02, ssm_bias=True))
    bound = 1 / math.sqrt(d)  # kaiming_uniform(a=√5) on fan_in d: U(-1/√d, 1/√d), sd 1/√(3d) = 0.072
    for name, p in model.named_parameters():
        p = p.detach()
        if name.endswith("mixer.in_proj.weight"):
            assert float(p.abs().max()) <= bound
            # sd of ~45 000 uniform draws: relative error of the sample sd ~ 0.4 %; 5 % is generous
            assert abs(float(p.std()) - bound / math.sqrt(3)) < 0.05 * bound / math.sqrt(3)
        if name.endswith("mixer.in_proj.bias"):
            assert float(p.abs().max()) == 0.0
    # attention and MLP keep N(0, init_std): sample sd of 4 096 / 12 288 draws, ~1 % error; 10 % bound
    for w in (model.blocks[4].mixer.q_proj.weight, model.blocks[1].mixer.up_proj.weight):
        assert abs(float(w.detach().std()) - 0.02) < 0.002
