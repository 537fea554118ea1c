"""Find and end every process a launch started, wherever Flower or Ray put it.

Flower's SuperLink starts its SuperExec in a new session, and Ray starts its daemons and workers
from the simulation process, so neither a process group nor the parent/child tree reaches them all
once a parent has exited. Every process a launch starts inherits its environment, so the launch
marks it with ``LAUNCH_ENV=<token>`` and this module finds the run's processes by that mark
(``/proc/<pid>/environ``, Linux). Only processes of the current user can be read, which is exactly
the set a launch can have started.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

LAUNCH_ENV = "FEDPRUNE_LAUNCH"


def new_launch_token(label: str) -> str:
    """A token unique to one launch; ``label`` (e.g. the run folder) makes it readable in ``ps e``."""
    return f"{label}#{uuid.uuid4().hex[:12]}"


def _environ_has(pid: str, needle: bytes) -> bool:
    try:
        data = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or another user's process
        return False
    return needle in data.split(b"\0")


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def launch_processes(token: str) -> list[int]:
    """PIDs of live (non-zombie) processes carrying ``LAUNCH_ENV=token``, this process excluded."""
    needle = f"{LAUNCH_ENV}={token}".encode()
    me = os.getpid()
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != me and _environ_has(pid, needle) and not _is_zombie(int(pid)):
            found.append(int(pid))
    return found


def _reap_children() -> None:
    """Collect exited children of this process (those no ``Popen`` waits for any more)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            try:
                os.waitpid(int(pid), os.WNOHANG)
            except ChildProcessError:
                pass


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def end_launch(token: str, grace: float = 5.0, timeout: float = 20.0) -> list[int]:
    """SIGTERM every process of the launch, SIGKILL what is left after ``grace`` s, wait until gone.

    Returns the PIDs still alive after ``timeout`` s (empty when the launch is fully gone). Processes
    started while this runs (a worker spawned during shutdown) are found by the next scan.
    """
    start = time.monotonic()
    sig = signal.SIGTERM
    while True:
        pids = launch_processes(token)
        if not pids:
            return []
        elapsed = time.monotonic() - start
        if elapsed > timeout:
            return pids
        if elapsed > grace:
            sig = signal.SIGKILL
        _signal_all(pids, sig)
        time.sleep(0.2)
        _reap_children()
