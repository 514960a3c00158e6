"""A private working directory per run: the NeRF code folder as the script sees it.

The scripts run with the code folder as their working directory (DESIGN.md section 2): they read
``pretrained_networks/...`` and ``frames`` and import ``PTI``, ``SadTalker`` ... relative to it,
and PTI writes ``./embeddings`` and ``./checkpoints/model_*.pt`` there while it tunes and
deletes both folders at its end. Two cold builds sharing that folder destroy each other's files:
the one that ends first deletes the folder the other is still saving into.

Each run therefore gets its own folder holding one symbolic link per entry of the code folder:
every relative read resolves as before, no weight is copied, and the code folder is never
written to. The folders PTI writes are empty folders of the run's own, never links: its writes
and its ``rmtree`` (which refuses a link) stay private. Neither repository ships them; what a
crashed stock run left in the code folder under those names is PTI's own leftovers, which no
run reads (Deep3DFaceRecon's optional ``checkpoints/init_model`` weights are overwritten anyway).

Where links cannot be made (a file system without symbolic links), runs use the code folder
itself and cold builds on this host take turns through one lock, with a warning.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock
from loguru import logger

from nerfcache._locks import acquire
from nerfcache.config import Settings

__all__ = ["WRITTEN_DIRS", "working_dir"]

WRITTEN_DIRS = ("embeddings", "checkpoints")
"""What PTI writes relative to its working directory (``base_coach.py``, ``single_id_coach.py``)
and removes with ``rmtree`` when it is done."""


@contextlib.contextmanager
def working_dir(
    settings: Settings,
    folder: Path,
    *,
    builds_pti: bool,
    cancel: threading.Event | None = None,
    on_wait: Callable[[], object] | None = None,
    log: Any = logger,
) -> Iterator[Path]:
    """Yield the working directory for one run: ``folder``, made a private view of the code.

    ``folder`` must not exist; it is left for the caller to remove with the run's other files
    (removing it removes the links, never what they point to). Where links cannot be made, yields
    the code folder itself and, if the run ``builds_pti``, holds the host-wide PTI lock in
    ``state_dir`` meanwhile (waiting for it calls ``on_wait`` once; ``cancel`` stops the wait).
    """
    code = settings.nerf_code_dir
    try:
        _link_view(code, folder)
    except OSError as error:
        log.warning(
            "cannot make a private working directory in {} ({}): runs use {} itself, and cold"
            " builds on this host take turns so that PTI's ./embeddings and ./checkpoints are"
            " not shared",
            folder,
            error.strerror or error,
            code,
        )
        if not builds_pti:
            yield code
            return
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(settings.state_dir / "pti-in-code-dir.lock")
        acquire(lock, what="another build's PTI in the code folder", cancel=cancel, on_wait=on_wait)
        try:
            yield code
        finally:
            lock.release()
        return
    yield folder


def _link_view(code: Path, folder: Path) -> None:
    """Fill ``folder`` with a link to each entry of ``code``, but ``WRITTEN_DIRS``."""
    folder.mkdir()
    with os.scandir(code) as entries:
        for entry in entries:
            if entry.name not in WRITTEN_DIRS:
                (folder / entry.name).symlink_to(entry.path)
