"""Errors every command turns into one ``error: ...`` line and exit code 2."""

from __future__ import annotations

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """Bad input detected by a command itself (message is one line)."""
