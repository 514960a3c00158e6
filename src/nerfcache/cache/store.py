"""CharacterCache: one character's published PTI and 3DMM results, and the runs that use them.

Layout of ``{cache_root}/{character}`` (the folder the original launcher used)::

    G_PTI.pt w_PTI.pt bg_PTI.pt   the PTI group, published together
    fitted_coeffs.pt              the 3DMM fit, valid only with the PTI group it was fitted on
    images/ audio.wav ...         the user's own files: never moved, never deleted
    .nerfcache/manifest.json      what is published, for which fingerprint (written last)
    .nerfcache/runs/<run id>/     one private staging dir per run, seeded with hard links
    .nerfcache/generations/<key>/ stale caches set aside, restored by rename
    .nerfcache/quarantine/<...>/  files that did not check out

Correctness comes from private staging dirs and atomic renames; the file locks only keep cold
builds single-flight (DESIGN.md section 3).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO, Literal

from filelock import FileLock, Timeout
from loguru import logger

from nerfcache import _fs
from nerfcache._locks import acquire, held, try_acquire
from nerfcache.cache.digests import Digests, digest_memo, file_sha256
from nerfcache.cache.layout import (
    CACHE_FILES,
    FIT_FILES,
    META_DIR,
    PENDING_MANIFEST,
    PTI_FILES,
    CacheStatus,
    Fingerprint,
    Manifest,
    byproducts,
    footprint,
    is_complete_zip,
    read_manifest,
    timestamp,
    zip_problem,
)
from nerfcache.cache.staging import RUNS_DIR, Staging, live_runs, reap_dead_runs
from nerfcache.characters import character_dir, find_test_image, resolve_model
from nerfcache.config import Settings
from nerfcache.errors import (
    ConfigurationError,
    InvalidInputError,
    MissingFileError,
    NerfCacheError,
)

__all__ = [
    "CacheInfo",
    "CharacterCache",
    "Finding",
    "FindingLevel",
    "Pruning",
    "Snapshot",
    "Verification",
    "list_caches",
    "prune",
]

# -- the cache -----------------------------------------------------------------------------


class CharacterCache:
    """The cache of one character: its status, its locks, and the staging dirs of its runs."""

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
        manifest = self.manifest()
        present = {name for name in CACHE_FILES if (self.path / name).is_file()}
        if manifest is None:
            return self._status_without_manifest(present)
        if (
            present != set(manifest.files)
            or not manifest.has_pti
            or any(_fs.size(self.path / name) != size for name, size in manifest.files.items())
        ):
            return CacheStatus.PARTIAL
        if fingerprint is not None and manifest.fingerprint != fingerprint:
            return CacheStatus.STALE
        return CacheStatus.WARM if manifest.has_fit else CacheStatus.PTI_ONLY

    def _status_without_manifest(self, present: set[str]) -> CacheStatus:
        if self.manifest_path.exists():  # unreadable: ours, but damaged
            return CacheStatus.PARTIAL
        if not present:
            return CacheStatus.COLD
        complete = present == set(CACHE_FILES)
        if complete and all(is_complete_zip(self.path / n) for n in CACHE_FILES):
            return CacheStatus.LEGACY
        return CacheStatus.PARTIAL

    # - locks -

    def state_lock(self) -> FileLock:
        """A short lock around every change to the published files and the manifest."""
        return _Lock(self._meta_dir() / "state.lock")

    def build_lock(self) -> FileLock:
        """A long lock held by the one run that builds this character's cache (single-flight)."""
        return _Lock(self._meta_dir() / "build.lock")

    # - runs -

    def checkout(self, fingerprint: Fingerprint, *, image: Path, network: Path) -> Staging:
        """Make the published cache fit ``fingerprint`` and give the run a seeded staging dir.

        Under the state lock: finish an interrupted publish, set a stale cache aside (or restore
        the one for this fingerprint), adopt a complete legacy cache, quarantine broken files,
        then hard-link what is published into a new private staging dir.
        """
        run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"
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
                    self._write_manifest(manifest.model_copy(update={"last_used_at": timestamp()}))
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
            if staging.status is not CacheStatus.WARM:
                first_seen = staging.status_before
                staging.discard()
                lock = self._wait_for_build_lock(cancel, on_wait)
                # Another run may have built it meanwhile: then this one runs warm.
                staging = self.checkout(fingerprint, image=image, network=network)
                staging.status_before = first_seen  # what the caller found, before waiting
                if staging.status is CacheStatus.WARM:
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
        self, cancel: threading.Event | None, on_wait: Callable[[], None] | None
    ) -> FileLock:
        lock = self.build_lock()

        def waiting() -> None:
            self._log.info("another run is building this cache: waiting for it")
            if on_wait is not None:
                on_wait()

        acquire(lock, what=f"the cache of {self.character!r}", cancel=cancel, on_wait=waiting)
        return lock

    def _prepare(
        self, fingerprint: Fingerprint, status: CacheStatus, *, image: Path, network: Path
    ) -> CacheStatus:
        if status is CacheStatus.STALE:
            self._set_aside(prune=False)  # after the restore: the one wanted may be the oldest
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
        if (self.meta / "generations").is_dir():
            _fs.keep_newest(self.meta / "generations", self.keep_generations)
        return self.status(fingerprint)

    def publish(self, staging: Staging, *, image: Path, network: Path) -> tuple[str, ...]:
        """Publish what ``staging`` built that checks out; return the names published.

        A complete, valid PTI group is published even if the run failed later; the 3DMM fit only
        with the PTI group it was fitted on. The manifest is written last, through a pending
        manifest, so a crash at any point leaves a cache that is either complete or recoverable.
        """
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
        digests = Digests(digest_memo(self.settings))
        info = self._info(digests)
        digests.save()
        return info

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

        """
        network = resolve_model(self.settings, model_name) if model_name else None
        if not self.path.is_dir():
            return Verification(self.character, CacheStatus.COLD, (), None)
        if fix:
            self._refuse_links()
        with self.state_lock() if fix else contextlib.nullcontext():
            if fix:
                self._recover()
            manifest = self.manifest()
            files = self._check_files(manifest)
            fit = self._check_fingerprint(manifest, network) if manifest is not None else []
            status = self.status()
            action: str | None = None
            if any(f.level == "error" for f in files):
                status = CacheStatus.PARTIAL
                if fix:
                    self._quarantine("verify")
                    action = "quarantined"
            elif any(f.level == "error" for f in fit):
                status = CacheStatus.STALE
                if fix:
                    self._set_aside()
                    action = "set aside"
        return Verification(self.character, status, (*files, *fit), action)

    def clear(self) -> int:
        """Delete this character's cache; return the bytes freed.

        Removes the four cache files, the byproduct PNGs the original launcher left in the
        folder (``BYPRODUCTS``) and everything in ``.nerfcache/`` but its
        lock files: the manifest, set-aside generations, quarantine, dead runs' staging dirs.
        Never ``images/``, ``audio.wav`` or any other file of the user.

        Raises:
            NerfCacheError: the cache is in use (a build or a live run); nothing was removed.

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
        run_id = f"import-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"
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
            NerfCacheError: the cache is in use (a build or another live run).

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

    def _info(self, digests: Digests) -> CacheInfo:
        manifest = self.manifest()
        status = self.status()
        usable = status in (CacheStatus.WARM, CacheStatus.PTI_ONLY)
        if usable and manifest is not None and self._outdated(manifest, digests):
            status = CacheStatus.STALE
        files = {n: s for n in CACHE_FILES if (s := _fs.size(self.path / n)) is not None}
        last_used = manifest.last_used_at if manifest else _newest_mtime(self.path, files)
        return CacheInfo(
            character=self.character,
            path=self.path,
            status=status,
            files=files,
            size_bytes=sum(files.values()),
            total_bytes=footprint(self.path),
            built_at=manifest.built_at if manifest else None,
            last_used_at=last_used,
            fingerprint=manifest.fingerprint if manifest else None,
            image=manifest.image if manifest else None,
            network=manifest.network if manifest else None,
            generations=_subdirs(self.meta / "generations"),
            quarantined=len(_subdirs(self.meta / "quarantine")),
            live_runs=live_runs(self.meta / RUNS_DIR),
            building=held(self.meta / "build.lock"),
        )

    def _outdated(self, manifest: Manifest, digests: Digests) -> bool:
        """Whether the portrait or trunc changed since the build (the network is per call)."""
        if manifest.fingerprint.trunc != self.settings.trunc:
            return True
        try:
            image = find_test_image(self.settings, self.character)
            return digests.of(image) != manifest.fingerprint.image_sha256
        except (NerfCacheError, OSError):
            return False  # no portrait to compare with: the next run will say

    def _check_files(self, manifest: Manifest | None) -> list[Finding]:
        present = [name for name in CACHE_FILES if (self.path / name).is_file()]
        findings: list[Finding] = []
        if self._pending_path.exists():
            findings.append(
                Finding(
                    "manifest",
                    "warning",
                    "an interrupted publish (manifest.pending.json): the next run completes or"
                    " drops it",
                )
            )
        expected: dict[str, int | None] = dict.fromkeys(present)
        if manifest is not None:
            expected = dict(manifest.files)
            if not manifest.has_pti:
                findings.append(Finding("manifest", "error", "it lists no complete PTI group"))
            findings += [
                Finding(name, "error", "not listed in the manifest")
                for name in present
                if name not in manifest.files
            ]
        elif self.manifest_path.exists():
            findings.append(Finding("manifest", "error", "manifest.json is unreadable"))
        elif present:
            missing = [name for name in CACHE_FILES if name not in present]
            findings.append(
                Finding(
                    "manifest",
                    "error",
                    f"no manifest and an incomplete set of files (no {', '.join(missing)}):"
                    " left by a crash",
                )
                if missing
                else Finding(
                    "manifest",
                    "warning",
                    "no manifest: made by the original launcher; the next run adopts it without"
                    " being able to check which portrait it was built from",
                )
            )
        for name, size in expected.items():
            actual = _fs.size(self.path / name)
            if actual is None:
                findings.append(Finding(name, "error", "missing"))
            elif size is not None and actual != size:
                findings.append(
                    Finding(name, "error", f"{actual} bytes where the manifest says {size}")
                )
            elif problem := zip_problem(self.path / name):
                findings.append(Finding(name, "error", problem))
            else:
                findings.append(Finding(name, "ok", f"a complete archive of {actual} bytes"))
        return findings

    def _check_fingerprint(self, manifest: Manifest, network: Path | None) -> list[Finding]:
        built = manifest.fingerprint
        memo = digest_memo(self.settings)
        findings = [
            Finding("trunc", "ok", f"{built.trunc:g}")
            if built.trunc == self.settings.trunc
            else Finding(
                "trunc",
                "error",
                f"built with trunc {built.trunc:g}; the settings say {self.settings.trunc:g}",
            )
        ]
        try:
            image = find_test_image(self.settings, self.character)
        except NerfCacheError as error:
            findings.append(Finding("portrait", "warning", f"not checked: {error}"))
        else:
            if file_sha256(image, memo=memo) == built.image_sha256:
                findings.append(Finding("portrait", "ok", f"built from {image}"))
            else:
                findings.append(
                    Finding(
                        "portrait",
                        "error",
                        f"built from another portrait than {image} (from {manifest.image})",
                    )
                )
        if network is None and Path(manifest.network).is_file():
            network = Path(manifest.network)
        if network is None:
            findings.append(
                Finding(
                    "network",
                    "warning",
                    f"not checked: {manifest.network} is not here; name a model to check it",
                )
            )
        elif file_sha256(network, memo=memo) == built.network_sha256:
            findings.append(Finding("network", "ok", f"built with {network.name}"))
        else:
            findings.append(
                Finding("network", "error", f"built with another network than {network}")
            )
        return findings

    @contextlib.contextmanager
    def _exclusive(self, *, own_run: str | None = None) -> Iterator[None]:
        """Hold the build lock and make sure no other run is live (call with the state lock).

        New runs cannot start meanwhile: their staging dirs are made under the state lock.
        """
        building = self.build_lock()
        if not try_acquire(building):
            raise NerfCacheError(
                f"the cache of {self.character!r} is in use: a run is building it; try again"
                " when it is done"
            )
        try:
            reap_dead_runs(self.meta / RUNS_DIR)
            if live := live_runs(self.meta / RUNS_DIR, exclude=own_run):
                raise NerfCacheError(
                    f"the cache of {self.character!r} is in use by {live} running"
                    " generation(s); try again when they are done"
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

    # - internals (all called with the state lock held) -

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
            return super().acquire(*args, **kwargs)
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


# -- management ----------------------------------------------------------------------------

FindingLevel = Literal["ok", "warning", "error"]


@dataclasses.dataclass(frozen=True)
class CacheInfo:
    """One character's cache, as a listing shows it."""

    character: str
    path: Path
    status: CacheStatus
    """cold, warm, pti-only, partial or legacy; stale if the portrait or trunc changed since."""
    files: dict[str, int]
    """Cache files present -> size in bytes."""
    size_bytes: int
    """The published cache files."""
    total_bytes: int
    """Everything ``clear`` would free: cache files, byproducts and ``.nerfcache/``."""
    built_at: datetime | None
    last_used_at: datetime | None
    """From the manifest; without one, the newest change of a cache file."""
    fingerprint: Fingerprint | None
    image: str | None
    """The portrait it was built from, as the manifest names it."""
    network: str | None
    generations: tuple[str, ...]
    """Keys of the caches for other portraits, networks or trunc set aside."""
    quarantined: int
    live_runs: int
    building: bool

    @property
    def in_use(self) -> bool:
        """Whether a build or a live run holds the cache (prune and clear leave it alone)."""
        return self.building or self.live_runs > 0


@dataclasses.dataclass(frozen=True)
class Finding:
    """One check of ``CharacterCache.verify``: a file, the manifest, the portrait, ..."""

    subject: str
    level: FindingLevel
    message: str


@dataclasses.dataclass(frozen=True)
class Verification:
    """What ``CharacterCache.verify`` found, and what ``fix`` did about it."""

    character: str
    status: CacheStatus
    findings: tuple[Finding, ...]
    action: str | None
    """``"quarantined"``, ``"set aside"`` or None."""

    @property
    def ok(self) -> bool:
        """Whether no check failed (warnings are fine)."""
        return all(finding.level != "error" for finding in self.findings)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The published manifest and its files, open for reading."""

    manifest: Manifest
    files: dict[str, BinaryIO]


@dataclasses.dataclass(frozen=True)
class Pruning:
    """What ``prune`` removed or, in a dry run, would remove."""

    removed: tuple[CacheInfo, ...]
    """Least recently used first."""
    skipped: tuple[CacheInfo, ...]
    """Chosen, but in use: left alone."""
    total_bytes: int
    """What every cache took before."""
    freed_bytes: int
    dry_run: bool


def list_caches(settings: Settings) -> list[CacheInfo]:
    """Describe every character folder under ``cache_root``, sorted by name.

    Stat calls and small reads (manifests, the hash memo): no cache file is read, so 1,000
    characters take well under a second. A portrait missing from the hash memo is hashed
    (portraits are small) and remembered.
    """
    root = settings.cache_root
    if not root.is_dir():
        return []
    digests = Digests(digest_memo(settings))
    caches = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir():
            continue
        try:
            cache = CharacterCache(settings, entry.name)
        except InvalidInputError:
            continue  # not a character: nerfcache's own .nerfcache, or a link out of cache_root
        caches.append(cache._info(digests))  # one memo read for the whole listing
    digests.save()
    return caches


def prune(
    settings: Settings,
    *,
    max_bytes: int | None = None,
    older_than: timedelta | None = None,
    keep: int | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
) -> Pruning:
    """Remove whole caches, least recently used first, as ``CharacterCache.clear`` does.

    A cache goes if it was last used longer than ``older_than`` ago, or while all caches
    together take more than ``max_bytes``; the ``keep`` most recently used always stay (given
    alone, every other cache goes). A cache in use is never touched, nor any user file.

    Raises:
        InvalidInputError: none of ``max_bytes``, ``older_than`` and ``keep`` is given, or one
            is negative.

    """
    if max_bytes is None and older_than is None and keep is None:
        raise InvalidInputError(
            "say what to prune: max_bytes, older_than or keep", field="prune", value=None
        )
    for name, value in (("max_bytes", max_bytes), ("keep", keep)):
        if value is not None and value < 0:
            raise InvalidInputError(f"{name} must not be negative", field=name, value=value)
    if older_than is not None and older_than < timedelta(0):
        raise InvalidInputError("older_than must not be negative", field="older_than")
    caches = [info for info in list_caches(settings) if info.total_bytes > 0]
    plan = _choose(
        caches, max_bytes=max_bytes, older_than=older_than, keep=keep or 0, now=now or timestamp()
    )
    if dry_run:
        return plan
    removed: list[CacheInfo] = []
    skipped = list(plan.skipped)
    freed = 0
    for info in plan.removed:
        try:
            freed += CharacterCache(settings, info.character).clear()
        except NerfCacheError:
            skipped.append(info)  # a run started since the listing
        else:
            removed.append(info)
    return dataclasses.replace(
        plan, removed=tuple(removed), skipped=tuple(skipped), freed_bytes=freed, dry_run=False
    )


def _choose(
    caches: list[CacheInfo],
    *,
    max_bytes: int | None,
    older_than: timedelta | None,
    keep: int,
    now: datetime,
) -> Pruning:
    """Decide what ``prune`` removes (no I/O)."""
    order = sorted(caches, key=_last_used)
    kept = {info.character for info in order[max(len(order) - keep, 0) :]} if keep else set()
    total = remaining = sum(info.total_bytes for info in caches)
    removed: list[CacheInfo] = []
    skipped: list[CacheInfo] = []
    for info in order:
        if info.character in kept:
            continue
        old = older_than is not None and _last_used(info) < now - older_than
        over = max_bytes is not None and remaining > max_bytes
        if not (old or over or (older_than is None and max_bytes is None)):
            continue
        if info.in_use:
            skipped.append(info)
        else:
            removed.append(info)
            remaining -= info.total_bytes
    return Pruning(tuple(removed), tuple(skipped), total, total - remaining, dry_run=True)


def _last_used(info: CacheInfo) -> datetime:
    return info.last_used_at or info.built_at or datetime.min.replace(tzinfo=timezone.utc)


def _subdirs(folder: Path) -> tuple[str, ...]:
    if not folder.is_dir():
        return ()
    return tuple(sorted(entry.name for entry in folder.iterdir() if entry.is_dir()))


def _newest_mtime(folder: Path, names: Iterable[str]) -> datetime | None:
    times = []
    for name in names:
        with contextlib.suppress(OSError):
            times.append((folder / name).stat().st_mtime)
    return datetime.fromtimestamp(max(times), timezone.utc) if times else None


# -- small file helpers --------------------------------------------------------------------
