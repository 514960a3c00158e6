"""Waiting for a file lock without blocking cancellation: the one loop every waiter uses."""

from __future__ import annotations

import threading
from collections.abc import Callable

from filelock import BaseFileLock, Timeout

from nerfcache.errors import GenerationCancelled

__all__ = ["POLL_S", "acquire", "try_acquire"]

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
