"""CharacterCache: a character's cache as runs and commands use it.

A run checks out a private staging dir seeded with hard links to what is published (``checkout``;
``stage`` keeps cold builds single-flight with the build lock), then publishes what it built
that checks out (``publish``). The commands: ``info``, ``verify``, ``clear``, and the export and
import hooks ``snapshot``, ``receive`` and ``install``. What the folder holds and the renames
that change it are ``CacheFolder``'s (``folder``); the layout is in the package's docstring.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock

from nerfcache import _fs
from nerfcache._locks import acquire, held
from nerfcache.cache.folder import CacheFolder
from nerfcache.cache.inspection import (
    CacheInfo,
    Verification,
    describe,
    examine,
)
from nerfcache.cache.layout import (
    CACHE_FILES,
    FIT_FILES,
    PTI_FILES,
    CacheStatus,
    Fingerprint,
    Manifest,
    byproducts,
    footprint,
    timestamp,
    zip_problem,
)
from nerfcache.cache.staging import RUNS_DIR, Staging, live_runs, new_run_id, reap_dead_runs
from nerfcache.characters import resolve_model
from nerfcache.errors import CacheBusyError, InvalidInputError, MissingFileError

__all__ = ["USE_RESOLUTION", "VERIFY_ROUNDS", "CharacterCache", "Snapshot"]

VERIFY_ROUNDS = 5
"""How many times ``verify(fix=True)`` examines a cache that changes while it is examined."""

USE_RESOLUTION = timedelta(minutes=1)
"""How stale a cache's ``last_used_at`` may be: runs within it of the last one do not rewrite
the manifest."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The published manifest and its files, open for reading."""

    manifest: Manifest
    files: dict[str, BinaryIO]


class CharacterCache(CacheFolder):
    """The cache of one character: its status, its locks, and the staging dirs of its runs.

    What the folder holds and the atomic moves that change it come from ``CacheFolder``; here
    are the runs (check-out, build lock, publish) and the commands (info, verify, clear, export
    and import) built on them.
    """

    # - runs -

    def checkout(self, fingerprint: Fingerprint, *, image: Path, network: Path) -> Staging:
        """Make the published cache fit ``fingerprint`` and give the run a seeded staging dir.

        Under the state lock: finish an interrupted publish, set a stale cache aside (or restore
        the one for this fingerprint), adopt a complete legacy cache, quarantine broken files,
        then hard-link what is published into a new private staging dir.
        """
        run_id = new_run_id()
        self._refuse_links()
        with self.state_lock():
            reap_dead_runs(self.meta / RUNS_DIR)
            self._recover()
            before = self.status(fingerprint)
            status = self._prepare(fingerprint, before, image=image, network=network)
            staging = Staging(self, run_id, fingerprint, before, status)
            try:
                manifest = self.manifest()
                if manifest is not None:
                    for name in manifest.files:
                        staging.seed(self.path / name)
                    self._record_use(manifest)
            except BaseException:
                staging.discard()
                raise
        return staging

    @contextlib.contextmanager
    def stage(
        self,
        fingerprint: Fingerprint,
        *,
        image: Path,
        network: Path,
        cancel: threading.Event | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> Iterator[Staging]:
        """Yield a seeded staging dir for one run, holding the build lock if it must build.

        N runs for a cold character: one builds, the others wait for the build lock (calling
        ``on_wait`` once), then find the cache warm and run without it, so PTI runs once, not N
        times. Warm runs take no build lock and run side by side. The staging dir is removed on
        the way out. Setting ``cancel`` while waiting raises ``GenerationCancelled``.
        """
        staging = self.checkout(fingerprint, image=image, network=network)
        lock: FileLock | None = None
        try:
            first_seen = staging.status_before
            while lock is None and staging.status is not CacheStatus.WARM:
                staging.discard()
                # None if another run built it meanwhile: then this one runs warm.
                lock = self._wait_for_build_lock(fingerprint, cancel, on_wait)
                staging = self.checkout(fingerprint, image=image, network=network)
                staging.status_before = first_seen  # what the caller found, before waiting
            if lock is not None and staging.status is CacheStatus.WARM:
                lock.release()
                lock = None
            try:
                yield staging
            finally:
                staging.discard()
        finally:
            if lock is not None:
                lock.release()

    def _wait_for_build_lock(
        self,
        fingerprint: Fingerprint,
        cancel: threading.Event | None,
        on_wait: Callable[[], None] | None,
    ) -> FileLock | None:
        """Take the build lock; None if a run built the cache for ``fingerprint`` meanwhile.

        When a build ends, all its waiters find the cache warm at once, rather than each taking
        the build lock in turn to look.
        """
        lock = self.build_lock()

        def waiting() -> None:
            self._log.info("another run is building this cache: waiting for it")
            if on_wait is not None:
                on_wait()

        def built() -> bool:
            return self.status(fingerprint) is CacheStatus.WARM

        what = f"the cache of {self.character!r}"
        taken = acquire(lock, what=what, cancel=cancel, on_wait=waiting, unless=built)
        return lock if taken else None

    def _prepare(
        self, fingerprint: Fingerprint, status: CacheStatus, *, image: Path, network: Path
    ) -> CacheStatus:
        # Warm and pti-only caches are in line with the fingerprint already: nothing to change.
        if status not in (CacheStatus.WARM, CacheStatus.PTI_ONLY):
            if status is CacheStatus.STALE:
                self._set_aside(prune=False)  # after the restore: the one wanted may be oldest
            elif status is CacheStatus.PARTIAL:
                self._quarantine("partial")
            elif status is CacheStatus.LEGACY:
                self._log.warning(
                    "adopting a cache made by the original launcher in {}: it cannot be checked"
                    " against the image it was built from; clear it if the portrait changed",
                    self.path,
                )
                files = {name: _fs.size(self.path / name) or 0 for name in CACHE_FILES}
                self._write_manifest(self._new_manifest(fingerprint, files, image, network))
            if self.status(fingerprint) is CacheStatus.COLD:
                self._restore(fingerprint)
            status = self.status(fingerprint)
        if (self.meta / "generations").is_dir():
            _fs.keep_newest(self.meta / "generations", self.keep_generations)
        return status

    def _record_use(self, manifest: Manifest) -> None:
        """Record in the manifest that a run uses this cache, at most once a ``USE_RESOLUTION``.

        ``last_used_at`` orders ``prune`` (least recently used first) and ``--older-than``,
        whose unit is days: rewriting the manifest, with its fsync, on every warm run would
        cost more than the rest of the launcher's work together for nothing those need.
        """
        now, last = timestamp(), manifest.last_used_at
        # A time without a zone (a hand-edited manifest) or in the future is rewritten.
        if last.tzinfo is not None and timedelta(0) <= now - last < USE_RESOLUTION:
            return
        self._write_manifest(manifest.model_copy(update={"last_used_at": now}))

    def publish(self, staging: Staging, *, image: Path, network: Path) -> tuple[str, ...]:
        """Publish what ``staging`` built that checks out; return the names published.

        A complete, valid PTI group is published even if the run failed later; the 3DMM fit only
        with the PTI group it was fitted on. The manifest is written last, through a pending
        manifest, so a crash at any point leaves a cache that is either complete or recoverable.
        """
        if not any(staging.changed(name) for name in CACHE_FILES):
            # A warm run's usual end: it wrote no cache file (none to publish) and none through
            # its links (nothing to quarantine). Whatever else a check-out would fix, the next
            # one does: no lock, no manifest read.
            return ()
        fingerprint = staging.fingerprint
        with self.state_lock():
            self._recover()
            status = self.status(fingerprint)
            if status is CacheStatus.STALE:
                self._set_aside()
            elif status in (CacheStatus.PARTIAL, CacheStatus.LEGACY):
                self._quarantine(status.value)
            elif staging.wrote_through_links():
                # torch.save rewrites a file in place: through a hard link that is the
                # published file itself, so the published cache can no longer be trusted.
                self._quarantine("rewritten")
            manifest = self.manifest()
            files = dict(manifest.files) if manifest else {}
            new_pti = all(staging.built(name) for name in PTI_FILES)
            pti_here = manifest is not None and manifest.has_pti
            new: list[str] = []
            if not pti_here and new_pti:
                new += PTI_FILES
            # fitted_coeffs.pt is fitted on the PTI generator's rendering: publish it only with
            # the PTI group it came from, that is the one published now or the one seeded.
            fitted_on_published = pti_here and all(
                staging.unchanged_copy_of(self.path / n) for n in PTI_FILES
            )
            if (
                all(staging.built(n) for n in FIT_FILES)
                and (new == list(PTI_FILES) or fitted_on_published)
                and not (manifest is not None and manifest.has_fit)
            ):
                new += FIT_FILES
            if not new:
                return ()
            files.update({name: _fs.size(staging.path / name) or 0 for name in new})
            new_manifest = self._new_manifest(fingerprint, files, image, network, base=manifest)
            self._commit(new_manifest, staging.path, new)
        self._log.info("published {} to {}", ", ".join(new), self.path)
        return tuple(new)

    # - management -

    def info(self) -> CacheInfo:
        """Describe this cache as ``list_caches`` does (stat calls; no cache file is read)."""
        return describe(self.settings, self.character, self.path)

    def in_use(self) -> bool:
        """Whether a run holds this cache: a cold build (the build lock) or any live run."""
        return held(self.meta / "build.lock") or live_runs(self.meta / RUNS_DIR) > 0

    def verify(self, *, model_name: str | None = None, fix: bool = False) -> Verification:
        """Check the published cache without torch; with ``fix``, move aside what fails.

        Every cache file must be a complete zip archive, as ``torch.save`` writes (each
        member's CRC is checked, so this reads the files), of the size the manifest lists; the
        manifest's fingerprint must match the current portrait, the network (``model_name``,
        else the file it was built with if it is still there) and ``trunc``. With ``fix``, an
        interrupted publish is finished first, then a cache whose files fail is quarantined and
        a sound cache for another fingerprint is set aside, as the next run would do.

        Raises:
            InvalidInputError: a bad ``model_name``.
            MissingFileError: ``model_name`` is not in ``model_dir``.
            CacheBusyError: with ``fix``, the cache changed every time it was examined.

        """
        network = resolve_model(self.settings, model_name) if model_name else None
        if not self.path.is_dir():
            return Verification(self.character, CacheStatus.COLD, (), None)
        if not fix:
            return examine(self, network).verification
        self._refuse_links()
        for _ in range(VERIFY_ROUNDS):
            # Read and hash with no lock held: warm runs of the character go on meanwhile. The
            # fix, under the state lock, is made only if nothing examined changed since.
            examined = examine(self, network)
            with self.state_lock():
                self._recover()
                if not examined.current():
                    continue
                found = examined.verification
                if found.ok:
                    return found
                if found.status is CacheStatus.PARTIAL:
                    self._quarantine("verify")
                    return dataclasses.replace(found, action="quarantined")
                self._set_aside()
                return dataclasses.replace(found, action="set aside")
        raise CacheBusyError(
            f"the cache of {self.character!r} kept changing while it was verified; try again",
            character=self.character,
        )

    def clear(self) -> int:
        """Delete this character's cache; return the bytes freed.

        Removes the four cache files, the byproduct PNGs the original launcher left in the
        folder (``BYPRODUCTS``) and everything in ``.nerfcache/`` but its
        lock files: the manifest, set-aside generations, quarantine, dead runs' staging dirs.
        Never ``images/``, ``audio.wav`` or any other file of the user.

        Raises:
            CacheBusyError: the cache is in use (a build or a live run); nothing was removed.
            NerfCacheError: ``.nerfcache`` or a folder in it is a symbolic link; nothing was
                removed.

        """
        if not self.path.is_dir():
            return 0
        self._refuse_links()
        with self.state_lock(), self._exclusive():
            before = footprint(self.path)
            for path in [*(self.path / name for name in CACHE_FILES), *byproducts(self.path)]:
                path.unlink(missing_ok=True)
            for entry in self.meta.iterdir():
                # Lock files stay: a waiter holds the old inode, so deleting one would let a
                # newcomer lock a new file beside it. Runs were reaped by _exclusive.
                if entry.name in ("build.lock", "state.lock", "runs"):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            freed = before - footprint(self.path)
        self._log.info("cleared the cache in {} ({} bytes)", self.path, freed)
        return freed

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """Yield the published manifest with its files open for reading (an export).

        The files are opened under the state lock, so they are the very files the manifest
        describes even if the cache changes meanwhile (changes are renames, never rewrites).

        Raises:
            MissingFileError: nothing is cached.
            InvalidInputError: the cache is partial or legacy (no checked manifest).

        """
        with contextlib.ExitStack() as stack:
            with self.state_lock():
                status = self.status()
                manifest = self.manifest()
                if status is CacheStatus.COLD:
                    raise MissingFileError(
                        f"nothing is cached for {self.character!r} in {self.path}", path=self.path
                    )
                if manifest is None or status not in (CacheStatus.WARM, CacheStatus.PTI_ONLY):
                    raise InvalidInputError(
                        f"the cache of {self.character!r} is {status.value}: verify it, or let a"
                        " run adopt or rebuild it, before exporting it",
                        field="character",
                        value=self.character,
                    )
                files: dict[str, BinaryIO] = {}
                for name in manifest.files:
                    if problem := zip_problem(self.path / name, deep=False):
                        raise InvalidInputError(
                            f"the cache of {self.character!r} is damaged: {name} is {problem}",
                            field="character",
                            value=self.character,
                        )
                    files[name] = stack.enter_context((self.path / name).open("rb"))
            yield Snapshot(manifest, files)

    @contextlib.contextmanager
    def receive(self, fingerprint: Fingerprint) -> Iterator[Staging]:
        """Yield a private staging dir for cache files that arrive from elsewhere (an import).

        It counts as a live run until it is removed on the way out: nothing clears or reaps
        the cache under it, and a crash leaves a dead run that the next check-out reaps.
        """
        run_id = new_run_id("import")
        self._refuse_links()
        with self.state_lock():  # staging dirs appear under the state lock, as in checkout
            staging = Staging(self, run_id, fingerprint, CacheStatus.COLD, CacheStatus.COLD)
        try:
            yield staging
        finally:
            staging.discard()

    def install(self, staging: Staging, manifest: Manifest) -> CacheStatus:
        """Publish the complete cache in ``staging`` that ``manifest`` describes.

        What was published is set aside first (a sound cache, as a generation) or quarantined
        (a broken one); the files move in with ``os.replace`` and the manifest comes last, so a
        crash leaves a recoverable cache. Returns the status of the cache it replaced.

        Raises:
            InvalidInputError: a file is missing, of another size or not a complete archive.
            CacheBusyError: the cache is in use (a build or another live run).

        """
        for name, size in manifest.files.items():
            path = staging.path / name
            if _fs.size(path) != size or zip_problem(path, deep=False):
                raise InvalidInputError(
                    f"{name} in {staging.path} does not match its manifest", field="manifest"
                )
        if not manifest.has_pti or not set(manifest.files) <= set(CACHE_FILES):
            raise InvalidInputError(
                "a manifest must list the PTI group and only cache files", field="manifest"
            )
        with self.state_lock(), self._exclusive(own_run=staging.run_id):
            self._recover()
            replaced = self.status()
            if replaced in (CacheStatus.WARM, CacheStatus.PTI_ONLY):
                self._set_aside()
            elif replaced is not CacheStatus.COLD:
                self._quarantine("replaced")
            self._commit(manifest, staging.path, manifest.files)
        self._log.info("installed {} in {}", ", ".join(manifest.files), self.path)
        return replaced
