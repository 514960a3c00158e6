"""What a character's cache folder holds: the file names and groups, the manifest, their checks.

Pure decisions and reads: nothing here changes a file.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
import zipfile
import zlib
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from nerfcache import _fs
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
    "Manifest",
    "byproducts",
    "footprint",
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
    data = _fs.read_json(path)
    try:
        return Manifest.model_validate(data) if data is not None else None
    except ValidationError:
        return None


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
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if is_byproduct(path.name) and path.is_file())


def footprint(folder: Path) -> int:
    """Bytes of everything nerfcache keeps in a character's folder, hard links counted once."""
    paths = [folder / name for name in CACHE_FILES] + byproducts(folder)
    for parent, _dirs, names in os.walk(folder / META_DIR):
        paths += [Path(parent, name) for name in names]
    seen: set[tuple[int, int]] = set()
    total = 0
    for path in paths:
        try:
            stat = path.lstat()
        except OSError:
            continue
        if (stat.st_dev, stat.st_ino) not in seen:
            seen.add((stat.st_dev, stat.st_ino))
            total += stat.st_size
    return total
