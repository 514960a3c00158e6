"""The errors nerfcache raises: one base class, each subclass also a familiar builtin."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nerfcache.generate import GenerationResult

__all__ = [
    "CacheBusyError",
    "ConfigurationError",
    "GenerationCancelled",
    "GenerationError",
    "GenerationTimeout",
    "InvalidInputError",
    "MissingFileError",
    "NerfCacheError",
]


class NerfCacheError(Exception):
    """Base class of every error nerfcache raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword attributes live in __dict__; pickle them with the message so errors survive
        # the trip through a task queue.
        return (type(self), self.args, self.__dict__)


class InvalidInputError(NerfCacheError, ValueError):
    """A value given by the caller is not acceptable (a character or model name, for example)."""

    def __init__(self, message: str, *, field: str = "", value: object = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


class MissingFileError(NerfCacheError, FileNotFoundError):
    """A file the run needs does not exist."""

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


class ConfigurationError(MissingFileError):
    """A configured path is missing: the message names the setting to change."""

    def __init__(self, message: str, *, setting: str = "", path: Path | None = None) -> None:
        super().__init__(message, path=path)
        self.setting = setting


class CacheBusyError(NerfCacheError, RuntimeError):
    """A character's cache is in use (a cold build or a live run), so it was left as it was.

    Raised by ``CharacterCache.clear`` and by an import (``install``); ``prune`` skips such a
    cache. Try again when the runs are done.
    """

    def __init__(self, message: str, *, character: str = "") -> None:
        super().__init__(message)
        self.character = character


class GenerationError(NerfCacheError, RuntimeError):
    """The NeRF script ran but did not produce a video (raised with ``check=True``)."""

    def __init__(self, message: str, *, result: GenerationResult | None = None) -> None:
        super().__init__(message)
        self.result = result


class GenerationTimeout(GenerationError, TimeoutError):
    """The NeRF script ran longer than its timeout and was killed, with its whole process group."""


class GenerationCancelled(GenerationError):
    """The run was cancelled; its process group was killed and its staging dir removed.

    ``result`` is None when it was cancelled before the script started (waiting for the cache).
    """
