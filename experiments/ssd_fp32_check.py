"""fp32 on CUDA vs the fp64 CPU reference: SSD ops and a TransMamba layer forward (where does 1e-3 come from).

    python experiments/ssd_fp32_check.py [--out DIR]

Prints (and writes DIR/ssd-fp32-check.json) relative errors ||a - ref|| / ||ref|| of
- `ops.ssd` (Triton on CUDA) fp32 (IEEE dots) and `ops.ssd_final_state` (the converter);
- a TransMamba layer (d_model 256, P = half the tokens) forward, CUDA fp32 vs the same weights in fp64 on
  the CPU, under the torch defaults (cuBLAS matmul tf32 off, cuDNN tf32 on) and with every torch tf32
  switch off, with one SDPA backend forced, and with the Triton kernels disabled, so the SSD kernels, the
  conv / norm kernels, attention and torch's own matmuls can be told apart.
Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _ssd_rows() -> list[dict]:
    from transmamba.ops.ssd import ssd, ssd_final_state

    g = torch.Generator().manual_seed(0)
    b, l, h, p, ng, n = 2, 1000, 8, 64, 1, 128
    t = {"x": torch.randn(b, l, h, p, generator=g), "dt": torch.randn(b, l, h, generator=g) * 0.5,
         "A": -(torch.rand(h, generator=g) + 0.5), "B": torch.randn(b, l, ng, n, generator=g),
         "C": torch.randn(b, l, ng, n, generator=g), "D": torch.randn(h, generator=g),
         "dt_bias": torch.randn(h, generator=g) * 0.3}
    ref_y, ref_f = ssd(*(t[k].double() for k in "x dt A B C".split()), D=t["D"].double(),
                       dt_bias=t["dt_bias"].double(), dt_softplus=True, return_final_state=True)
    ref_s = ssd_final_state(*(t[k].double() for k in "x dt A B".split()), dt_bias=t["dt_bias"].double(),
                            dt_softplus=True)
    c = {k: v.cuda() for k, v in t.items()}
    y, f = ssd(c["x"], c["dt"], c["A"], c["B"], c["C"], D=c["D"], dt_bias=c["dt_bias"], dt_softplus=True,
               return_final_state=True)
    s = ssd_final_state(c["x"], c["dt"], c["A"], c["B"], dt_bias=c["dt_bias"], dt_softplus=True)
    return [{"what": "ops.ssd fp32 CUDA", "y": rel(y, ref_y), "final_state": rel(f, ref_f),
             "ssd_final_state": rel(s, ref_s)}]


def _layer_rows() -> list[dict]:
    from transmamba.layers.transmamba import TransMamba

    torch.manual_seed(0)
    layer = TransMamba(256, d_state=64, headdim=32, transpoint=96, chunk_size=64)
    hid = torch.randn(2, 200, 256)
    with torch.no_grad():
        ref = layer.double()(hid.double())
        layer = layer.float().cuda()
        rows = []
        settings = {
            "torch defaults": None,
            "all torch tf32 off": dict(matmul=False, cudnn=False),
            "all torch tf32 on": dict(matmul=True, cudnn=True),
        }
        for name, st in settings.items():
            old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            if st is not None:
                torch.backends.cuda.matmul.allow_tf32 = st["matmul"]
                torch.backends.cudnn.allow_tf32 = st["cudnn"]
            out = layer(hid.cuda())
            flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            rows.append({"what": f"TransMamba layer fwd fp32 CUDA ({name}; matmul tf32={flags[0]}, "
                                 f"cudnn tf32={flags[1]})", "out": rel(out, ref)})
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
        from torch.nn.attention import SDPBackend, sdpa_kernel

        for backend in (SDPBackend.MATH, SDPBackend.EFFICIENT_ATTENTION):
            try:
                with sdpa_kernel(backend):
                    out = layer(hid.cuda())
                rows.append({"what": f"TransMamba layer fwd fp32 CUDA (SDPA {backend.name} only)",
                             "out": rel(out, ref)})
            except RuntimeError as err:
                rows.append({"what": f"SDPA {backend.name}", "error": repr(err)[:200]})
        os.environ["TRANSMAMBA_DISABLE_TRITON"] = "1"
        out = layer(hid.cuda())
        os.environ.pop("TRANSMAMBA_DISABLE_TRITON", None)
        rows.append({"what": "TransMamba layer fwd fp32 CUDA (torch defaults, TRANSMAMBA_DISABLE_TRITON=1)",
                     "out": rel(out, ref)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    if str(ROOT / "src") not in sys.path:
        sys.path.insert(0, str(ROOT / "src"))
    rows = _ssd_rows() + _layer_rows()
    for r in rows:
        print(json.dumps({k: (f"{v:.2e}" if isinstance(v, float) else v) for k, v in r.items()}))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                "command": "python experiments/ssd_fp32_check.py " + " ".join(sys.argv[1:])}
        text = json.dumps({"meta": meta, "rows": rows}, indent=1)
        (Path(args.out) / "ssd-fp32-check.json").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
