"""nerfcache: run NeRFFaceSpeech with a per-character cache of its PTI and 3DMM work."""

from __future__ import annotations

from loguru import logger

from nerfcache.cache import CacheStatus, CharacterCache, Fingerprint, Manifest
from nerfcache.config import Settings, get_settings
from nerfcache.errors import (
    ConfigurationError,
    GenerationCancelled,
    GenerationError,
    GenerationTimeout,
    InvalidInputError,
    MissingFileError,
    NerfCacheError,
)
from nerfcache.generate import (
    GenerationResult,
    agenerate_video,
    generate_video,
    stream_video,
    warm,
)
from nerfcache.launch import LaunchPlan
from nerfcache.progress import ProgressEvent

__all__ = [
    "CacheStatus",
    "CharacterCache",
    "ConfigurationError",
    "Fingerprint",
    "GenerationCancelled",
    "GenerationError",
    "GenerationResult",
    "GenerationTimeout",
    "InvalidInputError",
    "LaunchPlan",
    "Manifest",
    "MissingFileError",
    "NerfCacheError",
    "ProgressEvent",
    "Settings",
    "agenerate_video",
    "generate_video",
    "get_settings",
    "stream_video",
    "warm",
]

# A library adds no log sink; the CLI (or you, with logger.enable("nerfcache")) turns it on.
logger.disable("nerfcache")
