"""What autograd keeps for backward, per token, on the CPU paths the CLI trains with by default.

    python experiments/saved_bytes_cpu.py

Counts the distinct storages autograd saves (`torch.autograd.graph.saved_tensors_hooks`) during one forward
at 1K and at 2K tokens and prints the difference per token, in units of one d_inner-wide fp32 activation
(4·d_inner bytes). A path that kept (l, d_inner, n) tensors would cost at least n such units per token.
Shapes: the Mamba-1 scan at jamba-small's width (d_inner 1024, n 16); Mamba-2 SSD and a TransMamba layer at
transmamba-400m's (48 heads of 64, n 128, 16 groups, d_model 1536). Deterministic: no timing involved.
"""

from __future__ import annotations

import torch

from transmamba.layers.transmamba import TransMamba
from transmamba.ops.selective_scan import selective_scan
from transmamba.ops.ssd import ssd


def saved_bytes(fn) -> int:
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def scan_case(l: int) -> int:
    d, n = 1024, 16
    t = dict(u=torch.randn(1, d, l), delta=torch.randn(1, d, l), A=-torch.rand(d, n), B=torch.randn(1, n, l),
             C=torch.randn(1, n, l), D=torch.randn(d), z=torch.randn(1, d, l), delta_bias=torch.randn(d))
    for v in t.values():
        v.requires_grad_(True)
    return saved_bytes(lambda: selective_scan(**t, delta_softplus=True))


def ssd_case(l: int) -> int:
    h, p, n, g = 48, 64, 128, 16
    x, dt = torch.randn(1, l, h, p, requires_grad=True), torch.randn(1, l, h, requires_grad=True)
    A = -torch.rand(h).requires_grad_(True)
    B, C = torch.randn(1, l, g, n, requires_grad=True), torch.randn(1, l, g, n, requires_grad=True)
    return saved_bytes(lambda: ssd(x, dt, A, B, C, D=torch.ones(h), dt_bias=torch.zeros(h), dt_softplus=True))


def transmamba_case(l: int, transpoint: int) -> int:
    layer = TransMamba(1536, d_state=128, headdim=64, expand=2, ngroups=16, chunk_size=256,
                       transpoint=transpoint)
    x = torch.randn(1, l, 1536, requires_grad=True)
    return saved_bytes(lambda: layer(x))


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    print("| path | d_inner | n | saved at 1K (MB) | saved at 2K (MB) | per token (units of 4·d_inner B) |")
    print("|---|---:|---:|---:|---:|---:|")
    cases = [("selective_scan (Mamba-1)", 1024, 16, scan_case),
             ("ssd (Mamba-2, CPU chunk 64)", 3072, 128, ssd_case),
             ("TransMamba layer, P = 512", 3072, 128, lambda l: transmamba_case(l, 512)),
             ("TransMamba layer, P = 0", 3072, 128, lambda l: transmamba_case(l, 0))]
    for name, d_inner, n, fn in cases:
        a, b = fn(1024), fn(2048)
        per_token = (b - a) / 1024 / (4 * d_inner)
        print(f"| {name} | {d_inner} | {n} | {a / 1e6:.0f} | {b / 1e6:.0f} | {per_token:.1f} |")


if __name__ == "__main__":
    main()
