"""`transmamba bench`: the command finds the checkout's runner and lists its cases (no GPU needed)."""

from transmamba.cli import main


def test_bench_list(capsys):
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("ceilings", "ssd-op", "ssd-decode", "train-step", "decode", "transpoint-sweep"):
        assert name in out


def test_bench_missing_runner(capsys, tmp_path):
    assert main(["bench", "--runner", str(tmp_path / "nope.py"), "--list"]) == 2
