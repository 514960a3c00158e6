"""Managing the cache root as a whole: list every character's cache, prune the least used.

Like huggingface_hub's cache manager (``scan_cache_dir``, ``DeleteCacheStrategy``), apart from
what writes a cache (``store``).
"""

from __future__ import annotations

import dataclasses
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

from nerfcache.cache.inspection import CacheInfo, describe
from nerfcache.cache.layout import timestamp
from nerfcache.cache.store import CharacterCache
from nerfcache.characters import validate_character
from nerfcache.config import Settings, get_settings
from nerfcache.errors import CacheBusyError, InvalidInputError

__all__ = ["Pruning", "list_caches", "prune"]


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


def list_caches(*, settings: Settings | None = None) -> list[CacheInfo]:
    """Describe every character folder under ``cache_root``, sorted by name.

    Stat calls and small reads (manifests, the hash memo): no cache file is read, so 10,000
    characters take well under a second. A portrait missing from the hash memo is hashed
    (portraits are small) and remembered.

    Args:
        settings: defaults to ``get_settings()``.

    """
    settings = settings or get_settings()
    return [describe(settings, name, path) for name, path in _characters(settings.cache_root)]


def _characters(root: Path) -> list[tuple[str, Path]]:
    """The character folders in ``root``, sorted: (name, folder).

    Not nerfcache's own ``.nerfcache``, nor any name ``CharacterCache`` refuses, nor a link that
    leads out of ``root`` (``characters.character_dir``'s rules, with ``root`` resolved once).
    """
    try:
        with os.scandir(root) as entries:
            found = sorted((entry.name, entry) for entry in entries if entry.is_dir())
    except OSError:
        return []
    real_root: Path | None = None
    characters = []
    for name, entry in found:
        try:
            validate_character(name)
        except InvalidInputError:
            continue
        path = root / name
        if entry.is_symlink():
            real_root = real_root or root.resolve()
            if not path.resolve().is_relative_to(real_root):
                continue
        characters.append((name, path))
    return characters


def prune(
    *,
    settings: Settings | None = None,
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
    ``settings`` defaults to ``get_settings()``.

    Raises:
        InvalidInputError: none of ``max_bytes``, ``older_than`` and ``keep`` is given, or one
            is negative.
        NerfCacheError: a cache to remove cannot be cleared for another reason than being in
            use (a symbolic link in its ``.nerfcache``, say); the caches before it in the order
            are removed, the ones after it are not.

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
    settings = settings or get_settings()
    caches = [info for info in list_caches(settings=settings) if info.total_bytes > 0]
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
        except CacheBusyError:
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
