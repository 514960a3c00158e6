"""The content hash (sha256) of portraits, networks and cache files, remembered by file version.

The one sha256 helper of nerfcache: fingerprints, listings and archives all hash through it.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from pathlib import Path
from typing import IO

from nerfcache import _fs
from nerfcache.config import Settings

__all__ = ["CHUNK", "Digests", "digest_memo", "file_sha256", "sha256_of"]

CHUNK = 1 << 20

_digests: dict[tuple[str, int, int, int], str] = {}
_remembered: set[tuple[Path, tuple[str, int, int, int]]] = set()  # (memo, key) on file
_digests_lock = threading.Lock()


def sha256_of(file: IO[bytes], *, copy_to: IO[bytes] | None = None) -> str:
    """Return the sha256 of what is left to read in ``file``; ``copy_to`` gets the bytes too."""
    digest = hashlib.sha256()
    while chunk := file.read(CHUNK):
        digest.update(chunk)
        if copy_to is not None:
            copy_to.write(chunk)
    return digest.hexdigest()


def digest_memo(settings: Settings) -> Path:
    """The file where hashes of portraits and networks are remembered by file version."""
    return settings.state_dir / "digests.json"


class Digests:
    """sha256 of files, computed once per file version (path, size, mtime, inode).

    Remembered in this process and, when ``memo`` names a JSON file, across processes, so a
    GB network pickle is read once. One instance can serve many files (a listing) and write
    the memo once, with ``save``.
    """

    def __init__(self, memo: Path | None) -> None:
        self._memo = memo
        self._stored: dict[str, object] | None = None  # read on the first miss
        self._new: dict[str, object] = {}

    def of(self, path: Path) -> str:
        """Return the sha256 of ``path``'s bytes."""
        stat = path.stat()
        real = str(path.resolve())
        key = (real, stat.st_size, stat.st_mtime_ns, stat.st_ino)
        with _digests_lock:
            digest = _digests.get(key)
            if digest is not None and (self._memo is None or (self._memo, key) in _remembered):
                return digest
        if self._stored is None:
            stored = _fs.read_json(self._memo) if self._memo else None
            self._stored = stored if isinstance(stored, dict) else {}
        record = self._stored.get(real)
        if isinstance(record, dict) and record.get("version") == list(key[1:]):
            digest = str(record["sha256"])
        else:
            if digest is None:
                with path.open("rb") as file:
                    digest = sha256_of(file)
            self._new[real] = {"version": list(key[1:]), "sha256": digest}
        with _digests_lock:
            _digests[key] = digest
            if self._memo is not None:
                _remembered.add((self._memo, key))
        return digest

    def save(self) -> None:
        """Add the hashes computed since the last save to the memo file."""
        if self._memo and self._new:
            stored = _fs.read_json(self._memo)
            # Concurrent writers may drop each other's entries: that costs a re-hash, no more.
            # The memo only saves time: a folder that cannot take it costs re-hashing too.
            with contextlib.suppress(OSError):
                merged = {**(stored if isinstance(stored, dict) else {}), **self._new}
                _fs.write_json(self._memo, merged)
            self._new = {}


def file_sha256(path: Path, *, memo: Path | None = None) -> str:
    """Return the sha256 of ``path``'s bytes, computed once per file version (see ``Digests``)."""
    digests = Digests(memo)
    digest = digests.of(path)
    digests.save()
    return digest
