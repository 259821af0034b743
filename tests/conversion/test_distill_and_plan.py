"""Distillation (the loss, the lowering schedule, checkpoints and exact resume through the Trainer) and the
TransPoint planner (memory accounting, the greedy path, the budget choice)."""

from __future__ import annotations

import pytest
import torch

from transmamba import CausalLM
from transmamba.conversion import ConversionError, convert_to_transmamba
from transmamba.conversion.distill import DistillationModel, lowered_transpoints
from transmamba.conversion.planner import choose, notch_grid, parse_bytes, peak_cache_bytes, plan
from transmamba.models.presets import get_preset


def _teacher() -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(get_preset("transformer-tiny", vocab_size=300, max_seq_len=64)).eval()


def test_lowering_schedule():
    assert lowered_transpoints([64, 64], [0, 32], 0, 4) == [48, 56]
    assert lowered_transpoints([64, 64], [0, 32], 3, 4) == [0, 32]
    assert lowered_transpoints([64, 64], [0, 32], 10, 4) == [0, 32]


def test_kl_is_zero_while_student_equals_teacher_and_grows_after_lowering():
    teacher = _teacher()
    student = convert_to_transmamba(teacher, [64] * 4)
    model = DistillationModel(student, teacher, target_transpoints=[0, 0, 0, 0], lower_steps=1)
    ids = torch.randint(0, 300, (2, 48))
    model.train()
    with torch.no_grad():
        assert float(model(ids, labels=ids).loss) < 1e-6  # every P >= T: the student is the teacher
        model.on_train_step(0)  # lowered to all-SSM in one step
        assert [m.transpoint for m in student.transmamba_layers()] == [0, 0, 0, 0]
        assert float(model(ids, labels=ids).loss) > 1e-3
    assert not any(n.startswith("_teacher") or "teacher" in n for n in model.state_dict())


@pytest.fixture
def tiny_corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    words = "the king and the queen walk in the garden while rain falls on the old stone wall".split()
    g = torch.Generator().manual_seed(0)
    for i in range(8):
        idx = torch.randint(len(words), (300,), generator=g).tolist()
        (folder / f"doc{i}.txt").write_text(" ".join(words[j] for j in idx) + "\n")
    return folder


def test_distillation_trains_and_resumes_exactly(tmp_path, tiny_corpus):
    from transmamba.data.packing import prepare_text_data
    from transmamba.training.config import TrainConfig
    from transmamba.training.trainer import Trainer

    data = prepare_text_data(str(tiny_corpus), seq_len=32, vocab_size=300, cache_dir=str(tmp_path / "c"))
    vocab = data.tokenizer.vocab_size
    torch.manual_seed(0)
    teacher = CausalLM(get_preset("transformer-tiny", vocab_size=vocab, max_seq_len=64)).eval()

    def factory(_):
        student = convert_to_transmamba(teacher, [32] * 4)
        return DistillationModel(student, teacher, target_transpoints=[0, 8, 16, 32], lower_steps=4,
                                 ce_weight=0.5, hidden_weight=0.1)

    def cfg(run, **kw):
        return TrainConfig(preset="distill", seq_len=32, batch_size=2, max_steps=6, warmup_steps=1,
                           eval_every=3, eval_batches=1, log_every=1, lr=3e-3, progress=False,
                           tensorboard=False, device="cpu", out_dir=str(run), **kw)

    full = Trainer(cfg(tmp_path / "full"), model_factory=factory, data=data, log=lambda m: None).fit()
    Trainer(cfg(tmp_path / "cut"), model_factory=factory, data=data, log=lambda m: None, stop_at=3).fit()
    resumed = Trainer(cfg(tmp_path / "cut", resume=True), model_factory=factory, data=data,
                      log=lambda m: None).fit()
    assert resumed.train_losses == {k: v for k, v in full.train_losses.items() if k > 3}
    assert all(torch.isfinite(torch.tensor(list(full.train_losses.values()))))
    student = CausalLM.from_pretrained(full.last_checkpoint)  # checkpoints are student checkpoints
    assert student.config.pattern == "T-" * 4


def test_planner_path_and_budget():
    torch.manual_seed(0)
    model = CausalLM(get_preset("transmamba-tiny", vocab_size=200, max_seq_len=64)).eval()
    ids = torch.randint(0, 200, (2, 16))
    batches = [{"input_ids": ids, "seq_idx": torch.zeros_like(ids), "labels": ids}]
    path = plan(model, batches, context=16, eval_len=16)
    assert path[0].transpoints == [16] * 4 and path[-1].transpoints == [0] * 4
    peaks = [p.peak_bytes for p in path]
    assert peaks == sorted(peaks, reverse=True) and peaks[0] > peaks[-1]
    assert len(path) == 1 + 4 * (len(notch_grid(16)) - 1)
    cfg = model.config
    # all attention at 16 tokens: each T layer caches (B, x, dt) for 16 tokens
    per_tok = 2 * (cfg.ngroups * cfg.d_state + cfg.d_inner + cfg.ssm_heads)
    assert peaks[0] - peaks[-1] == 4 * 16 * per_tok
    chosen = choose(path, (peaks[0] + peaks[-1]) // 2)
    assert chosen.peak_bytes <= (peaks[0] + peaks[-1]) // 2
    with pytest.raises(ConversionError, match="all-SSM needs"):
        choose(path, peaks[-1] - 1)
    assert peak_cache_bytes(cfg, [0] * 4, 16) == peaks[-1]


def test_parse_bytes():
    assert parse_bytes("2GiB") == 2 * 2**30 and parse_bytes("1.5GB") == 1_500_000_000
    assert parse_bytes("512 MiB") == 512 * 2**20 and parse_bytes("1000") == 1000
    with pytest.raises(ConversionError, match="cannot read"):
        parse_bytes("two gigs")
