"""Distil a Transformer into its converted TransMamba while the TransPoints come down.

The student starts as `convert_to_transmamba(teacher)` with every TransPoint at the training length (it
computes the teacher exactly). Training minimises, per target token t (labels != -100),

    loss = kl_weight · τ² · KL( softmax(teacher_t / τ) ‖ softmax(student_t / τ) )
         + ce_weight · CE(student_t, label_t)
         + hidden_weight · mean_l ‖h_l(student) − h_l(teacher)‖² / mean ‖h_l(teacher)‖²

(h_l: the residual stream after block l), averaged over target tokens, while each layer's TransPoint moves
linearly from its start P0_l (= seq_len) to its target P1_l over the first `lower_steps` optimizer steps:

    P_l(s) = round(P0_l + (P1_l − P0_l) · min(1, (s + 1) / lower_steps))

so positions are handed from attention to the SSM gradually and the SSM learns on features the attention
path already produces. Validation (the trainer's `evaluate`) reports the student's plain cross entropy at
the current schedule. `DistillationModel` is what the library's `Trainer` trains: it has the `CausalLM` call
signature, saves and loads only the student (so every checkpoint is a student checkpoint for `generate`,
`eval`, `plan`), and the trainer's `on_train_step(step)` hook sets the schedule, which therefore resumes
exactly with the step.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn


def lowered_transpoints(start: list[int], target: list[int], step: int, lower_steps: int) -> list[int]:
    """The schedule at optimizer step `step` (0-based): linear from `start` to `target` in `lower_steps`."""
    frac = 1.0 if lower_steps <= 0 else min(1.0, (step + 1) / lower_steps)
    return [int(round(a + (b - a) * frac)) for a, b in zip(start, target)]


class DistillationModel(nn.Module):
    """A trainable student (`CausalLM` of TransMamba layers) with a frozen teacher beside it."""

    def __init__(self, student: nn.Module, teacher: nn.Module, *, target_transpoints: list[int],
                 lower_steps: int, kl_weight: float = 1.0, ce_weight: float = 0.0,
                 hidden_weight: float = 0.0, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if min(kl_weight, ce_weight, hidden_weight) < 0 or kl_weight + ce_weight + hidden_weight == 0:
            raise ValueError("kl_weight, ce_weight and hidden_weight must be >= 0 and not all 0")
        self.student = student
        self._teacher = [teacher.eval().requires_grad_(False)]  # a list: not a submodule, never saved
        self.config = student.config
        self.start_transpoints = [layer.transpoint for layer in student.transmamba_layers()]
        if len(target_transpoints) != len(self.start_transpoints):
            raise ValueError(f"{len(target_transpoints)} target TransPoints for "
                             f"{len(self.start_transpoints)} TransMamba layers")
        self.target_transpoints = list(target_transpoints)
        self.lower_steps = int(lower_steps)
        self.kl_weight, self.ce_weight = float(kl_weight), float(ce_weight)
        self.hidden_weight, self.temperature = float(hidden_weight), float(temperature)

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def _apply(self, fn, recurse=True):  # .to(device) moves the teacher too
        self._teacher[0] = self._teacher[0]._apply(fn)
        return super()._apply(fn, recurse)

    # ---- the trainer's hooks -------------------------------------------------------------------
    def on_train_step(self, step: int) -> None:
        """Called by the trainer before optimizer step `step` (0-based): set the lowered schedule."""
        self.student.set_transpoints(
            lowered_transpoints(self.start_transpoints, self.target_transpoints, step, self.lower_steps))

    def save_pretrained(self, directory):
        return self.student.save_pretrained(directory)

    def load_checkpoint_tensors(self, tensors, *, source: str = "checkpoint"):
        return self.student.load_checkpoint_tensors(tensors, source=source)

    # ---- forward -------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, *, seq_idx: torch.Tensor | None = None,
                labels: torch.Tensor | None = None):
        if not self.training or labels is None:  # evaluation: the student's own cross entropy
            return self.student(input_ids, seq_idx=seq_idx, labels=labels)
        hid_s, hid_t = [], []
        hooks = []
        if self.hidden_weight > 0:
            hooks = [b.register_forward_hook(lambda m, i, o, acc=hid_s: acc.append(o))
                     for b in self.student.blocks]
            hooks += [b.register_forward_hook(lambda m, i, o, acc=hid_t: acc.append(o))
                      for b in self.teacher.blocks]
        try:
            with torch.no_grad():
                t_logits = self.teacher(input_ids, seq_idx=seq_idx).logits  # (b, t, V)
            s_logits = self.student(input_ids, seq_idx=seq_idx).logits  # (b, t, V)
        finally:
            for h in hooks:
                h.remove()
        # logits at t predict token t+1: the trainer's labels are the input ids (shifted inside the loss)
        valid = labels[:, 1:] != -100  # (b, t-1)
        s, t = s_logits[:, :-1][valid].float(), t_logits[:, :-1][valid].float()  # (n, V)
        tau = self.temperature
        loss = s.new_zeros(())
        if self.kl_weight:
            kl = F.kl_div(F.log_softmax(s / tau, -1), F.log_softmax(t / tau, -1), log_target=True,
                          reduction="batchmean")
            loss = loss + self.kl_weight * tau * tau * kl
        if self.ce_weight:
            loss = loss + self.ce_weight * F.cross_entropy(s, labels[:, 1:][valid])
        if self.hidden_weight:
            terms = [(a - b).pow(2).mean() / b.pow(2).mean().clamp_min(1e-12) for a, b in zip(hid_s, hid_t)]
            loss = loss + self.hidden_weight * torch.stack(terms).mean()
        return types.SimpleNamespace(logits=s_logits, loss=loss, aux_loss=None)
