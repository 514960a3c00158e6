"""The content hash (sha256) of portraits, networks and cache files, remembered by file version.

The one sha256 helper of nerfcache: fingerprints, listings and archives all hash through
``sha256_of``. ``file_sha256`` reads a file once per version and host:

- a version is (size, mtime, inode, device): hashing a GB network pickle again is what the memo
  saves, so a file that changes must change one of them (they all do, but for a rewrite in place
  within the mtime's resolution that keeps the size);
- the memo is a file of JSON lines in ``state_dir`` (``digest_memo``), one line per version
  hashed, appended under a short lock: each process reads it once, then only the lines other
  processes added since. When it has grown to twice its size when last rewritten (and 1 MiB at
  least), it is rewritten without superseded lines, files that are gone or changed, and all but
  the newest ``MEMO_ENTRIES``: it stays within twice what is worth remembering;
- a file nobody has hashed yet is hashed under a lock of the host (one of ``STRIPES`` lock files,
  chosen by the file's device and inode), and its line appended before the lock is let go: N
  threads or processes asking at once read the file once, the others find the digest waiting.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from nerfcache import _fs
from nerfcache._locks import exclusive
from nerfcache.config import Settings

__all__ = ["CHUNK", "MEMO_ENTRIES", "STRIPES", "digest_memo", "file_sha256", "sha256_of"]

CHUNK = 1 << 20
MEMO_ENTRIES = 100_000
"""The most files the memo remembers (about 15 MB): ten times the characters of a big host."""
STRIPES = 64
"""Hashing locks per host: two files hashed at once share one, and take turns, 1 time in 64."""
_REWRITE_FROM = 1 << 20
"""The size below which the memo is never rewritten, whatever it holds (about 6,000 lines)."""
_PARSE_AFTER = 16
"""Lookups of a process in the memo as first read, before it parses it whole."""
_LEGACY_MEMO = "digests.json"
"""The memo of nerfcache 0.1 (one JSON object, rewritten whole): removed with the first line."""

_Version = tuple[int, int, int, int]
"""(size, mtime in ns, inode, device): a file as it was hashed."""


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
    return settings.state_dir / "digests.jsonl"


def file_sha256(path: Path, *, memo: Path | None = None) -> str:
    """Return the sha256 of ``path``'s bytes, read once per file version (see the module).

    Remembered in this process and, when ``memo`` names a memo file, by every process of the
    host. A file that changes while it is hashed gets its digest, which is not remembered.
    """
    stat = path.stat()
    name = os.path.abspath(path)
    version = (stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev)
    known = _memo(memo)
    if (digest := known.get(name, version)) is not None:
        return digest
    with known.hashing(stat):
        # Another thread or process may have hashed it while this one waited for the lock.
        if (digest := known.get(name, version, refresh=True)) is not None:
            return digest
        with path.open("rb") as file:
            digest = sha256_of(file)
            after = os.fstat(file.fileno())
        if (after.st_size, after.st_mtime_ns, after.st_ino, after.st_dev) == version:
            known.add(name, version, digest)
    return digest


_STRIPES = [threading.Lock() for _ in range(STRIPES)]


class _Memo:
    """A memo file as this process knows it: read once, then only the lines added since.

    With no file (``path`` None), the digests this process computed.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, tuple[_Version, str]] = {}
        # The file as first read, parsed only after _PARSE_AFTER lookups: a new process that
        # looks up two files (a run) finds their lines without parsing 10,000 others.
        self._unparsed = b""
        self._looked_up = 0
        self._read_from: tuple[int, int] | None = None  # (device, inode) of the file read
        self._offset = 0  # bytes of it read: up to the end of its last complete line
        self._first_size = 0  # bytes it had when this process first read it whole
        self._locks_made = False
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hashing(self, stat: os.stat_result) -> Iterator[None]:
        """Hold the hashing lock of the file whose ``stat`` this is, here and on the host."""
        stripe = (stat.st_dev * 1_000_003 + stat.st_ino) % STRIPES
        with _STRIPES[stripe], contextlib.ExitStack() as held:
            # Without the file lock (an unwritable state_dir) the file is hashed all the same:
            # the lock only saves reading it again.
            if self.path is not None:
                try:
                    held.enter_context(exclusive(self._locks(self.path) / f"{stripe:02d}.lock"))
                except OSError:
                    self._locks_made = False
            yield

    def _locks(self, path: Path) -> Path:
        """The folder of the hashing locks and the memo's lock: ``hashing/`` beside the memo."""
        folder = path.parent / "hashing"
        if not self._locks_made:
            folder.mkdir(parents=True, exist_ok=True)
            self._locks_made = True
        return folder

    def get(self, name: str, version: _Version, *, refresh: bool = False) -> str | None:
        """The digest of ``name`` at ``version``, if known; ``refresh`` reads others' lines."""
        with self._lock:
            if self.path is not None and (refresh or self._read_from is None):
                self._catch_up(self.path)
            entry = self._entries.get(name)
            if entry is None and self._unparsed:
                entry = self._find(name)
        return entry[1] if entry is not None and entry[0] == version else None

    def add(self, name: str, version: _Version, digest: str) -> None:
        """Remember a digest, in the memo file too (before any waiter of its lock looks)."""
        with self._lock:
            if self.path is None:
                self._remember(name, version, digest)
                if len(self._entries) > MEMO_ENTRIES:
                    del self._entries[next(iter(self._entries))]
                return
            path = self.path
            try:
                with exclusive(self._locks(path) / "memo.lock"):
                    self._catch_up(path)
                    self._remember(name, version, digest)
                    # Doubled since it was last read whole (or rewritten): rewrite it.
                    if self._offset >= max(_REWRITE_FROM, 2 * self._first_size):
                        self._rewrite(path)
                    else:
                        _append(path, _line(name, version, digest))
            except OSError:
                # The memo only saves time: a state_dir that cannot take it costs re-hashing.
                self._remember(name, version, digest)
                self._locks_made = False

    def _remember(self, name: str, version: _Version, digest: str) -> None:
        self._entries.pop(name, None)  # the newest last: what a rewrite keeps
        self._entries[name] = (version, digest)

    def _catch_up(self, path: Path) -> None:
        """Read what was added to the memo file since; all of it if it is another file now."""
        try:
            with path.open("rb") as file:
                stat = os.fstat(file.fileno())
                if (stat.st_dev, stat.st_ino) != self._read_from or stat.st_size < self._offset:
                    # A new memo, or one rewritten since: read it all.
                    self._entries, self._unparsed, self._looked_up = {}, b"", 0
                    self._offset = 0
                    self._read_from = (stat.st_dev, stat.st_ino)
                if stat.st_size <= self._offset:
                    return
                file.seek(self._offset)
                data = file.read()
        except OSError:
            if self._read_from is None:
                self._read_from = (-1, -1)  # no memo yet: read it when a line is added
            return
        lines = data[: data.rfind(b"\n") + 1]  # a line being written is read once complete
        if self._offset == 0:
            self._unparsed = lines
            self._first_size = len(lines)
        else:
            for row in _rows(lines):
                if parsed := _entry(row):
                    self._remember(*parsed)
        self._offset += len(lines)

    def _find(self, name: str) -> tuple[_Version, str] | None:
        """Look ``name`` up in the lines read but not parsed: its last line, if there is one."""
        self._looked_up += 1
        if self._looked_up > _PARSE_AFTER:  # a listing: parse them all, once
            self._parse_all()
            return self._entries.get(name)
        data = self._unparsed
        key = json.dumps([name], ensure_ascii=False)[:-1].encode() + b", "  # as _line starts
        at = data.rfind(b"\n" + key) + 1
        if at == 0 and not data.startswith(key):
            return None
        parsed = _entry(_rows(data[at : data.index(b"\n", at) + 1])[0])
        return (parsed[1], parsed[2]) if parsed is not None else None

    def _parse_all(self) -> None:
        """Parse the lines read at first; what was read since (in ``_entries``) is newer."""
        entries: dict[str, tuple[_Version, str]] = {}
        for row in _rows(self._unparsed):
            if parsed := _entry(row):
                entries.pop(parsed[0], None)
                entries[parsed[0]] = (parsed[1], parsed[2])
        for name, entry in self._entries.items():
            entries.pop(name, None)
            entries[name] = entry
        self._entries, self._unparsed = entries, b""

    def _rewrite(self, path: Path) -> None:
        """Write the memo anew: live entries only (the file is there, at that version), newest."""
        self._parse_all()
        live: list[str] = []
        for name, (version, digest) in self._entries.items():
            try:
                stat = os.stat(name)  # noqa: PTH116 - one per entry: no Path for each
            except OSError:
                continue
            if (stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev) == version:
                live.append(_line(name, version, digest))
        with _fs.atomic_write(path) as file:
            file.write("".join(live[-MEMO_ENTRIES:]).encode())
        self._read_from = None
        self._catch_up(path)


def _line(name: str, version: _Version, digest: str) -> str:
    return json.dumps([name, *version, digest], ensure_ascii=False) + "\n"


def _append(path: Path, line: str) -> None:
    """Add a line to the memo file; the first one also removes the memo of nerfcache 0.1."""
    fresh = not path.exists()
    with path.open("ab") as file:
        file.write(line.encode())
    if fresh and path.name == "digests.jsonl":
        path.with_name(_LEGACY_MEMO).unlink(missing_ok=True)


def _rows(lines: bytes) -> list[object]:
    """The JSON values of complete memo lines: one parse for all of them, as a JSON list.

    JSON strings hold no raw newline, so joining the lines with commas makes a list; if a line is
    not JSON (cut short by a crash, say), the lines are parsed one by one and it is None.
    """
    if not lines:
        return []
    try:
        rows: list[object] = json.loads(b"[" + lines[:-1].replace(b"\n", b",") + b"]")
    except ValueError:
        rows = []
        for line in lines.splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                rows.append(None)
    return rows


def _entry(row: object) -> tuple[str, _Version, str] | None:
    """A memo line as (file name, version, digest), or None if it is not one."""
    if not (isinstance(row, list) and len(row) == 6):  # noqa: PLR2004 - the line's fields
        return None
    name, size, mtime, inode, device, digest = row
    if not (isinstance(name, str) and isinstance(digest, str)):
        return None
    if not all(isinstance(n, int) for n in (size, mtime, inode, device)):
        return None
    return name, (size, mtime, inode, device), digest


_memos: dict[Path | None, _Memo] = {}
_memos_lock = threading.Lock()


def _memo(path: Path | None) -> _Memo:
    with _memos_lock:
        if (memo := _memos.get(path)) is None:
            memo = _memos[path] = _Memo(path)
        return memo
