"""nerfcache: run NeRFFaceSpeech with a per-character cache of its PTI and 3DMM work."""

from __future__ import annotations

from loguru import logger

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
from nerfcache.launch import LaunchPlan
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
    "LaunchPlan",
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
    "generate_video",
    "get_settings",
    "import_cache",
    "list_caches",
    "log_to_stdlib",
    "make_generate_video",
    "prune",
    "stop_log_to_stdlib",
    "stream_video",
    "warm",
]

# A library adds no log sink; the CLI (or you, with logger.enable("nerfcache") or
# log_to_stdlib()) turns it on.
logger.disable("nerfcache")
