"""Whether a run lives: who owns it, the lease it renews, and the rule that says it is dead.

A run's lock (``runs/<id>.lock``) is not enough: where flock silently does not exclude (some NFS
and Lustre mounts) every lock looks free, and a free lock would pass every live run for a dead
one. So each run also writes ``runs/<id>.owner`` (``Owner``: host, pid and the process's start
time) before anything else of it exists, and removes it last; while it lives, its process
renews the file's mtime every ``LEASE_RENEW_S`` seconds (``leases``, a daemon thread).

A run is reaped only if it is provably dead (``provably_dead``): its lock is free and

- it ran on this host (``_procs.host_id``: the hostname, machine id, boot and pid namespace),
  and its process is gone, a zombie, or the pid now names a process that started at another
  time; or
- it ran on another host (or before a reboot), where its pid means nothing here, and its lease
  has not been renewed for ``LEASE_EXPIRY_S`` seconds: generous, so that clock skew between
  hosts and a stalled process are not taken for death.

A run without an owner record is one of an older nerfcache (or one whose discard is finishing):
its lock alone decides, as it always did.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from nerfcache import _fs
from nerfcache._procs import host_id, process_alive, process_start

__all__ = [
    "LEASE_EXPIRY_S",
    "LEASE_RENEW_S",
    "OWNER_SUFFIX",
    "Owner",
    "lease_age",
    "leases",
    "provably_dead",
    "read_owner",
    "write_owner",
]

LEASE_RENEW_S = 30.0
"""How often a live run renews the mtime of its owner record."""
LEASE_EXPIRY_S = 600.0
"""How long another host's run may go without renewing its lease before it counts as dead."""
OWNER_SUFFIX = ".owner"


@dataclasses.dataclass(frozen=True)
class Owner:
    """Who runs a run: the host, and the process on it (pid and start time)."""

    host: str
    pid: int
    start: int | None
    """When the process started, in ticks after boot (``/proc/<pid>/stat``); None off Linux."""

    @classmethod
    def this_process(cls) -> Owner:
        """The owner record of a run of this process."""
        pid = os.getpid()
        return cls(host=host_id(), pid=pid, start=process_start(pid))


def write_owner(path: Path, owner: Owner) -> None:
    """Write ``owner`` to ``path`` atomically: a reader finds all of it or nothing."""
    _fs.write_json(path, dataclasses.asdict(owner))


def read_owner(path: Path) -> Owner | None:
    """The owner record at ``path``; None if it is missing or unreadable."""
    data = _fs.read_json(path)
    if not isinstance(data, dict):
        return None
    try:
        return Owner(
            host=str(data["host"]),
            pid=int(data["pid"]),
            start=None if data["start"] is None else int(data["start"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def lease_age(path: Path) -> float | None:
    """Seconds since the lease at ``path`` was last renewed; None if it is gone."""
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return None


def provably_dead(
    owner: Owner,
    lease_age_s: float,
    here: Owner,
    *,
    alive: Callable[[int, int | None], bool] = process_alive,
) -> bool:
    """Whether the run ``owner`` owns is certainly over, as seen from ``here`` (this process).

    ``alive(pid, start)`` says whether that process of this host lives (``process_alive``).
    """
    if owner.host != here.host:
        return lease_age_s > LEASE_EXPIRY_S
    return not alive(owner.pid, owner.start)


class _Leases:
    """Renews the owner records of this process's live runs from one daemon thread.

    The thread starts with the first run and ends when the last one is dropped.
    """

    def __init__(self) -> None:
        self._paths: set[Path] = set()
        self._guard = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        if hasattr(os, "register_at_fork"):
            # A forked child owns none of its parent's runs, and has no renewing thread.
            os.register_at_fork(after_in_child=self._forget)

    def hold(self, path: Path) -> None:
        """Renew ``path`` until ``drop``."""
        with self._guard:
            self._paths.add(path)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._renew, name="nerfcache-leases", daemon=True
                )
                self._thread.start()

    def drop(self, path: Path) -> None:
        """Stop renewing ``path``."""
        with self._guard:
            self._paths.discard(path)
            if not self._paths:
                self._wake.set()  # let the thread end now rather than at its next renewal

    def _renew(self) -> None:
        while True:
            self._wake.wait(LEASE_RENEW_S)
            with self._guard:
                self._wake.clear()
                paths = list(self._paths)
                if not paths:
                    self._thread = None
                    return
            for path in paths:
                with contextlib.suppress(OSError):  # removed with its run: dropped next
                    os.utime(path)

    def _forget(self) -> None:
        self._paths = set()
        self._guard = threading.Lock()
        self._wake = threading.Event()
        self._thread = None


leases = _Leases()
"""The leases of this process's runs."""
