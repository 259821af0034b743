"""The `transmamba` command line: one sub-command per module in `transmamba.commands`.

Each command module exposes `register(subparsers) -> None`, which adds its parser and sets
`func=<callable taking the parsed args and returning an exit code>` through `set_defaults`.

One error path for every command (`main`): every parser is a `commands._args.Parser` (dashed flags with
underscore aliases, did-you-mean, one-line usage errors), and whatever a command raises ends in one line
on stderr and an exit code:

    0   success
    1   the run could not finish (`errors.RunError`: non-finite loss, disk full, interrupted and saved)
    2   a usage error (`errors.UsageError` and its subclasses, argparse errors, a missing or unreadable
        file, a device that is not there)
    70  an internal error (a bug): one line, the traceback with `python -X dev -m transmamba ...`
    130 interrupted (Ctrl-C) outside training

Warnings print as one `warning: ...` line each.
"""

from __future__ import annotations

import errno
import importlib
import sys
import warnings

from transmamba.commands._args import Parser
from transmamba.errors import RunError, UsageError, one_line

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

EXIT_USAGE, EXIT_RUN, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 1, 70, 130


def build_parser() -> Parser:
    parser = Parser(
        prog="transmamba",
        description="Build, train, evaluate and serve hybrid Transformer-Mamba models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
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


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one `warning: ...` line on stderr (no file:line and source echo)."""
    (file or sys.stderr).write(f"warning: {one_line(message)}\n")


def report(err: BaseException, prog: str = "transmamba") -> int:
    """Print ``err`` as one line on stderr and return its exit code (see the module docstring)."""
    if isinstance(err, UsageError):
        code, msg = EXIT_USAGE, str(err)
    elif isinstance(err, RunError):
        code, msg = getattr(err, "exit_code", EXIT_RUN), str(err)
    elif isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {err.filename}" if err.filename else ""
        code, msg = EXIT_RUN, f"no space left on the device{where}; free some space or write elsewhere"
    elif isinstance(err, OSError) and err.errno is not None:  # a path the user gave that cannot be used
        what = f"{err.filename}: " if err.filename else ""
        fix = {errno.ENOENT: "check the path", errno.EISDIR: "give a file, not a folder",
               errno.ENOTDIR: "give a folder, not a file", errno.EEXIST: "choose another path",
               errno.ENAMETOOLONG: "give a shorter path"}.get(err.errno, "check its permissions or use "
                                                                         "another path")
        code, msg = EXIT_USAGE, f"{what}{err.strerror or err}; {fix}"
    elif isinstance(err, MemoryError):
        code, msg = EXIT_RUN, "out of memory; use a smaller model, batch or length"
    else:
        code = EXIT_INTERNAL
        msg = (f"internal error: {type(err).__name__}: {err} (a bug: please report it with the command; "
               "python -X dev -m transmamba ... shows the traceback)")
    print(f"{prog}: error: {_unprefixed(one_line(msg), prog)}", file=sys.stderr)
    return code


def _unprefixed(msg: str, prog: str) -> str:
    """Drop a command's own "generate: " / "error: " prefix, which `prog: error:` already says."""
    for prefix in (prog.split()[-1] + ": ", "error: "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    return msg


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = bool(sys.flags.dev_mode)
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _show_warning
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
        except SystemExit as exit_:  # a usage error (already printed in one line), or --help / --version
            if not exit_.code:
                raise  # --help and --version end as argparse ends them (SystemExit(0))
            return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        args._argv = argv
        sub = getattr(args, "eval_task", None) or getattr(args, "forecast_command", None)
        prog = f"transmamba {args.command}" + (f" {sub}" if sub else "")
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except SystemExit as exit_:
            if exit_.code is None or isinstance(exit_.code, int):
                return exit_.code or 0
            print(f"{prog}: error: {_unprefixed(one_line(exit_.code), prog)}", file=sys.stderr)
            return EXIT_USAGE
        except Exception as err:
            if debug:
                raise
            return report(err, prog)
        finally:
            sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
