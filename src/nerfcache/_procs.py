"""Ending what a dead run left running, found through ``/proc`` by the run's id."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from nerfcache.launch import RUN_VARIABLE

__all__ = ["kill_leftovers"]


def kill_leftovers(run_id: str) -> None:
    """SIGKILL what a dead run left running: processes whose environment names the run.

    The script dies with its launcher (``setpriv --pdeathsig``) but what it started (ffmpeg,
    data loader workers) does not; they all inherit ``NERFCACHE_RUN``, which also makes this
    safe against reused pids. Linux only (``/proc``); elsewhere nothing is done.
    """
    tag = f"{RUN_VARIABLE}={run_id}".encode()
    proc = Path("/proc")
    if not proc.is_dir():
        return
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue  # gone, or another user's
        if tag in environ:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)
