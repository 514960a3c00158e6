from __future__ import annotations

import pytest

import nerfcache.progress
from nerfcache import ProgressEvent, generate_video
from nerfcache.progress import STAGES, ProgressTracker
from nerfcache.testing import FakeProject


def track(*, pti: bool = True, fitting: bool = True) -> tuple[ProgressTracker, list[ProgressEvent]]:
    events: list[ProgressEvent] = []
    tracker = ProgressTracker(events.append)
    tracker.plan(pti=pti, fitting=fitting)
    return tracker, events


@pytest.fixture(autouse=True)
def _no_throttle(monkeypatch) -> None:
    monkeypatch.setattr(nerfcache.progress, "MIN_INTERVAL_S", 0.0)


def test_stages_from_the_real_markers() -> None:
    tracker, events = track()
    for line in [
        'Loading networks from "/models/ffhq.pkl"...',
        "  0%|          | 0/2000 [00:00<?, ?it/s]",
        " 50%|#####     | 1000/2000 [01:00<01:00, 16.6it/s]",
        "rigid fitting",
        " 40%|####      | 200/500 [00:10<00:15, 20.0it/s]",
        "Processing frames:  37%|###7      | 37/100 [00:12<00:21,  2.9it/s]",
        "video processing .. ",
    ]:
        tracker.line(line)
    tracker.stage("done")
    stages = [e.stage for e in events]
    assert stages == [
        "loading",
        "pti",
        "pti",
        "pti",
        "fitting",
        "fitting",
        "rendering",
        "rendering",
        "encoding",
        "done",
    ]
    assert [e.fraction for e in events if e.stage == "pti"] == [None, 0.0, 0.5]
    assert [e.fraction for e in events if e.stage == "rendering"] == [None, 0.37]
    overall = [e.overall for e in events]
    assert overall == sorted(overall)
    assert overall[-1] == 1.0
    assert all(0.0 <= e.overall <= 1.0 for e in events)


def test_a_warm_run_reports_skipped_stages() -> None:
    tracker, events = track(pti=False, fitting=False)
    assert [(e.stage, e.skipped) for e in events] == [("pti", True), ("fitting", True)]
    tracker.line('Loading networks from "x"...')
    tracker.line("  0%|          | 0/100 [00:00<?, ?it/s]")  # not PTI: it is not planned
    tracker.line("Processing frames:  50%|#####     | 50/100 [00:01<00:01, 50it/s]")
    assert [e.stage for e in events[2:]] == ["loading", "loading", "rendering", "rendering"]
    # Rendering is now most of the remaining work: half of it done is well past a third.
    assert events[-1].overall > 0.4


def test_redraws_are_throttled(monkeypatch) -> None:
    monkeypatch.setattr(nerfcache.progress, "MIN_INTERVAL_S", 3600.0)
    tracker, events = track()
    tracker.line("Processing frames:   0%|          | 0/100 [00:00<?, ?it/s]")
    for n in range(1, 100):
        tracker.line(f"Processing frames:  {n}%|          | {n}/100 [00:00<?, ?it/s]")
    tracker.line("Processing frames: 100%|##########| 100/100 [00:00<?, ?it/s]")
    rendering = [e for e in events if e.stage == "rendering"]
    # The stage change, and the end of the bar; nothing in between.
    assert [e.fraction for e in rendering] == [None, 1.0]


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

    def order(events: list[ProgressEvent]) -> list[str]:
        seen = [e.stage for e in events if not e.skipped]
        return [s for i, s in enumerate(seen) if i == 0 or seen[i - 1] != s]

    assert order(cold) == ["loading", "pti", "fitting", "rendering", "encoding", "done"]
    assert order(warm) == ["loading", "rendering", "encoding", "done"]
    assert {e.stage for e in warm if e.skipped} == {"pti", "fitting"}
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
