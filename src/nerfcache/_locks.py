"""File locks: the one cancellable wait every waiter uses, and a probe of who holds one."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from filelock import BaseFileLock, FileLock, Timeout

from nerfcache.errors import GenerationCancelled

__all__ = ["POLL_S", "acquire", "held", "try_acquire"]

POLL_S = 0.2


def try_acquire(lock: BaseFileLock, timeout: float = 0) -> bool:
    """Take ``lock`` within ``timeout`` seconds; False if it stayed taken."""
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        return False
    return True


def acquire(
    lock: BaseFileLock,
    *,
    what: str,
    cancel: threading.Event | None = None,
    on_wait: Callable[[], object] | None = None,
) -> None:
    """Take ``lock``, waiting as long as it takes; ``on_wait`` is called once if it must wait.

    Raises:
        GenerationCancelled: ``cancel`` was set while waiting (``what`` names what was awaited).

    """
    if try_acquire(lock):
        return
    if on_wait is not None:
        on_wait()
    while not try_acquire(lock, POLL_S):
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled(f"cancelled while waiting for {what}")


def held(path: Path) -> bool:
    """Whether someone holds the file lock at ``path``; a missing lock file is free.

    A lock file removed between the check and the probe is created again by the probe, empty:
    for a run's lock, the next check-out reaps it like any dead run's.
    """
    if not path.exists():
        return False
    lock = FileLock(path)
    if not try_acquire(lock):
        return True
    lock.release()
    return False
