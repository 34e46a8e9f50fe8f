"""Stop a process together with every process it started.

A private Flower SuperLink is not one process group: Flower starts its SuperExec
with ``start_new_session=True``, SuperExec starts ``flwr-simulation``, and that
starts Ray's GCS, raylet and workers. Killing the SuperLink's group alone would
leave them running. So the tree is read from ``/proc`` (each process' parent pid)
*before* anything is signalled: a child whose parent dies is re-parented to init
and can no longer be found under it. A process is named by (pid, start time), so a
pid the kernel reuses meanwhile is never signalled.

Order: SIGTERM to the whole tree, then SIGKILL to whatever of it still runs after a
grace period, including children started since the first look. Linux only
(``/proc``); elsewhere only the root is stopped. ``dies_with_parent`` covers the case
where this process is killed outright and cannot stop anything: the kernel then
signals the child (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Proc", "descendants", "dies_with_parent", "is_alive", "terminate_tree"]

PROC = Path("/proc")


@dataclass(frozen=True)
class Proc:
    """One process, identified so that a reused pid is not mistaken for it."""

    pid: int
    start: int  # start time in clock ticks since boot (/proc/PID/stat field 22)


def _stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, ppid, start)`` of ``pid`` or None when it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # field 2 (the command name) may hold spaces and ')': split after the last ')'
    rest = text[text.rindex(")") + 2 :].split()
    return rest[0], int(rest[1]), int(rest[19])  # fields 3, 4 and 22


def _snapshot() -> dict[int, list[Proc]]:
    """Children of every live process, by parent pid."""
    children: dict[int, list[Proc]] = {}
    if not PROC.is_dir():
        return children
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is not None and stat[0] not in "ZX":
            children.setdefault(stat[1], []).append(Proc(int(entry.name), stat[2]))
    return children


def descendants(*roots: int) -> set[Proc]:
    """Every live process below ``roots`` (children, grandchildren, ...)."""
    children = _snapshot()
    found: set[Proc] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child.pid)
    return found


def is_alive(proc: Proc) -> bool:
    """Whether ``proc`` still runs (a zombie or a reused pid does not count)."""
    stat = _stat(proc.pid)
    return stat is not None and stat[0] not in "ZX" and stat[2] == proc.start


def _signal(procs: set[Proc], sig: signal.Signals) -> None:
    for proc in procs:
        if is_alive(proc):  # checked right before: never signal a reused pid
            try:
                os.kill(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def _wait_gone(procs: set[Proc], timeout: float) -> set[Proc]:
    deadline = time.monotonic() + timeout
    while True:
        left = {p for p in procs if is_alive(p)}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def terminate_tree(root: subprocess.Popen[bytes], *, grace: float = 5.0) -> set[Proc]:
    """Stop ``root`` and all its descendants; return any that survived SIGKILL.

    All get SIGTERM at once (each shuts down on its own; a SuperLink waiting for
    its SuperExec's connections to close would otherwise wait out the grace), then
    whatever still runs after ``grace`` seconds, with any child started meanwhile,
    gets SIGKILL.
    """
    tree = descendants(root.pid)
    if root.poll() is None:
        root.terminate()
    _signal(tree, signal.SIGTERM)
    deadline = time.monotonic() + grace
    try:
        root.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        root.kill()
        root.wait()
    _wait_gone(tree, max(0.0, deadline - time.monotonic()))
    tree |= descendants(*(p.pid for p in tree if is_alive(p)))
    left = {p for p in tree if is_alive(p)}
    if left:
        _signal(left, signal.SIGKILL)
        left = _wait_gone(left, 5.0)
    return left


def dies_with_parent(sig: signal.Signals) -> Callable[[], None]:
    """A ``preexec_fn`` so the child gets ``sig`` when this process dies, even by
    SIGKILL (Linux ``PR_SET_PDEATHSIG``; elsewhere it does nothing)."""

    def preexec() -> None:  # runs in the child, between fork and exec
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return preexec


_PR_SET_PDEATHSIG = 1
# loaded before any fork: loading a library in a forked child may deadlock
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
