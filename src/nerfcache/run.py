"""Run a LaunchPlan: stream its output to the log, keep a bounded tail, enforce the timeout.

One loop over both pipes (no reader threads), so memory stays bounded whatever the child prints
and a child that never closes its pipes cannot hang the caller past its timeout.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import re
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from loguru import logger

from nerfcache.launch import LaunchPlan

__all__ = ["LineSplitter", "RunOutcome", "run_plan"]

MAX_LINE_CHARS = 4096
TAIL_LINES = 40
KILL_GRACE_S = 5.0
DRAIN_S = 2.0
POLL_S = 0.2
_PROGRESS = re.compile(r"\d+%\|")
_WARNING = re.compile(r"\bwarn(ing)?\b", re.IGNORECASE)
_ERROR = re.compile(r"\b(error|exception|fatal)\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """How a run ended."""

    returncode: int | None
    duration_s: float
    log_tail: tuple[str, ...]
    timed_out: bool = False
    cancelled: bool = False


class LineSplitter:
    r"""Split a byte stream into lines on ``\\n`` and ``\\r`` (tqdm redraws), bounded in memory."""

    def __init__(self, max_chars: int = MAX_LINE_CHARS) -> None:
        self._max = max_chars
        self._buffer = bytearray()
        self._overflow = False

    def feed(self, data: bytes) -> Iterator[str]:
        """Yield the complete lines in ``data``, decoded with replacement characters."""
        start = 0
        for match in re.finditer(rb"[\r\n]", data):
            yield from self._line(data[start : match.start()])
            start = match.end()
        self._append(data[start:])

    def close(self) -> Iterator[str]:
        """Yield what is left after the stream ended."""
        yield from self._line(b"")

    def _append(self, data: bytes) -> None:
        room = self._max * 4 - len(self._buffer)  # UTF-8: at most 4 bytes a character
        if len(data) > room:
            self._overflow = True
            data = data[: max(room, 0)]
        self._buffer += data

    def _line(self, data: bytes) -> Iterator[str]:
        self._append(data)
        if self._buffer or self._overflow:
            text = self._buffer.decode("utf-8", errors="replace")
            if self._overflow or len(text) > self._max:
                text = text[: self._max] + " [line truncated]"
            yield text
        self._buffer.clear()
        self._overflow = False


class _Classifier:
    """Pick a log level for each line: tracebacks and errors at ERROR, progress at DEBUG."""

    def __init__(self) -> None:
        self._in_traceback = False

    def level(self, line: str) -> str:
        if line.startswith("Traceback (most recent call last)"):
            self._in_traceback = True
            return "ERROR"
        if self._in_traceback:
            # A traceback ends with its unindented "SomeError: message" line.
            self._in_traceback = line[:1].isspace() or not line
            return "ERROR"
        if _PROGRESS.search(line):
            return "DEBUG"
        if _ERROR.search(line):
            return "ERROR"
        if _WARNING.search(line):
            return "WARNING"
        return "INFO"


def run_plan(
    plan: LaunchPlan,
    *,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
    on_line: Callable[[str], None] | None = None,
    log: Any = logger,
) -> RunOutcome:
    """Run ``plan`` to its end, streaming every line of stdout and stderr to ``log``.

    On timeout (or when ``cancel`` is set) the child's whole process group is terminated
    (SIGTERM, then SIGKILL after a grace period). Processes the script leaves behind in its
    group are killed when it exits.
    """
    started = time.perf_counter()
    deadline = None if timeout is None else started + timeout
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    classifiers = {"stdout": _Classifier(), "stderr": _Classifier()}
    proc = subprocess.Popen(
        plan.argv,
        cwd=plan.cwd,
        env=dict(plan.env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, so a kill reaches everything it started
    )
    log.info("started pid {}: {}", proc.pid, " ".join(plan.argv))
    timed_out = cancelled = False

    def emit(stream: str, line: str) -> None:
        if tail and _PROGRESS.search(line) and _PROGRESS.search(tail[-1]):
            tail[-1] = line  # keep a progress bar's latest redraw, not all of them
        else:
            tail.append(line)
        log.log(classifiers[stream].level(line), "{}", line)
        if on_line is not None:
            on_line(line)

    with selectors.DefaultSelector() as selector:
        for stream, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            assert pipe is not None  # noqa: S101 - both are PIPE above
            selector.register(pipe, selectors.EVENT_READ, (stream, LineSplitter()))
        exited_at: float | None = None
        while selector.get_map():
            now = time.perf_counter()
            if exited_at is None and not (timed_out or cancelled):
                timed_out = deadline is not None and now >= deadline
                cancelled = cancel is not None and cancel.is_set()
                if timed_out or cancelled:
                    _terminate_group(proc)
            if exited_at is None and proc.poll() is not None:
                exited_at = now
                # The script is gone; whatever it left in its group would hold the pipes open.
                _kill_group(proc.pid, signal.SIGKILL)
            if exited_at is not None and now - exited_at > DRAIN_S:
                break  # something outside the group still holds the pipes: stop reading
            # Wake up now and then to notice an exit, a timeout or a cancel even when silent.
            wait = POLL_S if deadline is None else min(POLL_S, max(deadline - now, 0.0))
            for key, _ in selector.select(wait):
                stream, splitter = key.data
                data = os.read(key.fd, 1 << 16)
                lines = splitter.feed(data) if data else splitter.close()
                for line in lines:
                    emit(stream, line)
                if not data:
                    selector.unregister(key.fileobj)
    returncode = proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    duration = time.perf_counter() - started
    log.info("pid {} exited with {} after {:.1f} s", proc.pid, returncode, duration)
    return RunOutcome(
        returncode=None if timed_out or cancelled else returncode,
        duration_s=duration,
        log_tail=tuple(tail),
        timed_out=timed_out,
        cancelled=cancelled,
    )


def _terminate_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL it if the script outlives the grace period."""
    _kill_group(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(KILL_GRACE_S)
    _kill_group(proc.pid, signal.SIGKILL)


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is empty
        os.killpg(pgid, sig)
