"""One writer per run folder: advisory ``flock`` locks held for a process's lifetime.

Two locks guard a run folder, because the process that launches a run and the process that writes
its rounds are different processes under Flower:
- ``.launch.lock``, held by the ``fedprune`` command that launched the run (``simulate``, ``--resume``,
  ``deploy-local``) from before it validates anything until every process it started is gone;
- ``.writer.lock``, held by the server process (``ServerRun``) that writes rounds and checkpoints.
A lock is released by the kernel when its holder exits, however it exits, so a killed run never
leaves a stale lock behind. The files hold the holder's PID, for the error message only.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LAUNCH_LOCK = ".launch.lock"
WRITER_LOCK = ".writer.lock"


class RunFolderBusy(RuntimeError):
    """Another live process holds the run folder's lock (message is one line)."""


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f" (pid {pid})" if pid.isdigit() else ""


def is_locked(run_dir: str | Path, name: str) -> bool:
    """Whether a live process holds lock ``name`` in ``run_dir``; never creates the lock file."""
    path = Path(run_dir) / name
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's own shared lock
    return False


def ensure_unlocked(run_dir: str | Path) -> None:
    """``RunFolderBusy`` if any process launches or writes to ``run_dir`` now."""
    for name in (LAUNCH_LOCK, WRITER_LOCK):
        if is_locked(run_dir, name):
            raise RunFolderBusy(f"run folder {run_dir} is in use by another fedprune process"
                                f"{_holder(Path(run_dir) / name)}; wait for it to end or stop it first")


class RunLock:
    """An exclusive lock ``name`` on ``run_dir``, held until ``release()`` or process exit."""

    def __init__(self, run_dir: str | Path, name: str):
        self.path = Path(run_dir) / name
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock without waiting; ``RunFolderBusy`` naming the folder if it is held."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunFolderBusy(f"run folder {self.path.parent} is in use by another fedprune process"
                                f"{_holder(self.path)}; wait for it to end or stop it first") from None
        os.set_inheritable(fd, False)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (the file stays; an unlocked file means a free folder)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
