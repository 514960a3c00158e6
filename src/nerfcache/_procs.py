"""Processes through ``/proc``: who this host is, whether a process still lives, and the sweep.

A run's owner is named by this host's id, the process id and the process's start time, so that a
pid reused by another program, or a pid read on another host, is never taken for the owner.
Every process of a run carries ``NERFCACHE_RUN=<run id>`` in its environment (``launch``):
``kill_leftovers`` finds them by it, whatever session or process group they moved to.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from pathlib import Path

from nerfcache.launch import RUN_VARIABLE

__all__ = ["host_id", "kill_leftovers", "process_alive", "process_start"]

_PROC = Path("/proc")
SWEEP_PASSES = 20
"""At most this many passes of ``kill_leftovers``: each catches what forked during the last."""


def host_id() -> str:
    """Name the host as its processes see it now: hostname, machine id, boot and pid namespace.

    A process id means something only inside one pid namespace of one boot of one host: two
    hosts (or two containers with pid namespaces of their own, or a host before and after a
    reboot) get different ids, even cloned machines that share a hostname and a machine id.
    Read each time, not remembered: a process moved to another UTS namespace is another host.
    """
    return "/".join(
        [
            socket.gethostname(),
            _read("/etc/machine-id") or _read("/var/lib/dbus/machine-id"),
            _read("/proc/sys/kernel/random/boot_id"),
            _readlink("/proc/self/ns/pid"),
        ]
    )


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _readlink(path: str) -> str:
    try:
        return str(Path(path).readlink())
    except OSError:
        return ""


def process_start(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks after boot (``/proc/<pid>/stat``), or None.

    None also where there is no ``/proc`` (not Linux) or it hides the process (``hidepid``).
    """
    fields = _stat(pid)
    return None if fields is None else int(fields[19])  # field 22; fields[0] is field 3


def process_alive(pid: int, start: int | None) -> bool:
    """Whether process ``pid`` of this host lives and is the one that started at ``start``.

    A zombie is not alive. Where its start time cannot be read (not Linux, or another user's
    process behind ``hidepid``), a process that exists counts as the one meant.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user's process
    fields = _stat(pid)
    if fields is None:
        return True
    if fields[0] in ("Z", "X"):  # exited, not yet reaped by its parent
        return False
    return start is None or int(fields[19]) == start


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` from the third (the state) on; None if unreadable."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ")": split after it.
    return stat.rsplit(")", 1)[1].split()


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
