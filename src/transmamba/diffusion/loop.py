"""Dimba's train / sample / evaluate loop: AdamW on the diffusion loss, EMA, grids, checkpoints.

Recipe: AdamW (β 0.9/0.999, weight decay ``weight_decay``), learning rate warmed up linearly over ``warmup``
steps then (``lr_schedule="cosine"``) decayed to ``min_lr_ratio``·lr by the last step, gradient norm clipped
at ``grad_clip``; the loss is ``schedule.diffusion_loss`` (ε-MSE, plus the VLB term with a learned variance);
each
condition is replaced by the learned null condition with the model's ``class_dropout`` probability; the EMA
of the weights (``schedule.EMA``) is what samples, evaluations and the exported model use.

A run folder holds ``checkpoints/step-N`` (atomic, via ``transmamba.training.checkpoint``: weights and EMA in
``model.safetensors``, optimizer, RNG), ``samples/step-N.png`` grids, ``model/`` (the EMA network,
``Dimba.save_pretrained``), ``metrics.json``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from transmamba.diffusion.data import ImageData
from transmamba.diffusion.model import Dimba, DimbaConfig
from transmamba.diffusion.plot import save_grid
from transmamba.diffusion.schedule import EMA, diffusion_loss, make_sampler, make_train_scheduler, sample

__all__ = [
    "TrainConfig",
    "TrainState",
    "generate",
    "evaluate_model",
    "load_model",
    "lr_at",
    "train_diffusion",
]


@dataclass
class TrainConfig:
    """Training settings; the defaults are the CPU recipe of ``transmamba diffuse train`` (docs)."""

    steps: int = 1200
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 100
    lr_schedule: str = "cosine"  # "cosine" | "constant"
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    beta_schedule: str = "squaredcos_cap_v2"
    num_train_timesteps: int = 1000
    sample_every: int = 500  # grid PNG every N steps (0: only at the end)
    checkpoint_every: int = 1000  # 0: only at the end
    sample_steps: int = 20
    cfg_scale: float = 3.0
    sampler: str = "dpm-solver"
    seed: int = 0

    def __post_init__(self):
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"TrainConfig: lr_schedule {self.lr_schedule!r} not in ('cosine', 'constant')")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig: {name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig: lr must be > 0, got {self.lr}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate for 0-based ``step``: linear warmup to lr, then constant or cosine to min_lr_ratio·lr."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.lr_schedule == "constant":
        return cfg.lr
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    lo = cfg.lr * cfg.min_lr_ratio
    return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * min(frac, 1.0)))


class TrainState(nn.Module):
    """The trained network and its EMA in one module, so a checkpoint holds both (``model.*``, ``ema.*``)."""

    def __init__(self, model: Dimba, ema: Dimba, meta: dict):
        super().__init__()
        self.model, self.ema, self.meta = model, ema, meta

    def save_pretrained(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))
        cfg = {"model": self.model.config.to_dict(), **self.meta}
        (folder / "config.json").write_text(json.dumps(cfg, indent=2, default=str) + "\n")


def _cond(data: ImageData, labels: torch.Tensor, device):
    cond, mask = data.condition(labels)
    return cond.to(device), None if mask is None else mask.to(device)


@torch.no_grad()
def generate(
    model: Dimba,
    data: ImageData,
    labels: torch.Tensor,
    *,
    steps: int = 20,
    cfg_scale: float = 3.0,
    seed: int = 0,
    sampler: str = "dpm-solver",
    beta_schedule: str = "squaredcos_cap_v2",
    num_train_timesteps: int = 1000,
    batch_size: int = 256,
) -> torch.Tensor:
    """Images (b, C, S, S) in [−1, 1] for class ``labels`` (b,), decoded from latents in latent mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    cfgm = model.config
    sched = make_sampler(
        sampler,
        make_train_scheduler(beta_schedule, num_train_timesteps, cfgm.learn_sigma),
        clip_x0=data.vae is None,
    )
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, labels.shape[0], batch_size):
        lab = labels[i : i + batch_size]
        cond, mask = _cond(data, lab, device)
        shape = (lab.shape[0], cfgm.in_channels, cfgm.image_size, cfgm.image_size)
        x = sample(model, sched, cond, shape, steps=steps, cfg_scale=cfg_scale, mask=mask, generator=g)
        out.append(data.decode(x).cpu())
    model.train(was_training)
    return torch.cat(out)


def grid_labels(num_classes: int, per_class: int) -> torch.Tensor:
    """Labels for a grid with one column per class (≤ 10 columns): row r holds classes 0..K−1."""
    k = min(num_classes, 10)
    return torch.arange(k).repeat(per_class)


def evaluate_model(
    model: Dimba,
    data: ImageData,
    *,
    per_class: int = 50,
    steps: int = 20,
    cfg_scale: float = 3.0,
    seed: int = 0,
    sampler: str = "dpm-solver",
    beta_schedule: str = "squaredcos_cap_v2",
    num_train_timesteps: int = 1000,
    classifier=None,
) -> dict:
    """Class accuracy and Fréchet distance (evaluate.py) of ``per_class`` samples of every class."""
    from transmamba.diffusion.evaluate import score_samples, train_classifier

    t0 = time.time()
    clf_acc = None
    if classifier is None:
        classifier, clf_acc = train_classifier(data.images, data.labels, data.num_classes, seed=seed)
    labels = torch.arange(data.num_classes).repeat_interleave(per_class)
    fake = generate(
        model,
        data,
        labels,
        steps=steps,
        cfg_scale=cfg_scale,
        seed=seed + 1,
        sampler=sampler,
        beta_schedule=beta_schedule,
        num_train_timesteps=num_train_timesteps,
    )
    res = score_samples(classifier, data.images, fake, labels)
    res.update(
        classifier_heldout_accuracy=clf_acc,
        chance=1.0 / data.num_classes,
        steps=steps,
        cfg_scale=cfg_scale,
        seconds=round(time.time() - t0, 1),
    )
    return res


def train_diffusion(
    model: Dimba,
    data: ImageData,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    log: Callable[[str], None] | None = print,
    progress: bool = False,
    resume: bool = False,
) -> tuple[Dimba, dict]:
    """Train ``model`` on ``data``; returns (the EMA model, history); run folder: module doc."""
    from transmamba.training.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint

    log = log or (lambda s: None)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    mcfg = model.config
    if data.x.shape[1:] != (mcfg.in_channels, mcfg.image_size, mcfg.image_size):
        raise ValueError(
            f"data gives {tuple(data.x.shape[1:])} inputs, the model expects "
            f"({mcfg.in_channels}, {mcfg.image_size}, {mcfg.image_size}); match --image-size / channels"
        )
    if not data.text and mcfg.cond_dim is None and data.num_classes > mcfg.num_classes:
        raise ValueError(f"data has {data.num_classes} classes, the model {mcfg.num_classes}")
    torch.manual_seed(cfg.seed)
    scheduler = make_train_scheduler(cfg.beta_schedule, cfg.num_train_timesteps, mcfg.learn_sigma)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema_decay)
    meta = {"data": data.meta, "class_names": data.class_names, "train": cfg.to_dict()}
    state = TrainState(model, ema.module, meta)
    start = 0
    history: dict = {"losses": [], "samples": []}
    if resume and (ck := find_checkpoint(run_dir)) is not None:
        st = load_checkpoint(ck, model=state, optimizer=opt)
        start, ema.updates = int(st["step"]), int(st.get("ema_updates", st["step"]))
        history["losses"] = st.get("losses", [])
        log(f"resumed from {ck} at step {start}")
    gen = torch.Generator().manual_seed(cfg.seed + start)
    batches = data.batches(cfg.batch_size, gen)
    device = next(model.parameters()).device
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="diffuse", unit="step", dynamic_ncols=True)
    t0 = time.time()
    model.train()
    running = []

    def checkpoint(step: int) -> None:
        save_checkpoint(
            run_dir,
            step=step,
            model=state,
            optimizer=opt,
            scheduler=None,
            trainer_state={"ema_updates": ema.updates, "losses": history["losses"]},
            train_config=cfg.to_dict(),
        )

    def grid(step: int) -> None:
        labels = grid_labels(data.num_classes, 4)
        imgs = generate(
            ema.module,
            data,
            labels,
            steps=cfg.sample_steps,
            cfg_scale=cfg.cfg_scale,
            seed=cfg.seed,
            sampler=cfg.sampler,
            beta_schedule=cfg.beta_schedule,
            num_train_timesteps=cfg.num_train_timesteps,
        )
        path = save_grid(imgs, run_dir / "samples" / f"step-{step:06d}.png", nrow=min(data.num_classes, 10))
        history["samples"].append(str(path))

    for step in range(start, cfg.steps):
        lr = lr_at(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        x, labels = next(batches)
        cond, mask = _cond(data, labels, device)
        loss, parts = diffusion_loss(model, scheduler, x.to(device), cond, mask=mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        ema.update(model)
        running.append(float(loss.detach()))
        done = step + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{running[-1]:.4f}", lr=f"{lr:.1e}", refresh=False)
        if done % 100 == 0 or done == cfg.steps:
            history["losses"].append({"step": done, "loss": sum(running) / len(running), **parts})
            running = []
        if cfg.sample_every and done % cfg.sample_every == 0 and done != cfg.steps:
            grid(done)
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done != cfg.steps:
            checkpoint(done)
    if bar is not None:
        bar.close()
    seconds = time.time() - t0
    history["train_seconds"] = round(seconds, 1)
    history["steps"] = cfg.steps
    if start < cfg.steps or not (run_dir / "model").is_dir():
        checkpoint(cfg.steps)
        grid(cfg.steps)
        ema.module.save_pretrained(run_dir / "model", extra=meta)
    log(f"trained {cfg.steps - start} steps in {seconds:.1f} s; EMA model in {run_dir / 'model'}")
    return ema.module, history


def load_model(path: str | Path) -> tuple[Dimba, dict]:
    """The EMA network from a run folder (its ``model/``, else its last checkpoint) or a Dimba model folder;
    returns (model in eval mode, the config.json dict)."""
    from safetensors.torch import load_file

    from transmamba.training.checkpoint import find_checkpoint

    p = Path(path)
    if (p / "model" / "config.json").is_file():
        p = p / "model"
    if (p / "config.json").is_file() and (p / "model.safetensors").is_file():
        meta = json.loads((p / "config.json").read_text())
        sd = load_file(str(p / "model.safetensors"))
        model = Dimba(DimbaConfig.from_dict(meta["model"]))
        if any(k.startswith("ema.") for k in sd):  # a training checkpoint folder
            sd = {k[4:]: v for k, v in sd.items() if k.startswith("ema.")}
        model.load_state_dict(sd)
        return model.eval(), meta
    ck = find_checkpoint(p) if p.is_dir() else None
    if ck is None:
        raise FileNotFoundError(f"{path}: not a diffusion run folder or Dimba model folder (no config.json)")
    return load_model(ck)
