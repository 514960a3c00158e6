"""nerfcache: run NeRFFaceSpeech with a per-character cache of its PTI and 3DMM work.

The public names are imported when first used (PEP 562), so ``import nerfcache`` costs little
more than loguru: a web app's worker or a CLI that only lists caches does not pay for pydantic,
asyncio's helpers or the run machinery it does not touch.
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

from loguru import logger

if _typing.TYPE_CHECKING:
    from nerfcache.archive import ArchiveManifest, Imported, export_cache, import_cache
    from nerfcache.cache import (
        CacheInfo,
        CacheStatus,
        CharacterCache,
        Finding,
        Fingerprint,
        Manifest,
        Pruning,
        Verification,
        list_caches,
        prune,
    )
    from nerfcache.characters import find_test_image, resolve_model, validate_character
    from nerfcache.compat import make_generate_video
    from nerfcache.config import Settings, get_settings
    from nerfcache.doctor import Check, diagnose
    from nerfcache.errors import (
        CacheBusyError,
        ConfigurationError,
        GenerationCancelled,
        GenerationError,
        GenerationTimeout,
        InvalidInputError,
        MissingFileError,
        NerfCacheError,
    )
    from nerfcache.generate import GenerationResult, generate_video, warm
    from nerfcache.generate_async import agenerate_video, stream_video
    from nerfcache.logs import log_to_stdlib, stop_log_to_stdlib
    from nerfcache.progress import ProgressEvent

__all__ = [
    "ArchiveManifest",
    "CacheBusyError",
    "CacheInfo",
    "CacheStatus",
    "CharacterCache",
    "Check",
    "ConfigurationError",
    "Finding",
    "Fingerprint",
    "GenerationCancelled",
    "GenerationError",
    "GenerationResult",
    "GenerationTimeout",
    "Imported",
    "InvalidInputError",
    "Manifest",
    "MissingFileError",
    "NerfCacheError",
    "ProgressEvent",
    "Pruning",
    "Settings",
    "Verification",
    "agenerate_video",
    "diagnose",
    "export_cache",
    "find_test_image",
    "generate_video",
    "get_settings",
    "import_cache",
    "list_caches",
    "log_to_stdlib",
    "make_generate_video",
    "prune",
    "resolve_model",
    "stop_log_to_stdlib",
    "stream_video",
    "validate_character",
    "warm",
]

# Where each public name is defined: imported from there the first time it is asked for.
_SOURCES = {
    "archive": ("ArchiveManifest", "Imported", "export_cache", "import_cache"),
    "cache": (
        "CacheInfo",
        "CacheStatus",
        "CharacterCache",
        "Finding",
        "Fingerprint",
        "Manifest",
        "Pruning",
        "Verification",
        "list_caches",
        "prune",
    ),
    "characters": ("find_test_image", "resolve_model", "validate_character"),
    "compat": ("make_generate_video",),
    "config": ("Settings", "get_settings"),
    "doctor": ("Check", "diagnose"),
    "errors": (
        "CacheBusyError",
        "ConfigurationError",
        "GenerationCancelled",
        "GenerationError",
        "GenerationTimeout",
        "InvalidInputError",
        "MissingFileError",
        "NerfCacheError",
    ),
    "generate": ("GenerationResult", "generate_video", "warm"),
    "generate_async": ("agenerate_video", "stream_video"),
    "logs": ("log_to_stdlib", "stop_log_to_stdlib"),
    "progress": ("ProgressEvent",),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}
# Submodules reachable as attributes after a bare `import nerfcache`, as when __init__ imported
# them all: `nerfcache.cache.CACHE_FILES` keeps working.
_SUBMODULES = frozenset(
    (*_SOURCES, "cli", "delivery", "gpus", "launch", "run", "testing", "workdir")
)


def __getattr__(name: str) -> object:
    if name in _MODULE_OF:
        value = getattr(_importlib.import_module(f"nerfcache.{_MODULE_OF[name]}"), name)
        globals()[name] = value  # later lookups find it without coming here
        return value
    if name in _SUBMODULES:
        return _importlib.import_module(f"nerfcache.{name}")
    raise AttributeError(f"module 'nerfcache' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


# A library adds no log sink; the CLI (or you, with logger.enable("nerfcache") or
# log_to_stdlib()) turns it on. loguru is imported now, not lazily: an app that enables the
# namespace right after `import nerfcache` must not have that undone by a later first import.
logger.disable("nerfcache")
