"""Training-speed options change no result: fused chunked loss, activation checkpointing, TransMamba's
full-SSD training path (vs converter + suffix SSD), the equal-size Transformer preset, the FLOP count."""

import pytest
import torch

from transmamba.layers import TransMamba
from transmamba.models import get_preset
from transmamba.models.config import ModelConfig
from transmamba.models.flops import forward_flops_per_token, train_flops_per_token
from transmamba.models.lm import CausalLM

SMALL = dict(vocab_size=61, d_model=32, n_heads=4, d_ff=48, d_state=8, headdim=8, ngroups=2, chunk_size=4,
             max_seq_len=64)


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _grads(model, ids, labels):
    out = model(ids, labels=labels)
    grads = torch.autograd.grad(out.loss, list(model.parameters()), allow_unused=True)
    return out, [torch.zeros(()) if g is None else g for g in grads]


def test_fused_loss_and_checkpointing_match_plain():
    torch.manual_seed(0)
    cfg = ModelConfig(pattern="T-M*-T-", transpoints=[3, 30], **SMALL)
    model = CausalLM(cfg).double()
    ids = torch.randint(0, cfg.vocab_size, (2, 23))
    labels = ids.clone()
    labels[0, 5:9] = -100
    ref, gref = _grads(model, ids, labels)
    model.fused_loss, model.loss_chunk_size, model.gradient_checkpointing = True, 7, True
    out, g = _grads(model, ids, labels)
    assert out.logits is None
    # the plain path takes CE of fp32 logits; fp64 model: agreement to fp32 rounding
    assert abs(out.loss.item() - ref.loss.item()) < 1e-6
    for a, b in zip(g, gref):
        assert (a - b).norm() <= 1e-5 * b.norm() + 1e-12


@pytest.mark.parametrize("P", [1, 5, 8])
def test_transmamba_full_ssd_path_equals_converter(P):
    torch.manual_seed(P)
    layer = TransMamba(16, d_state=8, headdim=8, ngroups=2, chunk_size=4, transpoint=P).double()
    x = torch.randn(2, 13, 16, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 13, 16, dtype=torch.float64)
    outs = []
    for full in (False, True):
        layer.full_ssd_in_training = full
        y = layer(x)
        gs = torch.autograd.grad(y, [x, *layer.parameters()], dy, allow_unused=True)
        outs.append((y, [torch.zeros(()) if g is None else g for g in gs]))
    (y0, g0), (y1, g1) = outs
    assert torch.allclose(y0, y1, atol=1e-10)
    for a, b in zip(g0, g1):
        assert torch.allclose(a, b, atol=1e-9)


def test_default_full_ssd_only_on_cuda_with_grad():
    layer = TransMamba(16, d_state=8, headdim=8, chunk_size=4, transpoint=2)
    assert layer.full_ssd_in_training is None
    assert not layer._full_ssd(torch.randn(1, 4, 2, 8, requires_grad=True))  # CPU: converter path


def test_equal_size_transformer_preset():
    tm, tf = get_preset("transmamba-400m"), get_preset("transformer-400m-eq")
    assert tf.vocab_size == tm.vocab_size and tf.d_model == tm.d_model and tf.n_layers == tm.n_layers
    with torch.device("meta"):
        n_tm = CausalLM(tm).num_parameters(exclude_embeddings=True)
        n_tf = CausalLM(tf).num_parameters(exclude_embeddings=True)
    assert abs(n_tf - n_tm) < 0.005 * n_tm


def test_flops_split():
    tf = get_preset("transformer-400m-eq")
    f = forward_flops_per_token(tf, 8192)
    # 12 attention layers, 16 heads x 96, causal: 2 x (T+1)/2 x 16 x 192 each
    assert f["attention"] == pytest.approx(12 * 8193 * 16 * 192)
    assert f["ssd"] == 0
    tm = get_preset("transmamba-400m", transpoints=[8192] * 12)  # all attention at T = 8192
    g = forward_flops_per_token(tm, 8192)
    assert g["ssd"] == 0 and g["attention"] == pytest.approx(12 * 8192 * 8193 / 8192 * 16 * (128 + 192))
    m = forward_flops_per_token(get_preset("transmamba-400m", transpoints=[0] * 12), 8192)
    assert m["attention"] == 0 and m["ssd"] > 0
    assert train_flops_per_token(tf, 8192)["total"] == pytest.approx(3 * f["total"])
    with pytest.raises(ValueError):
        forward_flops_per_token(tf, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("P", [0, 200, 333, 1000])
def test_transmamba_layer_training_path_gpu(P):
    """The CUDA training path (Triton conv / SSD / norm, cuDNN attention without padding, one full SSD)
    against the fp64 CPU reference path (converter + suffix SSD), forward and every gradient."""
    torch.manual_seed(P)
    ref = TransMamba(256, d_state=128, headdim=64, ngroups=4, chunk_size=64, transpoint=P).double()
    gpu = TransMamba(256, d_state=128, headdim=64, ngroups=4, chunk_size=64, transpoint=P).cuda()
    gpu.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    x = torch.randn(2, 700, 256, dtype=torch.float64)
    dy = torch.randn(2, 700, 256, dtype=torch.float64)
    xr, xg = x.clone().requires_grad_(), x.float().cuda().requires_grad_()
    yr = ref(xr)
    gr = torch.autograd.grad(yr, [xr, *ref.parameters()], dy, allow_unused=True)
    for dtype, tol in ((torch.float32, 2e-3), (torch.bfloat16, 3e-2)):
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            yg = gpu(xg)
        gg = torch.autograd.grad(yg, [xg, *gpu.parameters()], dy.to(yg.dtype).cuda(), allow_unused=True)
        assert (yg.double().cpu() - yr).norm() <= tol * yr.norm()
        for name, a, b in zip(["x", *dict(gpu.named_parameters())], gg, gr):
            if b is None:
                continue
            assert (a.double().cpu() - b).norm() <= tol * b.norm() + 1e-12, (name, dtype)
