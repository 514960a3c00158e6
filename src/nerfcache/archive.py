"""Move a character's cache to another machine: a streamed tar with a manifest and hashes.

Layout of an archive (plain or gzip-compressed tar, written and read as a stream, so it can go
through a pipe: ``nerfcache cache export rei - | ssh gpu2 nerfcache cache import - --trust``)::

    manifest.json   first: the character, the cache's manifest and a sha256 per file
    G_PTI.pt ...    the published cache files, nothing else

A ``.pt`` file is a pickle that the NeRF script loads with ``torch.load``, which runs whatever
code the pickle holds: an imported cache runs code on the GPU server. ``import_cache`` requires
``trust=True`` and checks everything else before it publishes: the archive's paths (no ``..``,
no absolute paths, no links or devices, only the known names), every file's size and hash, and
that each is a complete archive as ``torch.save`` writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from loguru import logger
from pydantic import BaseModel, ConfigDict, ValidationError

from nerfcache._fs import atomic_write
from nerfcache.cache import CACHE_FILES, CacheStatus, CharacterCache, Manifest
from nerfcache.cache.digests import sha256_of
from nerfcache.config import Settings, get_settings
from nerfcache.errors import InvalidInputError, MissingFileError

__all__ = ["ARCHIVE_FORMAT", "ArchiveManifest", "Imported", "export_cache", "import_cache"]

ARCHIVE_FORMAT = 1
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20
TRUST_WARNING = (
    "a cache's .pt files are pickles that the NeRF script loads with torch.load, which runs any"
    " code they hold: import only archives from a source you trust"
)
_SHA256 = re.compile(r"[0-9a-f]{64}")

Source = Path | str | BinaryIO
"""A file name, ``"-"`` for standard input or output, or an open binary stream."""


class ArchiveManifest(BaseModel):
    """The first member of an archive: what it holds and each file's sha256."""

    model_config = ConfigDict(frozen=True)

    archive_format: int = ARCHIVE_FORMAT
    character: str
    cache: Manifest
    sha256: dict[str, str]
    """Cache file name -> sha256 of its bytes."""
    exported_at: datetime


@dataclasses.dataclass(frozen=True)
class Imported:
    """What ``import_cache`` published."""

    character: str
    path: Path
    manifest: Manifest
    replaced: CacheStatus
    """The status of the cache it replaced (set aside if sound, quarantined if not)."""


def export_cache(
    character: str,
    destination: Source,
    *,
    settings: Settings | None = None,
    compress: bool = False,
) -> ArchiveManifest:
    """Write ``character``'s published cache to ``destination`` as a tar stream.

    A file name is written through a temporary file and renamed at the end, so it never holds
    half an archive. ``compress`` gzips the stream (the ``.pt`` archives are stored uncompressed,
    so it helps a little, at some CPU cost).

    Raises:
        MissingFileError: nothing is cached for ``character``.
        InvalidInputError: a bad name, or a cache that is partial or legacy (verify it first).

    """
    settings = settings or get_settings()
    cache = CharacterCache(settings, character)
    if not cache.path.is_dir():
        # Before the snapshot, whose lock would create the folder: a typo must not leave a
        # new, empty character behind.
        raise MissingFileError(
            f"nothing is cached for {character!r}: there is no {cache.path}", path=cache.path
        )
    with cache.snapshot() as snapshot:
        digests = {name: sha256_of(file) for name, file in snapshot.files.items()}
        header = ArchiveManifest(
            character=character,
            cache=snapshot.manifest,
            sha256=digests,
            exported_at=datetime.now(timezone.utc),
        )
        with (
            _writing(destination) as stream,
            tarfile.open(
                fileobj=stream, mode="w|gz" if compress else "w|", format=tarfile.PAX_FORMAT
            ) as tar,
        ):
            data = header.model_dump_json(indent=1).encode()
            _add(tar, MANIFEST_NAME, io.BytesIO(data), len(data))
            for name, file in snapshot.files.items():
                file.seek(0)
                _add(tar, name, file, snapshot.manifest.files[name])
    logger.bind(character=character).info("exported the cache of {}", character)
    return header


def import_cache(
    source: Source,
    *,
    settings: Settings | None = None,
    character: str | None = None,
    trust: bool = False,
) -> Imported:
    """Check the archive at ``source`` and publish it as ``character``'s cache.

    Every member is checked (only ``manifest.json`` first and the known cache files, regular
    files, each of its listed size and sha256, each a complete archive) before anything is
    published; the published cache is then replaced atomically (files with ``os.replace``, the
    manifest last, under the state lock), setting aside whatever was there.

    Args:
        source: the archive (plain or gzip tar).
        settings: defaults to ``get_settings()``.
        character: the name to import as; defaults to the one in the archive.
        trust: must be True: the ``.pt`` files are pickles that ``torch.load`` executes.

    Raises:
        InvalidInputError: ``trust`` is not set, a bad name, or an archive that fails a check.
        CacheBusyError: the character's cache is in use (a build or a live run).

    """
    if not trust:
        raise InvalidInputError(
            f"{TRUST_WARNING}; pass trust=True (--trust) to import", field="trust", value=trust
        )
    settings = settings or get_settings()
    label = str(source) if isinstance(source, (str, Path)) else getattr(source, "name", "stream")
    label = "standard input" if label == "-" else label

    def refuse(why: str) -> InvalidInputError:
        return InvalidInputError(f"archive {label}: {why}", field="archive", value=label)

    with _reading(source) as stream:
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                members = iter(tar)
                header = _read_header(tar, next(members, None), refuse)
                cache = CharacterCache(settings, character or header.character)
                with cache.receive(header.cache.fingerprint) as staging:
                    for member in members:
                        _receive(tar, member, header, staging.path, refuse)
                    missing = set(header.cache.files) - {p.name for p in staging.path.iterdir()}
                    if missing:
                        raise refuse(f"it ends without {', '.join(sorted(missing))}")
                    manifest = header.cache.model_copy(
                        update={"last_used_at": datetime.now(timezone.utc)}
                    )
                    replaced = cache.install(staging, manifest)
        except (tarfile.TarError, EOFError) as error:
            raise refuse(f"not a tar archive, or a damaged one ({error})") from error
    logger.bind(character=cache.character).info(
        "imported the cache of {} (replaced a {} cache)", cache.character, replaced.value
    )
    return Imported(cache.character, cache.path, manifest, replaced)


def _read_header(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo | None,
    refuse: Callable[[str], InvalidInputError],
) -> ArchiveManifest:
    if member is None or member.name != MANIFEST_NAME or not member.isreg():
        raise refuse(f"it must start with {MANIFEST_NAME}: not a nerfcache archive")
    if member.size > MAX_MANIFEST_BYTES:
        raise refuse(f"{MANIFEST_NAME} is {member.size} bytes, too large")
    file = tar.extractfile(member)
    try:
        header = ArchiveManifest.model_validate_json(file.read() if file else b"")
    except ValidationError as error:
        raise refuse(f"{MANIFEST_NAME} is not valid ({error.errors()[0]['msg']})") from error
    cache = header.cache
    if header.archive_format != ARCHIVE_FORMAT:
        raise refuse(f"archive format {header.archive_format}; this nerfcache reads only 1")
    if not set(cache.files) <= set(CACHE_FILES) or not cache.has_pti:
        raise refuse(f"its manifest must list the PTI group and only {', '.join(CACHE_FILES)}")
    if set(header.sha256) != set(cache.files):
        raise refuse("its manifest must give one sha256 for each file")
    if not all(_SHA256.fullmatch(digest) for digest in header.sha256.values()):
        raise refuse("its manifest holds a malformed sha256")
    return header


def _receive(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    header: ArchiveManifest,
    folder: Path,
    refuse: Callable[[str], InvalidInputError],
) -> None:
    """Check one member, copy it into ``folder`` while hashing it, and check the hash."""
    name = member.name
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise refuse(f"{name!r} is a path outside the archive")
    if name not in header.cache.files:
        raise refuse(f"{name!r} is not a file its manifest lists")
    if not member.isreg():
        raise refuse(f"{name!r} is a link, folder or device, not a regular file")
    if (folder / name).exists():
        raise refuse(f"{name!r} appears twice")
    if member.size != header.cache.files[name]:
        raise refuse(
            f"{name!r} is {member.size} bytes; its manifest says {header.cache.files[name]}"
        )
    source = tar.extractfile(member) or io.BytesIO()  # None only for what is not a file
    with (folder / name).open("xb") as target:
        digest = sha256_of(source, copy_to=target)
        target.flush()
        os.fsync(target.fileno())  # the manifest that names it may be published next
    if digest != header.sha256[name]:
        raise refuse(f"{name!r} does not match its sha256: damaged or altered")


def _add(tar: tarfile.TarFile, name: str, file: BinaryIO, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = int(time.time())
    tar.addfile(info, file)


@contextlib.contextmanager
def _writing(destination: Source) -> Iterator[BinaryIO]:
    if not isinstance(destination, (str, Path)):
        yield destination
        return
    if str(destination) == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    with atomic_write(Path(destination)) as file:
        yield file


@contextlib.contextmanager
def _reading(source: Source) -> Iterator[BinaryIO]:
    if not isinstance(source, (str, Path)):
        yield source
    elif str(source) == "-":
        yield sys.stdin.buffer
    else:
        path = Path(source)
        if not path.is_file():
            raise MissingFileError(f"archive {str(path)!r} does not exist", path=path)
        with path.open("rb") as file:
            yield file
