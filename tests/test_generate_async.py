from __future__ import annotations

import asyncio
import threading

import pytest

from nerfcache import (
    CacheStatus,
    CharacterCache,
    GenerationCancelled,
    ProgressEvent,
    Settings,
    agenerate_video,
    generate_video,
    stream_video,
)
from nerfcache.cache import CACHE_FILES, PTI_FILES
from nerfcache.testing import FakeProject
from tests.conftest import lock_is_free, process_gone, published, staging_left, wait_until


async def until_stage(events: list[ProgressEvent], stage: str) -> None:
    while not any(e.stage == stage and not e.skipped for e in events):
        await asyncio.sleep(0.01)


async def cancel_at(
    project: FakeProject, stage: str, out: str, settings: Settings
) -> list[ProgressEvent]:
    """Start a run, cancel its task once it reports ``stage``, check that the cancel propagates."""
    events: list[ProgressEvent] = []
    task = asyncio.ensure_future(
        agenerate_video(
            project.audio,
            "ayanami",
            project.root / out,
            "ffhq.pkl",
            settings=settings,
            on_progress=events.append,
        )
    )
    await until_stage(events, stage)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return events


def test_agenerate_video_returns_the_same_result(nerf_project: FakeProject) -> None:
    events: list[ProgressEvent] = []

    async def main() -> bool:
        loop_thread = threading.get_ident()
        seen_threads: set[int] = set()

        async def on_progress(event: ProgressEvent) -> None:  # an async callback is fine here
            seen_threads.add(threading.get_ident())
            events.append(event)

        result = await agenerate_video(
            nerf_project.audio,
            "ayanami",
            nerf_project.root / "out",
            "ffhq.pkl",
            settings=nerf_project.settings,
            on_progress=on_progress,
        )
        await asyncio.sleep(0)  # let the last callback task run
        return bool(result) and seen_threads == {loop_thread}

    assert asyncio.run(main())
    assert (nerf_project.root / "out" / "output_NeRFFaceSpeech.mp4").is_file()
    assert events[-1].stage == "done"


def test_the_event_loop_keeps_running_during_a_run(nerf_project: FakeProject) -> None:
    settings = nerf_project.with_env(FAKE_NERF_RENDER_S="0.5")

    async def main() -> int:
        ticks = 0
        task = asyncio.ensure_future(
            agenerate_video(
                nerf_project.audio,
                "ayanami",
                nerf_project.root / "o",
                "ffhq.pkl",
                settings=settings,
            )
        )
        while not task.done():
            ticks += 1
            await asyncio.sleep(0.01)
        assert await task
        return ticks

    assert asyncio.run(main()) > 5


def test_cancel_during_a_cold_build(nerf_project: FakeProject) -> None:
    settings = nerf_project.with_env(FAKE_NERF_PTI_S="60", FAKE_NERF_SPAWN_CHILD="1")
    events = asyncio.run(cancel_at(nerf_project, "pti", "o", settings))
    (call,) = nerf_project.calls()
    child = call.start["child_pid"]
    assert isinstance(child, int)
    assert process_gone(call.pid) and process_gone(child)  # killed before the cancel returned
    assert staging_left(nerf_project) == []
    assert lock_is_free(nerf_project.character_dir() / ".nerfcache" / "build.lock")
    assert published(nerf_project) == set()
    assert events[-1].stage == "failed"


def test_cancel_while_waiting_for_another_build(nerf_project: FakeProject) -> None:
    builder_cancel = threading.Event()
    builder_errors: list[BaseException] = []
    slow = nerf_project.with_env(FAKE_NERF_PTI_S="60")

    def builder() -> None:
        try:
            generate_video(
                nerf_project.audio,
                "ayanami",
                nerf_project.root / "a",
                "ffhq.pkl",
                settings=slow,
                cancel=builder_cancel,
            )
        except GenerationCancelled as error:
            builder_errors.append(error)

    thread = threading.Thread(target=builder)
    thread.start()
    assert wait_until(lambda: len(nerf_project.calls()) == 1)
    try:
        asyncio.run(cancel_at(nerf_project, "waiting_for_cache", "b", nerf_project.settings))
        assert len(nerf_project.calls()) == 1  # the waiter never started a script
        assert (
            len([p for p in staging_left(nerf_project) if p.suffix == ".lock"]) == 1
        )  # only the builder's run
    finally:
        builder_cancel.set()
        thread.join(30)
    assert len(builder_errors) == 1
    assert staging_left(nerf_project) == []
    assert wait_until(lambda: process_gone(nerf_project.calls()[0].pid))


def test_cancel_during_a_warm_render_keeps_the_cache(nerf_project: FakeProject) -> None:
    assert generate_video(
        nerf_project.audio,
        "ayanami",
        nerf_project.root / "1",
        "ffhq.pkl",
        settings=nerf_project.settings,
    )
    settings = nerf_project.with_env(FAKE_NERF_RENDER_S="60")

    asyncio.run(cancel_at(nerf_project, "rendering", "2", settings))
    warm_call = nerf_project.calls()[-1]
    assert process_gone(warm_call.pid)
    assert staging_left(nerf_project) == []
    for lock in ("build.lock", "state.lock"):
        assert lock_is_free(nerf_project.character_dir() / ".nerfcache" / lock)
    assert CharacterCache(nerf_project.settings, "ayanami").status() is CacheStatus.WARM
    assert not (nerf_project.root / "2").exists()


def test_asyncio_timeout_cancels_the_run(nerf_project: FakeProject) -> None:
    settings = nerf_project.with_env(FAKE_NERF_FIT_S="60")

    async def main() -> None:
        async with asyncio.timeout(1):
            await agenerate_video(
                nerf_project.audio,
                "ayanami",
                nerf_project.root / "o",
                "ffhq.pkl",
                settings=settings,
            )

    with pytest.raises(TimeoutError):
        asyncio.run(main())
    (call,) = nerf_project.calls()
    assert process_gone(call.pid)
    assert staging_left(nerf_project) == []
    assert published(nerf_project) == set(PTI_FILES)  # PTI had finished: kept


def test_stream_video_yields_progress_to_done(nerf_project: FakeProject) -> None:
    async def main() -> list[ProgressEvent]:
        return [
            event
            async for event in stream_video(
                nerf_project.audio,
                "ayanami",
                nerf_project.root / "o",
                "ffhq.pkl",
                settings=nerf_project.settings,
            )
        ]

    events = asyncio.run(main())
    assert events[-1].stage == "done"
    assert {"loading", "pti", "rendering"} <= {e.stage for e in events}


def test_leaving_the_stream_early_cancels_the_run(nerf_project: FakeProject) -> None:
    settings = nerf_project.with_env(FAKE_NERF_RENDER_S="60")

    async def main() -> None:
        stream = stream_video(
            nerf_project.audio, "ayanami", nerf_project.root / "o", "ffhq.pkl", settings=settings
        )
        async for event in stream:
            if event.stage == "rendering":
                break
        await stream.aclose()

    asyncio.run(main())
    (call,) = nerf_project.calls()
    assert process_gone(call.pid)
    assert staging_left(nerf_project) == []
    assert published(nerf_project) == set(CACHE_FILES)
