"""Pause other CPU-busy Python processes of this machine around a timing block (``--pause-others``).

:func:`paused_others` is a context manager: on entry it samples every process's CPU time for
``sample_s``, picks the ones that are busy (above ``min_cpu`` of a core), run Python or pytest,
and are neither this process, its ancestors, nor its descendants, sends them SIGSTOP; on exit
(``finally``) it sends SIGCONT. An ``atexit`` hook and SIGTERM / SIGINT handlers continue every
process still stopped, so nothing is ever left paused; a block should last a few seconds.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

_stopped: set[int] = set()
_installed = False
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, utime + stime in ticks) of ``pid``."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2:].split()
    return int(rest[1]), int(rest[11]) + int(rest[12])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _family(me: int, parents: dict[int, int]) -> set[int]:
    """``me``, its ancestors and its descendants."""
    out = {me}
    p = me
    while p in parents and parents[p] not in out and parents[p] > 0:
        p = parents[p]
        out.add(p)
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    stack = [me]
    while stack:
        for c in children.get(stack.pop(), []):
            if c not in out:
                out.add(c)
                stack.append(c)
    return out


def busy_others(sample_s: float = 0.25, min_cpu: float = 0.05) -> list[int]:
    """Python / pytest processes outside this process's family using more than ``min_cpu`` of a core."""
    first = {pid: s for pid in _pids() if (s := _stat(pid)) is not None}
    time.sleep(sample_s)
    second = {pid: s for pid in first if (s := _stat(pid)) is not None}
    family = _family(os.getpid(), {pid: s[0] for pid, s in second.items()})
    out = []
    for pid, (_, ticks) in second.items():
        if pid in family:
            continue
        cpu = (ticks - first[pid][1]) / TICK / sample_s
        cmd = _cmdline(pid)
        if cpu >= min_cpu and ("python" in cmd or "pytest" in cmd):
            out.append(pid)
    return out


def resume_all() -> None:
    """SIGCONT every process this module stopped."""
    for pid in list(_stopped):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGCONT)
        _stopped.discard(pid)


def _install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    atexit.register(resume_all)
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: Any, previous: Any = previous) -> None:
            resume_all()
            if callable(previous):
                previous(signum, frame)
            else:
                raise SystemExit(128 + signum)

        signal.signal(sig, handler)


@contextlib.contextmanager
def paused_others(enabled: bool = True, sample_s: float = 0.25) -> Iterator[list[int]]:
    """Stop the busy others for the duration of the block (see the module docstring)."""
    if not enabled:
        yield []
        return
    _install()
    pids = busy_others(sample_s)
    try:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGSTOP)
                _stopped.add(pid)
            except OSError:
                pass
        yield pids
    finally:
        resume_all()
