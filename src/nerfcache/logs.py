"""Send nerfcache's log into the standard library's ``logging``, for apps that do not use loguru.

nerfcache logs through loguru and, as a library should, adds no sink and starts disabled. An
app that configures stdlib ``logging`` turns the bridge on with one line::

    nerfcache.log_to_stdlib()

Records then go to the stdlib loggers named after nerfcache's modules (``nerfcache.generate``,
``nerfcache.run``, ...), children of ``nerfcache``: set levels and handlers there or on the root.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import TYPE_CHECKING

from loguru import logger

if TYPE_CHECKING:
    from loguru import Message

__all__ = ["log_to_stdlib", "stop_log_to_stdlib"]

_NAMESPACE = "nerfcache"
_STDLIB_LEVELS = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
_lock = threading.Lock()
_sink: int | None = None


def log_to_stdlib() -> None:
    """Forward nerfcache's log records to stdlib ``logging``; calling it again changes nothing.

    Enables the ``nerfcache`` loguru namespace and adds one loguru sink that takes only
    nerfcache's records. Levels map to the nearest stdlib level at or below: TRACE and DEBUG to
    DEBUG, INFO and SUCCESS to INFO, WARNING, ERROR, CRITICAL to themselves. Which records are
    kept is up to the stdlib loggers' levels and handlers.

    loguru's own sinks (its default one prints to stderr) also see nerfcache's records once the
    namespace is enabled: ``logger.remove()`` them if the app only wants stdlib ``logging``.
    """
    global _sink  # noqa: PLW0603 - one bridge per process, like the logger it feeds
    with _lock:
        if _sink is None:
            # level=0: TRACE too (stdlib loggers decide); filter: the app's own loguru records,
            # if any, stay where they are.
            _sink = logger.add(_forward, level=0, format="{message}", filter=_NAMESPACE)
        logger.enable(_NAMESPACE)


def stop_log_to_stdlib() -> None:
    """Undo ``log_to_stdlib``: remove its sink and disable the ``nerfcache`` namespace again."""
    global _sink  # noqa: PLW0603
    with _lock:
        if _sink is not None:
            # ValueError: removed already, by a logger.remove() of every sink.
            with contextlib.suppress(ValueError):
                logger.remove(_sink)
            _sink = None
        logger.disable(_NAMESPACE)


def _forward(message: Message) -> None:
    """The sink: re-emit one loguru record through the stdlib logger of its module."""
    record = message.record
    level = _stdlib_level(record["level"].no)
    target = logging.getLogger(record["name"] or _NAMESPACE)
    if not target.isEnabledFor(level):
        return
    error = record["exception"].value if record["exception"] else None
    target.handle(
        target.makeRecord(
            target.name,
            level,
            record["file"].path,
            record["line"],
            record["message"],
            (),
            (type(error), error, error.__traceback__) if error is not None else None,
            record["function"],
            # What nerfcache bound (character, run_id), as loguru's own logging sinks pass it.
            {"extra": dict(record["extra"])},
        )
    )


def _stdlib_level(number: int) -> int:
    """The nearest stdlib level at or below loguru's ``number`` (TRACE, 5, becomes DEBUG)."""
    return max((level for level in _STDLIB_LEVELS if level <= number), default=logging.DEBUG)
