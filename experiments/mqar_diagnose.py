"""CPU diagnosis of MQAR (Zoology's layout): which setup lets each family learn, and why not otherwise.

    python experiments/mqar_diagnose.py --family attention --d-model 64 --seq-len 64 --pairs 4 \
        --lr 1e-3 --steps 600 --batch 64 [--n-heads 1] [--rope-theta 10000] [--mlp] [--init legacy]

Prints the training curve (accuracy and loss on fresh rows every --log-every steps) and the test accuracy
on 1 000 seeded rows. `--init legacy` re-initialises every Mamba-2/TransMamba in_proj with N(0, 0.02),
the init CausalLM used to give them (see docs/reproduction.md, "Diagnosis").
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from transmamba.eval import mqar


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="attention", choices=mqar.FAMILIES)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=mqar.ZOOLOGY_VOCAB)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--n-heads", type=int, default=1)
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--mlp", action="store_true")
    ap.add_argument("--no-qkv-bias", action="store_true", help="attention without q/k/v biases (Llama style)")
    ap.add_argument("--transpoints", default=None, help="comma-separated fractions of the row per layer")
    ap.add_argument("--init", default="library", choices=("library", "legacy"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tp = tuple(float(x) for x in args.transpoints.split(",")) if args.transpoints else None
    spec = mqar.ModelSpec(args.family, args.d_model, mlp=args.mlp, n_heads=args.n_heads,
                          rope_theta=args.rope_theta, transpoints=tp,
                          qkv_bias=not args.no_qkv_bias)
    model = mqar.build_model(spec, vocab_size=args.vocab, seq_len=args.seq_len, seed=args.seed)
    if args.init == "legacy":
        with torch.no_grad():
            for name, mod in model.named_modules():
                if name.endswith("in_proj") and isinstance(mod, torch.nn.Linear):
                    mod.weight.normal_(0.0, model.config.init_std)
    print(f"{spec.label} pattern={model.config.pattern} params={model.num_parameters()} "
          f"ln(n_values)={math.log(args.vocab // 2):.3f} ln(pairs)={math.log(args.pairs):.3f}", flush=True)
    data = mqar.mqar_stream(args.seq_len, args.pairs, args.batch, vocab_size=args.vocab)
    res = mqar.train(model, data, steps=args.steps, lr=args.lr, seed=args.seed, log_every=args.log_every,
                     on_log=lambda r: print(f"  step {r['step']:>5} acc {r['accuracy']:.3f} "
                                            f"loss {r['loss']:.3f}  {r['seconds']:.0f}s", flush=True))
    test = mqar.evaluate(model, mqar.test_batches(1000, args.seq_len, args.pairs, vocab_size=args.vocab))
    print(f"test accuracy {test['accuracy']:.4f} loss {test['loss']:.3f} after {res.steps} steps "
          f"({res.seconds:.0f}s)", flush=True)
    if args.json:
        with open(args.json, "a") as f:
            row = {**vars(args), "test": test, "steps_run": res.steps, "curve": res.curve}
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
