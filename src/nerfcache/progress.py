"""ProgressEvent, and the tracker that turns a NeRF script's output into events."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable

__all__ = ["STAGES", "ProgressEvent", "ProgressTracker"]

STAGES = (
    "queued",
    "waiting_for_cache",
    "loading",
    "pti",
    "fitting",
    "rendering",
    "encoding",
    "done",
    "failed",
)
MIN_INTERVAL_S = 0.25


@dataclasses.dataclass(frozen=True)
class _Step:
    """One span of the script's work: how it begins, what measures it, its share of the run."""

    stage: str
    weight: float
    line: str | None = None  # it begins with a line that starts with this text,
    bar: str | None = None  # else with its tqdm bar, of this description ("" = untitled)


# The real scripts' output, in order (DESIGN.md section 2): the only markers that move a run on.
# Weights are a cold run's time in the seed's proportions (PTI : 3DMM : render about 10 : 2 : 3);
# waiting stages take no share, they say nothing about the work left.
_STEPS = (
    _Step("loading", 0.5, line="Loading networks from"),
    _Step("pti", 10 / 3, bar=""),  # W projection (w_projector.py): 1000 steps
    _Step("pti", 20 / 3, bar=""),  # generator tuning: 2000 heavier steps, may stop early
    _Step("fitting", 0.5, line="start rigid fitting", bar=""),  # 1000 steps, landmarks only
    _Step("fitting", 1.5, line="start non-rigid fitting", bar=""),  # 500 rendered steps
    _Step("rendering", 0.2, bar="mel:"),  # SadTalker's audio features; warm runs start here
    _Step("rendering", 2.8, bar="Processing frames"),
    _Step("encoding", 0.5, line="video processing"),
)
_WORK = tuple(dict.fromkeys(step.stage for step in _STEPS))
# tqdm's line: "{desc}: {percentage}%|{bar}| {n}/{total} [..." (no "{desc}: " when untitled).
# Matched from the line's start, so a path that merely contains a bar's words is no bar.
_BAR = re.compile(r"(?:(?P<desc>.*?): )?\s*\d+%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*\[")


@dataclasses.dataclass(frozen=True)
class ProgressEvent:
    """Where a run is.

    ``fraction`` is the progress within ``stage`` when the script tells it (its tqdm bars
    together), ``overall`` an estimate for the whole run in [0, 1] that never goes back. A stage
    a warm cache makes unnecessary is reported once, with ``skipped=True``, when the run gets
    past its place.
    """

    stage: str
    fraction: float | None
    overall: float
    message: str
    elapsed_s: float
    skipped: bool = False


class ProgressTracker:
    """Follow one run: stages from the script's markers, fractions from its tqdm redraws.

    Events go to ``emit``; redraws are throttled to one per ``MIN_INTERVAL_S`` of ``clock``
    (a stage change, a skip and a bar's end always go through).
    """

    def __init__(
        self,
        emit: Callable[[ProgressEvent], object],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._emit = emit
        self._clock = clock
        self._started = clock()
        self._last_sent: float | None = None
        self._stage = ""
        self._step = -1  # index in _STEPS of the work the script is at
        self._bar: tuple[int, int] | None = None  # (n, total) of the bar measuring that step
        self._fraction = 0.0  # of that step
        self._skipped: frozenset[str] = frozenset()
        self._reported: set[str] = set()
        self._overall = 0.0
        self._update_ahead()

    def plan(self, *, pti: bool, fitting: bool) -> None:
        """Say which expensive stages this run will do; the others are reported as skipped.

        A skip is reported once the run gets past the stage's place (a warm run's skips come
        after loading, with the overall reached there), or at ``done``.
        """
        self._skipped = frozenset(s for s, runs in (("pti", pti), ("fitting", fitting)) if not runs)
        self._update_ahead()

    def stage(self, stage: str, message: str = "") -> None:
        """Enter ``stage`` (no-op if already there, or past it for the script's work stages)."""
        message = message or stage.replace("_", " ")
        if stage in _WORK:
            self._advance(next(i for i, s in enumerate(_STEPS) if s.stage == stage), message)
        elif stage != self._stage:
            if stage == "done":
                self._report_skips(len(_WORK))
            self._stage = stage
            self._send(stage, None, message, force=True)

    def line(self, line: str) -> None:
        r"""Read one line of the script's output (tqdm redraws split at ``\r``)."""
        # Called for every line a run prints (hundreds of MB at worst): the common case, a line
        # that is neither a bar nor a marker, costs two substring tests.
        if "\r" in line or "\n" in line:
            for text in re.split(r"[\r\n]", line):
                self._read(text)
        else:
            self._read(line)

    def overall(self) -> float:
        """Estimated fraction of the whole run that is done; it never goes back."""
        if self._stage == "done":
            self._overall = 1.0
        elif self._step >= 0:
            done = sum(self._weight(i) for i in range(self._step))
            done += self._weight(self._step) * self._fraction
            total = sum(self._weight(i) for i in range(len(_STEPS)))
            self._overall = max(self._overall, min(done / total, 1.0))
        return self._overall

    def _read(self, text: str) -> None:
        if "%|" in text:
            if match := _BAR.match(text):
                desc, n, total = match["desc"] or "", int(match["n"]), int(match["total"])
                self._redraw(desc, n, total, text.strip())
        elif text.startswith(self._markers):
            index = next(i for i, marker in self._marked if text.startswith(marker))
            self._advance(index, text.strip())

    def _redraw(self, desc: str, n: int, total: int, message: str) -> None:
        """Follow a tqdm redraw: the current step's bar moving, or the bar beginning a step."""
        if total <= 0:
            return
        if not self._measures(desc, n, total):
            begun = self._begun_by(desc)
            if begun is None:
                return  # someone else's bar (a download, a library): not the script's progress
            self._advance(begun, message)
        self._bar, self._fraction = (n, total), min(n / total, 1.0)
        # Most redraws are throttled away: decide that before computing the stage's fraction.
        last = self._last_sent
        if n >= total or last is None or self._clock() - last >= MIN_INTERVAL_S:
            self._send(self._stage, self._stage_fraction(), message, force=True)

    def _update_ahead(self) -> None:
        """Note the steps still to come that this run will do, and the lines that begin them."""
        self._ahead = tuple(
            i for i in range(self._step + 1, len(_STEPS)) if _STEPS[i].stage not in self._skipped
        )
        self._marked = tuple((i, m) for i in self._ahead if (m := _STEPS[i].line) is not None)
        self._markers = tuple(marker for _, marker in self._marked)

    def _measures(self, desc: str, n: int, total: int) -> bool:
        """Whether this redraw continues the bar of the step the script is at."""
        if self._step < 0 or _STEPS[self._step].bar != desc:
            return False
        return self._bar is None or (total == self._bar[1] and n >= self._bar[0])

    def _begun_by(self, desc: str) -> int | None:
        """The step still to come that a new bar of this description begins, if any."""
        return next(
            (i for i in self._ahead if _STEPS[i].line is None and _STEPS[i].bar == desc), None
        )

    def _advance(self, index: int, message: str) -> None:
        """Move on to step ``index``: the steps passed on the way count as done."""
        if index <= self._step:
            return  # the work never goes back
        self._step, self._bar, self._fraction = index, None, 0.0
        self._update_ahead()
        stage = _STEPS[index].stage
        if stage != self._stage:
            self._report_skips(_WORK.index(stage))
            self._stage = stage
            self._send(stage, None, message, force=True)
        else:
            self._send(stage, self._stage_fraction(), message)

    def _report_skips(self, before: int) -> None:
        """Report the skipped stages placed before ``_WORK[before]``, each once."""
        for stage in _WORK[:before]:
            if stage in self._skipped and stage not in self._reported:
                self._reported.add(stage)
                self._send(stage, None, "loaded from the cache", skipped=True, force=True)

    def _weight(self, index: int) -> float:
        step = _STEPS[index]
        return 0.0 if step.stage in self._skipped else step.weight

    def _stage_fraction(self) -> float:
        """Progress within the current stage: its steps together, in their weights."""
        stage = _STEPS[self._step].stage
        steps = [i for i, s in enumerate(_STEPS) if s.stage == stage]
        done = sum(_STEPS[i].weight for i in steps if i < self._step)
        done += _STEPS[self._step].weight * self._fraction
        return min(done / sum(_STEPS[i].weight for i in steps), 1.0)

    def _send(
        self,
        stage: str,
        fraction: float | None,
        message: str,
        *,
        skipped: bool = False,
        force: bool = False,
    ) -> None:
        now = self._clock()
        if not force and self._last_sent is not None and now - self._last_sent < MIN_INTERVAL_S:
            return
        self._last_sent = now
        self._emit(
            ProgressEvent(
                stage=stage,
                fraction=fraction,
                overall=self.overall(),
                message=message,
                elapsed_s=now - self._started,
                skipped=skipped,
            )
        )
