"""lm-evaluation-harness adapter: model name `transmamba` (needs the optional `lm_eval` package).

    python -m transmamba.interop.harness --model transmamba --model_args pretrained=DIR --tasks arc_easy

(`lm_eval` itself discovers only its own models, so the module registers this one and then runs lm_eval's
command line with the same arguments; from Python, importing this module registers it and
`lm_eval.simple_evaluate(model="transmamba", model_args="pretrained=DIR", ...)` works.)

model_args:
    pretrained      checkpoint directory: native, HF transformers or mamba_ssm (`CausalLM.from_pretrained`)
    tokenizer       a tokenizer.json (HF `tokenizers` format); default DIR/tokenizer.json
    batch_size      rows per forward pass for loglikelihood requests (default 1)
    max_length      context window in tokens (default: the config's max_seq_len); longer inputs keep their end
    max_gen_toks    default number of tokens generate_until may add (default 256)
    device, dtype   e.g. device=cuda, dtype=bfloat16 (default cpu, float32; lm_eval's default --device
                    cuda falls back to the CPU, with a message, where CUDA is unavailable)
    transpoints     a named TransMamba schedule ("V9") set before evaluating
    add_bos_token   prepend the tokenizer's BOS id to every input (default False)

Requests: loglikelihood(context, continuation) -> (sum of log p(continuation tokens), whether every one
of them was the argmax); loglikelihood_rolling(text) -> the text's total log-likelihood over disjoint
windows of max_length tokens (lm_eval's rolling windows, each conditioned on the previous tokens of its
window); generate_until(context, {until, max_gen_toks, do_sample, temperature, top_k, top_p}) -> the
continuation cut at the first stop string.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from transmamba.models.lm import CausalLM

EOS_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")


def _load_tokenizer(pretrained: Path, tokenizer: str | None):
    from tokenizers import Tokenizer

    path = Path(tokenizer) if tokenizer else pretrained / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"transmamba lm_eval adapter: no tokenizer at {path}; pass "
            "--model_args pretrained=DIR,tokenizer=PATH/tokenizer.json"
        )
    return Tokenizer.from_file(str(path))


@register_model("transmamba")
class TransMambaLM(TemplateLM):
    """lm_eval's `TemplateLM` over a `CausalLM` and an HF `tokenizers` tokenizer."""

    def __init__(
        self,
        pretrained: str,
        tokenizer: str | None = None,
        batch_size: int | str = 1,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        device: str = "cpu",
        dtype: str = "float32",
        transpoints: str | None = None,
        add_bos_token: bool = False,
        eot_token_id: int | None = None,
        **_ignored,
    ) -> None:
        super().__init__()
        src = Path(pretrained)
        torch_dtype = getattr(torch, str(dtype)) if isinstance(dtype, str) else dtype
        if not isinstance(torch_dtype, torch.dtype):
            raise ValueError(f"transmamba lm_eval adapter: unknown dtype {dtype!r}")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            print(
                f"transmamba lm_eval adapter: device {device!r} requested but CUDA is not available; "
                "using the CPU",
                file=sys.stderr,
            )
            device = "cpu"
        self.model = CausalLM.from_pretrained(src, device=device, dtype=torch_dtype).eval()
        if transpoints is not None:
            self.model.set_transpoints(transpoints)
        self.tokenizer = _load_tokenizer(src, tokenizer)
        self.batch_size = 1 if str(batch_size) == "auto" else int(batch_size)
        self.max_length = int(max_length) if max_length else int(self.model.config.max_seq_len)
        self.max_gen_toks = int(max_gen_toks)
        self.add_bos_token = str(add_bos_token).lower() in ("1", "true", "yes")
        self._eot = self._find_eot() if eot_token_id is None else int(eot_token_id)

    def _find_eot(self) -> int:
        for name in EOS_NAMES:
            tid = self.tokenizer.token_to_id(name)
            if tid is not None:
                return int(tid)
        raise ValueError(
            "transmamba lm_eval adapter: the tokenizer has none of the end-of-text tokens "
            f"{EOS_NAMES}; pass eot_token_id=ID in --model_args"
        )

    # ---- tokens ------------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self._eot

    @property
    def device(self) -> torch.device:
        return self.model.device

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        ids = self.tokenizer.encode(string, add_special_tokens=False).ids
        if self.add_bos_token and add_special_tokens is not False:
            ids = [self.prefix_token_id] + ids
        return ids

    def tok_decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids))

    # ---- scoring -----------------------------------------------------------------------------------
    @torch.no_grad()
    def _score(self, rows: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(context ids, continuation ids) per row -> (log-likelihood, greedy) per row, one forward pass.

        The input is (context + continuation)[:-1], cut to its last max_length tokens; rows are right-padded
        (causal models: padding after a row's tokens changes none of its logits)."""
        inputs, n_cont = [], []
        for ctx, cont in rows:
            full = (ctx + cont)[-(self.max_length + 1) :]
            inputs.append(full[:-1])
            n_cont.append(len(cont))
        width = max(len(x) for x in inputs)
        batch = torch.zeros(len(inputs), width, dtype=torch.long)
        for r, x in enumerate(inputs):
            batch[r, : len(x)] = torch.tensor(x, dtype=torch.long)
        logp = F.log_softmax(self.model(batch.to(self.device)).logits.float(), dim=-1)  # (b, t, V)
        out = []
        for r, ((_, cont), x) in enumerate(zip(rows, inputs)):
            end = len(x)
            lp = logp[r, end - n_cont[r] : end]  # (n, V): the positions predicting the continuation
            target = torch.tensor(cont, dtype=torch.long, device=lp.device)
            ll = float(lp.gather(-1, target[:, None]).sum())
            out.append((ll, bool((lp.argmax(-1) == target).all())))
        return out

    def _loglikelihood_tokens(
        self, requests, disable_tqdm: bool = False, **kwargs
    ) -> list[tuple[float, bool]]:
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            scored = self._score([(list(requests[i][1]), list(requests[i][2])) for i in idx])
            for i, res in zip(idx, scored):
                results[i] = res
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], res)
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for req in requests:
            (text,) = req.args
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    token_list=self.tok_encode(text, add_special_tokens=False),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            scored = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows])
            total = sum(ll for ll, _ in scored)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    # ---- generation --------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in requests:
            context, gen_kwargs = req.args
            kw = dict(gen_kwargs or {})
            until = kw.pop("until", None) or [self.tok_decode([self.eot_token_id])]
            until = [until] if isinstance(until, str) else list(until)
            n_new = int(kw.pop("max_gen_toks", self.max_gen_toks))
            do_sample = bool(kw.pop("do_sample", False))
            temperature = float(kw.pop("temperature", 1.0))
            if temperature == 0.0:
                do_sample = False
            ids = self.tok_encode(context)[-max(self.max_length - n_new, 1) :]
            row = self.model.generate(
                [ids],
                max_new_tokens=n_new,
                do_sample=do_sample,
                temperature=temperature if do_sample else 1.0,
                top_k=kw.pop("top_k", None),
                top_p=kw.pop("top_p", None),
                eos_token_id=self.eot_token_id,
                seed=kw.pop("seed", None),
                cuda_graph="off" if self.model.device.type != "cuda" else "auto",
            )[0]
            new = row[len(ids) :]
            if new and new[-1] == self.eot_token_id:
                new = new[:-1]
            text = self.tok_decode(new)
            for stop in until:
                if stop and stop in text:
                    text = text.split(stop, 1)[0]
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out


def main(argv: list[str] | None = None) -> None:
    """lm_eval's command line with the `transmamba` model registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
