"""CPU diagnosis of MQAR (Zoology's layout): which setup lets each family learn, and why not otherwise.

    python experiments/mqar_diagnose.py --family attention --d-model 64 --seq-len 64 --pairs 4 \
        --lr 1e-3 --steps 600 --batch 64 [--n-heads 1] [--rope-theta 10000] [--mlp] [--init legacy]

Prints the training curve (accuracy and loss on fresh rows every --log-every steps) and the test accuracy
on 1 000 seeded rows. `--init legacy` re-initialises every Mamba-2/TransMamba in_proj with N(0, 0.02),
the init CausalLM used to give them (see docs/reproduction.md, "Diagnosis").

    python experiments/mqar_diagnose.py --influence [--seq-len 256]

prints, at initialisation, how strongly the last position's final hidden state depends on the token
embedding `dist` positions back (mean over 4 rows of ||d<h_T, g> / d emb_{T-dist}||, g random): the signal
a query receives from its key-value pair at that distance before training, per family.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from transmamba.eval import mqar


def influence(model, seq_len: int, dists=(1, 4, 16, 64, 128, 254)) -> dict[int, float]:
    """{dist: mean gradient norm of a random projection of h[:, T-1] w.r.t. the embedding at T-1-dist}."""
    from transmamba.models.pattern import MIXER_KINDS

    ids = torch.randint(1, model.config.vocab_size, (4, seq_len))
    emb = model.embed(ids).detach().requires_grad_(True)
    h = emb
    for block, kind in zip(model.blocks, model.kinds):
        h = block(h, seq_idx=None, state=None) if kind in MIXER_KINDS else block(h)
    t = seq_len - 1
    (h[:, t] * torch.randn_like(h[:, t])).sum().backward()
    norms = emb.grad.norm(dim=-1).mean(0)
    return {d: float(norms[t - d]) for d in dists if d < seq_len}


def run_influence(seq_len: int) -> None:
    cases = [("attention **", mqar.ModelSpec("attention", 64), False),
             ("tm-attn TT P=T", mqar.ModelSpec("transmamba", 64, transpoints=(1.0, 1.0)), False),
             ("mamba2 MM", mqar.ModelSpec("mamba2", 64), False),
             ("mamba2 MM, in_proj N(0,0.02)", mqar.ModelSpec("mamba2", 64), True)]
    for name, spec, legacy in cases:
        torch.manual_seed(0)
        model = mqar.build_model(spec, vocab_size=mqar.ZOOLOGY_VOCAB, seq_len=seq_len, seed=0)
        if legacy:
            _legacy_init(model)
        row = influence(model, seq_len)
        print(f"{name:30s} " + "  ".join(f"{d:>4}: {v:.1e}" for d, v in row.items()), flush=True)


def _legacy_init(model) -> None:
    with torch.no_grad():
        for name, mod in model.named_modules():
            if name.endswith("in_proj") and isinstance(mod, torch.nn.Linear):
                mod.weight.normal_(0.0, model.config.init_std)


def run_phonebook(args, spec: mqar.ModelSpec) -> None:
    """Train on `transmamba.data.synthetic.phonebook` rows; print the curve and the test digit accuracy."""
    import numpy as np

    from transmamba.data.synthetic import phonebook, phonebook_length

    pb = dict(n_entries=args.entries, name_len=1, number_len=2, n_queries=4, vocab_size=256)
    row_len = phonebook_length(args.entries, name_len=1, number_len=2, n_queries=4)
    model = mqar.build_model(spec, vocab_size=256, seq_len=row_len, seed=args.seed)
    rng = np.random.default_rng(args.seed)

    def make(gen):
        b = phonebook(args.batch, seed=rng, **pb)
        return mqar.MQARBatch(b.input_ids, b.labels)

    print(f"phonebook {spec.label} pattern={model.config.pattern} rows of {row_len}; chance 0.100",
          flush=True)
    res = mqar.train(model, make, steps=args.steps, lr=args.lr, seed=args.seed, log_every=args.log_every,
                     on_log=lambda r: print(f"  step {r['step']:>5} digit acc {r['accuracy']:.3f} "
                                            f"loss {r['loss']:.3f}  {r['seconds']:.0f}s", flush=True))
    t = phonebook(500, seed=99, **pb)
    test = mqar.evaluate(model, [mqar.MQARBatch(t.input_ids, t.labels)])
    print(f"test digit accuracy {test['accuracy']:.4f} loss {test['loss']:.3f} after {res.steps} steps",
          flush=True)
    with torch.no_grad():
        model.eval()
        pred = model.lm_head(mqar.hidden_states(model, t.input_ids)).argmax(-1)[:, :-1]  # (b, T-1)
        tgt = t.labels[:, 1:]
        pos = (tgt != -100).nonzero()  # answers: number_len consecutive labelled positions per query
        ok = (pred == tgt)[pos[:, 0], pos[:, 1]].view(-1, 2).float().mean(0)
    print(f"test accuracy by digit: first {ok[0]:.4f}, second {ok[1]:.4f}", flush=True)


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
    ap.add_argument("--influence", action="store_true", help="print the at-init influence table and exit")
    ap.add_argument("--task", default="mqar", choices=("mqar", "phonebook"),
                    help="phonebook: one-symbol names, two-digit numbers, --entries lines, 4 queries, "
                         "vocab 256")
    ap.add_argument("--entries", type=int, default=8, help="phonebook entries per row")
    ap.add_argument("--n-layers", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.influence:
        run_influence(args.seq_len if args.seq_len != 64 else 256)
        return
    tp = tuple(float(x) for x in args.transpoints.split(",")) if args.transpoints else None
    spec = mqar.ModelSpec(args.family, args.d_model, n_layers=args.n_layers, mlp=args.mlp,
                          n_heads=args.n_heads, rope_theta=args.rope_theta, transpoints=tp,
                          qkv_bias=not args.no_qkv_bias)
    if args.task == "phonebook":
        run_phonebook(args, spec)
        return
    model = mqar.build_model(spec, vocab_size=args.vocab, seq_len=args.seq_len, seed=args.seed)
    if args.init == "legacy":
        _legacy_init(model)
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
