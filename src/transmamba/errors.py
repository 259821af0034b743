"""The two kinds of failure every command reports in one line (see `transmamba.cli.main`).

``UsageError``: a mistake the user can fix (a flag, a value, a file, a checkpoint that does not fit); the
message names what was wrong and the fix; exit code 2, as argparse uses for usage errors.
``RunError``: the run itself could not go on (a non-finite loss, a full disk); the message says what was
kept (e.g. the last good checkpoint); exit code 1.

Domain errors subclass one of these (``ConfigError``, ``DataError``, ``CheckpointError``...), so library
callers can still catch the narrow type while the CLI needs only these two.
"""

from __future__ import annotations


class UsageError(Exception):
    """A user mistake: one line naming what was wrong and how to fix it (exit code 2)."""

    exit_code = 2


class UntrustedFileError(UsageError, ValueError):
    """A file that would need unpickling (or is malformed) to be read: refused, never executed."""


class MismatchError(UsageError, ValueError):
    """A checkpoint whose config or tensors do not fit each other or the model asked for."""


class RunError(Exception):
    """The run could not finish (non-finite values, disk full, interrupted): one line (exit code 1)."""

    exit_code = 1


def one_line(message: object) -> str:
    """``message`` as a single line: newlines and indentation folded into '; '."""
    parts = [p.strip() for p in str(message).splitlines() if p.strip()]
    return "; ".join(parts) if parts else str(message)
