"""Looking at one cache without changing it: what it holds (``info``), whether it checks out.

``CharacterCache.info``, ``list_caches`` and ``CharacterCache.verify`` (which also fixes what
fails) call these. None takes a lock: reading cache files and hashing take seconds, and warm runs
of the character must not wait for them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from nerfcache import _fs
from nerfcache._locks import held
from nerfcache.cache.digests import digest_memo, file_sha256
from nerfcache.cache.layout import (
    CACHE_FILES,
    META_DIR,
    PENDING_MANIFEST,
    CacheStatus,
    Fingerprint,
    Manifest,
    cache_status,
    inventory,
    read_manifest,
    zip_problem,
)
from nerfcache.cache.staging import RUNS_DIR, live_runs
from nerfcache.characters import find_test_image
from nerfcache.config import Settings
from nerfcache.errors import NerfCacheError

if TYPE_CHECKING:
    from nerfcache.cache.store import CharacterCache

__all__ = [
    "CacheInfo",
    "Examination",
    "Finding",
    "FindingLevel",
    "Verification",
    "check_files",
    "check_fingerprint",
    "describe",
    "examine",
]

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


def describe(settings: Settings, character: str, path: Path) -> CacheInfo:
    """Describe the cache of ``character`` in ``path`` as ``list_caches`` does.

    Stat calls, the manifest and the hash memo: no cache file is read, and a portrait is hashed
    only if the memo does not have it.
    """
    meta = path / META_DIR
    manifest = read_manifest(meta / "manifest.json")
    stock = inventory(path)
    status = cache_status(path, manifest, stock.files)
    usable = status in (CacheStatus.WARM, CacheStatus.PTI_ONLY)
    if usable and manifest is not None and _outdated(settings, character, path, manifest):
        status = CacheStatus.STALE
    return CacheInfo(
        character=character,
        path=path,
        status=status,
        files=stock.files,
        size_bytes=sum(stock.files.values()),
        total_bytes=stock.total_bytes,
        built_at=manifest.built_at if manifest else None,
        last_used_at=manifest.last_used_at if manifest else _newest_mtime(path, stock.files),
        fingerprint=manifest.fingerprint if manifest else None,
        image=manifest.image if manifest else None,
        network=manifest.network if manifest else None,
        # Each look below costs nothing where the inventory found nothing to look at.
        generations=_subdirs(meta / "generations") if "generations" in stock.meta else (),
        quarantined=len(_subdirs(meta / "quarantine")) if "quarantine" in stock.meta else 0,
        live_runs=live_runs(meta / RUNS_DIR) if RUNS_DIR in stock.meta else 0,
        building="build.lock" in stock.meta and held(meta / "build.lock"),
    )


def _outdated(settings: Settings, character: str, path: Path, manifest: Manifest) -> bool:
    """Whether the portrait or trunc changed since the build (the network is per call)."""
    if manifest.fingerprint.trunc != settings.trunc:
        return True
    try:
        image = find_test_image(settings, character, folder=path)
        digest = file_sha256(image, memo=digest_memo(settings))
    except (NerfCacheError, OSError):
        return False  # no portrait to compare with: the next run will say
    return digest != manifest.fingerprint.image_sha256


@dataclasses.dataclass(frozen=True)
class Examination:
    """What ``examine`` found, and the versions of what it read.

    ``CharacterCache.verify`` fixes a cache on its examination only while ``current``: under the
    state lock, it sees that nothing it read has changed since.
    """

    verification: Verification
    cache: CharacterCache
    network: Path | None
    read: tuple[object, ...]

    def current(self) -> bool:
        """Whether the files examined are still the versions read (a few ``stat`` calls)."""
        return _versions(self.cache, self.network) == self.read


def examine(cache: CharacterCache, network: Path | None) -> Examination:
    """Run ``verify``'s checks: read every cache file, hash the portrait and ``network``.

    No lock is taken, so runs of the character go on meanwhile; the versions of what is read
    are taken first, so that any change during the reading shows in ``Examination.current``.
    """
    read = _versions(cache, network)
    manifest = cache.manifest()
    files = check_files(cache, manifest)
    fit = check_fingerprint(cache, manifest, network) if manifest is not None else []
    status = cache.status()
    if any(f.level == "error" for f in files):
        status = CacheStatus.PARTIAL
    elif any(f.level == "error" for f in fit):
        status = CacheStatus.STALE
    verification = Verification(cache.character, status, (*files, *fit), None)
    return Examination(verification, cache, network, read)


def _versions(cache: CharacterCache, network: Path | None) -> tuple[object, ...]:
    """What ``examine`` reads, by version.

    What the manifest says (but when the cache was last used, which every run may change),
    and the identity of the pending manifest, the portrait, the network and each cache file.
    """
    manifest = cache.manifest()
    if manifest is None:
        said: object = _version(cache.manifest_path)  # none, or an unreadable one
    else:
        said = manifest.model_dump(exclude={"last_used_at"})
        if network is None and Path(manifest.network).is_file():
            network = Path(manifest.network)
    try:
        image: Path | None = find_test_image(cache.settings, cache.character, folder=cache.path)
    except NerfCacheError:
        image = None
    paths = [cache.meta / PENDING_MANIFEST, image, network]
    paths += [cache.path / name for name in CACHE_FILES]
    return (said, *(_version(path) if path is not None else None for path in paths))


def _version(path: Path) -> tuple[str, int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)


def check_files(cache: CharacterCache, manifest: Manifest | None) -> list[Finding]:
    """Check each cache file against ``manifest`` and as a zip archive (every member's CRC)."""
    present = [name for name in CACHE_FILES if (cache.path / name).is_file()]
    findings: list[Finding] = []
    if (cache.meta / PENDING_MANIFEST).exists():
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
    elif cache.manifest_path.exists():
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
        actual = _fs.size(cache.path / name)
        if actual is None:
            findings.append(Finding(name, "error", "missing"))
        elif size is not None and actual != size:
            findings.append(
                Finding(name, "error", f"{actual} bytes where the manifest says {size}")
            )
        elif problem := zip_problem(cache.path / name):
            findings.append(Finding(name, "error", problem))
        else:
            findings.append(Finding(name, "ok", f"a complete archive of {actual} bytes"))
    return findings


def check_fingerprint(
    cache: CharacterCache, manifest: Manifest, network: Path | None
) -> list[Finding]:
    """Check what ``manifest`` was built from against the portrait, ``network`` and trunc."""
    built = manifest.fingerprint
    memo = digest_memo(cache.settings)
    findings = [
        Finding("trunc", "ok", f"{built.trunc:g}")
        if built.trunc == cache.settings.trunc
        else Finding(
            "trunc",
            "error",
            f"built with trunc {built.trunc:g}; the settings say {cache.settings.trunc:g}",
        )
    ]
    try:
        image = find_test_image(cache.settings, cache.character)
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
        findings.append(Finding("network", "error", f"built with another network than {network}"))
    return findings


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
