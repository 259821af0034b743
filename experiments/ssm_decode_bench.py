"""Time the fused Mamba-2 decode step kernel (`ops/ssm_decode/triton.py`) at the 400M models' shape.

    python experiments/ssm_decode_bench.py OUT.json [--batch 16] [--state-dtype bf16|fp32]

d_model 1536 (d_inner 3072, 48 heads of 64, 16 groups, d_state 128), bf16 inputs, SSM state in bf16 (as
the bf16 decode benchmark's caches) or fp32. The kernels ("head", "group", see
`mamba2_decode_triton`) at a few num_warps. Timing:
the kernel on 16 different state / conv-state buffers in turn (more than L2 holds) inside one CUDA graph,
replayed; GB/s counts the SSM state read + written (the step's traffic; the rest is < 2%). The outputs of
every variant are compared with the per-head kernel's (max abs difference).
"""

from __future__ import annotations

import json
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from skinny_gemm_bench import copy_GBps, graph_us  # noqa: E402


def main(argv: list[str]) -> int:
    from transmamba.layers.mamba2 import Mamba2
    from transmamba.ops.ssm_decode.triton import mamba2_decode_triton

    b = int(argv[argv.index("--batch") + 1]) if "--batch" in argv else 16
    dtype = torch.float32 if "--state-dtype" in argv and argv[argv.index("--state-dtype") + 1] == "fp32" \
        else torch.bfloat16
    torch.manual_seed(0)
    layer = Mamba2(1536, d_state=128, headdim=64, ngroups=16).cuda().to(torch.bfloat16)
    copies = 16
    zx = torch.randn(b, layer.in_proj.out_features, device="cuda", dtype=torch.bfloat16)
    conv = [torch.randn(b, layer.conv_dim, layer.d_conv - 1, device="cuda", dtype=torch.bfloat16)
            for _ in range(copies)]
    ssm = [(torch.randn(b, layer.nheads, 64, 128, device="cuda") * 0.1).to(dtype) for _ in range(copies)]
    A = layer.A.detach().float()
    nbytes = 2 * ssm[0].numel() * ssm[0].element_size()
    bw = copy_GBps()

    def call(i, **kw):
        return mamba2_decode_triton(zx, conv[i], layer.conv_weight(), layer.conv1d.bias, ssm[i], A,
                                    layer.dt_bias, layer.D, layer.norm.weight, layer.norm.eps, 16, 64, **kw)

    rows = []
    s0 = [t.clone() for t in ssm]
    c0 = [t.clone() for t in conv]
    ref = None
    for kernel, warps in [("head", 4), ("head", 8), ("group", 8), ("group", 16)]:
        for i in range(copies):
            ssm[i].copy_(s0[i])
            conv[i].copy_(c0[i])
        out = call(0, kernel=kernel, num_warps=warps).float()
        if ref is None:
            ref = out
        try:
            kw = {"kernel": kernel, "num_warps": warps}
            us = graph_us([lambda i=i, kw=kw: call(i, **kw) for i in range(copies)])
        except Exception as err:  # noqa: BLE001
            rows.append({"kernel": kernel, "num_warps": warps, "error": repr(err)[:300]})
            continue
        row = {"batch": b, "state_dtype": str(dtype), "kernel": kernel, "num_warps": warps,
               "us": round(us, 2),
               "state_GBps": round(nbytes / us / 1e3, 1), "frac_of_copy_bw": round(nbytes / us / 1e3 / bw, 3),
               "max_abs_diff_vs_first": float((out - ref).abs().max())}
        rows.append(row)
        print(json.dumps(row), flush=True)
    with open(argv[0], "w") as f:
        cmd = "python experiments/ssm_decode_bench.py OUT.json " + " ".join(argv[1:])
        meta = {"gpu": torch.cuda.get_device_name(), "copy_GBps": bw, "command": cmd}
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
