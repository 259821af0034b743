"""TrainConfig: every knob of a training run, settable from YAML and from the command line.

Precedence: dataclass defaults < YAML file (``--config run.yaml``) < command-line flags. Unknown keys are
rejected with the list of valid ones and the closest matches (difflib). Model overrides live under
``model`` (YAML: a nested mapping; CLI: ``--model.d_model 64``) and are applied to the preset's
``ModelConfig``; their names are checked against its fields when the model is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from pathlib import Path
from typing import Any

from transmamba.errors import UsageError


class ConfigError(UsageError, ValueError):
    """A configuration key or value that cannot be used."""


def _f(default, help: str, **kw):  # noqa: A002 - dataclass field with a help string
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


@dataclasses.dataclass
class TrainConfig:
    # what to train on
    preset: str = _f("transmamba-tiny", "model preset (see `transmamba info`)")
    task: str = _f("text", "text (--data) | phonebook | mqar | selective-copy: a recall task's generated "
                   "rows, scored later by `transmamba eval TASK`; --vocab-size: the model vocabulary")
    task_rows: int = _f(20000, "--task: training rows generated (fresh ones until this many steps' worth)")
    data: str | None = _f(None, "text file, folder of .txt/.md, .jsonl or .parquet (default: Shakespeare)")
    text_field: str = _f("text", "JSONL field / Parquet column holding the text")
    vocab_size: int = _f(4096, "BPE vocabulary size of the tokenizer trained on the data")
    tokenizer: str | None = _f(None, "use this tokenizer.json instead of training one")
    val_fraction: float = _f(0.05, "fraction of documents held out for validation")
    seq_len: int = _f(256, "tokens per training row")
    # optimisation
    batch_size: int = _f(16, "rows per micro-batch (per rank)")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    max_steps: int = _f(1000, "optimizer steps")
    lr: float = _f(3e-3, "peak learning rate")
    min_lr_ratio: float = _f(0.1, "final learning rate as a fraction of lr (cosine floor)")
    warmup_steps: int = _f(50, "linear warmup steps")
    weight_decay: float = _f(0.1, "AdamW weight decay (matrices only; norms, biases, A_log, D exempt)")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.95, "AdamW beta2")
    grad_clip: float = _f(1.0, "max global gradient norm (0: off)")
    aux_loss_coef: float | None = _f(None, "MoE load-balancing loss weight (None: the preset's)")
    # evaluation and checkpoints
    eval_every: int = _f(100, "evaluate every N steps (and at the end); 0: only at the end")
    eval_batches: int = _f(20, "validation batches per evaluation (0: the whole split)")
    save_every: int = _f(0, "checkpoint every N steps (0: at each evaluation)")
    log_every: int = _f(10, "write a metrics row every N steps")
    out_dir: str = _f("runs/{preset}", "run folder for checkpoints, metrics, plot ({preset} filled in)")
    resume: bool = _f(False, "continue from out_dir's last checkpoint")
    overwrite: bool = _f(False, "start afresh even if out_dir holds checkpoints (deletes them)")
    # execution
    seed: int = _f(0, "seed of everything (model init, data order, sampling)")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    dtype: str = _f("auto", "auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16")
    threads: int = _f(0, "torch CPU threads (0: leave torch's default)")
    compile: bool = _f(False, "torch.compile the model")
    fused_loss: bool = _f(True, "LM-head cross-entropy in token chunks, without the (tokens, vocab) logits")
    checkpointing: bool = _f(False, "recompute each block's activations in the backward (less memory)")
    parallel: str = _f("ddp", "under torchrun: ddp (replicate the model) | fsdp (FSDP2: shard parameters, "
                       "gradients and optimizer state per block; sharded DCP checkpoints)")
    progress: bool = _f(True, "show a progress bar")
    tensorboard: bool = _f(True, "also log to TensorBoard when torch.utils.tensorboard is importable")
    cache_dir: str | None = _f(None, "tokenizer cache (default: $TRANSMAMBA_CACHE or ~/.cache/transmamba)")
    model: dict = _f({}, "ModelConfig overrides, e.g. {d_model: 64} or --model.d_model 64")

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Every value in range (the message names the key, the value and the allowed range)."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        for name in TrainConfig.field_names():  # types first (a YAML `batch_size: true` is not 1)
            value, tp = getattr(self, name), _base_type(field_type(name))
            if value is None and _base_type(field_type(name)) is not field_type(name):
                continue
            if tp is int:
                need(isinstance(value, int) and not isinstance(value, bool),
                     f"{name} must be a whole number, got {value!r}")
            elif tp is float:
                need(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                     f"{name} must be a finite number, got {value!r}")
        positive = ("vocab_size", "seq_len", "batch_size", "grad_accum", "max_steps", "log_every")
        for name in positive:
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "eval_batches", "save_every", "threads", "seed"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        need(self.seq_len >= 2, f"seq_len must be at least 2, got {self.seq_len}")
        need(self.vocab_size <= 2**22, f"vocab_size must be <= {2**22}, got {self.vocab_size}")
        need(0 < self.val_fraction < 1, f"val_fraction must be in (0, 1), got {self.val_fraction}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(0 <= self.min_lr_ratio <= 1,
             f"min_lr_ratio must be in [0, 1] (the final lr as a fraction of --lr), got {self.min_lr_ratio}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("beta1", "beta2"):
            need(0 <= getattr(self, name) < 1, f"{name} must be in [0, 1), got {getattr(self, name)}")
        need(self.grad_clip >= 0, f"grad_clip must be >= 0 (0 turns clipping off), got {self.grad_clip}")
        need(self.aux_loss_coef is None or self.aux_loss_coef >= 0,
             f"aux_loss_coef must be >= 0, got {self.aux_loss_coef}")
        need(self.task in ("text", "phonebook", "mqar", "selective-copy"),
             f"task must be text, phonebook, mqar or selective-copy, got {self.task!r}")
        need(self.task == "text" or self.data is None,
             "--data is for --task text; a recall task generates its rows")
        need(1 <= self.task_rows <= 1_000_000, f"task_rows must be in [1, 1000000], got {self.task_rows}")
        need(self.parallel in ("ddp", "fsdp"), f"parallel must be ddp or fsdp, got {self.parallel!r}")
        need(self.dtype in ("auto", "fp32", "bf16"), f"dtype must be auto, fp32 or bf16, got {self.dtype!r}")
        need(self.device == "auto" or self.device == "cpu" or self.device.startswith(("cuda", "mps")),
             f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        need(isinstance(self.model, dict),
             f"model must be a mapping of ModelConfig overrides, got {self.model!r}")
        try:
            self.out_dir.format(preset=self.preset)
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(f"out_dir {self.out_dir!r}: only {{preset}} may appear in braces ({err})"
                              ) from None

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir.format(preset=self.preset))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    # ------------------------------------------------------------------ building
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> TrainConfig:
        check_keys(values, cls.field_names(), source)
        coerced = {k: coerce(k, v, field_type(k)) for k, v in values.items()}
        return cls(**coerced)

    @classmethod
    def from_yaml(cls, path: str | Path) -> dict[str, Any]:
        """The YAML file's mapping, checked for unknown keys (not yet merged)."""
        import yaml

        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            values = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of TrainConfig keys, got {type(values).__name__}")
        check_keys(values, cls.field_names(), str(path))
        return values


def check_keys(values: dict, valid: list[str], source: str) -> None:
    unknown = [k for k in values if k not in valid]
    if unknown:
        raise ConfigError(unknown_key_message(unknown[0], valid, source))


def unknown_key_message(key: str, valid: list[str], source: str) -> str:
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"{source}: unknown key {key!r}.{hint} Valid keys: {', '.join(sorted(valid))}"


def field_type(name: str) -> Any:
    hints = typing.get_type_hints(TrainConfig)
    return hints[name]


def _base_type(tp: Any) -> Any:
    """int | None -> int; plain types unchanged."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        return args[0]
    return tp


def coerce(name: str, value: Any, tp: Any) -> Any:
    """Convert a YAML/CLI value to the field's type, with a clear error naming the key."""
    base = _base_type(tp)
    optional = base is not tp
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} cannot be null")
    if isinstance(value, str) and optional and value.lower() in ("none", "null"):
        return None
    try:
        if isinstance(value, bool) and base is not bool:
            raise ValueError(value)  # YAML `batch_size: true` is not 1
        if base is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            if isinstance(value, str):
                value = float(value) if any(c in value for c in ".eE") else int(value)
                if isinstance(value, float) and not value.is_integer():  # --max-steps 2.5 is not 2
                    raise ValueError(value)
            if not isinstance(value, (int, float)):
                raise TypeError(value)
            return int(value)
        if base is float:
            if not isinstance(value, (int, float, str)):
                raise TypeError(value)
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(value)
            return value
        if base is str:
            if not isinstance(value, (str, int, float)):
                raise TypeError(value)
            return str(value)
        if base is dict or typing.get_origin(base) is dict:
            if not isinstance(value, dict):
                raise ValueError(value)
            return dict(value)
    except (TypeError, ValueError):
        tname = getattr(base, "__name__", str(base))
        what = {"int": "a whole number", "float": "a finite number", "bool": "true or false"}.get(tname,
                                                                                                   tname)
        raise ConfigError(f"{name} must be {what}, got {value!r}") from None
    return value


def parse_scalar(text: str) -> Any:
    """A CLI value for a model override: YAML's scalar rules (64 -> int, 1e-3 -> float, [..] -> list)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text
