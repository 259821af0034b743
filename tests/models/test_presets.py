"""The papers' presets land within 10% of their nominal sizes (counted on the meta device)."""

from pathlib import Path

import pytest

from transmamba.commands.info import count_parameters
from transmamba.models.presets import get_preset, get_preset_info, list_presets

DOC = Path(__file__).resolve().parents[2] / "docs" / "presets.md"
NOMINAL = [n for n in list_presets() if get_preset_info(n).nominal_params]


@pytest.mark.parametrize("name", NOMINAL)
def test_nominal_sizes_within_ten_percent(name):
    info = get_preset_info(name)
    counts = count_parameters(info.config())
    counted = counts["total"] if info.count_basis == "total" else counts["non_embedding"]
    assert abs(counted / info.nominal_params - 1) <= 0.10, (name, counted)
    if info.count_basis != "total":  # a size that names something else than the total is explained
        assert name in DOC.read_text()


def test_expected_papers_presets_have_nominal_sizes():
    for name in ("transmamba-400m", "transmamba-1.5b", "mamba2-hybrid-8b", "jamba-52b"):
        assert name in NOMINAL


def test_jamba_active_parameters_about_12b():
    counts = count_parameters(get_preset("jamba-52b"))
    assert abs(counts["active"] / 12e9 - 1) <= 0.10


def test_tiny_presets_are_tiny():
    for name in list_presets():
        if name.endswith("-tiny"):
            assert count_parameters(get_preset(name))["total"] < 2_000_000, name
