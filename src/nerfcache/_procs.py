"""Processes through ``/proc``: the sweep that kills a run's processes by their mark.

Every process of a run carries ``NERFCACHE_RUN=<run id>`` in its environment (``launch``):
``kill_leftovers`` finds them by it, whatever session or process group they moved to.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from nerfcache.launch import RUN_VARIABLE

__all__ = ["kill_leftovers"]

_PROC = Path("/proc")
SWEEP_PASSES = 20
"""At most this many passes of ``kill_leftovers``: each catches what forked during the last."""


def kill_leftovers(run_id: str) -> frozenset[int]:
    """SIGKILL every process whose environment names the run; return the pids signalled.

    Used when a run ends (however it ends) and when a dead run is reaped. The script's process
    group is killed anyway; this also reaches what left the group: a daemon that double-forked
    into a session of its own, or ffmpeg and data loader workers of a launcher that died. Passes
    repeat until one finds nothing new, so what forked during a pass is caught by the next.

    Limits: a process that cleared or replaced its environment before ``exec`` carries no mark;
    another user's processes cannot be read (nor killed) but by root; Linux only (``/proc``).
    """
    tag = f"{RUN_VARIABLE}={run_id}".encode()
    if not _PROC.is_dir():
        return frozenset()
    killed: set[int] = set()
    for _ in range(SWEEP_PASSES):
        found = {
            int(entry.name)
            for entry in _PROC.iterdir()
            if entry.name.isdigit()
            and int(entry.name) != os.getpid()
            and _kill_if_marked(int(entry.name), tag)
        }
        if not found - killed:  # what is dying may still show its mark for an instant
            break
        killed |= found
    return frozenset(killed)


def _kill_if_marked(pid: int, tag: bytes) -> bool:
    """SIGKILL ``pid`` if its environment holds ``tag``; whether it was signalled.

    Through a pidfd where the system has them, the mark read again after opening it: the
    process signalled is then the one that carries the mark, even if ``pid`` was reused.
    """
    if not _marked(pid, tag):
        return False
    pidfd = None
    if hasattr(os, "pidfd_open"):
        with contextlib.suppress(OSError):
            pidfd = os.pidfd_open(pid)
    try:
        if pidfd is not None:
            if not _marked(pid, tag):
                return False
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return True


def _marked(pid: int, tag: bytes) -> bool:
    try:
        environ = (_PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return False  # gone, or another user's
    return tag in environ.split(b"\0")
