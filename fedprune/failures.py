"""Failure records: one short line per failed client, with terminal colour codes removed.

A run's ``metrics.jsonl`` keeps, per round, ``failures``: ``{client: reason}`` where ``client`` is the
partition id (or the device's name) and ``reason`` is one line of at most ``MAX_REASON`` characters.
Full tracebacks go to the run's log file, never into the metrics.
"""

from __future__ import annotations

import re

MAX_REASON = 200
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Fault|Interrupt|Exit)\b.*")


def strip_ansi(text: str) -> str:
    """``text`` without terminal escape sequences (colours, cursor moves)."""
    return _ANSI.sub("", text)


def one_line_reason(text: str) -> str:
    """The gist of an error text or traceback on one line: its last ``SomeError: ...`` line if any.

    Guarantee: no newline, no escape sequence, at most ``MAX_REASON`` characters, never empty.
    """
    lines = [ln.strip() for ln in strip_ansi(str(text)).splitlines() if ln.strip()]
    picked = next((ln for ln in reversed(lines) if _EXCEPTION_LINE.match(ln)), lines[-1] if lines else "")
    picked = " ".join(picked.split()) or "unknown error"
    return picked if len(picked) <= MAX_REASON else picked[: MAX_REASON - 3] + "..."
