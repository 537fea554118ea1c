"""Memory cgroups: the limit a process really has, and cgroups of our own with a hard limit.

Both hierarchies are handled: cgroup v2 (one unified tree, ``memory.max``, ``memory.peak``,
``memory.events``) and cgroup v1 (the ``memory`` controller's own tree, ``memory.limit_in_bytes``,
``memory.max_usage_in_bytes``, ``memory.oom_control``). Which applies is read from
``/proc/<pid>/cgroup`` and ``/proc/self/mountinfo``: a v1 ``memory`` line wins, else the v2 ``0::``
line.

* ``cgroup_limit_bytes()``: the smallest memory limit on the path from the process's cgroup up to
  the root (a parent's limit binds its children too); ``None`` when nothing limits it.
* ``cgroup_headroom_bytes()``: that limit minus what the cgroup holds that cannot be reclaimed
  (``memory_charge``: anonymous plus mapped file pages; page cache does not count); ``None`` when
  unlimited.
* ``MemoryCgroup.create(name, limit_bytes)``: a child of the current memory cgroup with a hard limit
  (swap included, where the kernel accounts it); processes are moved in with ``add``/``add_tree`` or
  start in it through ``preexec``. ``peak_bytes``, ``oom_kills``, ``remove``.

Where no cgroup can be created (no controller, read-only mount, not allowed) ``CgroupUnavailable``
says so in one line.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

_UNLIMITED = 2**62  # v1 writes "no limit" as a page-rounded 2**63 - 1


class CgroupUnavailable(RuntimeError):
    """No memory cgroup can be created or read here (the message says why, in one line)."""


def _mounts() -> dict[str, Path]:
    """``{"v2": mountpoint, "v1": memory-controller mountpoint}`` of the mounts that exist."""
    out: dict[str, Path] = {}
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if len(fields) < 5 or len(rest) < 3:
            continue
        fstype, mount = rest[0], Path(fields[4])
        if fstype == "cgroup2" and "v2" not in out:
            out["v2"] = mount
        elif fstype == "cgroup" and "memory" in rest[2].split(",") and "v1" not in out:
            out["v1"] = mount
    return out


def _own_paths(pid: int | str = "self") -> dict[str, str]:
    """The process's cgroup path per hierarchy: ``{"v1": ..., "v2": ...}`` from /proc/<pid>/cgroup."""
    out: dict[str, str] = {}
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        hid, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hid == "0" and controllers == "":
            out["v2"] = path
        elif "memory" in controllers.split(","):
            out["v1"] = path
    return out


def memory_cgroup_dir(pid: int | str = "self") -> tuple[int, Path] | None:
    """``(version, directory)`` of the memory cgroup ``pid`` is in; ``None`` when there is none."""
    mounts, paths = _mounts(), _own_paths(pid)
    if "v1" in mounts and "v1" in paths:
        return 1, mounts["v1"] / paths["v1"].lstrip("/")
    if "v2" in mounts and "v2" in paths:
        d = mounts["v2"] / paths["v2"].lstrip("/")
        if (d / "memory.max").exists() or d == mounts["v2"]:
            return 2, d
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= _UNLIMITED else value


def _keyed(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                out[parts[0]] = int(parts[1])
    except OSError:
        pass
    return out


def _limit_file(version: int) -> str:
    return "memory.max" if version == 2 else "memory.limit_in_bytes"


def _levels(pid: int | str) -> Iterator[tuple[int, Path]]:
    """``(version, dir)`` for ``pid``'s memory cgroup and every level above it, up to the root."""
    found = memory_cgroup_dir(pid)
    if found is None:
        return
    version, d = found
    root = _mounts()["v1" if version == 1 else "v2"]
    while True:
        yield version, d
        if d == root or root not in d.parents:
            return
        d = d.parent


def cgroup_limit_bytes(pid: int | str = "self") -> int | None:
    """Smallest memory limit from ``pid``'s cgroup up to the root of its hierarchy; None: unlimited."""
    limits = [v for version, d in _levels(pid) if (v := _read_int(d / _limit_file(version))) is not None]
    return min(limits) if limits else None


def memory_charge(version: int, d: Path) -> dict[str, int]:
    """What the cgroup at ``d`` is charged, split by what can be reclaimed (bytes).

    ``usage``: everything charged (v1 counts page cache, e.g. torch's libraries read from disk);
    ``anon``: anonymous memory (heap, tensors), never reclaimable without swap; ``mapped_file``:
    file pages mapped by a process (code in use: reclaimable, but faulted back at once);
    ``unreclaimable``: ``anon + mapped_file`` -- what a process really needs resident, the rest
    being page cache the kernel drops before it kills anything.
    """
    usage = _read_int(d / ("memory.current" if version == 2 else "memory.usage_in_bytes")) or 0
    stat = _keyed(d / "memory.stat")
    if version == 2:
        anon, mapped = stat.get("anon"), stat.get("file_mapped", 0)
    else:
        anon, mapped = stat.get("total_rss", stat.get("rss")), stat.get("total_mapped_file", stat.get("mapped_file", 0))
    if anon is None:  # no breakdown: all but the inactive page cache
        inactive = stat.get("inactive_file", stat.get("total_inactive_file", 0))
        return {"usage": usage, "anon": max(0, usage - inactive), "mapped_file": 0,
                "unreclaimable": max(0, usage - inactive)}
    return {"usage": usage, "anon": int(anon), "mapped_file": int(mapped),
            "unreclaimable": min(usage, int(anon) + int(mapped)) if usage else int(anon) + int(mapped)}


def cgroup_headroom_bytes(pid: int | str = "self") -> int | None:
    """Bytes the cgroup of ``pid`` may still grow by: its limit minus unreclaimable usage.

    Taken as the smallest over the path to the root (each level with a limit and a usage figure);
    ``None`` when no level has a limit.
    """
    rooms = []
    for version, d in _levels(pid):
        limit = _read_int(d / _limit_file(version))
        if limit is None or _read_int(d / ("memory.current" if version == 2 else "memory.usage_in_bytes")) is None:
            continue
        rooms.append(max(0, limit - memory_charge(version, d)["unreclaimable"]))
    return min(rooms) if rooms else None


def _process_tree(pid: int) -> list[int]:
    out, todo = [], [int(pid)]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except (OSError, ValueError):
                pass
    return out


@dataclass
class MemoryCgroup:
    """A memory cgroup this process created, with a hard limit (see module doc)."""

    path: Path
    version: int
    limit_bytes: int

    @classmethod
    def create(cls, name: str, limit_bytes: int) -> "MemoryCgroup":
        """Create ``name`` under this process's memory cgroup with ``limit_bytes`` (swap included).

        Raises ``ValueError`` for a bad name or limit and ``CgroupUnavailable`` (one line) when the
        kernel does not let us create or limit it.
        """
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"cgroup name={name!r}: expected a plain folder name")
        if isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int) or limit_bytes < 1 << 20:
            raise ValueError(f"cgroup limit_bytes={limit_bytes!r}: expected an integer >= 1 MiB")
        found = memory_cgroup_dir()
        if found is None:
            raise CgroupUnavailable("no memory cgroup controller is mounted (cgroup v1 'memory' or v2)")
        version, parent = found
        path = parent / name
        try:
            if version == 2:
                _enable_v2_memory(parent)
            path.mkdir(exist_ok=True)
            group = cls(path, version, int(limit_bytes))
            group._write_limit()
        except OSError as e:
            if path.exists():
                try:
                    path.rmdir()
                except OSError:
                    pass
            raise CgroupUnavailable(f"cannot create a memory cgroup at {path}: {e.strerror or e}") from None
        return group

    def _write_limit(self) -> None:
        lim = str(self.limit_bytes)
        if self.version == 2:
            (self.path / "memory.max").write_text(lim)
            if (self.path / "memory.swap.max").exists():
                (self.path / "memory.swap.max").write_text("0")
            return
        (self.path / "memory.limit_in_bytes").write_text(lim)
        memsw = self.path / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            memsw.write_text(lim)  # no swapping past the limit: RAM is what a device has

    def add(self, pid: int) -> None:
        """Move one process into this cgroup (its later children start in it)."""
        (self.path / "cgroup.procs").write_text(str(int(pid)))

    def add_tree(self, pid: int) -> list[int]:
        """Move ``pid`` and all its descendants in; returns the pids moved."""
        moved = []
        for p in _process_tree(pid):
            try:
                self.add(p)
                moved.append(p)
            except (ProcessLookupError, FileNotFoundError):
                pass  # exited meanwhile
        return moved

    def preexec(self) -> Callable[[], None]:
        """A ``subprocess.Popen(preexec_fn=...)`` that puts the child in this cgroup before exec."""
        procs = str(self.path / "cgroup.procs")

        def enter() -> None:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        return enter

    def pids(self) -> list[int]:
        """Processes in the cgroup now."""
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def usage_bytes(self) -> int:
        """Memory charged to the cgroup now (page cache included)."""
        return _read_int(self.path / ("memory.current" if self.version == 2 else "memory.usage_in_bytes")) or 0

    def peak_bytes(self) -> int:
        """Highest memory charged since creation (v2 ``memory.peak``, v1 ``max_usage_in_bytes``)."""
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        return _read_int(self.path / name) or 0

    def charge(self) -> dict[str, int]:
        """``memory_charge`` of this cgroup now."""
        return memory_charge(self.version, self.path)

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer has killed in this cgroup."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        return int(_keyed(self.path / name).get("oom_kill", 0))

    def remove(self, timeout: float = 5.0) -> None:
        """Move any process left back to the parent cgroup and delete this one (idempotent)."""
        if not self.path.exists():
            return
        parent_procs = self.path.parent / "cgroup.procs"
        deadline = time.monotonic() + timeout
        while True:
            for p in self.pids():
                try:
                    parent_procs.write_text(str(p))
                except OSError:
                    pass
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if time.monotonic() > deadline:
                    raise CgroupUnavailable(f"cannot remove memory cgroup {self.path}: {e.strerror or e}") from None
                time.sleep(0.05)


def _enable_v2_memory(parent: Path) -> None:
    control = parent / "cgroup.subtree_control"
    if "memory" not in control.read_text().split():
        control.write_text("+memory")
