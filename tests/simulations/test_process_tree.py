"""Stopping a process stops everything it started, even children in their own
session that ignore SIGTERM, and never a process that merely reuses a pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedshield.simulations import process_tree
from fedshield.simulations.process_tree import Proc, descendants, is_alive

pytestmark = pytest.mark.skipif(
    not Path("/proc").is_dir(), reason="the process tree is read from /proc"
)

# root -> child (own session, like Flower's SuperExec) -> grandchild ignoring SIGTERM
TREE = """
import signal, subprocess, sys, time
if sys.argv[1] == "root":
    subprocess.Popen([sys.executable, __file__, "child", sys.argv[2]],
                     start_new_session=True)
elif sys.argv[1] == "child":
    subprocess.Popen([sys.executable, __file__, "grandchild", sys.argv[2]])
else:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open(sys.argv[2], "w").write("ready")
time.sleep(300)
"""


def test_terminate_tree_stops_detached_and_stubborn_descendants(
    tmp_path: Path,
) -> None:
    script, ready = tmp_path / "tree.py", tmp_path / "ready"
    script.write_text(TREE)
    root = subprocess.Popen([sys.executable, str(script), "root", str(ready)])
    tree: set[Proc] = set()
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        tree = descendants(root.pid)
        assert len(tree) == 2  # the child and the grandchild
        assert process_tree.terminate_tree(root, grace=0.5) == set()
        assert root.returncode is not None
        assert not any(is_alive(p) for p in tree)
    finally:  # never leave the test's processes behind, even when it fails
        root.kill()
        root.wait()
        for p in tree:
            if is_alive(p):
                os.kill(p.pid, signal.SIGKILL)


def test_a_reused_pid_is_not_the_same_process() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        (found,) = [p for p in descendants(os.getpid()) if p.pid == proc.pid]
        assert is_alive(found)
        assert not is_alive(Proc(pid=found.pid, start=found.start + 1))
    finally:
        proc.kill()
        proc.wait()
    assert not is_alive(found)  # a zombie or gone: not alive either way


# a parent that starts `sleep` bound to its life, prints the child's pid, then waits
PARENT = """
import signal, subprocess, sys, time
from fedshield.simulations.process_tree import dies_with_parent
child = subprocess.Popen(["sleep", "300"], preexec_fn=dies_with_parent(signal.SIGTERM))
print(child.pid, flush=True)
time.sleep(300)
"""


def test_a_child_bound_to_its_parent_dies_when_the_parent_is_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    (child,) = [p for p in descendants(parent.pid) if p.pid == child_pid]
    parent.kill()  # SIGKILL: the parent can clean nothing up itself
    parent.wait()
    deadline = time.monotonic() + 10
    while is_alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = is_alive(child)
    if alive:
        os.kill(child.pid, signal.SIGKILL)
    assert not alive
