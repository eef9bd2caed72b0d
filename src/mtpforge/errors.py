"""User-facing errors and their exit codes (the CLI contract in the README).

A user error names the file or tensor and the fix; anything else that escapes
is a bug and exits 70 with its traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECKS_FAILED = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_BUG = 70


class MtpforgeError(Exception):
    """An error the user can act on: what went wrong, where, and how to fix it."""

    exit_code = EXIT_INPUT

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class CheckpointError(MtpforgeError):
    """The checkpoint directory, its config, index or a shard cannot be used."""


class UnsupportedFamilyError(MtpforgeError):
    """The config names an architecture mtpforge has no family rules for."""


class UsageError(MtpforgeError):
    """The command line asks for something contradictory or impossible."""

    exit_code = EXIT_USAGE


class SourceError(MtpforgeError):
    """A source of bytes failed: a file changed while being read, or a server misbehaved."""


class ChecksFailed(MtpforgeError):
    """The command ran, but the checks it was asked to make failed."""

    exit_code = EXIT_CHECKS_FAILED
