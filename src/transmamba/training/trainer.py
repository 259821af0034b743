"""The training loop for causal language models on packed text.

One optimizer step = ``grad_accum`` micro-batches of ``batch_size`` packed rows (per rank)::

    loss_micro = out.loss       # out = model(ids, seq_idx=, labels=): CE + out.aux_loss (MoE balance,
                                #   already times aux_loss_coef; --aux_loss_coef sets that weight)
    (loss_micro / grad_accum).backward()
    clip_grad_norm_(params, grad_clip);  AdamW step;  warmup + cosine lr step

Precision: bf16 autocast on CUDA (weights and optimizer state stay fp32), plain fp32 on CPU.
Evaluation (every ``eval_every`` steps and at the end) reports the validation loss (nats per target
token, summed over targets then divided, so batch composition does not matter) and bits per byte.
Checkpoints (``training/checkpoint.py``) hold everything needed to continue the *same* loss curve:
weights, optimizer and scheduler state, RNG states, the data loader's position, step and best loss.
A non-finite loss or gradient norm stops the run before the optimizer touches the weights, leaves the
last good checkpoint in place and says at which step it happened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transmamba.data.packing import PackedLoader, TextData, iter_eval_batches, prepare_text_data
from transmamba.errors import RunError
from transmamba.training import distributed as dist_mod
from transmamba.training.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint, step_dir_name
from transmamba.training.config import ConfigError, TrainConfig, unknown_key_message
from transmamba.training.metrics import MetricsLogger, bits_per_byte, plot_curves
from transmamba.training.optim import build_optimizer, build_scheduler
from transmamba.training.sharded_checkpoint import (
    is_sharded_checkpoint,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
)


class TrainingError(RunError, RuntimeError):
    """The run cannot go on (non-finite loss, a model that cannot take the data...)."""


class TrainingInterrupted(RunError):
    """SIGINT / SIGTERM during training: a checkpoint was saved at ``step`` (exit code 130 in the CLI)."""

    exit_code = 130

    def __init__(self, step: int, checkpoint: Path | None, signum: int | None = None) -> None:
        self.step, self.checkpoint, self.signum = step, checkpoint, signum
        super().__init__(f"interrupted at step {step}; saved checkpoint {checkpoint}")


class RunLock:
    """An exclusive ``flock`` on ``<run>/.lock`` for the life of a run: a second process training into the
    same folder (two ``--resume`` runs) is refused instead of interleaving steps. The kernel releases the
    lock when the process dies, so a crash never leaves a stale lock."""

    def __init__(self, run_dir: Path) -> None:
        import fcntl
        import os

        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / ".lock"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise ConfigError(
                f"another process (pid {other}) is training into {run_dir}; wait for it to finish or stop "
                "it, or choose another --out-dir"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        import fcntl
        import os

        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    step: int
    train_losses: dict[int, float]  # step -> loss of that optimizer step (mean over micro-batches)
    evals: list[dict]  # {"step", "val_loss", "val_bpb", "val_tokens", "val_bytes"}
    best_val_loss: float | None
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    wall_s: float
    tokens: int
    stats: dict
    is_main: bool = True  # rank 0 (the only rank that prints and writes)

    @property
    def final_val_loss(self) -> float | None:
        return self.evals[-1]["val_loss"] if self.evals else None

    @property
    def final_val_bpb(self) -> float | None:
        return self.evals[-1]["val_bpb"] if self.evals else None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_lm(cfg: TrainConfig, vocab_size: int) -> nn.Module:
    """The preset's CausalLM with ``cfg.model`` overrides and the tokenizer's vocabulary size."""
    from transmamba.models.config import ModelConfig
    from transmamba.models.presets import get_preset, list_presets

    if cfg.preset not in list_presets():
        import difflib

        close = difflib.get_close_matches(cfg.preset, list_presets(), n=3)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"unknown preset {cfg.preset!r}.{hint} Available: {', '.join(list_presets())}")
    valid = ModelConfig.field_names()
    for key in cfg.model:
        if key not in valid:
            raise ConfigError(unknown_key_message(key, valid, "model override"))
    overrides = {**cfg.model, "vocab_size": vocab_size}
    if cfg.aux_loss_coef is not None and "aux_loss_coef" not in cfg.model:
        overrides["aux_loss_coef"] = cfg.aux_loss_coef
    try:
        mcfg = get_preset(cfg.preset, **overrides)
    except (ValueError, TypeError) as err:  # a value of the wrong type compares or multiplies badly
        raise ConfigError(f"model override: {err}; check the --model.KEY values' types") from None
    if cfg.seq_len > mcfg.max_seq_len:
        raise ConfigError(
            f"seq_len={cfg.seq_len} is longer than the model's max_seq_len={mcfg.max_seq_len} "
            f"(preset {cfg.preset!r}); use --seq_len {mcfg.max_seq_len} or less, "
            f"or raise it with --model.max_seq_len {cfg.seq_len}"
        )
    from transmamba.models.lm import CausalLM

    try:
        return CausalLM(mcfg)
    except (ValueError, TypeError) as err:  # an override of the wrong type (e.g. --model.d_ff true)
        raise ConfigError(f"cannot build {cfg.preset!r} with the model overrides {cfg.model}: {err}"
                          ) from None


def _uses_bf16(device: torch.device, dtype: str) -> bool:
    return dtype == "bf16" or (dtype == "auto" and device.type == "cuda")


def _autocast(device: torch.device, dtype: str):
    if _uses_bf16(device, dtype):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


_scalar = dist_mod.scalar


class Trainer:
    """Train ``cfg.preset`` (or a given model) on ``cfg.data``; see the module docstring.

    ``model_factory(vocab_size) -> nn.Module`` and ``data`` can be injected (tests use a small stand-in
    module with the CausalLM call signature). ``stop_at`` ends the loop after that step as if the process
    had been killed there (the resume tests use it).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        model_factory: Callable[[int], nn.Module] | None = None,
        data: TextData | None = None,
        log: Callable[[str], None] | None = None,
        stop_at: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.stop_at = stop_at
        self.model_factory = model_factory
        self._data = data
        self._log = log or print
        self.bar = None
        self.last_good: Path | None = None
        self._stop_signal: int | None = None

    # ------------------------------------------------------------------ helpers
    def log(self, msg: str) -> None:
        if not self.info.is_main:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            self._log(msg)

    def _last_good_text(self) -> str:
        last = self.last_good
        return f"the last good checkpoint is {last}" if last else "no checkpoint was written before it"

    def _check_finite(self, value: float, what: str, step: int) -> None:
        bad = not math.isfinite(value)
        if dist_mod.any_flag(bad, self.info, self.device):
            raise TrainingError(
                f"{what} became {value} at step {step}; stopped before updating the weights; "
                f"{self._last_good_text()} (weights and held-out loss checked finite). "
                "Try a lower --lr, a smaller --grad-clip, or --dtype fp32."
            )

    @torch.no_grad()
    def _healthy(self, model: nn.Module) -> tuple[bool, str]:
        """Whether the weights are all finite and the loss on the held batch (the first validation batch,
        fixed for the run) is finite: the test a checkpoint passes before it is written and named good."""
        for name, p in model.named_parameters():
            if not bool(torch.isfinite(p).all()):
                return False, f"parameter {name} holds non-finite values"
        batch = self.held_batch
        was_training = model.training
        model.eval()
        try:
            with _autocast(self.device, self.cfg.dtype):
                out = model(batch["input_ids"].to(self.device), seq_idx=batch["seq_idx"].to(self.device),
                            labels=batch["labels"].to(self.device))
            loss = _scalar(out.loss)
        finally:
            model.train(was_training)
        if not math.isfinite(loss):
            return False, f"the loss on the held batch is {loss}"
        return True, ""

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict:
        cfg, data = self.cfg, self.data
        was_training = model.training
        model.eval()
        total_loss, n_tok, n_bytes = 0.0, 0, 0
        token_bytes = torch.from_numpy(data.token_bytes)
        batches = iter_eval_batches(data.val, cfg.batch_size, cfg.eval_batches or None,
                                    rank=self.info.rank, world_size=self.info.world_size)
        for batch in batches:
            labels = batch["labels"]
            targets = labels[:, 1:]
            valid = targets != -100
            count = int(valid.sum())
            if count == 0:
                continue
            with _autocast(self.device, cfg.dtype):
                out = model(batch["input_ids"].to(self.device), seq_idx=batch["seq_idx"].to(self.device),
                            labels=labels.to(self.device))
            ce = _scalar(out.loss)
            if getattr(out, "aux_loss", None) is not None:
                ce -= _scalar(out.aux_loss)  # validation reports cross entropy only (no MoE balance term)
            total_loss += ce * count
            n_tok += count
            n_bytes += int(token_bytes[targets[valid].clamp(min=0, max=len(token_bytes) - 1)].sum())
        total_loss, n_tok, n_bytes = dist_mod.all_reduce_sum([total_loss, n_tok, n_bytes], self.info,
                                                             self.device)
        if was_training:
            model.train()
        mean = total_loss / max(n_tok, 1)
        return {"val_loss": mean, "val_bpb": bits_per_byte(mean, int(n_tok), int(n_bytes)),
                "val_tokens": int(n_tok), "val_bytes": int(n_bytes)}

    # ------------------------------------------------------------------ the run
    def fit(self) -> TrainResult:
        cfg = self.cfg
        t_start = time.perf_counter()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        from transmamba.commands._args import check_device

        check_device(cfg.device)
        self.device = dist_mod.local_device(cfg.device)
        self.info = dist_mod.init_distributed(self.device)
        self.run_dir = cfg.run_dir
        lock = None
        try:
            if self.info.is_main:
                lock = RunLock(self.run_dir)
            result = self._fit(t_start)
            dist_mod.barrier(self.info)  # every rank done before any tears the process group down
            return result
        finally:
            if lock is not None:
                lock.release()
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            dist_mod.cleanup(self.info)

    def _resume_point(self) -> Path | None:
        cfg = self.cfg
        existing = find_checkpoint(self.run_dir) if self.run_dir.exists() else None
        if cfg.resume:
            if existing is None:
                self.log(f"--resume: no checkpoint in {self.run_dir}, starting from step 0")
            return existing
        if existing is not None:
            if getattr(cfg, "overwrite", False):
                if self.info.is_main:
                    shutil.rmtree(self.run_dir / "checkpoints", ignore_errors=True)
                    for link in ("last", "best"):
                        (self.run_dir / link).unlink(missing_ok=True)
                dist_mod.barrier(self.info)
                return None
            raise ConfigError(
                f"{self.run_dir} already holds a checkpoint ({existing.name}); pass --resume to continue it, "
                "or choose another --out_dir"
            )
        return None

    def _fit(self, t_start: float) -> TrainResult:
        cfg, info, device = self.cfg, self.info, self.device
        seed_everything(cfg.seed)
        resume_from = self._resume_point()
        if resume_from is not None:  # before anything is built: another architecture is refused at once
            self._check_resume_config(resume_from)

        # ---- data (the checkpoint's tokenizer on resume, so token ids cannot drift)
        if self._data is None and cfg.task != "text":
            from transmamba.training.recall_data import prepare_recall_data

            rows = min(cfg.task_rows, cfg.batch_size * cfg.grad_accum * cfg.max_steps * info.world_size)
            self._data = prepare_recall_data(cfg.task, seq_len=cfg.seq_len, vocab_size=cfg.vocab_size,
                                             train_rows=max(rows, cfg.batch_size * info.world_size),
                                             seed=cfg.seed)
        if self._data is None:
            tok_path = cfg.tokenizer
            if resume_from is not None and (resume_from / "tokenizer.json").is_file():
                tok_path = str(resume_from / "tokenizer.json")
            if info.enabled and not info.is_main:
                dist_mod.barrier(info)  # rank 0 trains and caches the tokenizer first
            self._data = prepare_text_data(
                cfg.data, seq_len=cfg.seq_len, vocab_size=cfg.vocab_size, val_fraction=cfg.val_fraction,
                seed=cfg.seed, text_field=cfg.text_field, cache_dir=cfg.cache_dir, tokenizer_path=tok_path,
                log=self.log,
            )
            if info.enabled and info.is_main:
                dist_mod.barrier(info)
        self.data = data = self._data
        if len(data.val):
            self.held_batch = next(iter(iter_eval_batches(data.val, min(cfg.batch_size, len(data.val)), 1)))
        else:
            self.held_batch = data.train.batch([0])
        s = data.stats
        self.log(
            f"data: {s.get('train_documents', '?')} train / {s.get('val_documents', '?')} val documents, "
            f"{s.get('train_tokens', 0):,} / {s.get('val_tokens', 0):,} tokens, "
            f"vocab {data.tokenizer.vocab_size}"
        )

        # ---- model, optimizer, schedule
        seed_everything(cfg.seed)
        factory = self.model_factory or (lambda v: build_lm(cfg, v))
        raw_model = factory(data.tokenizer.vocab_size).to(device)
        if hasattr(raw_model, "fused_loss"):  # CausalLM's training-speed options (no effect on results)
            raw_model.fused_loss = cfg.fused_loss
            raw_model.gradient_checkpointing = cfg.checkpointing
        self._probe(raw_model)
        n_params = sum(p.numel() for p in raw_model.parameters())
        self.log(f"model: {cfg.preset}, {n_params:,} parameters, device {device}, world {info.world_size}"
                 + (f", {cfg.parallel}" if info.enabled else ""))
        sharded = cfg.parallel == "fsdp"  # checkpoints through DCP (also on one rank, to reshard later)
        if sharded and info.enabled:  # shard before the optimizer sees the parameters (they become DTensors)
            dist_mod.shard_model(raw_model, bf16=_uses_bf16(device, cfg.dtype))
        optimizer = build_optimizer(raw_model, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    betas=(cfg.beta1, cfg.beta2), device=device)
        scheduler = build_scheduler(optimizer, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps,
                                    min_lr_ratio=cfg.min_lr_ratio)
        loader = PackedLoader(data.train, cfg.batch_size, seed=cfg.seed, rank=info.rank,
                              world_size=info.world_size)
        step, best, tokens_seen, evals = 0, None, 0, []
        if resume_from is not None:
            if is_sharded_checkpoint(resume_from):
                state = load_sharded_checkpoint(resume_from, model=raw_model, optimizer=optimizer,
                                                scheduler=scheduler)
            elif sharded and info.enabled:
                raise ConfigError(f"{resume_from} was written by a --parallel ddp (or single-process) run; "
                                  "resume it with --parallel ddp")
            else:
                state = load_checkpoint(resume_from, model=raw_model, optimizer=optimizer,
                                        scheduler=scheduler, map_location=device)
            step, best = int(state["step"]), state.get("best_val_loss")
            self.last_good = resume_from
            tokens_seen, evals = int(state.get("tokens", 0)), list(state.get("evals", []))
            t_start -= float(state.get("elapsed_s", 0.0))  # elapsed time continues across restarts
            loader.load_state_dict(state["data"])
            self.log(f"resumed from {resume_from} at step {step}")
        model = raw_model
        if cfg.compile:
            model = torch.compile(model)
        if not sharded:
            model = dist_mod.wrap_model(model, info, device, "ddp")
        model.train()

        metrics = MetricsLogger(self.run_dir, enabled=info.is_main, tensorboard=cfg.tensorboard,
                                resume_step=step if resume_from is not None else None)
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "train_config.json").write_text(cfg.to_json() + "\n")
        tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * info.world_size
        train_losses: dict[int, float] = {}
        last_ckpt = find_checkpoint(self.run_dir) if resume_from is not None else None
        best_ckpt = find_checkpoint(self.run_dir, "best") if resume_from is not None else None
        eval_every = cfg.eval_every or cfg.max_steps
        save_every = cfg.save_every or eval_every

        def checkpoint(is_best: bool) -> None:
            nonlocal last_ckpt, best_ckpt
            ok, why = self._healthy(raw_model)
            if dist_mod.any_flag(not ok, info, device):
                raise TrainingError(
                    f"the model at step {step} failed the checkpoint check ({why or 'on another rank'}); "
                    f"not saved; {self._last_good_text()}. Try a lower --lr or a smaller --grad-clip."
                )
            kwargs = dict(
                step=step, model=raw_model, optimizer=optimizer, scheduler=scheduler,
                trainer_state={"best_val_loss": best, "tokens": tokens_seen, "evals": evals,
                               "elapsed_s": time.perf_counter() - t_start,
                               "data": loader.state_dict(), "world_size": info.world_size},
                train_config=cfg.to_dict(), tokenizer=data.tokenizer, is_best=is_best,
            )
            try:
                if sharded:  # collective: every rank writes its shards
                    last_ckpt = save_sharded_checkpoint(self.run_dir, **kwargs)
                elif info.is_main:
                    last_ckpt = save_checkpoint(self.run_dir, **kwargs)
            except OSError as err:
                raise TrainingError(
                    f"could not write the step-{step} checkpoint under {self.run_dir}: "
                    f"{err.strerror or err}{f' ({err.filename})' if err.filename else ''}; "
                    f"{self._last_good_text()} and is intact; free space or fix permissions, then --resume"
                ) from None
            self.last_good = last_ckpt
            if is_best and info.is_main:
                best_ckpt = last_ckpt
            dist_mod.barrier(info)

        if info.is_main and cfg.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=cfg.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
        t_last, tok_last = time.perf_counter(), tokens_seen
        on_step = getattr(raw_model, "on_train_step", None)  # a model's per-step hook (distillation schedule)
        restore_signals = self._catch_stop_signals()
        while step < cfg.max_steps:
            # ---- one optimizer step
            if on_step is not None:
                on_step(step)
            step_loss = 0.0
            for micro in range(cfg.grad_accum):
                batch = loader.next_batch()
                with dist_mod.no_sync(model, micro < cfg.grad_accum - 1), _autocast(device, cfg.dtype):
                    out = model(batch["input_ids"].to(device), seq_idx=batch["seq_idx"].to(device),
                                labels=batch["labels"].to(device))
                    loss = out.loss  # CE + the MoE load-balancing term (out.aux_loss, already weighted)
                value = _scalar(loss)
                self._check_finite(value, "the training loss", step + 1)
                (loss / cfg.grad_accum).backward()
                step_loss += value / cfg.grad_accum
            step_loss = dist_mod.all_reduce_mean(step_loss, info, device)  # the global batch's loss
            if cfg.grad_clip > 0:
                gnorm = _scalar(torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip))
            else:
                gnorm = dist_mod.grad_norm(raw_model.parameters())
            self._check_finite(gnorm, "the gradient norm", step + 1)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tokens_per_step
            train_losses[step] = step_loss

            # ---- bookkeeping
            now = time.perf_counter()
            tok_rate = (tokens_seen - tok_last) / max(now - t_last, 1e-9)  # since the loop (re)started
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tok_rate:,.0f}", refresh=False)
            row = None
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                row = {}
            do_eval = step % eval_every == 0 or step == cfg.max_steps
            if do_eval:
                ev = self.evaluate(model)
                evals.append({"step": step, **ev})
                row = {**(row or {}), "val_loss": ev["val_loss"], "val_bpb": ev["val_bpb"]}
                self.log(f"step {step}: train loss {step_loss:.4f}, val loss {ev['val_loss']:.4f}, "
                         f"val bpb {ev['val_bpb']:.4f}")
            if row is not None:
                metrics.log({"step": step, "tokens": tokens_seen, "lr": lr, "train_loss": step_loss,
                             "grad_norm": gnorm, "tokens_per_s": tok_rate, "elapsed_s": now - t_start, **row})
            if do_eval or step % save_every == 0:
                is_best = do_eval and (best is None or evals[-1]["val_loss"] < best)
                if is_best:
                    best = evals[-1]["val_loss"]
                checkpoint(is_best)
            if self.stop_at is not None and step >= self.stop_at:
                break  # simulated interruption (tests): as if the process died right after this step
            if dist_mod.any_flag(self._stop_signal is not None, info, device):
                if last_ckpt is None or last_ckpt.name != step_dir_name(step):
                    checkpoint(False)  # the current step, atomically (save_checkpoint)
                metrics.close()
                restore_signals()
                raise TrainingInterrupted(step, last_ckpt, self._stop_signal)
        restore_signals()

        metrics.close()
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if info.is_main and (self.run_dir / "metrics.csv").is_file():
            try:
                plot_curves({cfg.preset: self.run_dir / "metrics.csv"}, self.run_dir / "curves.png",
                            title=f"{cfg.preset} on {cfg.data or 'Shakespeare'}")
            except Exception as err:  # a plot must never cost the run
                self.log(f"could not plot curves: {err}")
        return TrainResult(
            run_dir=self.run_dir, step=step, train_losses=train_losses, evals=evals, best_val_loss=best,
            last_checkpoint=last_ckpt, best_checkpoint=best_ckpt, wall_s=time.perf_counter() - t_start,
            tokens=tokens_seen, stats=dict(data.stats), is_main=info.is_main,
        )

    def _catch_stop_signals(self) -> Callable[[], None]:
        """SIGINT / SIGTERM during the loop set a flag; the loop finishes the step, saves a checkpoint at it
        and stops (`TrainingInterrupted`). A second signal interrupts at once (the previous checkpoint stays
        intact: saves are atomic). Returns the function that restores the previous handlers."""
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {}

        def handler(signum, frame):
            if self._stop_signal is not None:
                raise KeyboardInterrupt
            self._stop_signal = signum
            self.log(f"received {signal.Signals(signum).name}: saving a checkpoint after this step "
                     "(send it again to stop at once)")

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)

        def restore() -> None:
            for sig, h in previous.items():
                signal.signal(sig, h)
            previous.clear()

        return restore

    def _check_resume_config(self, folder: Path) -> None:
        """Resume continues the *same* run: a different architecture (preset or model overrides, or the
        tokenizer settings that size the vocabulary) is refused; other changed settings are listed."""
        path = folder / "train_config.json"
        if not path.is_file():
            return
        import json

        try:
            saved = json.loads(path.read_text())
        except ValueError:
            return
        now = self.cfg.to_dict()
        arch_keys = ("preset", "model", "vocab_size", "tokenizer")
        arch = [k for k in arch_keys if k in saved and saved[k] != now.get(k)]
        ignore = {"resume", "overwrite", "progress", "threads", "tensorboard", "cache_dir", "device",
                  "out_dir", *arch_keys}
        other = [k for k in sorted(now) if k not in ignore and k in saved and saved[k] != now[k]]
        if arch:
            diffs = ", ".join(f"{k}: {saved[k]!r} -> {now.get(k)!r}" for k in arch)
            raise ConfigError(
                f"--resume would continue {folder} with a different architecture ({diffs}); pass the "
                f"original settings, or train into another --out-dir"
            )
        if other:
            diffs = ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in other)
            self.log(f"warning: resuming with changed settings ({diffs}); the data order and learning-rate "
                     "schedule follow the new values from here, so the curve will differ from an "
                     "uninterrupted run")

    def _probe(self, model: nn.Module) -> None:
        """One row of seq_len through the model, so a length it cannot take fails now, clearly."""
        cfg = self.cfg
        limit = getattr(getattr(model, "config", None), "max_seq_len", None)
        if limit is not None and cfg.seq_len > limit:
            raise ConfigError(
                f"seq_len={cfg.seq_len} is longer than the model's max_seq_len={limit}; "
                f"use --seq_len {limit} or less, or --model.max_seq_len {cfg.seq_len}"
            )
        batch = self.data.train.batch([0])
        try:
            with torch.no_grad(), _autocast(self.device, cfg.dtype):
                model(batch["input_ids"].to(self.device), seq_idx=batch["seq_idx"].to(self.device),
                      labels=batch["labels"].to(self.device))
        except (ValueError, RuntimeError) as err:
            raise ConfigError(f"the model cannot take rows of seq_len={cfg.seq_len}: {err}") from err
