"""File locks: the one cancellable wait, a probe of who holds one, a short host-wide section.

They are all ``flock`` locks (filelock's ``FileLock`` is one on Linux), so each sees the others,
whether they are held in another process or in another thread of this one. Waiters wait in the
kernel, which wakes them the moment the lock is let go: no polling, no CPU while they wait.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import BaseFileLock, FileLock, Timeout

from nerfcache.errors import GenerationCancelled

__all__ = [
    "CANCEL_CHECK_S",
    "acquire",
    "exclusive",
    "held",
    "try_acquire",
    "wait_released",
]

CANCEL_CHECK_S = 0.1
"""How often a cancellable waiter looks at its cancel event (the lock's release wakes it)."""
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_CONTENDED = (errno.EAGAIN, errno.EACCES)
_RETRY_S = 0.01
"""The pause before trying again a lock whose file cannot be waited on (gone meanwhile)."""


def try_acquire(lock: BaseFileLock, timeout: float = 0) -> bool:
    """Take ``lock`` within ``timeout`` seconds; False if it stayed taken.

    Without a timeout, a lock someone holds is told by one ``flock`` call (``held``), not by a
    failed acquire through filelock, which costs a thousand times more: check-outs try every
    live run's lock.
    """
    if timeout == 0 and not lock.is_locked and held(Path(lock.lock_file)):
        return False
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
    unless: Callable[[], bool] | None = None,
) -> bool:
    """Take ``lock``, waiting as long as it takes; ``on_wait`` is called once if it must wait.

    Each time the lock is let go, every waiter wakes. ``unless`` (if given) then says whether
    the wait is over without the lock (what the holder was doing is done: all waiters see it at
    once, rather than each taking the lock in turn to look); otherwise they try to take it, and
    one of them gets it.

    Returns:
        True once the lock is taken; False if ``unless`` ended the wait.

    Raises:
        GenerationCancelled: ``cancel`` was set while waiting (``what`` names what was awaited);
            it is looked at every ``CANCEL_CHECK_S``.

    """
    if try_acquire(lock):
        return True
    if on_wait is not None:
        on_wait()
    path = Path(lock.lock_file)
    while True:
        if cancel is None:
            waited = wait_released(path)
        else:
            waited = _wait_released_or_cancelled(path, cancel, what)
        if not waited:
            _pause(cancel, what)
        if unless is not None and unless():
            return False
        if try_acquire(lock):
            return True


def wait_released(path: Path) -> bool:
    """Wait in the kernel until no one holds the lock at ``path``; False if it cannot be opened.

    The wait costs nothing and ends, for every waiter at once, the moment the holder lets go;
    it cannot be cancelled (``acquire`` can be). A cache's state lock, held for milliseconds, is
    awaited this way too.
    """
    with _opened(path) as fd:
        if fd is None:
            return False
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_SH)  # shared: waiters do not stop each other
        return True


def held(path: Path) -> bool:
    """Whether someone holds the file lock at ``path``; a missing lock file is free.

    A probe of one ``flock`` call: it creates nothing, and takes the lock only for that call.
    """
    with _opened(path) as fd:
        free = _free(fd) if fd is not None else None
    if free is None:
        return path.exists() and _held_by_filelock(path)
    return not free


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold the file lock at ``path`` (made if missing) for a short section, waiting in the kernel.

    For sections of milliseconds to seconds that no one cancels, such as hashing a file once for
    every process of the host.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    _open_fds.add(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        _close(fd)  # closing the only descriptor releases the lock


def _wait_released_or_cancelled(path: Path, cancel: threading.Event, what: str) -> bool:
    """``wait_released`` in a thread of its own, looking at ``cancel`` meanwhile.

    A cancelled wait leaves its thread waiting in the kernel: it ends when the lock is let go.
    """
    released = threading.Event()
    waited: list[bool] = []

    def wait() -> None:
        waited.append(wait_released(path))
        released.set()

    threading.Thread(target=wait, name=f"nerfcache: waiting for {what}", daemon=True).start()
    while not released.wait(CANCEL_CHECK_S):
        if cancel.is_set():
            raise GenerationCancelled(f"cancelled while waiting for {what}")
    return waited[0]


def _pause(cancel: threading.Event | None, what: str) -> None:
    if (cancel or threading.Event()).wait(_RETRY_S):
        raise GenerationCancelled(f"cancelled while waiting for {what}")


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[int | None]:
    """The lock file open for waiting or probing, or None if it cannot be (missing, a link)."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        yield None
        return
    _open_fds.add(fd)
    try:
        yield fd
    finally:
        _close(fd)


def _free(fd: int) -> bool | None:
    """Whether the lock can be taken now (it is given back at once).

    None where the file system cannot tell (no ``flock``): filelock then falls back to its own
    soft locks, which only filelock can probe.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        return False if error.errno in _CONTENDED else None
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


def _held_by_filelock(path: Path) -> bool:
    """Probe through filelock, where a plain ``flock`` cannot tell (see ``_free``)."""
    lock = FileLock(path)
    if not try_acquire(lock):
        return True
    lock.release()
    return False


# A process forked (not exec'ed: multiprocessing's default) while a lock here is held or
# awaited shares the descriptor, and a flock belongs to the open file, not to the process: the
# child would hold the lock for its whole life. It closes its copies at once.
_open_fds: set[int] = set()


def _close(fd: int) -> None:
    _open_fds.discard(fd)
    os.close(fd)


def _close_inherited() -> None:
    for fd in list(_open_fds):
        with contextlib.suppress(OSError):
            os.close(fd)
    _open_fds.clear()


os.register_at_fork(after_in_child=_close_inherited)
