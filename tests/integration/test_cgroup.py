"""Memory cgroups (fedprune.memory.cgroup) against the real kernel of this machine."""

import os
import subprocess
import sys
import uuid

import pytest

from fedprune.memory import cgroup
from fedprune.memory.cgroup import CgroupUnavailable, MemoryCgroup

MIB = 2**20


def _creatable() -> str | None:
    if os.geteuid() != 0:
        return "not root: memory cgroups cannot be created"
    if cgroup.memory_cgroup_dir() is None:
        return "no memory cgroup controller mounted"
    try:
        MemoryCgroup.create(f"fp-probe-{uuid.uuid4().hex[:8]}", 64 * MIB).remove()
    except CgroupUnavailable as e:
        return str(e)
    return None


_SKIP = _creatable()
needs_cgroup = pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")

_HOG = "x = bytearray({n}); x[::4096] = b'1' * len(range(0, {n}, 4096)); print('survived', flush=True)"


@pytest.fixture
def group():
    g = MemoryCgroup.create(f"fp-test-{uuid.uuid4().hex[:8]}", 64 * MIB)
    yield g
    g.remove()


def _run_in(g: MemoryCgroup, nbytes: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _HOG.format(n=nbytes)], preexec_fn=g.preexec(),
                          capture_output=True, text=True, timeout=60)


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="name"):
        MemoryCgroup.create("a/b", 64 * MIB)
    with pytest.raises(ValueError, match="limit_bytes"):
        MemoryCgroup.create("fp-x", 10)


@needs_cgroup
def test_limit_is_seen_from_inside(group):
    # the module alone (not the package, which imports torch: more than the 64 MiB limit)
    code = (f"import runpy; m = runpy.run_path({cgroup.__file__!r}); "
            "print(m['cgroup_limit_bytes'](), m['cgroup_headroom_bytes']())")
    out = subprocess.run([sys.executable, "-c", code], preexec_fn=group.preexec(), capture_output=True,
                         text=True, timeout=60)
    limit, room = (int(v) for v in out.stdout.split())
    assert limit == 64 * MIB
    assert 0 < room <= 64 * MIB


@needs_cgroup
def test_process_over_the_limit_is_killed_and_counted(group):
    res = _run_in(group, 128 * MIB)
    assert res.returncode == -9 and "survived" not in res.stdout
    assert group.oom_kills() >= 1
    assert group.peak_bytes() >= 60 * MIB


@needs_cgroup
def test_process_under_the_limit_survives_and_peak_is_read(group):
    res = _run_in(group, 24 * MIB)
    assert res.returncode == 0 and "survived" in res.stdout
    assert group.oom_kills() == 0
    assert 24 * MIB <= group.peak_bytes() <= 64 * MIB


@needs_cgroup
def test_add_tree_moves_children_and_remove_cleans_up(group):
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
                               "time.sleep(30)"])
    try:
        import time
        for _ in range(100):  # wait until the child exists
            if len(cgroup._process_tree(parent.pid)) > 1:
                break
            time.sleep(0.05)
        moved = group.add_tree(parent.pid)
        assert len(moved) == 2 and set(moved) <= set(group.pids())
    finally:
        for p in reversed(cgroup._process_tree(parent.pid)):
            os.kill(p, 9)
        parent.wait()
    group.remove()
    assert not group.path.exists()
