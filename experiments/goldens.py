# ruff: noqa: E501, B023  (long kernel-path strings; every lambda is called where it is made)
"""Golden outputs of the library's default paths, recorded before a refactor and compared after it.

    python experiments/goldens.py record  --target cpu       --out runs/goldens/before
    python experiments/goldens.py record  --target interpret --out runs/goldens/before   # Triton interpreter
    python experiments/goldens.py record  --target cuda      --out runs/goldens/before   # on a GPU
    python experiments/goldens.py compare runs/goldens/before runs/goldens/after
    python experiments/goldens.py compare runs/goldens/before runs/goldens/after --unified-step

Targets:
- cpu: every public op through its default dispatch (CPU tensors: the torch paths) forward and backward,
  and for tiny presets of each language-model family: logits, loss, every parameter gradient, the logits of
  `model.step` decoding, greedy `generate` tokens.
- interpret: the Triton kernels called directly on CPU tensors under TRITON_INTERPRET=1 (tiny shapes, fp32),
  forward and backward; the default launch settings.
- cuda: the public ops through their default dispatch on CUDA (fp32 and bf16) forward and backward, the
  presets' training step in bf16 and fp32, and greedy generation eager and through CUDA graphs. Recorded
  twice in one process: `<out>/cuda.repeat.json` lists what differs between the two (kernels that sum with
  atomics need not repeat bit for bit), the noise floor for reading a before/after comparison.

`record` writes `<out>/<target>.pt` (a flat dict name -> tensor, via torch.save) and `<out>/<target>.json`
(how it was made); `compare` reports, per name, whether the two recordings are bit-identical (torch.equal) or
the largest absolute difference, and exits 1 if anything differs or is missing. Inputs are made on the CPU
from seeded generators, so two recordings see the same inputs on any machine.

`--unified-step` compares a recording made after the decode paths became one (`model.step` is the static
step, `ops.attention_decode` deleted) with one made before: each `.../step<i>` of the after-run must equal
the before-run's `.../static<i>` bit for bit (the kept path); the largest difference from the before-run's
old eager `.../step<i>` is printed; `generate.eager` (decoded by `model.step`) is compared with the
before-run's `generate.eager` and reported, not counted (greedy tokens may flip where the old eager step's
logits differed); the deleted `attention_decode` is expected to be missing.

Kernels are looked up by name in the places they have lived (`_find`), so the same script records before
and after files move.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

# --------------------------------------------------------------------------------------------- helpers


def _find(*candidates: str) -> Callable:
    """The first importable `module:attr` among candidates (kernels move between modules in refactors)."""
    errors = []
    for spec in candidates:
        mod, attr = spec.split(":")
        try:
            return getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as err:
            errors.append(f"{spec}: {err}")
    raise ImportError("none of these exist:\n  " + "\n  ".join(errors))


class Recorder:
    """Collects name -> tensor (detached, on the CPU); gradients of the leaves given to `backward`."""

    def __init__(self) -> None:
        self.out: dict = {}

    def put(self, name: str, value) -> None:
        import torch

        if isinstance(value, (tuple, list)):
            for i, v in enumerate(value):
                self.put(f"{name}.{i}", v)
        elif isinstance(value, torch.Tensor):
            self.out[name] = value.detach().to("cpu").clone()
        elif value is None:
            return
        else:
            self.out[name] = torch.tensor(value)

    def fwd_bwd(self, name: str, fn: Callable, inputs: dict, *, seed: int = 1) -> None:
        """Record fn(**inputs) (a tensor or a tuple) and the gradients of every floating input that requires
        grad, for a fixed random cotangent per output."""
        import torch

        outs = fn(**inputs)
        outs_t = outs if isinstance(outs, tuple) else (outs,)
        self.put(name + ":out", list(outs_t))
        leaves = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.requires_grad}
        if not leaves:
            return
        g = torch.Generator().manual_seed(seed)
        loss = 0
        for o in outs_t:
            if isinstance(o, torch.Tensor) and o.is_floating_point() and o.requires_grad:
                w = torch.randn(o.shape, generator=g).to(o.device, o.dtype)
                loss = loss + (o * w).float().sum()
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        for k, gr in zip(leaves, grads):
            self.put(f"{name}:grad.{k}", gr)


def _rand(*shape, gen, scale=1.0):
    import torch

    return torch.randn(*shape, generator=gen) * scale


def _prep(d: dict, device: str, dtype, *, grad: bool = True, keep_fp32=()) -> dict:
    """Inputs to device; floating ones in dtype (except keep_fp32 names), requiring grad when `grad`."""
    import torch

    out = {}
    for k, v in d.items():
        if isinstance(v, torch.Tensor):
            if v.is_floating_point():
                v = v.to(device=device, dtype=torch.float32 if k in keep_fp32 else dtype)
                if grad:
                    v.requires_grad_(True)
            else:
                v = v.to(device)
        out[k] = v
    return out


def _seq_idx(b: int, l: int, docs: int, gen):
    import torch

    rows = []
    for _ in range(b):
        cuts = torch.sort(torch.randperm(l - 1, generator=gen)[: docs - 1] + 1).values
        ids = torch.zeros(l, dtype=torch.int32)
        for c in cuts:
            ids[c:] += 1
        rows.append(ids)
    return torch.stack(rows)


# --------------------------------------------------------------------------------------- input builders


def ssd_inputs(gen, b=2, l=70, h=4, p=16, g=2, n=16, *, docs=2, z=True, init=True):
    import torch

    d = dict(x=_rand(b, l, h, p, gen=gen), dt=_rand(b, l, h, gen=gen, scale=0.5),
             A=-(torch.rand(h, generator=gen) + 0.5), B=_rand(b, l, g, n, gen=gen), C=_rand(b, l, g, n, gen=gen),
             D=_rand(h, gen=gen), dt_bias=_rand(h, gen=gen, scale=0.3))
    if z:
        d["z"] = _rand(b, l, h, p, gen=gen)
    if init:
        d["initial_state"] = _rand(b, h, p, n, gen=gen)
    if docs > 1:
        d["seq_idx"] = _seq_idx(b, l, docs, gen)
    return d


def scan_inputs(gen, b=2, d=8, l=40, n=4, g=1, *, docs=2):
    import torch

    out = dict(u=_rand(b, d, l, gen=gen), delta=_rand(b, d, l, gen=gen, scale=0.5),
               A=-(torch.rand(d, n, generator=gen) + 0.5), B=_rand(b, g, n, l, gen=gen),
               C=_rand(b, g, n, l, gen=gen), D=_rand(d, gen=gen), z=_rand(b, d, l, gen=gen),
               delta_bias=_rand(d, gen=gen, scale=0.3), initial_state=_rand(b, d, n, gen=gen))
    if docs > 1:
        out["seq_idx"] = _seq_idx(b, l, docs, gen)
    return out


# ------------------------------------------------------------------------------------------ op goldens


def record_ops(rec: Recorder, device: str, dtype, tag: str) -> None:
    """Every public op through its default dispatch, forward + backward."""
    import torch

    from transmamba import ops
    from transmamba.ops.cross_entropy import linear_cross_entropy

    gen = torch.Generator().manual_seed(0)
    fp32_params = ("A", "D", "dt_bias", "initial_state", "delta_bias")

    # SSD: chunk 256 (the library default) and 64, with documents, z, D, initial state
    for chunk in (256, 64):
        raw = ssd_inputs(gen, l=300 if chunk == 256 else 70, n=32)
        seq = raw.pop("seq_idx")
        t = _prep(raw, device, dtype, keep_fp32=fp32_params)
        rec.fwd_bwd(f"{tag}/ssd.c{chunk}", lambda **k: ops.ssd(
            **k, chunk_size=chunk, dt_softplus=True, return_final_state=True, seq_idx=seq.to(device)), t)
    raw = ssd_inputs(gen, docs=1, z=False, init=False)
    t = _prep(raw, device, dtype, keep_fp32=fp32_params)
    rec.fwd_bwd(f"{tag}/ssd.plain", lambda **k: ops.ssd(**k), t)
    raw = ssd_inputs(gen, z=False)
    seq = raw.pop("seq_idx")
    t = _prep({k: raw[k] for k in ("x", "dt", "A", "B", "dt_bias", "initial_state")}, device, dtype,
              grad=False, keep_fp32=fp32_params)
    with torch.no_grad():
        rec.put(f"{tag}/ssd_final_state", ops.ssd_final_state(**t, dt_softplus=True, seq_idx=seq.to(device)))
    st = _prep(dict(state=_rand(2, 4, 16, 16, gen=gen), x=_rand(2, 4, 16, gen=gen), dt=_rand(2, 4, gen=gen),
                    A=-(torch.rand(4, generator=gen) + 0.5), B=_rand(2, 2, 16, gen=gen),
                    C=_rand(2, 2, 16, gen=gen), D=_rand(4, gen=gen), z=_rand(2, 4, 16, gen=gen),
                    dt_bias=_rand(4, gen=gen)), device, dtype, grad=False,
               keep_fp32=("A", "D", "dt_bias", "state"))
    with torch.no_grad():
        rec.put(f"{tag}/ssd_step", ops.ssd_step(**st, dt_softplus=True))

    # Mamba-1 selective scan and its step
    raw = scan_inputs(gen)
    seq = raw.pop("seq_idx")
    t = _prep(raw, device, dtype, keep_fp32=("A", "D", "delta_bias", "initial_state"))
    rec.fwd_bwd(f"{tag}/selective_scan", lambda **k: ops.selective_scan(
        **k, delta_softplus=True, return_last_state=True, seq_idx=seq.to(device)), t)
    st = _prep(dict(state=_rand(2, 8, 4, gen=gen), x=_rand(2, 8, gen=gen), dt=_rand(2, 8, gen=gen),
                    A=-(torch.rand(8, 4, generator=gen) + 0.5), B=_rand(2, 4, gen=gen), C=_rand(2, 4, gen=gen),
                    D=_rand(8, gen=gen), z=_rand(2, 8, gen=gen), dt_bias=_rand(8, gen=gen)),
               device, dtype, grad=False, keep_fp32=("A", "D", "dt_bias", "state"))
    with torch.no_grad():
        rec.put(f"{tag}/selective_state_update", ops.selective_state_update(**st, dt_softplus=True))

    # causal conv1d (+ documents), its decode update, Mamba-2's split + conv
    t = _prep(dict(x=_rand(2, 24, 37, gen=gen), weight=_rand(24, 4, gen=gen, scale=0.5),
                   bias=_rand(24, gen=gen)), device, dtype)
    seq = _seq_idx(2, 37, 3, gen).to(device)
    rec.fwd_bwd(f"{tag}/causal_conv1d", lambda **k: ops.causal_conv1d(**k, activation="silu", seq_idx=seq), t)
    rec.fwd_bwd(f"{tag}/causal_conv1d.final", lambda **k: ops.causal_conv1d(
        **k, activation="silu", return_final_state=True), t)
    t = _prep(dict(x=_rand(2, 24, gen=gen), conv_state=_rand(2, 24, 3, gen=gen),
                   weight=_rand(24, 4, gen=gen), bias=_rand(24, gen=gen)), device, dtype, grad=False)
    with torch.no_grad():
        rec.put(f"{tag}/causal_conv1d_update", ops.causal_conv1d_update(**t, activation="silu"))
    split = _find("transmamba.ops.conv:causal_conv1d_split")
    sizes = (16, 16, 8, 8, 4)
    t = _prep(dict(zxbcdt=_rand(2, 29, sum(sizes), gen=gen), weight=_rand(32, 4, gen=gen, scale=0.5),
                   bias=_rand(32, gen=gen)), device, dtype)
    seq = _seq_idx(2, 29, 2, gen).to(device)
    rec.fwd_bwd(f"{tag}/causal_conv1d_split", lambda **k: split(**k, sizes=sizes, seq_idx=seq), t)

    # norms (grouped, both gate orders)
    t = _prep(dict(x=_rand(3, 5, 64, gen=gen), z=_rand(3, 5, 64, gen=gen), weight=_rand(64, gen=gen)),
              device, dtype)
    rec.fwd_bwd(f"{tag}/gated_rms_norm", lambda **k: ops.gated_rms_norm(**k, group_size=16), t)
    rec.fwd_bwd(f"{tag}/gated_rms_norm.before", lambda **k: ops.gated_rms_norm(
        **k, group_size=32, norm_before_gate=True), t)
    rec.fwd_bwd(f"{tag}/rms_norm", lambda x, weight, z: ops.rms_norm(x, weight), t)

    # attention: causal with RoPE and documents (GQA), decode against a cache
    t = _prep(dict(q=_rand(2, 33, 4, 16, gen=gen), k=_rand(2, 33, 2, 16, gen=gen), v=_rand(2, 33, 2, 16, gen=gen)),
              device, dtype)
    seq = _seq_idx(2, 33, 2, gen).to(device)
    rec.fwd_bwd(f"{tag}/causal_attention", lambda **k: ops.causal_attention(**k, rope=True, seq_idx=seq), t)
    t = _prep(dict(q=_rand(3, 4, 16, gen=gen), k_cache=_rand(3, 50, 2, 16, gen=gen),
                   v_cache=_rand(3, 50, 2, 16, gen=gen)), device, dtype, grad=False)
    lengths = torch.tensor([1, 17, 50], device=device)
    with torch.no_grad():
        if hasattr(ops, "attention_decode"):  # the SDPA decode op, deleted for `decode_attention` (one op)
            rec.put(f"{tag}/attention_decode", ops.attention_decode(**t, lengths=lengths))
        dec = _find("transmamba.ops.decode_attention:decode_attention",
                    "transmamba.ops.attention:decode_attention")
        rec.put(f"{tag}/decode_attention", dec(t["q"], t["k_cache"], t["v_cache"], lengths))

    # fused linear + cross-entropy
    t = _prep(dict(h=_rand(40, 32, gen=gen), weight=_rand(50, 32, gen=gen, scale=0.2)), device, dtype)
    labels = torch.randint(0, 50, (40,), generator=gen)
    labels[::7] = -100
    rec.fwd_bwd(f"{tag}/linear_cross_entropy", lambda **k: linear_cross_entropy(
        **k, labels=labels.to(device), chunk_size=16), t)


# ------------------------------------------------------------------------------------- model goldens

PRESETS = ("transmamba-tiny", "mamba2-hybrid-8b-tiny", "jamba-tiny", "transformer-tiny")


def record_models(rec: Recorder, device: str, dtype, tag: str, *, graphs: bool = False) -> None:
    """Per preset: logits, loss and parameter gradients of one training batch (with documents); the logits
    of 12 `model.step` tokens after a prefill; greedy `generate` tokens (eager, and through CUDA graphs)."""
    import torch

    from transmamba import CausalLM

    for name in PRESETS:
        torch.manual_seed(0)
        model = CausalLM.from_preset(name).to(device=device, dtype=dtype)
        if model.transmamba_layers():
            model.set_transpoints([0, 12, 30, model.config.max_seq_len])  # the last: all attention
        V = model.config.vocab_size
        gen = torch.Generator().manual_seed(1)
        ids = torch.randint(0, V, (2, 48), generator=gen).to(device)
        model.train()
        out = model(ids, labels=ids)
        rec.put(f"{tag}/{name}/logits", out.logits)
        rec.put(f"{tag}/{name}/loss", out.loss)
        out.loss.backward()
        for pname, p in model.named_parameters():
            rec.put(f"{tag}/{name}/grad/{pname}", p.grad)
        model.zero_grad(set_to_none=True)
        model.eval()
        prompt = torch.randint(0, V, (2, 20), generator=gen).to(device)
        with torch.no_grad():
            for label in ("step", "static"):
                cache = model.init_cache(2, 40, device=device, dtype=dtype)
                logits = model(prompt, cache=cache, last_logits_only=True).logits[:, -1]
                rec.put(f"{tag}/{name}/{label}.prefill", logits)
                if label == "step":
                    step_fn = lambda t: model.step(t, cache)  # noqa: E731
                else:  # the graph-capturable step, run eagerly
                    decoder = _find("transmamba.inference.static_decode:StaticDecoder")(model, cache)
                    step_fn = decoder.step
                nxt = logits.argmax(-1)
                for i in range(12):
                    logits = step_fn(nxt)
                    rec.put(f"{tag}/{name}/{label}{i}", logits)
                    nxt = logits.argmax(-1)
            modes = [("eager", "off")] + ([("graph", "on")] if graphs and "E" not in model.config.pattern else [])
            for label, flag in modes:
                toks = model.generate(prompt, max_new_tokens=16, do_sample=False, cuda_graph=flag)
                rec.put(f"{tag}/{name}/generate.{label}", toks)


# ------------------------------------------------------------------------------ interpreter goldens


def record_interpret(rec: Recorder) -> None:
    """The Triton kernels on CPU tensors under the interpreter (fp32, tiny shapes, default settings)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    fp32 = torch.float32
    ssd_triton = _find("transmamba.ops.triton.ssd:ssd_triton", "transmamba.ops.ssd.triton:ssd_triton")
    for chunk, l in ((256, 300), (32, 70)):
        raw = ssd_inputs(gen, b=1 if chunk == 256 else 2, l=l, n=32)
        seq = raw.pop("seq_idx")
        t = _prep(raw, "cpu", fp32)
        rec.fwd_bwd(f"interp/ssd.c{chunk}", lambda **k: ssd_triton(
            **k, chunk_size=chunk, dt_softplus=True, return_final_state=True, seq_idx=seq), t)
    fs = _find("transmamba.ops.triton.ssd:ssd_final_state_triton", "transmamba.ops.ssd.triton:ssd_final_state_triton")
    raw = ssd_inputs(gen, z=False)
    seq = raw.pop("seq_idx")
    t = _prep({k: raw[k] for k in ("x", "dt", "A", "B", "dt_bias", "initial_state")}, "cpu", fp32, grad=False)
    rec.put("interp/ssd_final_state", fs(**t, dt_softplus=True, seq_idx=seq, chunk_size=32))
    step = _find("transmamba.ops.triton.ssd:ssd_step_triton", "transmamba.ops.ssd.triton:ssd_step_triton")
    st = dict(state=_rand(2, 4, 16, 16, gen=gen), x=_rand(2, 4, 16, gen=gen), dt=_rand(2, 4, gen=gen),
              A=-(torch.rand(4, generator=gen) + 0.5), B=_rand(2, 2, 16, gen=gen), C=_rand(2, 2, 16, gen=gen),
              D=_rand(4, gen=gen), z=_rand(2, 4, 16, gen=gen), dt_bias=_rand(4, gen=gen))
    rec.put("interp/ssd_step", step(**st, dt_softplus=True))

    conv = _find("transmamba.ops.triton.conv:causal_conv1d_triton", "transmamba.ops.conv.triton:causal_conv1d_triton")
    t = _prep(dict(x=_rand(2, 24, 37, gen=gen), weight=_rand(24, 4, gen=gen, scale=0.5),
                   bias=_rand(24, gen=gen)), "cpu", fp32)
    seq = _seq_idx(2, 37, 3, gen)
    rec.fwd_bwd("interp/causal_conv1d", lambda **k: conv(**k, seq_idx=seq, silu=True), t)
    rec.fwd_bwd("interp/causal_conv1d.nodocs", lambda **k: conv(**k, silu=True), t)
    upd = _find("transmamba.ops.triton.conv:causal_conv1d_update_triton",
                "transmamba.ops.conv.triton:causal_conv1d_update_triton")
    rec.put("interp/causal_conv1d_update", upd(_rand(2, 24, gen=gen), _rand(2, 24, 3, gen=gen),
                                                _rand(24, 4, gen=gen), _rand(24, gen=gen), True))
    split = _find("transmamba.ops.triton.conv_split:conv_split_triton",
                  "transmamba.ops.conv.triton_split:conv_split_triton")
    sizes = (16, 16, 8, 8, 4)
    t = _prep(dict(zxbcdt=_rand(2, 29, sum(sizes), gen=gen), weight=_rand(32, 4, gen=gen, scale=0.5),
                   bias=_rand(32, gen=gen)), "cpu", fp32)
    seq = _seq_idx(2, 29, 2, gen)
    rec.fwd_bwd("interp/conv_split", lambda **k: split(**k, seq_idx=seq, sizes=sizes), t)

    norm = _find("transmamba.ops.triton.norm:gated_rms_norm_triton", "transmamba.ops.norm.triton:gated_rms_norm_triton")
    t = _prep(dict(x=_rand(3, 5, 64, gen=gen), z=_rand(3, 5, 64, gen=gen), weight=_rand(64, gen=gen)), "cpu", fp32)
    rec.fwd_bwd("interp/gated_rms_norm", lambda **k: norm(**k, group_size=16), t)
    rec.fwd_bwd("interp/gated_rms_norm.before", lambda **k: norm(**k, group_size=32, norm_before_gate=True), t)

    dec = _find("transmamba.ops.triton.decode_attention:decode_attention_triton",
                "transmamba.ops.attention.triton_decode:decode_attention_triton")
    q, kc, vc = _rand(3, 4, 16, gen=gen), _rand(3, 50, 2, 16, gen=gen), _rand(3, 50, 2, 16, gen=gen)
    rec.put("interp/decode_attention", dec(q, kc, vc, torch.tensor([1, 17, 50]), 0.25))

    scan = _find("transmamba.ops.triton.selective_scan:selective_scan_triton",
                 "transmamba.ops.selective_scan.triton:selective_scan_triton")
    raw = scan_inputs(gen)
    seq = raw.pop("seq_idx")
    t = _prep(raw, "cpu", fp32)
    rec.fwd_bwd("interp/selective_scan", lambda **k: scan(
        **k, delta_softplus=True, return_last_state=True, seq_idx=seq), t)

    fused = _find("transmamba.ops.triton.ssm_decode:mamba2_decode_triton",
                  "transmamba.ops.ssm_decode.triton:mamba2_decode_triton")
    b, H, P, G, N, W = 2, 4, 16, 2, 16, 4
    d_inner, conv_dim = H * P, H * P + 2 * G * N
    conv_state, ssm_state = _rand(b, conv_dim, W - 1, gen=gen), _rand(b, H, P, N, gen=gen)
    y = fused(_rand(b, 2 * d_inner + 2 * G * N + H, gen=gen), conv_state, _rand(conv_dim, W, gen=gen),
              _rand(conv_dim, gen=gen), ssm_state, -(torch.rand(H, generator=gen) + 0.5), _rand(H, gen=gen),
              _rand(H, gen=gen), _rand(d_inner, gen=gen), 1e-5, G, P)
    rec.put("interp/mamba2_decode", [y, conv_state, ssm_state])

    add_norm = _find("transmamba.ops.triton.add_norm:add_rms_norm_triton",
                     "transmamba.ops.norm.triton_add:add_rms_norm_triton")
    rec.put("interp/add_rms_norm", add_norm(_rand(3, 64, gen=gen), _rand(3, 64, gen=gen), _rand(64, gen=gen), 1e-5))
    rope = _find("transmamba.ops.triton.rope:rope_triton", "transmamba.ops.attention.triton_rope:rope_triton")
    inv = 10000.0 ** (-torch.arange(8, dtype=torch.float32) * 2 / 16)
    xr = _prep(dict(x=_rand(2, 9, 4, 16, gen=gen)), "cpu", fp32)
    rec.fwd_bwd("interp/rope", lambda x: rope(x, torch.arange(9)[None].expand(2, 9), inv), xr)


# ------------------------------------------------------------------------------------------- commands


def record(target: str, out: Path) -> None:
    if target == "interpret":
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    import torch

    rec = Recorder()
    t0 = time.time()
    torch.manual_seed(0)
    if target == "cpu":
        torch.set_num_threads(1)  # reductions in a fixed order
        record_ops(rec, "cpu", torch.float32, "cpu.fp32")
        record_models(rec, "cpu", torch.float32, "cpu.fp32")
    elif target == "interpret":
        torch.set_num_threads(1)
        record_interpret(rec)
    elif target == "cuda":
        if not torch.cuda.is_available():
            sys.exit("goldens: --target cuda needs a CUDA GPU")
        again = Recorder()  # everything twice: kernels with atomics need not repeat bit for bit
        for r in (rec, again):
            torch.manual_seed(0)
            for dtype, tag in ((torch.float32, "cuda.fp32"), (torch.bfloat16, "cuda.bf16")):
                record_ops(r, "cuda", dtype, tag)
                record_models(r, "cuda", dtype, tag, graphs=True)
        torch.cuda.synchronize()
        noisy = {k: float((v.double() - again.out[k].double()).abs().max()) for k, v in rec.out.items()
                 if not torch.equal(v, again.out[k])}
        (out / "cuda.repeat.json").parent.mkdir(parents=True, exist_ok=True)
        (out / "cuda.repeat.json").write_text(json.dumps(noisy, indent=1))
        print(f"goldens: {len(noisy)} of {len(rec.out)} tensors differ between two runs in this process "
              f"(run-to-run noise, {out / 'cuda.repeat.json'})")
    out.mkdir(parents=True, exist_ok=True)
    torch.save(rec.out, out / f"{target}.pt")
    meta = dict(target=target, tensors=len(rec.out), seconds=round(time.time() - t0, 1),
                torch=torch.__version__, command=" ".join(sys.argv),
                device=torch.cuda.get_device_name() if target == "cuda" else "cpu")
    (out / f"{target}.json").write_text(json.dumps(meta, indent=1))
    print(f"goldens: {len(rec.out)} tensors -> {out / (target + '.pt')} ({meta['seconds']} s)")


def _unified_step_ref(key: str):
    """With --unified-step: (the before-run's key to compare `key` with, whether a difference counts)."""
    import re

    if re.search(r"/step\d+$", key):
        return re.sub(r"/step(\d+)$", r"/static\1", key), True
    if key.endswith("/generate.eager"):
        return key, False
    return key, True


def compare(before: Path, after: Path, unified_step: bool = False) -> int:
    import re

    import torch

    bad = 0
    files = sorted(p.name for p in before.glob("*.pt"))
    if not files:
        sys.exit(f"goldens: no recordings (*.pt) in {before}")
    for fname in files:
        a = torch.load(before / fname, weights_only=True)
        if not (after / fname).exists():
            print(f"{fname}: missing in {after}")
            bad += 1
            continue
        b = torch.load(after / fname, weights_only=True)
        same = differ = 0
        old_step = 0.0  # --unified-step: largest difference of the new step from the old eager step
        for k in sorted(set(a) | set(b)):
            ref, counts = _unified_step_ref(k) if unified_step else (k, True)
            if unified_step and k in a and k not in b and k.endswith("/attention_decode"):
                print(f"  {fname} {k}: deleted op (expected)")
            elif ref not in a or k not in b:
                print(f"  {fname} {k}: only in {'before' if k in a else 'after'}")
                differ += 1
            elif a[ref].shape != b[k].shape or a[ref].dtype != b[k].dtype:
                print(f"  {fname} {k}: shape/dtype {tuple(a[ref].shape)} {a[ref].dtype} -> {tuple(b[k].shape)} {b[k].dtype}")
                differ += 1
            elif torch.equal(a[ref], b[k]) or (a[ref].is_floating_point() and torch.equal(a[ref].isnan(), b[k].isnan())
                                               and torch.equal(a[ref].nan_to_num(), b[k].nan_to_num())):
                same += 1
            else:
                diff = (a[ref].double() - b[k].double()).abs().max().item()
                print(f"  {fname} {k}{'' if ref == k else ' vs before ' + ref}: max |diff| {diff:.3e}"
                      + ("" if counts else " (reported, not counted)"))
                differ += counts
                same += not counts
            if unified_step and ref != k and k in a and k in b:
                old_step = max(old_step, (a[k].double() - b[k].double()).abs().max().item())
        if unified_step and any(re.search(r"/step\d+$", k) for k in b):
            print(f"  {fname}: the step's logits differ from the old eager step's by at most {old_step:.3e}")
        noise = before / fname.replace(".pt", ".repeat.json")
        if differ and noise.exists():
            print(f"  (run-to-run differences of the before-run itself: {noise})")
        print(f"{fname}: {same} identical, {differ} different")
        bad += differ
    print("goldens: IDENTICAL" if bad == 0 else f"goldens: {bad} DIFFERENT")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="record goldens of one target")
    r.add_argument("--target", choices=("cpu", "interpret", "cuda"), default="cpu")
    r.add_argument("--out", type=Path, default=Path("runs/goldens/current"))
    c = sub.add_parser("compare", help="compare two recording folders (exit 1 if anything differs)")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    c.add_argument("--unified-step", action="store_true",
                   help="after-run's step<i> against the before-run's static<i> (see the module docstring)")
    args = ap.parse_args(argv)
    if args.cmd == "record":
        record(args.target, args.out)
        return 0
    return compare(args.before, args.after, args.unified_step)


if __name__ == "__main__":
    sys.exit(main())
