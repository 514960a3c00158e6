"""Small file helpers: the one atomic write, link-or-copy, sizes and identities, JSON files."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "atomic_write",
    "identity",
    "keep_newest",
    "link_or_copy",
    "read_json",
    "same_file",
    "size",
    "write_json",
]


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """Yield a new file that replaces ``path`` when the block ends: a reader sees all or nothing.

    The bytes go to a temporary file beside ``path`` (same file system, so the rename is
    atomic), reach the disk, then ``os.replace`` puts it in place. If the block raises, the
    temporary file is removed and ``path`` is left as it was.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("xb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: object) -> None:
    """Write ``data`` to ``path`` as JSON, atomically (``atomic_write``), making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as file:
        file.write(json.dumps(data, ensure_ascii=False, indent=1).encode())


def read_json(path: Path) -> object:
    """Return the JSON in ``path``, or None if it is missing, unreadable or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def link_or_copy(source: Path, target: Path) -> Path:
    """Hard-link ``source`` to ``target`` (instant, no space), or copy it where links fail."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target


def size(path: Path) -> int | None:
    """The size of ``path`` in bytes, or None if it is not there."""
    try:
        return path.stat().st_size
    except OSError:
        return None


def identity(path: Path) -> tuple[int, int, int]:
    """(inode, size, mtime): changes when the file is replaced or written to."""
    stat = path.stat()
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are the same file (hard links are); False if either is missing."""
    try:
        return a.samefile(b)
    except OSError:
        return False


def keep_newest(folder: Path, keep: int) -> None:
    """Delete all but the ``keep`` most recently changed entries of ``folder``."""
    entries = sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)
