"""The registry: every benchmark case and the runner options the cases read.

A case is a function `fn(args) -> list[dict]` (one row per measured point; an error inside a row is data)
registered with `@case(name, help, gpu=...)`; `gpu` says whether it needs CUDA (a callable of the parsed
options when that depends on them). `option(...)` declares a runner flag (argparse's arguments); the runner
adds every declared option to its one parser. Importing this package registers the cases of ops.py,
models.py and domains.py; scripts outside it (experiments/) can register more before calling the runner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Row = dict[str, Any]


@dataclass
class Case:
    name: str
    fn: Callable[[Any], list[Row]]
    help: str
    gpu: bool | Callable[[Any], bool] = True

    def needs_gpu(self, args) -> bool:
        return self.gpu(args) if callable(self.gpu) else bool(self.gpu)


CASES: dict[str, Case] = {}
OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = []


def case(name: str, help_: str, gpu: bool | Callable[[Any], bool] = True):
    def deco(fn):
        CASES[name] = Case(name, fn, help_, gpu)
        return fn

    return deco


def option(*flags: str, **kw: Any) -> None:
    """A runner option (argparse's add_argument arguments); declared once, read by any case."""
    if not any(f == flags[0] for fl, _ in OPTIONS for f in fl):
        OPTIONS.append((flags, kw))


def _register() -> None:
    import importlib

    for module in ("ops", "models", "domains"):  # the order of --list
        importlib.import_module(f"benchmarks.cases.{module}")


_register()
