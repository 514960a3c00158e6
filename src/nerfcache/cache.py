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
import enum
import hashlib
import json
import os
import secrets
import shutil
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout
from loguru import logger
from pydantic import BaseModel, ConfigDict, ValidationError

from nerfcache.characters import character_dir
from nerfcache.config import Settings
from nerfcache.errors import GenerationCancelled

__all__ = [
    "CACHE_FILES",
    "FIT_FILES",
    "PTI_FILES",
    "CacheStatus",
    "CharacterCache",
    "Fingerprint",
    "Manifest",
    "Staging",
    "file_sha256",
]

CACHE_FORMAT = 1
PTI_FILES = ("G_PTI.pt", "w_PTI.pt", "bg_PTI.pt")
FIT_FILES = ("fitted_coeffs.pt",)
CACHE_FILES = PTI_FILES + FIT_FILES
META_DIR = ".nerfcache"
LOCK_POLL_S = 0.2


class CacheStatus(str, enum.Enum):
    """What a character's cache holds, as seen by a run with a given fingerprint."""

    COLD = "cold"
    """Nothing cached: the run does PTI and 3DMM fitting."""
    PTI_ONLY = "pti-only"
    """PTI is cached (a run failed after it); the run redoes only the 3DMM fit."""
    WARM = "warm"
    """PTI and 3DMM are cached for this image, network and trunc: the run only renders."""
    STALE = "stale"
    """A cache for another image, network or trunc: set aside, never used."""
    LEGACY = "legacy"
    """A complete cache from the original launcher, without a manifest: adopted with a warning."""
    PARTIAL = "partial"
    """Cache files that do not check out (a crash, a truncated file): quarantined."""


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """What a cache was built from: the portrait's bytes, the network's bytes and ``trunc``."""

    image_sha256: str
    network_sha256: str
    trunc: float
    format: int = CACHE_FORMAT

    @classmethod
    def of(
        cls, image: Path, network: Path, trunc: float, *, memo: Path | None = None
    ) -> Fingerprint:
        """Fingerprint ``image`` and ``network``; hashes are remembered by file version."""
        return cls(file_sha256(image, memo=memo), file_sha256(network, memo=memo), trunc)

    @property
    def key(self) -> str:
        """A short stable name for this fingerprint (names its set-aside generation)."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class Manifest(BaseModel):
    """What is published in a character's cache folder, and what it was built from."""

    model_config = ConfigDict(frozen=True)

    format: int = CACHE_FORMAT
    fingerprint: Fingerprint
    files: dict[str, int]
    """Published file name -> size in bytes."""
    image: str
    network: str
    built_at: datetime
    last_used_at: datetime

    @property
    def has_pti(self) -> bool:
        """Whether the PTI group is published."""
        return all(name in self.files for name in PTI_FILES)

    @property
    def has_fit(self) -> bool:
        """Whether the 3DMM fit is published (it always comes with its PTI group)."""
        return self.has_pti and all(name in self.files for name in FIT_FILES)


# -- hashing -------------------------------------------------------------------------------

_digests: dict[tuple[str, int, int, int], str] = {}
_digests_lock = threading.Lock()


def file_sha256(path: Path, *, memo: Path | None = None) -> str:
    """Return the sha256 of ``path``'s bytes, computed once per file version.

    A version is (path, size, mtime, inode); results are remembered in this process and, when
    ``memo`` names a JSON file, across processes, so a GB network pickle is read once.
    """
    stat = path.stat()
    real = str(path.resolve())
    key = (real, stat.st_size, stat.st_mtime_ns, stat.st_ino)
    with _digests_lock:
        if key in _digests:
            return _digests[key]
    version = list(key[1:])
    stored = _read_json(memo) if memo else None
    record = stored.get(real) if isinstance(stored, dict) else None
    if isinstance(record, dict) and record.get("version") == version:
        digest = str(record["sha256"])
    else:
        digest = _sha256(path)
        if memo:
            stored = stored if isinstance(stored, dict) else {}
            stored[real] = {"version": version, "sha256": digest}
            # Concurrent writers may drop each other's entries: that costs a re-hash, no more.
            _write_json(memo, stored)
    with _digests_lock:
        _digests[key] = digest
    return digest


# -- the cache -----------------------------------------------------------------------------


class CharacterCache:
    """The cache of one character: its status, its locks, and the staging dirs of its runs."""

    def __init__(self, settings: Settings, character: str) -> None:
        self.character = character
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
        return _read_manifest(self.manifest_path)

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
            or any(_size(self.path / name) != size for name, size in manifest.files.items())
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
        if complete and all(_is_complete_zip(self.path / n) for n in CACHE_FILES):
            return CacheStatus.LEGACY
        return CacheStatus.PARTIAL

    # - locks -

    def state_lock(self) -> FileLock:
        """A short lock around every change to the published files and the manifest."""
        return FileLock(self._meta_dir() / "state.lock")

    def build_lock(self) -> FileLock:
        """A long lock held by the one run that builds this character's cache (single-flight)."""
        return FileLock(self._meta_dir() / "build.lock")

    # - runs -

    def checkout(self, fingerprint: Fingerprint, *, image: Path, network: Path) -> Staging:
        """Make the published cache fit ``fingerprint`` and give the run a seeded staging dir.

        Under the state lock: finish an interrupted publish, set a stale cache aside (or restore
        the one for this fingerprint), adopt a complete legacy cache, quarantine broken files,
        then hard-link what is published into a new private staging dir.
        """
        run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"
        with self.state_lock():
            self._reap_dead_runs()
            self._recover()
            before = self.status(fingerprint)
            status = self._prepare(fingerprint, before, image=image, network=network)
            staging = Staging(self, run_id, fingerprint, before, status)
            try:
                manifest = self.manifest()
                if manifest is not None:
                    for name in manifest.files:
                        staging.seed(self.path / name)
                    self._write_manifest(manifest.model_copy(update={"last_used_at": _now()}))
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
        lock: FileLock | None = None
        first_seen: CacheStatus | None = None
        try:
            while True:
                staging = self.checkout(fingerprint, image=image, network=network)
                first_seen = first_seen or staging.status_before
                staging.status_before = first_seen  # what the caller found, before any waiting
                if staging.status is CacheStatus.WARM or lock is not None:
                    break
                staging.discard()
                building = self.build_lock()
                if not _try_acquire(building):
                    self._log.info("another run is building this cache: waiting for it")
                    if on_wait is not None:
                        on_wait()
                    while not _try_acquire(building, LOCK_POLL_S):
                        if cancel is not None and cancel.is_set():
                            raise GenerationCancelled(
                                f"cancelled while waiting for the cache of {self.character!r}"
                            )
                lock = building
            if lock is not None and staging.status is CacheStatus.WARM:
                lock.release()  # another run built it while this one waited
                lock = None
            try:
                yield staging
            finally:
                staging.discard()
        finally:
            if lock is not None:
                lock.release()

    def _prepare(
        self, fingerprint: Fingerprint, status: CacheStatus, *, image: Path, network: Path
    ) -> CacheStatus:
        if status is CacheStatus.STALE:
            self._set_aside()
        elif status is CacheStatus.PARTIAL:
            self._quarantine("partial")
        elif status is CacheStatus.LEGACY:
            self._log.warning(
                "adopting a cache made by the original launcher in {}: it cannot be checked"
                " against the image it was built from; clear it if the portrait changed",
                self.path,
            )
            files = {name: _size(self.path / name) or 0 for name in CACHE_FILES}
            self._write_manifest(self._new_manifest(fingerprint, files, image, network))
        if self.status(fingerprint) is CacheStatus.COLD:
            self._restore(fingerprint)
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
            files.update({name: _size(staging.path / name) or 0 for name in new})
            pending = self._new_manifest(fingerprint, files, image, network, base=manifest)
            _write_json(self._pending_path, pending.model_dump(mode="json"))
            for name in new:
                os.replace(staging.path / name, self.path / name)
            os.replace(self._pending_path, self.manifest_path)
        self._log.info("published {} to {}", ", ".join(new), self.path)
        return tuple(new)

    # - internals (all called with the state lock held) -

    @property
    def _pending_path(self) -> Path:
        return self.meta / "manifest.pending.json"

    def _meta_dir(self) -> Path:
        self.meta.mkdir(parents=True, exist_ok=True)
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
        now = _now()
        return Manifest(
            fingerprint=fingerprint,
            files=files,
            image=str(image),
            network=str(network),
            built_at=base.built_at if base else now,
            last_used_at=now,
        )

    def _write_manifest(self, manifest: Manifest) -> None:
        _write_json(self.manifest_path, manifest.model_dump(mode="json"))

    def _recover(self) -> None:
        """Finish a publish that was interrupted after its pending manifest was written."""
        pending = _read_manifest(self._pending_path)
        if pending is None:
            self._pending_path.unlink(missing_ok=True)
            return
        if all(_size(self.path / name) == size for name, size in pending.files.items()):
            os.replace(self._pending_path, self.manifest_path)
            self._log.warning("completed an interrupted publish in {}", self.path)
        else:
            self._pending_path.unlink()

    def _set_aside(self) -> None:
        """Move the published cache to ``generations/<key>``: files first, manifest last."""
        manifest = self.manifest()
        if manifest is None:
            return
        target = self.meta / "generations" / manifest.fingerprint.key
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for name in manifest.files:
            os.replace(self.path / name, target / name)
        os.replace(self.manifest_path, target / "manifest.json")
        self._log.info("set aside the cache of another image, network or trunc as {}", target.name)
        _keep_newest(target.parent, self.keep_generations)

    def _restore(self, fingerprint: Fingerprint) -> None:
        """Bring back a set-aside generation built for ``fingerprint``, if one is complete."""
        source = self.meta / "generations" / fingerprint.key
        manifest = _read_manifest(source / "manifest.json")
        if manifest is None or manifest.fingerprint != fingerprint:
            return
        if any(_size(source / name) != size for name, size in manifest.files.items()):
            return
        pending = manifest.model_copy(update={"last_used_at": _now()})
        _write_json(self._pending_path, pending.model_dump(mode="json"))
        for name in manifest.files:
            os.replace(source / name, self.path / name)
        os.replace(self._pending_path, self.manifest_path)
        shutil.rmtree(source)
        self._log.info("restored the set-aside cache {}", fingerprint.key)

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
        _keep_newest(target.parent, max(self.keep_generations, 1))

    def _reap_dead_runs(self) -> None:
        """Remove staging dirs whose run is gone (its lock is free): a launcher crashed."""
        runs = self.meta / "runs"
        if not runs.is_dir():
            return
        for lock_path in runs.glob("*.lock"):
            lock = FileLock(lock_path)
            if not _try_acquire(lock):
                continue  # a live run
            try:
                shutil.rmtree(lock_path.with_suffix(""), ignore_errors=True)
                lock_path.unlink(missing_ok=True)
            finally:
                lock.release()
        for stray in runs.iterdir():
            if stray.is_dir() and not stray.with_suffix(".lock").exists():
                shutil.rmtree(stray, ignore_errors=True)


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
        self.path = cache.meta / "runs" / run_id
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Held for the run's life: a free lock tells _reap_dead_runs that the run is gone.
        self._lock = FileLock(self.path.with_suffix(".lock"))
        self._lock.acquire(timeout=0)
        self.path.mkdir()
        self._seeded: dict[str, tuple[int, int, int]] = {}
        self._sources: dict[str, tuple[int, int, int]] = {}

    def seed(self, source: Path) -> None:
        """Put ``source`` into the staging dir: a hard link, or a copy where links fail."""
        target = self.path / source.name
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
        self._seeded[source.name] = _identity(target)
        self._sources[source.name] = _identity(source)

    def unchanged_copy_of(self, published: Path) -> bool:
        """Whether the run's file of that name is still the one seeded from ``published``."""
        name = published.name
        if name not in self._seeded or self.changed(name):
            return False
        try:
            return _identity(published) == self._sources[name]
        except OSError:
            return False

    def changed(self, name: str) -> bool:
        """Whether the run wrote ``name`` anew (it differs from what was seeded)."""
        path = self.path / name
        return path.is_file() and _identity(path) != self._seeded.get(name)

    def wrote_through_links(self) -> bool:
        """Whether the run rewrote a seeded file in place (changing the published one too)."""
        return any(
            self.changed(name) and _same_file(self.path / name, self.cache.path / name)
            for name in self._seeded
        )

    def built(self, name: str) -> bool:
        """Whether the run wrote ``name`` anew and it is a complete archive, as torch.save makes.

        torch.save writes straight to its final name, so a killed run leaves a truncated file:
        a plain zip check catches it without torch.
        """
        return self.changed(name) and _is_complete_zip(self.path / name)

    def discard(self) -> None:
        """Remove the staging dir (the published cache is untouched) and end the run's lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        self._lock.release()
        self.path.with_suffix(".lock").unlink(missing_ok=True)


# -- small file helpers --------------------------------------------------------------------


def _try_acquire(lock: FileLock, timeout: float = 0) -> bool:
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        return False
    return True


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _identity(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _is_complete_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_manifest(path: Path) -> Manifest | None:
    data = _read_json(path)
    try:
        return Manifest.model_validate(data) if data is not None else None
    except ValidationError:
        return None


def _write_json(path: Path, data: object) -> None:
    """Write ``data`` to ``path`` atomically: a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as file:
            json.dump(data, file, ensure_ascii=False, indent=1)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _keep_newest(folder: Path, keep: int) -> None:
    entries = sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)
