"""GPU slots: at most ``jobs_per_gpu`` runs per GPU, shared by every process on the host."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from nerfcache.config import Settings
from nerfcache.errors import ConfigurationError, GenerationCancelled

__all__ = ["gpu_slot"]

POLL_S = 0.05  # a freed slot is taken within this; each waiting run polls 20 times a second


@contextlib.contextmanager
def gpu_slot(
    settings: Settings,
    *,
    cancel: threading.Event | None = None,
    on_queued: Callable[[], None] | None = None,
) -> Iterator[str | None]:
    """Hold a free GPU slot for the duration of a run; yield its GPU id.

    Yields None without waiting when ``settings.gpus`` is unset (no limit, CUDA_VISIBLE_DEVICES
    left as inherited). Otherwise waits, calling ``on_queued`` once, until a slot is free; slots
    are file locks in ``{state_dir}/gpu-slots/``, so uvicorn workers and other
    processes share them, and a crashed holder frees its slot. Setting ``cancel`` while waiting
    raises ``GenerationCancelled``.
    """
    gpus = [gpu.strip() for gpu in (settings.gpus or "").split(",") if gpu.strip()]
    if not gpus:
        yield None
        return
    folder = settings.state_dir / "gpu-slots"
    folder.mkdir(parents=True, exist_ok=True)
    # One job on every GPU before a second job on any: runs spread across cards.
    slots = [(gpu, n) for n in range(settings.jobs_per_gpu) for gpu in gpus]
    queued = False
    while True:
        for gpu, n in slots:
            lock = FileLock(_slot_path(folder, gpu, n))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            except OSError as error:  # a link planted in its place (not followed), a folder
                raise ConfigurationError(
                    f"cannot open the GPU slot lock {lock.lock_file} ({error.strerror}): remove"
                    " what is in its place; state_dir must be writable by this user (environment"
                    " variable NERFCACHE_STATE_DIR)",
                    setting="state_dir",
                    path=Path(lock.lock_file),
                ) from error
            try:
                yield gpu
            finally:
                lock.release()
            return
        if not queued:
            queued = True
            if on_queued is not None:
                on_queued()
        if (cancel or threading.Event()).wait(POLL_S):
            raise GenerationCancelled("cancelled while waiting for a free GPU slot")


def _slot_path(folder: Path, gpu: str, n: int) -> Path:
    return folder / f"gpu{gpu}-slot{n}.lock"
