"""A character's cache folder as files: what is published, its locks, and the moves that change it.

Every change to the published files is a rename made under the state lock: a commit through a
pending manifest (finished or dropped by ``_recover`` after a crash), setting a cache aside as a
generation, restoring one, quarantining files that do not check out. ``CharacterCache`` (in
``store``) builds the runs and the commands on this.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from loguru import logger

from nerfcache import _fs
from nerfcache._locks import try_acquire, wait_released
from nerfcache.cache.layout import (
    CACHE_FILES,
    META_DIR,
    PENDING_MANIFEST,
    CacheStatus,
    Fingerprint,
    Manifest,
    cache_files,
    cache_status,
    read_manifest,
    timestamp,
)
from nerfcache.cache.staging import RUNS_DIR, live_runs, reap_dead_runs
from nerfcache.characters import character_dir
from nerfcache.config import Settings
from nerfcache.errors import CacheBusyError, ConfigurationError, NerfCacheError

__all__ = ["CacheFolder"]


class CacheFolder:
    """The files of one character's cache: read with ``stat`` calls, changed by renames."""

    def __init__(self, settings: Settings, character: str) -> None:
        self.character = character
        self.settings = settings
        self.path = character_dir(settings, character)
        self.keep_generations = settings.keep_generations
        self.meta = self.path / META_DIR
        self._log = logger.bind(character=character)

    # - reading (stat only) -

    @property
    def manifest_path(self) -> Path:
        """The manifest of what is published."""
        return self.meta / "manifest.json"

    def manifest(self) -> Manifest | None:
        """Return the published manifest, or None if there is none (or it is unreadable)."""
        return read_manifest(self.manifest_path)

    def status(self, fingerprint: Fingerprint | None = None) -> CacheStatus:
        """Classify the published cache; with ``fingerprint``, a cache for another one is stale.

        Costs a few ``stat`` calls (and a zip check of files without a manifest).
        """
        return cache_status(self.path, self.manifest(), cache_files(self.path), fingerprint)

    # - locks -

    def state_lock(self) -> FileLock:
        """A short lock around every change to the published files and the manifest."""
        return _Lock(self._meta_dir() / "state.lock")

    def build_lock(self) -> FileLock:
        """A long lock held by the one run that builds this character's cache (single-flight)."""
        return _Lock(self._meta_dir() / "build.lock")

    # - changes (all made with the state lock held) -

    @contextlib.contextmanager
    def _exclusive(self, *, own_run: str | None = None) -> Iterator[None]:
        """Hold the build lock and make sure no other run is live (call with the state lock).

        New runs cannot start meanwhile: their staging dirs are made under the state lock.

        Raises:
            CacheBusyError: a run builds the cache, or another run is live.

        """
        building = self.build_lock()
        if not try_acquire(building):
            raise CacheBusyError(
                f"the cache of {self.character!r} is in use: a run is building it; try again"
                " when it is done",
                character=self.character,
            )
        try:
            reap_dead_runs(self.meta / RUNS_DIR)
            if live := live_runs(self.meta / RUNS_DIR, exclude=own_run):
                raise CacheBusyError(
                    f"the cache of {self.character!r} is in use by {live} running"
                    " generation(s); try again when they are done",
                    character=self.character,
                )
            yield
        finally:
            building.release()

    def _refuse_links(self) -> None:
        """Refuse a cache whose ``.nerfcache`` (or a folder in it) is a symbolic link.

        Runs write and clean-ups delete inside them: through a link, that is someone else's
        folder.
        """
        for path in (self.meta, *(self.meta / d for d in ("runs", "generations", "quarantine"))):
            if path.is_symlink():
                raise NerfCacheError(
                    f"{path} is a symbolic link: nerfcache does not use or change a cache"
                    " through it; remove the link"
                )

    @property
    def _pending_path(self) -> Path:
        return self.meta / PENDING_MANIFEST

    def _meta_dir(self) -> Path:
        try:
            self.meta.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigurationError(
                f"cannot create {self.meta} ({error.strerror}): cache_root must be a writable"
                " folder; set cache_root (environment variable NERFCACHE_CACHE_ROOT)",
                setting="cache_root",
                path=self.meta,
            ) from error
        return self.meta

    def _new_manifest(
        self,
        fingerprint: Fingerprint,
        files: dict[str, int],
        image: Path,
        network: Path,
        *,
        base: Manifest | None = None,
    ) -> Manifest:
        now = timestamp()
        return Manifest(
            fingerprint=fingerprint,
            files=files,
            image=str(image),
            network=str(network),
            built_at=base.built_at if base else now,
            last_used_at=now,
        )

    def _write_manifest(self, manifest: Manifest) -> None:
        _fs.write_json(self.manifest_path, manifest.model_dump(mode="json"))

    def _recover(self) -> None:
        """Finish a publish that was interrupted after its pending manifest was written."""
        pending = read_manifest(self._pending_path)
        if pending is None:
            self._pending_path.unlink(missing_ok=True)
            return
        if all(_fs.size(self.path / name) == size for name, size in pending.files.items()):
            os.replace(self._pending_path, self.manifest_path)
            self._log.warning("completed an interrupted publish in {}", self.path)
        else:
            self._pending_path.unlink()

    def _set_aside(self, *, prune: bool = True) -> None:
        """Move the published cache to ``generations/<key>``.

        The generation gets its manifest first and the folder loses its own last, so a crash
        midway leaves a generation that the files complete and a folder whose manifest no
        longer matches its files (partial: quarantined, never used).
        """
        manifest = self.manifest()
        if manifest is None:
            return
        target = self.meta / "generations" / manifest.fingerprint.key
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        _fs.write_json(target / "manifest.json", manifest.model_dump(mode="json"))
        for name in manifest.files:
            os.replace(self.path / name, target / name)
        self.manifest_path.unlink()
        self._log.info("set aside the cache of another image, network or trunc as {}", target.name)
        if prune:
            _fs.keep_newest(target.parent, self.keep_generations)

    def _restore(self, fingerprint: Fingerprint) -> None:
        """Bring back a set-aside generation built for ``fingerprint``, if one is complete."""
        source = self.meta / "generations" / fingerprint.key
        manifest = read_manifest(source / "manifest.json")
        if manifest is None or manifest.fingerprint != fingerprint:
            return
        if any(_fs.size(source / name) != size for name, size in manifest.files.items()):
            return
        restored = manifest.model_copy(update={"last_used_at": timestamp()})
        self._commit(restored, source, manifest.files)
        shutil.rmtree(source)
        self._log.info("restored the set-aside cache {}", fingerprint.key)

    def _commit(self, manifest: Manifest, source: Path, names: Iterable[str]) -> None:
        """Move ``names`` from ``source`` into the folder, then make ``manifest`` the manifest.

        Through a pending manifest, so that ``_recover`` completes or drops a commit that a
        crash interrupted.
        """
        _fs.write_json(self._pending_path, manifest.model_dump(mode="json"))
        for name in names:
            os.replace(source / name, self.path / name)
        os.replace(self._pending_path, self.manifest_path)

    def _quarantine(self, reason: str) -> None:
        """Move every cache file and the manifest to ``quarantine/``; user files stay."""
        target = self.meta / "quarantine" / f"{time.strftime('%Y%m%dT%H%M%S')}-{reason}"
        target = target.with_name(f"{target.name}-{secrets.token_hex(2)}")
        target.mkdir(parents=True)
        for path in [self.path / n for n in CACHE_FILES] + [self.manifest_path]:
            if path.exists() or path.is_symlink():
                os.replace(path, target / path.name)
        self._log.warning(
            "moved cache files that did not check out ({}) to {}; they will be rebuilt",
            reason,
            target,
        )
        _fs.keep_newest(target.parent, max(self.keep_generations, 1))


class _Lock(FileLock):
    """A FileLock whose lock file cannot be opened is a configuration problem, said as one.

    That happens when cache_root is read-only, or when its caches belong to another user (a
    ``nerfcache warm`` run as root before the web app runs as www-data).
    """

    def acquire(self, *args: Any, **kwargs: Any) -> Any:
        try:
            if args or kwargs or self.is_locked:
                return super().acquire(*args, **kwargs)
            # A plain wait (``with``): the state lock is held for milliseconds, so wait in the
            # kernel for the holder to let go rather than look again every 50 ms (filelock's
            # own wait, where the kernel's cannot be had); if another waiter is first, again.
            while True:
                with contextlib.suppress(Timeout):
                    waited = wait_released(Path(self.lock_file))
                    return super().acquire(timeout=0 if waited else -1)
        except Timeout:
            raise
        except OSError as error:
            raise ConfigurationError(
                f"cannot open the lock {self.lock_file} ({error.strerror}): cache_root must be"
                " writable by this user; set cache_root (environment variable"
                " NERFCACHE_CACHE_ROOT) or fix its permissions",
                setting="cache_root",
                path=Path(self.lock_file),
            ) from error
