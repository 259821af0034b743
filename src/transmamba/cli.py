"""The `transmamba` command line: one sub-command per module in `transmamba.commands`.

Each command module exposes `register(subparsers) -> None`, which adds its parser and sets
`func=<callable taking the parsed args and returning an exit code>` through `set_defaults`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command name -> module that registers it (kept in the order `--help` lists them)
COMMANDS: dict[str, str] = {
    "info": "transmamba.commands.info",
    "train": "transmamba.commands.train",
    "demo": "transmamba.commands.demo",
    "generate": "transmamba.commands.generate",
    "eval": "transmamba.commands.eval",
    "bench": "transmamba.commands.bench",
    "forecast": "transmamba.commands.forecast",
    "export": "transmamba.commands.export",
    "distill": "transmamba.commands.distill",
    "plan": "transmamba.commands.plan",
    "convert": "transmamba.commands.convert",
    "pointcloud": "transmamba.commands.pointcloud",
    "diffuse": "transmamba.commands.diffuse",
    "serve": "transmamba.commands.serve",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transmamba",
        description="Build, train, evaluate and serve hybrid Transformer-Mamba models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:  # command not built into this install
                continue
            raise
        module.register(sub)
    return parser


def _version() -> str:
    from transmamba import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
