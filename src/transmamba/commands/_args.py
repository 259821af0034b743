"""Argument parsing shared by every command: one flag spelling, did-you-mean, one-line errors, typed values.

``Parser`` is the parser class of every (sub-)command (``cli.build_parser`` installs it):

* flags are spelled with dashes (``--max-new-tokens``); ``--max_new_tokens`` is accepted as an alias of any
  registered dashed flag (the argument list is normalised before argparse sees it), so one spelling
  appears in ``--help`` and both work everywhere;
* an unknown flag or sub-command is refused by the parser that owns it, in one line, with the closest
  valid names (difflib) and a pointer to ``--help``; exit code 2;
* abbreviations are off (``--max`` never silently means ``--max-steps``).

The ``*_arg`` helpers are argparse ``type=`` callables that refuse out-of-range, non-finite or fractional
values with a message naming the expected range.
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
import sys
from pathlib import Path

from transmamba.errors import UsageError, one_line


def _dashed(flag: str) -> str:
    return "--" + flag[2:].replace("_", "-")


class Parser(argparse.ArgumentParser):
    """argparse with underscore aliases, did-you-mean and one-line errors (see the module docstring)."""

    #: leave unknown arguments to the command (``transmamba train`` reads ``--model.KEY VALUE`` from them)
    collect_extras = False

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    # ---- one spelling ------------------------------------------------------------------------
    def normalise(self, args: list[str]) -> list[str]:
        """``--foo_bar[=v]`` -> ``--foo-bar[=v]`` when this parser knows ``--foo-bar`` (values untouched)."""
        known = self._option_string_actions
        out: list[str] = []
        for a in args:
            if a == "--":  # everything after is positional
                out.extend(args[len(out):])
                break
            if a.startswith("--") and "_" in a:
                name, eq, value = a.partition("=")
                if "." not in name and name not in known and _dashed(name) in known:
                    a = _dashed(name) + eq + value
            out.append(a)
        return out

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        ns, extras = super().parse_known_args(self.normalise(args), namespace)
        if extras and not self.collect_extras:
            self.error(self.unknown_message(extras))
        return ns, extras

    # ---- did you mean --------------------------------------------------------------------------
    def option_names(self) -> list[str]:
        return sorted(o for o in self._option_string_actions if o.startswith("--"))

    def unknown_message(self, extras: list[str]) -> str:
        flags = [e for e in extras if e.startswith("-")]
        if not flags:
            return f"unexpected argument {extras[0]!r}"
        name = flags[0].split("=", 1)[0]
        close = difflib.get_close_matches(_dashed(name) if name.startswith("--") else name,
                                          self.option_names(), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return f"unknown option {name}{hint}"

    def error(self, message: str):  # noqa: D401 - argparse hook
        """One line on stderr: what was wrong, the closest valid choice, where to look; exit code 2."""
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            choices = re.findall(r"'([^']*)'", m.group(2))
            close = difflib.get_close_matches(m.group(1), choices, n=3, cutoff=0.5)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            message = f"{message.split(':')[0]}: unknown choice {m.group(1)!r}; {hint}choose from " \
                      f"{', '.join(choices)}"
        sys.stderr.write(f"{self.prog}: error: {one_line(message)} (see `{self.prog} --help`)\n")
        sys.exit(2)


class CollectingParser(Parser):
    """A parser that leaves unknown ``--flags`` to its command (``--model.KEY VALUE`` overrides)."""

    collect_extras = True

    def parse_known_args(self, args=None, namespace=None):
        ns, extras = super().parse_known_args(args, namespace)
        ns._extra_args = list(getattr(ns, "_extra_args", [])) + list(extras)
        return ns, []


# ------------------------------------------------------------------------------------------ typed values


def _number(text: str, kind: type):
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    if kind is int:
        if not value.is_integer():
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
        return int(value)
    return value


def int_arg(lo: int | None = None, hi: int | None = None):
    """argparse type: a whole number in [lo, hi] ("2.5" and "nan" refused, "1e3" is 1000)."""

    def parse(text: str) -> int:
        v = _number(text, int)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"expected a whole number {_range(lo, hi)}, got {text!r}")
        return v

    parse.__name__ = "int"
    return parse


def float_arg(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
              hi_open: bool = False):
    """argparse type: a finite number in the interval lo..hi (open ends when asked)."""

    def parse(text: str) -> float:
        v = _number(text, float)
        bad = ((lo is not None and (v < lo or (lo_open and v == lo)))
               or (hi is not None and (v > hi or (hi_open and v == hi))))
        if bad:
            raise argparse.ArgumentTypeError(
                f"expected a number {_range(lo, hi, lo_open, hi_open)}, got {text!r}")
        return v

    parse.__name__ = "float"
    return parse


def _range(lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    def f(v) -> str:
        return str(v) if isinstance(v, int) else f"{v:g}"

    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{f(lo)}, {f(hi)}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {f(lo)}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {f(hi)}"
    return ""


def int_list_arg(lo: int = 1, hi: int | None = None):
    """argparse type: comma-separated whole numbers, each in [lo, hi]."""
    one = int_arg(lo, hi)

    def parse(text: str) -> list[int]:
        items = [t for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}")
        return [one(t.strip()) for t in items]

    parse.__name__ = "list"
    return parse


# ----------------------------------------------------------------------------------------- shared checks


def check_device(name: str, flag: str = "--device") -> str:
    """Refuse a device torch cannot use here (``cuda`` without a GPU) before anything is loaded."""
    import torch

    if name in ("auto", None):
        return name
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"{flag} {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{flag} {name}: no CUDA GPU is visible to torch here; use {flag} cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"{flag} {name}: only {torch.cuda.device_count()} GPU(s) visible; "
                             f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"{flag} {name!r}: unsupported device type; use auto, cpu or cuda")
    return name


def checkpoint_arg(path: str | Path, flag: str = "--checkpoint") -> Path:
    """A checkpoint folder (config.json + weights) or a `transmamba train` run folder (its last one)."""
    from transmamba.training.checkpoint import resolve_checkpoint

    return resolve_checkpoint(path, flag=flag)


def set_schedule(model, text: str, flag: str = "--transpoints") -> list[int]:
    """A TransPoint schedule typed on a command line (`transmamba.models.schedules.parse_schedule`: a name,
    a comma list or a JSON list) set on `model`; a bad one is a one-line UsageError naming `flag`."""
    from transmamba.models.schedules import parse_schedule

    try:
        return model.set_transpoints(parse_schedule(text))
    except ValueError as err:
        raise UsageError(f"{flag} {text.strip()!r}: {one_line(err)}") from None
