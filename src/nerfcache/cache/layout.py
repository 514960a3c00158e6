"""What a character's cache folder holds: the file names and groups, the manifest, their checks.

Pure decisions and reads: nothing here changes a file.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
import stat
import zipfile
import zlib
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from nerfcache.cache.digests import file_sha256
from nerfcache.characters import is_byproduct

__all__ = [
    "CACHE_FILES",
    "CACHE_FORMAT",
    "FIT_FILES",
    "META_DIR",
    "PENDING_MANIFEST",
    "PTI_FILES",
    "CacheStatus",
    "Fingerprint",
    "Inventory",
    "Manifest",
    "byproducts",
    "cache_files",
    "cache_status",
    "footprint",
    "inventory",
    "is_complete_zip",
    "read_manifest",
    "timestamp",
    "zip_problem",
]

CACHE_FORMAT = 1
PTI_FILES = ("G_PTI.pt", "w_PTI.pt", "bg_PTI.pt")
FIT_FILES = ("fitted_coeffs.pt",)
CACHE_FILES = PTI_FILES + FIT_FILES
META_DIR = ".nerfcache"
PENDING_MANIFEST = "manifest.pending.json"
"""In ``META_DIR`` while a publish moves files in; renamed to ``manifest.json`` at its end."""
_MANIFEST_READ = 1 << 16


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


def read_manifest(path: Path) -> Manifest | None:
    """The manifest in ``path``, or None if there is none or it is unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # three calls: a listing reads thousands
        try:
            data = os.read(fd, _MANIFEST_READ)
            while len(data) % _MANIFEST_READ == 0 and (more := os.read(fd, _MANIFEST_READ)):
                data += more  # a short read of a file is its end; a manifest takes one
        finally:
            os.close(fd)
        return Manifest.model_validate_json(data)
    except (OSError, ValidationError):
        return None


def cache_files(folder: Path) -> dict[str, int]:
    """The cache files in ``folder`` (regular files, links followed): name -> size in bytes."""
    files = {}
    for name in CACHE_FILES:
        try:
            found = (folder / name).stat()
        except OSError:
            continue
        if stat.S_ISREG(found.st_mode):
            files[name] = found.st_size
    return files


def cache_status(
    folder: Path,
    manifest: Manifest | None,
    files: Mapping[str, int],
    fingerprint: Fingerprint | None = None,
) -> CacheStatus:
    """Classify the cache in ``folder`` from its manifest and its ``cache_files``.

    With ``fingerprint``, a cache for another one is stale. No file is read but, without a
    manifest, the zip directories of a complete set of cache files (a legacy cache).
    """
    if manifest is None:
        return _status_without_manifest(folder, files)
    if dict(files) != manifest.files or not manifest.has_pti:
        return CacheStatus.PARTIAL
    if fingerprint is not None and manifest.fingerprint != fingerprint:
        return CacheStatus.STALE
    return CacheStatus.WARM if manifest.has_fit else CacheStatus.PTI_ONLY


def _status_without_manifest(folder: Path, files: Mapping[str, int]) -> CacheStatus:
    if (folder / META_DIR / "manifest.json").exists():  # unreadable: ours, but damaged
        return CacheStatus.PARTIAL
    if not files:
        return CacheStatus.COLD
    complete = set(files) == set(CACHE_FILES)
    if complete and all(is_complete_zip(folder / name) for name in CACHE_FILES):
        return CacheStatus.LEGACY
    return CacheStatus.PARTIAL


def timestamp() -> datetime:
    """The time, as manifests record it."""
    return datetime.now(timezone.utc)


def zip_problem(path: Path, *, deep: bool = True) -> str | None:
    """Why ``path`` is not a complete zip archive as torch.save writes, or None.

    ``deep`` reads every member and checks its CRC; otherwise only the central directory,
    which a truncated file lacks.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            if not archive.namelist():
                return "an empty archive"
            bad = archive.testzip() if deep else None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        return f"not a complete zip archive, as torch.save writes ({error})"
    return f"a damaged archive (member {bad} fails its CRC check)" if bad else None


def is_complete_zip(path: Path) -> bool:
    """Whether ``path`` has a zip archive's central directory (a truncated file has none)."""
    return zip_problem(path, deep=False) is None


def byproducts(folder: Path) -> list[Path]:
    """The PNGs the NeRF script left in ``folder`` on every run (``characters.BYPRODUCTS``)."""
    try:
        with os.scandir(folder) as entries:
            found = [folder / e.name for e in entries if is_byproduct(e.name) and e.is_file()]
    except OSError:
        return []
    return sorted(found)


@dataclasses.dataclass(frozen=True)
class Inventory:
    """What nerfcache keeps in a character's folder, from one look at it (``inventory``)."""

    files: dict[str, int]
    """The cache files (regular files, links followed): name -> size in bytes."""
    total_bytes: int
    """The cache files, byproducts and everything in ``.nerfcache``, hard links counted once:
    what ``clear`` frees, and the set-aside generations with it."""
    meta: frozenset[str]
    """The names in ``.nerfcache`` (empty if there is none)."""


def inventory(folder: Path) -> Inventory:
    """Take stock of ``folder``: a listing of it and of ``.nerfcache``, a stat per file found.

    Links are not followed, but to size a cache file (a link in place of one makes a partial
    cache, which is sized like the file it leads to).
    """
    files: dict[str, int] = {}
    sizes: dict[tuple[int, int], int] = {}  # (device, inode) -> size: a file counted once
    meta: frozenset[str] = frozenset()
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if name in CACHE_FILES:
                    if entry.is_file():
                        files[name] = entry.stat().st_size
                    _count(entry, sizes)
                elif name == META_DIR and entry.is_symlink():
                    # Someone else's folder: its names, not its bytes.
                    meta = frozenset(p.name for p in Path(entry.path).iterdir())
                elif name == META_DIR and entry.is_dir():
                    meta = frozenset(_count_tree(entry.path, sizes))
                elif is_byproduct(name) and entry.is_file():
                    _count(entry, sizes)
    except OSError:  # gone meanwhile, or not a folder
        pass
    return Inventory(files, sum(sizes.values()), meta)


def _count(entry: os.DirEntry[str], sizes: dict[tuple[int, int], int]) -> None:
    try:
        found = entry.stat(follow_symlinks=False)
    except OSError:
        return
    sizes[found.st_dev, found.st_ino] = found.st_size


def _count_tree(folder: str, sizes: dict[tuple[int, int], int]) -> list[str]:
    """Count every file below ``folder`` (links not followed) in ``sizes``; return its names."""
    names = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                names.append(entry.name)
                if entry.is_dir(follow_symlinks=False):
                    _count_tree(entry.path, sizes)
                elif not entry.is_dir():  # a link to a folder is neither followed nor counted
                    _count(entry, sizes)
    except OSError:
        pass
    return names


def footprint(folder: Path) -> int:
    """Bytes of everything nerfcache keeps in a character's folder, hard links counted once."""
    return inventory(folder).total_bytes
