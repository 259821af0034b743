"""The trainer: exact resume, non-finite loss handling, schedules, and the CSV / plot outputs."""

from __future__ import annotations

import math

import pytest

from transmamba.training.checkpoint import find_checkpoint, load_checkpoint
from transmamba.training.config import ConfigError, TrainConfig
from transmamba.training.optim import lr_multiplier
from transmamba.training.trainer import Trainer, TrainingError

StandInLM = None  # set by the autouse fixture below (test folders are not packages)


@pytest.fixture(autouse=True)
def _standin(standin):
    global StandInLM
    StandInLM = standin


def _cfg(tmp_path, corpus, **kw):
    base = dict(data=str(corpus), vocab_size=300, seq_len=32, batch_size=4, max_steps=12, eval_every=4,
                eval_batches=2, warmup_steps=2, progress=False, out_dir=str(tmp_path / "run"),
                cache_dir=str(tmp_path / "cache"), grad_accum=2, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def _fit(cfg, **kw):
    return Trainer(cfg, model_factory=lambda v: StandInLM(v), log=lambda m: None, **kw).fit()


def test_resume_reproduces_uninterrupted_losses(tmp_path, tiny_corpus):
    full = _fit(_cfg(tmp_path, tiny_corpus, out_dir=str(tmp_path / "full")))
    assert sorted(full.train_losses) == list(range(1, 13))
    part = _fit(_cfg(tmp_path, tiny_corpus, out_dir=str(tmp_path / "part")), stop_at=8)
    assert part.step == 8
    resumed = _fit(_cfg(tmp_path, tiny_corpus, out_dir=str(tmp_path / "part"), resume=True))
    assert sorted(resumed.train_losses) == [9, 10, 11, 12]
    for step, loss in resumed.train_losses.items():
        assert loss == full.train_losses[step], step  # bit-identical on CPU fp32
    assert resumed.evals == full.evals
    assert resumed.final_val_loss == full.final_val_loss
    # the CSV of the resumed run is the uninterrupted run's, row for row (timings aside)
    rows = lambda p: [line.split(",")[:7] for line in (p / "metrics.csv").read_text().splitlines()]  # noqa: E731
    assert rows(tmp_path / "part") == rows(tmp_path / "full")
    assert (tmp_path / "full" / "curves.png").stat().st_size > 1000


def test_checkpoint_contents_and_keep_last_and_best(tmp_path, tiny_corpus):
    res = _fit(_cfg(tmp_path, tiny_corpus, max_steps=8))
    run = tmp_path / "run"
    last = find_checkpoint(run)
    assert last.name == "step-000008"
    names = {p.name for p in last.iterdir()}
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json",
            "train_config.json", "tokenizer.json"} <= names
    kept = {p.name for p in (run / "checkpoints").iterdir()}
    assert kept <= {"step-000004", "step-000008"} and find_checkpoint(run, "best").name in kept
    state = load_checkpoint(last, model=StandInLM(res.stats["vocab_size"]))
    assert state["step"] == 8 and state["data"]["cursor"] == 16 and len(state["evals"]) == 2


def test_nan_loss_stops_names_step_and_keeps_checkpoint(tmp_path, tiny_corpus):
    cfg = _cfg(tmp_path, tiny_corpus, grad_accum=1)
    model_holder = {}

    def factory(v):
        m = StandInLM(v)
        # calls: 1 probe, then 1 per step, plus eval calls (2 batches at step 4) and the checkpoint's
        # held-batch check (1 at step 4) -> NaN during step 6
        m.nan_at_call = 1 + 4 + 2 + 1 + 2
        model_holder["m"] = m
        return m

    msg = r"loss became nan at step 6.*last good checkpoint is .*step-000004"
    with pytest.raises(TrainingError, match=msg):
        Trainer(cfg, model_factory=factory, log=lambda m: None).fit()
    last = find_checkpoint(tmp_path / "run")
    assert last.name == "step-000004"
    assert load_checkpoint(last, model=StandInLM(model_holder["m"].emb.num_embeddings))["step"] == 4


def test_existing_run_needs_resume(tmp_path, tiny_corpus):
    _fit(_cfg(tmp_path, tiny_corpus, max_steps=4))
    with pytest.raises(ConfigError, match="--resume"):
        _fit(_cfg(tmp_path, tiny_corpus, max_steps=4))
    assert find_checkpoint(tmp_path / "run").name == "step-000004"  # untouched
    _fit(_cfg(tmp_path, tiny_corpus, max_steps=4, overwrite=True))


def test_lr_schedule_warmup_then_cosine():
    f = lambda s: lr_multiplier(s, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) - 1e-12 for s in range(10, 120))
    assert math.isclose(f(500), 0.1)


def test_model_that_cannot_take_seq_len_fails_before_training(tmp_path, tiny_corpus):
    class ShortLM(StandInLM):
        def forward(self, input_ids, **kw):
            if input_ids.shape[1] % 16:
                raise ValueError(f"ShortLM: length {input_ids.shape[1]} is not a multiple of 16")
            return super().forward(input_ids, **kw)

    cfg = _cfg(tmp_path, tiny_corpus, seq_len=24)
    with pytest.raises(ConfigError, match="cannot take rows of seq_len=24: ShortLM: length 24"):
        Trainer(cfg, model_factory=lambda v: ShortLM(v), log=lambda m: None).fit()
    assert not (tmp_path / "run" / "checkpoints").exists()
