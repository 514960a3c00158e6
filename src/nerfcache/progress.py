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
# Rough share of a cold run's time per stage, in the seed's proportions (PTI : 3DMM : render
# about 10 : 2 : 3). Waiting stages take no share: they say nothing about the work left.
_WEIGHTS = {"loading": 0.5, "pti": 10.0, "fitting": 2.0, "rendering": 3.0, "encoding": 0.5}
_TQDM = re.compile(r"(\d+)/(\d+)\s*\[")
MIN_INTERVAL_S = 0.25


@dataclasses.dataclass(frozen=True)
class ProgressEvent:
    """Where a run is.

    ``fraction`` is the progress within ``stage`` when the script tells it (tqdm's ``n/total``),
    ``overall`` an estimate for the whole run in [0, 1]. A stage a warm cache makes unnecessary
    is reported once with ``skipped=True``.
    """

    stage: str
    fraction: float | None
    overall: float
    message: str
    elapsed_s: float
    skipped: bool = False


class ProgressTracker:
    """Follow one run: stages from the script's markers, fractions from its tqdm redraws.

    Events go to ``emit``; redraws within one stage are throttled to one per
    ``MIN_INTERVAL_S`` (a stage change, a skip and the end always go through).
    """

    def __init__(self, emit: Callable[[ProgressEvent], object]) -> None:
        self._emit = emit
        self._started = time.monotonic()
        self._stage = ""
        self._fraction: float | None = None
        self._last_sent = 0.0
        self._planned = list(_WEIGHTS)
        self._overall = 0.0

    def plan(self, *, pti: bool, fitting: bool) -> None:
        """Say which expensive stages this run will do; the others are reported as skipped."""
        for stage, runs in (("pti", pti), ("fitting", fitting)):
            if not runs:
                self._planned.remove(stage)
                self._send(stage, None, "loaded from the cache", skipped=True)

    def stage(self, stage: str, message: str = "") -> None:
        """Enter ``stage`` (no-op if already there)."""
        if stage != self._stage:
            self._stage, self._fraction = stage, None
            self._send(stage, None, message or stage.replace("_", " "))

    def line(self, line: str) -> None:
        """Read one line of the script's output."""
        stage = self._stage_for(line)
        if stage is not None:
            self.stage(stage, line.strip())
        match = _TQDM.search(line) if "%|" in line else None
        if match and self._stage in _WEIGHTS and int(match[2]) > 0:
            fraction = min(int(match[1]) / int(match[2]), 1.0)
            self._fraction = fraction
            if time.monotonic() - self._last_sent >= MIN_INTERVAL_S or fraction >= 1.0:
                self._send(self._stage, fraction, line.strip())

    def _stage_for(self, line: str) -> str | None:
        # Markers of the real scripts (DESIGN.md section 2): "Loading networks from ...",
        # tqdm bars, "Processing frames", "video processing .. ".
        if line.startswith("Loading networks from"):
            return "loading"
        if "Processing frames" in line:
            return "rendering"
        if line.startswith("video processing"):
            return "encoding"
        if "fitting" in line.lower() and "fitting" in self._planned:
            return "fitting"
        if self._stage == "loading" and "pti" in self._planned and _TQDM.search(line):
            return "pti"  # PTI's bar has no description: the first bar after loading
        return None

    def overall(self) -> float:
        """Estimated fraction of the whole run that is done; it never goes back."""
        if self._stage == "done":
            self._overall = 1.0
        elif self._stage in self._planned:
            total = sum(_WEIGHTS[s] for s in self._planned)
            index = self._planned.index(self._stage)
            done = sum(_WEIGHTS[s] for s in self._planned[:index])
            done += _WEIGHTS[self._stage] * (self._fraction or 0.0)
            self._overall = max(self._overall, min(done / total, 1.0))
        return self._overall

    def _send(
        self, stage: str, fraction: float | None, message: str, *, skipped: bool = False
    ) -> None:
        self._last_sent = time.monotonic()
        overall = self.overall()
        self._emit(
            ProgressEvent(
                stage=stage,
                fraction=fraction,
                overall=overall,
                message=message,
                elapsed_s=self._last_sent - self._started,
                skipped=skipped,
            )
        )
