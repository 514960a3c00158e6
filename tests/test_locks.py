from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from filelock import FileLock, Timeout

from nerfcache import GenerationCancelled
from nerfcache._locks import acquire, exclusive, held

WAITERS = 4


def test_held_probes_without_creating_the_lock_file(tmp_path: Path) -> None:
    path = tmp_path / "build.lock"
    assert not held(path)
    assert not path.exists()
    with FileLock(path):
        assert held(path)  # from another thread's lock, or another process's
    assert not held(path)


def test_acquire_takes_the_lock_once_its_holder_lets_go(tmp_path: Path) -> None:
    path = tmp_path / "build.lock"
    holder = FileLock(path)
    holder.acquire()
    waiting = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        lock = FileLock(path)
        taken = pool.submit(acquire, lock, what="the build", on_wait=waiting.set)
        assert waiting.wait(30)
        holder.release()
        assert taken.result(timeout=30) is True
        assert held(path)
        pool.submit(lock.release).result()
    assert not held(path)


def test_waiters_all_see_the_work_done_without_taking_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "build.lock"
    holder = FileLock(path)
    holder.acquire()
    built = threading.Event()
    waiting = [threading.Event() for _ in range(WAITERS)]

    def waiter(i: int) -> bool:
        lock = FileLock(path)
        return acquire(lock, what="the build", on_wait=waiting[i].set, unless=built.is_set)

    with ThreadPoolExecutor(WAITERS) as pool:
        results = pool.map(waiter, range(WAITERS), timeout=30)
        assert all(event.wait(30) for event in waiting)
        built.set()
        holder.release()
        assert list(results) == [False] * WAITERS  # none took it: none held up the others
    assert not held(path)


def test_a_cancelled_wait_raises_and_leaves_the_lock_to_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "build.lock"
    cancel = threading.Event()
    with FileLock(path):
        with ThreadPoolExecutor(1) as pool:
            waiter = pool.submit(
                acquire, FileLock(path), what="the build", cancel=cancel, on_wait=cancel.set
            )
            with pytest.raises(GenerationCancelled, match="waiting for the build"):
                waiter.result(timeout=30)
        assert held(path)


def test_exclusive_is_a_lock_the_others_see(tmp_path: Path) -> None:
    path = tmp_path / "hashing.lock"
    with exclusive(path):
        assert held(path)
        with ThreadPoolExecutor(1) as pool, pytest.raises(Timeout):
            pool.submit(FileLock(path).acquire, timeout=0).result()
    assert not held(path)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_process_forked_while_a_lock_is_held_does_not_keep_it(tmp_path: Path) -> None:
    path = tmp_path / "hashing.lock"
    started, child_started = os.pipe()
    resume, release = os.pipe()
    with exclusive(path):
        child = os.fork()
        if child == 0:  # a multiprocessing worker, say: it lives on after the parent lets go
            os.write(child_started, b"x")
            os.read(resume, 1)
            os._exit(0)
        os.read(started, 1)
    try:
        assert not held(path)
    finally:
        os.write(release, b"x")
        os.waitpid(child, 0)
