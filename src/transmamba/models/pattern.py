"""Layer patterns in Megatron-LM's hybrid syntax: one character per residual sub-layer.

    M  Mamba-2 mixer            *  causal self-attention      T  TransMamba mixer (attention -> SSM at P)
    S  Mamba-1 mixer (ours)     -  MLP                        E  mixture-of-experts MLP
    |  pipeline-stage separator (Megatron-LM); accepted and ignored

Each character becomes one pre-norm residual block `x + sublayer(rms_norm(x))`. "Layers" in papers often
count a mixer and the MLP after it as one layer; here every character is a layer, so `T-` x 12 is 24
sub-layers (12 TransMamba + 12 MLP). Examples:

    TransMamba-400M       "T-" * 12
    Mamba-2-Hybrid-8B     "M-M-M--M-M*-M-M-M-M--M*-M-M-M-M-M*--M-M-M-M-M*-M--M-M-M-"
    Jamba block (8 layers) "S-SES-SE*-SES-SE"
"""

from __future__ import annotations

from collections import Counter

# character -> layer kind
LAYER_CHARS: dict[str, str] = {
    "M": "mamba2",
    "*": "attention",
    "T": "transmamba",
    "S": "mamba1",
    "-": "mlp",
    "E": "moe",
}
MIXER_KINDS = frozenset({"mamba2", "attention", "transmamba", "mamba1"})  # token mixers: carry decode state
CHANNEL_KINDS = frozenset({"mlp", "moe"})  # per-token: no state
SEPARATOR = "|"


def allowed_chars_text() -> str:
    return ", ".join(f"'{c}' ({k})" for c, k in LAYER_CHARS.items())


def parse_pattern(pattern: str) -> list[str]:
    """Return the layer kinds of `pattern`, one per character (separators '|' dropped).

    Raises ValueError naming the position (0-based, in the string as given) and the bad character, and
    listing the allowed set.
    """
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a str, got {type(pattern).__name__}")
    kinds: list[str] = []
    for pos, ch in enumerate(pattern):
        if ch == SEPARATOR:
            continue
        kind = LAYER_CHARS.get(ch)
        if kind is None:
            raise ValueError(
                f"pattern {pattern!r}: bad character {ch!r} at position {pos}; "
                f"allowed: {allowed_chars_text()} and '|' (pipeline separator, ignored)"
            )
        kinds.append(kind)
    if not kinds:
        raise ValueError(f"pattern {pattern!r} has no layers; allowed characters: {allowed_chars_text()}")
    return kinds


def normalize_pattern(pattern: str) -> str:
    """The pattern with separators removed (validated)."""
    parse_pattern(pattern)
    return pattern.replace(SEPARATOR, "")


def count_kinds(pattern: str) -> dict[str, int]:
    """{kind: count} in pattern order of first appearance, e.g. {'transmamba': 12, 'mlp': 12}."""
    return dict(Counter(parse_pattern(pattern)))


def mixer_indices(pattern: str, kind: str | None = None) -> list[int]:
    """Indices (into the separator-free pattern) of mixer layers, optionally of one kind."""
    kinds = parse_pattern(pattern)
    return [i for i, k in enumerate(kinds) if k in MIXER_KINDS and (kind is None or k == kind)]


def describe_pattern(pattern: str) -> str:
    """'24 layers: 12 transmamba, 12 mlp' (for `transmamba info`)."""
    counts = count_kinds(pattern)
    parts = ", ".join(f"{n} {k}" for k, n in counts.items())
    return f"{sum(counts.values())} layers: {parts}"
