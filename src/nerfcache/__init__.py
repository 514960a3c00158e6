"""nerfcache: run NeRFFaceSpeech with a per-character cache of its PTI and 3DMM work."""

from __future__ import annotations

from loguru import logger

from nerfcache.cache import CacheStatus, CharacterCache, Fingerprint, Manifest
from nerfcache.config import Settings, get_settings
from nerfcache.errors import (
    ConfigurationError,
    GenerationError,
    GenerationTimeout,
    InvalidInputError,
    MissingFileError,
    NerfCacheError,
)
from nerfcache.generate import GenerationResult, generate_video
from nerfcache.launch import LaunchPlan

__all__ = [
    "CacheStatus",
    "CharacterCache",
    "ConfigurationError",
    "Fingerprint",
    "GenerationError",
    "GenerationResult",
    "GenerationTimeout",
    "InvalidInputError",
    "LaunchPlan",
    "Manifest",
    "MissingFileError",
    "NerfCacheError",
    "Settings",
    "generate_video",
    "get_settings",
]

# A library adds no log sink; the CLI (or you, with logger.enable("nerfcache")) turns it on.
logger.disable("nerfcache")
