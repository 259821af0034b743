"""`transmamba convert`: HF -> native -> HF keeps the function; bad input exits 2 with one line."""

import pytest
import torch

from transmamba import CausalLM
from transmamba.cli import main
from transmamba.interop.parity import VOCAB, build, rel_err


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_hf_to_native_to_hf(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    hf = build("jamba", tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_text("{}")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "native"), "--to", "native"]) == 0
    assert "pattern S-SE*-SE" in capsys.readouterr().out
    assert (tmp_path / "native" / "tokenizer.json").is_file()
    assert main(["convert", str(tmp_path / "native"), str(tmp_path / "back"), "--to", "hf"]) == 0
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    native = CausalLM.from_pretrained(tmp_path / "native").eval()
    ids = torch.randint(3, VOCAB, (2, 19))
    with torch.no_grad():
        ref = hf(ids).logits
        assert rel_err(ref, back(ids).logits) <= 1e-6
        assert rel_err(ref, native(ids).logits) <= 1e-4


def test_errors_exit_2(tmp_path, capsys):
    CausalLM.from_preset("transmamba-tiny").save_pretrained(tmp_path / "tm")
    assert main(["convert", str(tmp_path / "tm"), str(tmp_path / "out"), "--to", "hf"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TransMamba" in err and "native format" in err
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert (
        main(
            ["convert", str(tmp_path / "tm"), str(tmp_path / "o2"), "--to", "native", "--model-type", "llama"]
        )
        == 2
    )


def test_transformer_to_transmamba(tmp_path, capsys):
    """`convert --to transmamba`: the written model computes the Transformer (every TransPoint at
    max_seq_len; tolerance as tests/conversion/test_to_transmamba.py), and --transpoints sets a schedule."""
    from transmamba.models.presets import get_preset

    torch.manual_seed(0)
    teacher = CausalLM(get_preset("transformer-tiny")).eval()
    teacher.save_pretrained(tmp_path / "t")
    assert main(["convert", str(tmp_path / "t"), str(tmp_path / "tm"), "--to", "transmamba"]) == 0
    student = CausalLM.from_pretrained(tmp_path / "tm").eval()
    assert set(student.config.pattern) <= {"T", "-"}
    ids = torch.randint(0, teacher.config.vocab_size, (2, 33))
    with torch.no_grad():
        assert rel_err(student(ids).logits, teacher(ids).logits) < 1e-4
    out = tmp_path / "tm2"
    assert main(["convert", str(tmp_path / "t"), str(out), "--to", "transmamba",
                 "--transpoints", "0,8,16,32"]) == 0
    assert list(CausalLM.from_pretrained(out).config.resolved_transpoints()) == [0, 8, 16, 32]
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "t"), str(tmp_path / "x"), "--to", "transmamba",
                 "--transpoints", "V99"]) == 2
    assert "V99" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "t"), str(tmp_path / "y"), "--transpoints", "V9"]) == 2
