from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest

from nerfcache import ProgressEvent, generate_video
from nerfcache.progress import MIN_INTERVAL_S, STAGES, ProgressTracker
from nerfcache.testing import FakeProject
from tests.progress_replays import (
    AUDIO2EXP,
    COLD,
    FRAMES,
    MEL,
    NON_RIGID,
    PTI,
    PTI_ONLY,
    PTI_PROJECTION,
    PTI_TUNING,
    REPLAYS,
    RIGID,
    START,
    Bar,
    Replay,
    lines,
)

COLD_PLAN = {"pti": True, "fitting": True}
WARM_PLAN = {"pti": False, "fitting": False}
PTI_ONLY_PLAN = {"pti": False, "fitting": True}
replays = pytest.mark.parametrize(
    ("replay", "plan", "expected"),
    [pytest.param(replay, plan, expected, id=name) for name, replay, plan, expected in REPLAYS],
)
each_replay = pytest.mark.parametrize(
    ("replay", "plan"), [pytest.param(replay, plan, id=name) for name, replay, plan, _ in REPLAYS]
)


class Clock:
    """A clock the test moves by hand: no sleeps, no real time."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Run:
    """A tracker fed as generate.py feeds it: plan, "loading", the script's lines, the end."""

    def __init__(self, plan: dict[str, bool], *, seconds_per_line: float = 1.0) -> None:
        self.clock = Clock()
        self.seconds_per_line = seconds_per_line
        self.events: list[ProgressEvent] = []
        self.tracker = ProgressTracker(self.events.append, clock=self.clock)
        self.tracker.plan(**plan)
        self.tracker.stage("loading", "starting the NeRF script")

    def feed(self, replay: Sequence[str | Bar]) -> list[float]:
        """Read the lines; return ``overall()`` after each one."""
        overall = []
        for line in lines(replay):
            self.clock.now += self.seconds_per_line
            self.tracker.line(line)
            overall.append(self.tracker.overall())
        return overall

    def finish(self) -> list[ProgressEvent]:
        self.tracker.stage("done", "video ready")
        return self.events


def entered(events: list[ProgressEvent]) -> list[tuple[str, bool]]:
    """The stages in the order they were entered (or reported skipped)."""
    seen = [(e.stage, e.skipped) for e in events]
    return [s for i, s in enumerate(seen) if i == 0 or seen[i - 1] != s]


def entry(events: list[ProgressEvent], stage: str) -> float:
    """``overall`` when ``stage`` was entered."""
    return next(e.overall for e in events if e.stage == stage and not e.skipped)


def fractions(events: list[ProgressEvent], stage: str) -> list[float]:
    return [e.fraction for e in events if e.stage == stage and e.fraction is not None]


def fraction_at(events: list[ProgressEvent], line: str) -> float:
    """``fraction`` of the event that ``line`` made."""
    fraction = next(e.fraction for e in events if e.message == line)
    assert fraction is not None
    return fraction


@replays
def test_a_replay_enters_the_stages_in_order(replay, plan, expected) -> None:
    run = Run(plan)
    run.feed(replay)
    events = run.finish()
    assert entered(events) == [*expected, ("encoding", False), ("done", False)]
    # Each skipped stage exactly once, at its place in the run (after loading, not before).
    assert [e.stage for e in events if e.skipped] == [s for s, skipped in expected if skipped]
    assert all(e.stage in STAGES for e in events)


@each_replay
def test_overall_never_goes_back_and_stays_in_range(replay, plan) -> None:
    run = Run(plan)
    run.feed(replay)
    events = run.finish()
    overall = [e.overall for e in events]
    assert overall == sorted(overall)
    assert all(0.0 <= value <= 1.0 for value in overall)
    assert overall[-1] == 1.0
    assert all(e.fraction is None or 0.0 <= e.fraction <= 1.0 for e in events)
    elapsed = [e.elapsed_s for e in events]
    assert elapsed == sorted(elapsed)


@each_replay
def test_overall_rises_through_every_bar(replay, plan) -> None:
    run = Run(plan)
    for item in replay:
        overall = run.feed([item])
        if isinstance(item, Bar):
            redraws = [
                value for line, value in zip(item.lines(), overall, strict=True) if "%|" in line
            ]
            assert all(a < b for a, b in itertools.pairwise(redraws)), item


def test_the_pti_tuning_moves_overall_and_stopping_early_still_ends_pti() -> None:
    run = Run(COLD_PLAN)
    run.feed([*START, *PTI[:5]])
    tuning = run.feed([PTI_TUNING])
    assert all(a < b for a, b in itertools.pairwise(tuning))  # not flat after the projection
    run.feed([*PTI[6:], *AUDIO2EXP])
    assert run.tracker.overall() == tuning[-1]
    run.feed(["start rigid fitting"])
    events = run.finish()
    # The tuning stopped at 1234/2000: the next marker counts all of PTI as done.
    assert entry(events, "fitting") > tuning[-1]
    # Within PTI both bars count: the projection is its first third, the tuning the rest.
    assert fraction_at(events, PTI_PROJECTION.lines()[-1]) == pytest.approx(1 / 3)
    assert 1 / 3 < fractions(events, "pti")[-1] < 1.0


def test_a_tuning_as_long_as_the_projection_is_still_a_bar_of_its_own() -> None:
    run = Run(COLD_PLAN)
    projection = run.feed([*START, *PTI[:5]])[-1]
    tuning = run.feed([Bar("", 1000, rate=6.0)])  # SingleIDCoach's own default: 1000 steps
    assert tuning[0] == projection  # a new bar, from 0 again: the tuning's start
    assert all(a < b for a, b in itertools.pairwise(tuning))
    run.feed(["start rigid fitting"])
    assert entered(run.events)[-1] == ("fitting", False)


def test_stage_shares_follow_the_seed_proportions() -> None:
    run = Run(COLD_PLAN)
    run.feed(COLD)
    events = run.finish()
    pti = entry(events, "fitting") - entry(events, "pti")
    fitting = entry(events, "rendering") - entry(events, "fitting")
    rendering = entry(events, "encoding") - entry(events, "rendering")
    assert pti / fitting == pytest.approx(10 / 2)
    assert rendering / fitting == pytest.approx(3 / 2)


def test_rendering_covers_the_audio_features_then_the_frames() -> None:
    run = Run(WARM_PLAN)
    run.feed([*START, *AUDIO2EXP])
    mel = run.feed([MEL])
    frames = run.feed([FRAMES])
    events = run.finish()
    assert entered(events)[-2:] == [("rendering", False), ("done", False)]
    assert mel[0] < mel[-1] <= frames[0] < frames[-1]
    rendering = fractions(events, "rendering")
    assert rendering == sorted(rendering)
    # The audio features are a small first part of rendering, which ends with the last frame.
    assert 0.0 < fraction_at(events, MEL.lines()[-1]) < 0.1
    assert rendering[-1] == 1.0


def test_a_warm_run_reports_its_skips_after_loading_with_the_overall_reached() -> None:
    run = Run(WARM_PLAN)
    assert [e.stage for e in run.events] == ["loading"]  # nothing about PTI before it
    assert run.events[0].overall == 0.0
    run.feed([*START, *AUDIO2EXP, MEL])
    skips = [e for e in run.events if e.skipped]
    assert [e.stage for e in skips] == ["pti", "fitting"]
    assert all(e.overall == pytest.approx(entry(run.events, "rendering")) for e in skips)
    assert all(e.overall > 0.0 for e in skips)


HOSTILE_LINES = [
    "Using custom cache directory: /data/fitting stuff/Processing frames/",
    "Using character-based cache directory: character/start rigid fitting",
    "Deleted folder: /data/out/video processing .. /epoch_0_final",
    "Deleted file: /data/start non-rigid fitting/out_refine.mp4",
    "[NeRF] character: Processing frames",
    "    print('start rigid fitting')",  # a traceback quotes the script's source
    "FileNotFoundError: [Errno 2] No such file: '/in/mel:: 100%|#| 1/1 [x'",
    "/home/u/Processing frames/a.py:3: UserWarning: Processing frames:  50%|#####     | 50/100 [",
    "Processing frames (retry):   5%|5         | 5/100 [00:01<00:19,  5.00it/s]",
    "Downloading:  50%|#####     | 5/10 [00:01<00:01,  5.00it/s]",
    "/data/Processing frames/mel 50%|#####     | 5/10 [00:01<00:01,  5.00it/s]",
    "  0%|          | 0/0 [00:00<?, ?it/s]",  # no steps to count
]
POSITIONS: dict[str, tuple[dict[str, bool], Replay]] = {
    "loading": (COLD_PLAN, START),
    "pti": (COLD_PLAN, [*START, *PTI[:4], *PTI_PROJECTION.lines()[:3]]),
    "fitting": (COLD_PLAN, [*START, *PTI, *AUDIO2EXP, "start rigid fitting"]),
    "rendering": (WARM_PLAN, [*START, *AUDIO2EXP, *FRAMES.lines()[:3]]),
}


@pytest.mark.parametrize("position", list(POSITIONS))
@pytest.mark.parametrize("hostile", HOSTILE_LINES)
def test_a_line_that_is_no_marker_moves_nothing(position: str, hostile: str) -> None:
    plan, before = POSITIONS[position]
    run = Run(plan)
    run.feed(before)
    seen, overall = len(run.events), run.tracker.overall()
    assert run.events[-1].stage == position
    run.feed([hostile])
    assert {(e.stage, e.skipped) for e in run.events[seen:]} <= {(position, False)}
    assert run.tracker.overall() == overall


STRAY = Bar("", 1000)  # an untitled bar that is not the script's: a library's, a download's


@pytest.mark.parametrize(
    ("plan", "before"),
    [
        pytest.param(WARM_PLAN, START, id="warm-loading"),
        pytest.param(PTI_ONLY_PLAN, START, id="pti-only-loading"),
        pytest.param(COLD_PLAN, [*START, *PTI[:6]], id="cold-after-the-tuning"),
        pytest.param(COLD_PLAN, [*START, *PTI, *AUDIO2EXP, MEL], id="cold-rendering"),
    ],
)
def test_an_untitled_bar_begins_only_the_step_it_can_be(plan, before) -> None:
    run = Run(plan)
    run.feed(before)
    seen, overall = len(run.events), run.tracker.overall()
    run.feed([STRAY])
    assert run.events[seen:] == []
    assert run.tracker.overall() == overall


def test_entering_a_stage_the_run_is_past_changes_nothing() -> None:
    run = Run(COLD_PLAN)
    run.feed([*START, *PTI, *AUDIO2EXP, "start rigid fitting"])
    seen, overall = len(run.events), run.tracker.overall()
    run.tracker.stage("loading")
    run.tracker.stage("pti")
    run.tracker.stage("fitting")
    assert run.events[seen:] == []
    assert run.tracker.overall() == overall


def test_redraws_are_throttled_but_stages_skips_and_ends_go_through() -> None:
    run = Run(PTI_ONLY_PLAN, seconds_per_line=0.0)  # a frozen clock: every redraw is too soon
    run.feed(PTI_ONLY)
    events = run.finish()
    assert entered(events) == [
        ("loading", False),
        ("pti", True),
        ("fitting", False),
        ("rendering", False),
        ("encoding", False),
        ("done", False),
    ]
    # Besides the stage changes (no fraction) and the skip, only the ends of the bars.
    ends = [bar.lines()[-1] for bar in (RIGID, NON_RIGID, MEL, FRAMES)]
    assert [e.message for e in events if e.fraction is not None] == ends


def test_redraws_within_the_interval_are_dropped() -> None:
    run = Run(WARM_PLAN, seconds_per_line=0.1)
    run.feed([*START, *AUDIO2EXP, FRAMES])
    redraws = [e for e in run.events if e.fraction is not None and e.fraction < 1.0]
    assert 0 < len(redraws) < len(FRAMES.lines()) - 2
    gaps = [b.elapsed_s - a.elapsed_s for a, b in itertools.pairwise(redraws)]
    assert all(gap >= MIN_INTERVAL_S - 1e-9 for gap in gaps)


def test_a_line_with_carriage_returns_is_read_redraw_by_redraw() -> None:
    redraws = PTI_PROJECTION.lines()[:5]
    one_line, line_by_line = Run(COLD_PLAN), Run(COLD_PLAN)
    one_line.feed(["\r".join(["", *redraws, ""])])
    line_by_line.feed(redraws)
    assert entered(one_line.events) == [("loading", False), ("pti", False)]
    assert one_line.tracker.overall() == line_by_line.tracker.overall() > one_line.events[0].overall


def test_end_to_end_events_in_order(nerf_project: FakeProject) -> None:
    cold: list[ProgressEvent] = []
    warm: list[ProgressEvent] = []
    assert generate_video(
        nerf_project.audio,
        "ayanami",
        nerf_project.root / "1",
        "ffhq.pkl",
        settings=nerf_project.settings,
        on_progress=cold.append,
    )
    assert generate_video(
        nerf_project.audio,
        "ayanami",
        nerf_project.root / "2",
        "ffhq.pkl",
        settings=nerf_project.settings,
        on_progress=warm.append,
    )
    assert entered(cold) == [
        ("loading", False),
        ("pti", False),
        ("fitting", False),
        ("rendering", False),
        ("encoding", False),
        ("done", False),
    ]
    assert entered(warm) == [
        ("loading", False),
        ("pti", True),
        ("fitting", True),
        ("rendering", False),
        ("encoding", False),
        ("done", False),
    ]
    for events in (cold, warm):
        assert all(e.stage in STAGES for e in events)
        assert all(e.fraction is None or 0.0 <= e.fraction <= 1.0 for e in events)
        overall = [e.overall for e in events]
        assert overall == sorted(overall)
        assert overall[-1] == 1.0
        elapsed = [e.elapsed_s for e in events]
        assert elapsed == sorted(elapsed)


def test_a_failed_run_ends_with_failed(nerf_project: FakeProject) -> None:
    events: list[ProgressEvent] = []
    settings = nerf_project.with_env(FAKE_NERF_FAIL_AT="rendering")
    result = generate_video(
        nerf_project.audio,
        "ayanami",
        nerf_project.root / "1",
        "ffhq.pkl",
        settings=settings,
        on_progress=events.append,
    )
    assert not result
    assert events[-1].stage == "failed"
    assert "simulated failure in rendering" in events[-1].message


def test_an_async_callback_needs_the_async_api(nerf_project: FakeProject) -> None:
    async def on_progress(event: ProgressEvent) -> None:
        pass

    with pytest.raises(ValueError, match="agenerate_video"):
        generate_video(
            nerf_project.audio,
            "ayanami",
            nerf_project.root / "1",
            "ffhq.pkl",
            settings=nerf_project.settings,
            on_progress=on_progress,
        )
    assert nerf_project.calls() == []
