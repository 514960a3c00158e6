"""A run's private staging dir in ``.nerfcache/runs``: seeded, written by the script, published.

Each run holds ``runs/<run id>.lock`` for its life and keeps an owner record with a lease,
``runs/<run id>.owner`` (``liveness``): the next check-out reaps what a provably dead run left
(its staging dir, and on its own host what it left running), never a live run's.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

from nerfcache import _fs
from nerfcache._locks import held, try_acquire
from nerfcache._procs import kill_leftovers
from nerfcache.cache.layout import CacheStatus, Fingerprint, is_complete_zip
from nerfcache.cache.liveness import (
    OWNER_SUFFIX,
    Owner,
    lease_age,
    leases,
    provably_dead,
    read_owner,
    write_owner,
)

if TYPE_CHECKING:
    from nerfcache.cache.store import CharacterCache

__all__ = ["RUNS_DIR", "Staging", "live_runs", "new_run_id", "reap_dead_runs"]

RUNS_DIR = "runs"
"""In ``.nerfcache``: a staging dir, a lock file and an owner record per run."""
_WRITABLE = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


def new_run_id(kind: str = "") -> str:
    """A new run's id: when, which process, and a random part; ``kind`` prefixes it.

    It names the run's staging dir and lock, and every process of the run inherits it as
    ``NERFCACHE_RUN`` (``kill_leftovers`` finds them by it).
    """
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"
    return f"{kind}-{run_id}" if kind else run_id


class Staging:
    """A run's private staging dir: seeded from the published cache, published from, removed.

    It is the script's ``--outdir`` (and ``--cache_dir``), so the script's byproducts land here
    and never race with another run's (DESIGN.md section 2).
    """

    def __init__(
        self,
        cache: CharacterCache,
        run_id: str,
        fingerprint: Fingerprint,
        status_before: CacheStatus,
        status: CacheStatus,
    ) -> None:
        self.cache = cache
        self.run_id = run_id
        self.fingerprint = fingerprint
        self.status_before = status_before
        self.status = status
        self.path = cache.meta / RUNS_DIR / run_id
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # First, and removed last: whatever else of the run exists, so does who owns it. Its
        # lease is renewed while the run lives, for other hosts to see (liveness).
        self._owner = self.path.with_suffix(OWNER_SUFFIX)
        write_owner(self._owner, Owner.this_process())
        leases.hold(self._owner)
        # Held for the run's life: where flock works, a held lock says the run lives.
        self._lock = FileLock(self.path.with_suffix(".lock"))
        try:
            # Nobody else takes a new run's lock, but a listing may probe it for an instant.
            self._lock.acquire(timeout=5)
            self.path.mkdir()
        except BaseException:
            if self._lock.is_locked:
                self._lock.release()
            self._end_ownership()
            raise
        self._seeded: dict[str, tuple[int, int, int]] = {}
        self._sources: dict[str, tuple[int, int, int]] = {}

    def seed(self, source: Path) -> None:
        """Put the published cache file ``source`` into the staging dir: a hard link to it.

        The file is made read-only first (it is never written again: publishing renames new
        files in), so a script that opens its hard link for writing fails rather than changing
        the published file, unless it runs as root, which ignores file modes:
        ``wrote_through_links`` then finds the change after the run and the cache is
        quarantined. A copy where links fail.
        """
        identity = _fs.identity(source)
        mode = source.stat().st_mode
        if mode & _WRITABLE:
            # Another user's file, or a read-only mount: its mode is not ours to change.
            with contextlib.suppress(OSError):
                source.chmod(stat.S_IMODE(mode) & ~_WRITABLE)
        target = _fs.link_or_copy(source, self.path / source.name)
        self._seeded[source.name] = _fs.identity(target)
        self._sources[source.name] = identity

    def add_input(self, source: Path, name: str) -> Path:
        """Copy an input of the user's into the staging dir as ``name``; return the copy.

        A copy, never a link: whatever the script writes to its ``--test_img`` or
        ``--test_data``, the user's file stays as it was. ``shutil.copy2`` keeps the file's
        modification time, so the copy's (size, mtime) still says which version it is.
        """
        return Path(shutil.copy2(source, self.path / name))

    def unchanged_copy_of(self, published: Path) -> bool:
        """Whether the run's file of that name is still the one seeded from ``published``."""
        name = published.name
        if name not in self._seeded or self.changed(name):
            return False
        try:
            return _fs.identity(published) == self._sources[name]
        except OSError:
            return False

    def changed(self, name: str) -> bool:
        """Whether the run wrote ``name`` anew (it differs from what was seeded)."""
        path = self.path / name
        return path.is_file() and _fs.identity(path) != self._seeded.get(name)

    def wrote_through_links(self) -> bool:
        """Whether the run rewrote a seeded file in place (changing the published one too)."""
        return any(
            self.changed(name) and _fs.same_file(self.path / name, self.cache.path / name)
            for name in self._seeded
        )

    def built(self, name: str) -> bool:
        """Whether the run wrote ``name`` anew and it is a complete archive, as torch.save makes.

        torch.save writes straight to its final name, so a killed run leaves a truncated file:
        a plain zip check catches it without torch.
        """
        return self.changed(name) and is_complete_zip(self.path / name)

    def discard(self) -> None:
        """Remove the staging dir (the published cache is untouched), its lock and owner record."""
        shutil.rmtree(self.path, ignore_errors=True)
        self._lock.release()
        self.path.with_suffix(".lock").unlink(missing_ok=True)
        self._end_ownership()

    def _end_ownership(self) -> None:
        leases.drop(self._owner)
        self._owner.unlink(missing_ok=True)


def live_runs(runs: Path, *, exclude: str | None = None) -> int:
    """How many runs in ``runs`` are live (not provably dead), but the run ``exclude``."""
    if not runs.is_dir():
        return 0
    here = Owner.this_process()
    return sum(
        1
        for run_id in _run_ids(runs)
        if run_id != exclude
        and (held(runs / f"{run_id}.lock") or not _dead(runs / f"{run_id}{OWNER_SUFFIX}", here))
    )


def reap_dead_runs(runs: Path) -> None:
    """Remove what runs that are provably dead left in ``runs``: a launcher crashed.

    A run is dead when its lock is free and its owner record says so (``liveness``): where
    flock does not exclude, a free lock alone proves nothing. What a dead run of this host left
    running is killed first (``kill_leftovers``); another host's processes are not ours to see.
    """
    if not runs.is_dir():
        return
    here = Owner.this_process()
    for run_id in _run_ids(runs):
        lock_path = runs / f"{run_id}.lock"
        lock = FileLock(lock_path)
        if not try_acquire(lock):
            continue  # a live run
        owner_path = runs / f"{run_id}{OWNER_SUFFIX}"
        try:
            if not _dead(owner_path, here):
                continue
            owner = read_owner(owner_path)
            if owner is None or owner.host == here.host:  # its processes are visible here
                kill_leftovers(run_id)
            shutil.rmtree(runs / run_id, ignore_errors=True)
            lock_path.unlink(missing_ok=True)
            owner_path.unlink(missing_ok=True)
        finally:
            lock.release()


def _run_ids(runs: Path) -> set[str]:
    """The runs in ``runs``: each has a staging dir, a lock, an owner record, or some of them."""
    ids = set()
    for entry in runs.iterdir():
        name = entry.name
        if name.startswith("."):
            continue  # an owner record being written (_fs.atomic_write)
        stem, dot, suffix = name.rpartition(".")
        if dot and f".{suffix}" in (".lock", OWNER_SUFFIX):
            ids.add(stem)
        elif entry.is_dir():
            ids.add(name)
    return ids


def _dead(owner_path: Path, here: Owner) -> bool:
    """Whether the run with the owner record ``owner_path``, whose lock is free, is dead.

    Without an owner record it is an older nerfcache's run (or one whose discard is ending):
    its free lock decides, as it did then.
    """
    owner = read_owner(owner_path)
    age = lease_age(owner_path)
    return owner is None or age is None or provably_dead(owner, age, here)
