"""Run a LaunchPlan: stream its output to the log, keep a bounded tail, enforce the timeout.

stdout and stderr share one pipe, read by one loop (no reader threads): lines keep their order,
memory stays bounded whatever the child prints, and a child that never closes its output cannot
hang the caller past its timeout.

The loop works on what one read returns, not line by line where it can: a script may print
hundreds of MiB (tqdm redraws, per-frame lines), and the launcher should keep up with a plain
``for line in proc.stdout``.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import dataclasses
import functools
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from loguru import logger

from nerfcache._procs import kill_leftovers
from nerfcache.launch import RUN_VARIABLE, LaunchPlan

__all__ = ["LineClassifier", "LineSplitter", "RunOutcome", "run_plan"]

MAX_LINE_CHARS = 4096
TAIL_LINES = 40
KILL_GRACE_S = 5.0
DRAIN_S = 2.0
POLL_S = 0.2
READ_BYTES = 1 << 16  # all a pipe holds on Linux by default
_TRUNCATED = " [line truncated]"
_PROGRESS = re.compile(r"\d+%\|")
_WARNING = re.compile(r"\bwarn(ing)?\b", re.IGNORECASE)
_ERROR = re.compile(r"\b(error|exception|fatal)\b", re.IGNORECASE)
# A line that is not progress holds one of these, lowercased, if it is a traceback's start or
# matches one of the two patterns above: "excep", not "exception", because re's IGNORECASE also
# matches "i" to the Turkish dotted and dotless I.
_LEVEL_WORDS = ("traceback (most recent call last)", "error", "excep", "fatal", "warn")
_TRACEBACK = "Traceback (most recent call last)"


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """How a run ended."""

    returncode: int | None
    duration_s: float
    log_tail: tuple[str, ...]
    timed_out: bool = False
    cancelled: bool = False


class LineSplitter:
    r"""Split a byte stream into lines on ``\n`` and ``\r`` (tqdm redraws), bounded in memory.

    Lines are decoded as UTF-8 with replacement characters (a character split between two
    feeds is decoded whole), empty lines are dropped, and a line longer than ``max_chars``
    characters is cut there and marked "[line truncated]".
    """

    def __init__(self, max_chars: int = MAX_LINE_CHARS) -> None:
        self._max = max_chars
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""  # the line begun but not ended, at most max_chars + 1 characters

    def feed(self, data: bytes) -> list[str]:
        """The lines that ``data`` completes."""
        return self._split(self._decoder.decode(data))

    def close(self) -> list[str]:
        """What is left after the stream ended."""
        return self._split(self._decoder.decode(b"", final=True) + "\n")

    def _split(self, text: str) -> list[str]:
        # A few passes in C over the whole read, rather than a few Python steps per line.
        text = (self._partial + text).replace("\r", "\n")
        lines = text.split("\n")
        self._partial = lines.pop()[: self._max + 1]
        if _has_long_line(text, self._max):
            lines = [
                line[: self._max] + _TRUNCATED if len(line) > self._max else line for line in lines
            ]
        return list(filter(None, lines))


def _has_long_line(text: str, limit: int) -> bool:
    """Whether ``text`` has more than ``limit`` characters between two newlines or its ends.

    In a few steps of about ``limit`` characters each, rather than a length per line.
    """
    start = 0
    while len(text) - start > limit:
        newline = text.rfind("\n", start, start + limit + 1)
        if newline < 0:
            return True
        start = newline + 1
    return False


class LineClassifier:
    """Pick a log level for each line: tracebacks and errors at ERROR, progress at DEBUG."""

    def __init__(self) -> None:
        self._in_traceback = False

    def levels(self, lines: list[str]) -> list[str]:
        """The level of each line, in order."""
        # The usual read holds nothing but plain lines and progress bars: a few scans of the
        # whole read cost less than two case-insensitive regexes per line.
        text = "\n".join(lines).lower()
        if self._in_traceback or any(word in text for word in _LEVEL_WORDS):
            return [self.level(line) for line in lines]
        if "%|" in text:
            return ["DEBUG" if _is_progress(line) else "INFO" for line in lines]
        return ["INFO"] * len(lines)

    def level(self, line: str) -> str:
        """The level of one line, following a traceback from its first line to its last."""
        if line.startswith(_TRACEBACK):
            self._in_traceback = True
            return "ERROR"
        if self._in_traceback:
            # A traceback ends with its unindented "SomeError: message" line.
            self._in_traceback = line[:1].isspace() or not line
            return "ERROR"
        if _is_progress(line):
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
    group are killed when it exits, and so is the group if anything here raises. So are those
    that left the group (a daemon in a session of its own), found by the run id the plan puts
    in their environment (``RUN_VARIABLE``, ``_procs.kill_leftovers``).
    """
    return _Run(plan, timeout, cancel, on_line, log).wait()


class _Run:
    """One child process and the loop that watches it."""

    def __init__(
        self,
        plan: LaunchPlan,
        timeout: float | None,
        cancel: threading.Event | None,
        on_line: Callable[[str], None] | None,
        log: Any,
    ) -> None:
        self.plan = plan
        self.swept: set[int] = set()  # the run's processes killed by their mark
        self.started = time.perf_counter()
        self.deadline = None if timeout is None else self.started + timeout
        self.cancel = cancel
        self.on_line = on_line
        self.log = log
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.classifier = LineClassifier()
        self.timed_out = self.cancelled = False
        self.proc = subprocess.Popen(
            (*_die_with_parent(), *plan.argv),
            cwd=plan.cwd,
            env=dict(plan.env),
            stdin=subprocess.DEVNULL,
            # One pipe for both streams: lines keep the order the script wrote them in (its
            # tqdm bars go to stderr, its markers to stdout: progress stages need the order),
            # and neither stream can fill up while the other is being read.
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a kill reaches all it started
        )
        log.info("started pid {}: {}", self.proc.pid, " ".join(plan.argv))

    def wait(self) -> RunOutcome:
        proc = self.proc
        try:
            self._pump()
            # The pipes are closed, yet a script that closed its output may still be running.
            while not _exited(proc):
                self._check_stop()
                _wait_exit(proc, POLL_S)
        finally:
            if not _exited(proc):  # an error or an interrupt: never leave the run unwatched
                _terminate_group(proc)
            _kill_group(proc.pid, signal.SIGKILL)  # leftovers, while the group id is ours
            self._kill_escaped()
            if self.swept:
                self.log.info(
                    "killed {} leftover process(es) of the run, found by its {} mark",
                    len(self.swept),
                    RUN_VARIABLE,
                )
            returncode = proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        duration = time.perf_counter() - self.started
        self.log.info("pid {} exited with {} after {:.1f} s", proc.pid, returncode, duration)
        stopped = self.timed_out or self.cancelled
        return RunOutcome(
            returncode=None if stopped else returncode,
            duration_s=duration,
            log_tail=tuple(self.tail),
            timed_out=self.timed_out,
            cancelled=self.cancelled,
        )

    def _pump(self) -> None:
        """Read the output until it closes, watching the clock, the cancel event and exit."""
        with selectors.DefaultSelector() as selector:
            assert self.proc.stdout is not None  # noqa: S101 - a PIPE above
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            splitter = LineSplitter()
            exited_at: float | None = None
            while selector.get_map():
                if exited_at is None:
                    self._check_stop()
                    if _exited(self.proc):
                        exited_at = time.perf_counter()
                        # The script is gone; what it left would hold the pipe.
                        _kill_group(self.proc.pid, signal.SIGKILL)
                        self._kill_escaped()
                elif time.perf_counter() - exited_at > DRAIN_S:
                    return  # something outside the group still holds the pipe: stop reading
                # Wake up now and then to notice an exit, a timeout or a cancel when silent.
                for key, _ in selector.select(POLL_S):
                    data = os.read(key.fd, READ_BYTES)
                    self._emit(splitter.feed(data) if data else splitter.close())
                    if not data:
                        selector.unregister(key.fileobj)

    def _kill_escaped(self) -> None:
        """SIGKILL the run's processes, also those that left its group (a double-forked daemon).

        Run after the group was killed: what is found then either escaped it or is still dying.
        """
        if run_id := self.plan.env.get(RUN_VARIABLE):
            self.swept |= kill_leftovers(run_id)

    def _check_stop(self) -> None:
        """Terminate the group once the deadline passes or the cancel event is set."""
        if self.timed_out or self.cancelled:
            return
        self.timed_out = self.deadline is not None and time.perf_counter() >= self.deadline
        self.cancelled = self.cancel is not None and self.cancel.is_set()
        if self.timed_out or self.cancelled:
            _terminate_group(self.proc)

    def _emit(self, lines: list[str]) -> None:
        """Pass each line to the tail, to the log at its level and to ``on_line``."""
        _add_to_tail(self.tail, lines)
        log, on_line = self.log, self.on_line
        # Working out levels is the dearest part of a line: skip it when no sink takes even an
        # error from here, as for a library by default (the "nerfcache" logger is disabled).
        # The classifier then misses those lines; a traceback that began in them is no longer
        # followed once someone listens again.
        if lines and _listens(log, "ERROR"):
            heard = {"ERROR": True}  # level -> whether anyone listens, asked once per read
            for line, level in zip(lines, self.classifier.levels(lines), strict=True):
                if level not in heard:
                    heard[level] = _listens(log, level)
                if heard[level]:
                    log.log(level, "{}", line)
                if on_line is not None:
                    on_line(line)
        elif on_line is not None:
            for line in lines:
                on_line(line)


class _Heard(Exception):
    """Raised by the probe of ``_listens`` when loguru evaluates it."""


def _heard() -> str:
    raise _Heard


def _listens(log: Any, level: str) -> bool:
    """Whether a sink takes records at ``level`` from this module, without logging one.

    loguru has no public ``isEnabledFor``; its migration guide's stand-in is ``opt(lazy=True)``,
    whose arguments are called only for a record that some sink's level admits from an enabled
    module. This probe's argument raises when it is called, so nothing is logged.
    """
    try:
        log.opt(lazy=True).log(level, "{}", _heard)
    except _Heard:
        return True
    return False


def _add_to_tail(tail: collections.deque[str], lines: list[str]) -> None:
    """Append ``lines``, keeping a progress bar's latest redraw rather than all of them."""
    recent = lines[-TAIL_LINES:]
    if "%|" not in "\n".join(recent):
        # No progress bar among the last lines: they are the tail's newest entries as they are,
        # and the lines before them would have been pushed out.
        tail.extend(recent)
        return
    for line in lines:
        if tail and _is_progress(line) and _is_progress(tail[-1]):
            tail[-1] = line
        else:
            tail.append(line)


def _is_progress(line: str) -> bool:
    """Whether ``line`` is a tqdm redraw (a cheap test first: this runs for every line)."""
    return "%|" in line and _PROGRESS.search(line) is not None


@functools.cache
def _die_with_parent() -> tuple[str, ...]:
    """A prefix that makes the script die with its launcher, where the system offers one.

    The script runs in a session of its own (so a timeout can kill its whole group), which also
    means a launcher killed with SIGKILL would leave it running on the GPU. util-linux's
    ``setpriv --pdeathsig`` sets PR_SET_PDEATHSIG and then execs the script, in the same
    process; Python's ``preexec_fn`` could do the same but is unsafe in threaded programs.
    """
    setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
    if setpriv is None:
        return ()
    # util-linux before 2.33 has setpriv without --pdeathsig.
    help_text = subprocess.run(
        [setpriv, "--help"], capture_output=True, text=True, check=False, timeout=10
    ).stdout
    return (setpriv, "--pdeathsig", "KILL", "--") if "--pdeathsig" in help_text else ()


def _terminate_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL it if the script outlives the grace period."""
    _kill_group(proc.pid, signal.SIGTERM)
    if not _wait_exit(proc, KILL_GRACE_S):
        _kill_group(proc.pid, signal.SIGKILL)
        _wait_exit(proc, KILL_GRACE_S)


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether the script has exited, without reaping it.

    Until it is reaped its pid stays reserved, so killing its process group afterwards cannot
    reach a stranger that reused the number.
    """
    if proc.returncode is not None:
        return True
    if not hasattr(os, "waitid"):  # macOS
        return proc.poll() is not None
    try:
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        return os.waitid(os.P_PID, proc.pid, flags) is not None
    except ChildProcessError:
        return True


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the script to exit (without reaping it)."""
    deadline = time.monotonic() + timeout
    pause = 0.0005  # an exit usually follows its pipe's end within a millisecond: start short
    while not _exited(proc):
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.01)
    return True


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is empty
        os.killpg(pgid, sig)
