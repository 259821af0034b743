"""Training FLOPs per token of the 400M-class models at T = 2K..32K, split into projections (dense, incl. the
LM head), attention and SSD (`transmamba.models.flops`), and the best tokens/s ratio over the equal-size
Transformer that equal MFU would allow. CPU only; prints markdown tables.

    python experiments/train_flops.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from transmamba.models import get_preset  # noqa: E402
from transmamba.models.flops import train_flops_per_token  # noqa: E402

HYBRID = "M-M-M-M-M-*-M-M-M-M-M-*-"
LENGTHS = (2048, 8192, 16384, 32768)


def models(T: int) -> dict:
    return {
        "transmamba-400m (V9)": get_preset("transmamba-400m"),
        "transmamba-400m (V9 scaled to T)": get_preset("transmamba-400m", schedule_train_len=T),
        "transformer-400m-eq": get_preset("transformer-400m-eq"),
        "transformer-400m-deep (18 layers)": get_preset("transformer-400m", pattern="*-" * 18),
        "transformer-400m (old, 264M)": get_preset("transformer-400m"),
        "mamba2-400m": get_preset("mamba2-400m"),
        "mamba2-hybrid-400m": get_preset("mamba2-400m", pattern=HYBRID),
    }


def main() -> None:
    lm_head = 6 * 151936 * 1536 / 1e9
    print(f"(training GFLOP per token; LM head alone = {lm_head:.2f} of every model's dense part)\n")
    print("| model | T | dense | attention | SSD | total | attention share | eq-Transformer / this |")
    print("|---|---|---|---|---|---|---|---|")
    for T in LENGTHS:
        ms = models(T)
        ref = train_flops_per_token(ms["transformer-400m-eq"], T)["total"] / 1e9
        for name, cfg in ms.items():
            f = {k: v / 1e9 for k, v in train_flops_per_token(cfg, T).items()}
            print(f"| {name} | {T} | {f['dense']:.2f} | {f['attention']:.2f} | {f['ssd']:.3f} "
                  f"| {f['total']:.2f} | {100 * f['attention'] / f['total']:.0f}% | {ref / f['total']:.2f} |")


if __name__ == "__main__":
    main()
