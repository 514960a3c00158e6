from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import pytest
from filelock import FileLock
from pydantic import ValidationError

from nerfcache import (
    ConfigurationError,
    GenerationCancelled,
    GenerationTimeout,
    ProgressEvent,
    Settings,
    generate_video,
)
from nerfcache.gpus import gpu_slot
from nerfcache.testing import FakeCall, FakeProject
from tests.conftest import run_workers, staging_left, wait_until


def most_at_once(calls: list[FakeCall]) -> int:
    """The largest number of fake runs alive at the same moment, from their logged intervals."""
    edges = []
    for call in calls:
        assert call.exit is not None
        edges += [(cast(float, call.start["t"]), 1), (cast(float, call.exit["t"]), -1)]
    alive = peak = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):  # an exit before a start at a tie
        alive += step
        peak = max(peak, alive)
    return peak


def warm_up(project: FakeProject) -> None:
    assert generate_video(
        project.audio, "ayanami", project.root / "w", "ffhq.pkl", settings=project.settings
    )


def test_no_gpus_means_no_limit_and_inherited_devices(
    nerf_project: FakeProject, monkeypatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    with gpu_slot(nerf_project.settings) as gpu:
        assert gpu is None
    warm_up(nerf_project)
    assert nerf_project.calls()[0].start["cuda_visible_devices"] == "7"
    assert not (nerf_project.settings.state_dir / "gpu-slots").exists()


@pytest.mark.parametrize("value", ["a", "0,,1", "0;1", "-1"])
def test_bad_gpu_lists_are_rejected(tmp_path: Path, value: str) -> None:
    with pytest.raises(ValidationError, match="gpus"):
        Settings(project_root=tmp_path, gpus=value)


def test_four_slots_twelve_warm_runs_never_more_than_four(
    nerf_project: FakeProject, tmp_path
) -> None:
    warm_up(nerf_project)
    settings = nerf_project.with_env(
        FAKE_NERF_RENDER_S="0.1", FAKE_NERF_BARRIER=f"{tmp_path / 'barrier'}:4"
    ).model_copy(update={"gpus": "0,1", "jobs_per_gpu": 2})

    def run(i: int):
        return generate_video(
            nerf_project.audio,
            "ayanami",
            nerf_project.root / f"o{i}",
            "ffhq.pkl",
            settings=settings,
        )

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(run, range(12)))
    assert all(results)
    calls = nerf_project.calls()[1:]
    assert len(calls) == 12
    # The barrier let no run finish until four rendered at once; the slots allowed no fifth.
    assert most_at_once(calls) == 4
    assert {c.start["cuda_visible_devices"] for c in calls} == {"0", "1"}
    assert {r.gpu for r in results} == {"0", "1"}
    for gpu in ("0", "1"):
        assert most_at_once([c for c in calls if c.start["cuda_visible_devices"] == gpu]) <= 2


WORKER = """
import json, sys
from concurrent.futures import ThreadPoolExecutor
from nerfcache import generate_video
def run(i):
    return generate_video(sys.argv[1], "ayanami", f"{sys.argv[2]}-{i}", "ffhq.pkl").ok
with ThreadPoolExecutor(3) as pool:
    print(json.dumps(list(pool.map(run, range(3)))))
"""


def test_two_processes_share_one_slot(nerf_project: FakeProject) -> None:
    warm_up(nerf_project)
    fast = {**nerf_project.settings.extra_env, "FAKE_NERF_RENDER_S": "0.05"}
    outputs = run_workers(nerf_project, WORKER, 2, gpus="3", extra_env=json.dumps(fast))
    assert outputs == [[True] * 3] * 2
    calls = nerf_project.calls()[1:]
    assert len(calls) == 6
    assert most_at_once(calls) == 1
    assert {c.start["cuda_visible_devices"] for c in calls} == {"3"}


def test_a_busy_host_reports_queued_and_cancels_cleanly(nerf_project: FakeProject) -> None:
    warm_up(nerf_project)
    settings = nerf_project.settings.model_copy(update={"gpus": "0"})
    slot = FileLock(settings.state_dir / "gpu-slots" / "gpu0-slot0.lock")
    slot.acquire()  # another process holds the only slot
    events: list[ProgressEvent] = []
    cancel = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            generate_video(
                nerf_project.audio,
                "ayanami",
                nerf_project.root / "q",
                "ffhq.pkl",
                settings=settings,
                on_progress=events.append,
                cancel=cancel,
            )
        except GenerationCancelled as error:
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert wait_until(lambda: any(e.stage == "queued" for e in events))
        cancel.set()
        thread.join(30)
    finally:
        slot.release()
    assert len(errors) == 1
    assert len(nerf_project.calls()) == 1  # only the warm-up ran
    assert staging_left(nerf_project) == []


def test_a_freed_slot_lets_the_queued_run_go(nerf_project: FakeProject) -> None:
    warm_up(nerf_project)
    settings = nerf_project.settings.model_copy(update={"gpus": "0"})
    slot = FileLock(settings.state_dir / "gpu-slots" / "gpu0-slot0.lock")
    slot.acquire()
    events: list[ProgressEvent] = []
    results = []
    thread = threading.Thread(
        target=lambda: results.append(
            generate_video(
                nerf_project.audio,
                "ayanami",
                nerf_project.root / "q",
                "ffhq.pkl",
                settings=settings,
                on_progress=events.append,
            )
        )
    )
    thread.start()
    try:
        assert wait_until(lambda: any(e.stage == "queued" for e in events))
    finally:
        slot.release()
    thread.join(30)
    assert results and results[0] and results[0].gpu == "0"


def test_a_slot_is_released_after_a_timeout_or_a_failure(nerf_project: FakeProject) -> None:
    warm_up(nerf_project)
    gpu = nerf_project.settings.model_copy(update={"gpus": "5"})
    slow = nerf_project.with_env(FAKE_NERF_RENDER_S="60").model_copy(update={"gpus": "5"})
    failing = nerf_project.with_env(FAKE_NERF_FAIL_AT="rendering").model_copy(update={"gpus": "5"})
    with pytest.raises(GenerationTimeout):
        generate_video(
            nerf_project.audio,
            "ayanami",
            nerf_project.root / "x",
            "ffhq.pkl",
            settings=slow,
            timeout=0.5,
        )
    assert not generate_video(
        nerf_project.audio, "ayanami", nerf_project.root / "y", "ffhq.pkl", settings=failing
    )
    slot = FileLock(gpu.state_dir / "gpu-slots" / "gpu5-slot0.lock")
    slot.acquire(timeout=0)  # free again
    slot.release()


def test_a_link_planted_at_a_slot_lock_is_refused_and_not_followed(
    nerf_project: FakeProject, tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere.txt"
    target.write_text("not yours")
    folder = nerf_project.settings.state_dir / "gpu-slots"
    folder.mkdir(parents=True)
    (folder / "gpu0-slot0.lock").symlink_to(target)
    settings = nerf_project.settings.model_copy(update={"gpus": "0"})
    with pytest.raises(ConfigurationError, match="cannot open the GPU slot lock") as info:
        generate_video(
            nerf_project.audio, "ayanami", tmp_path / "out", "ffhq.pkl", settings=settings
        )
    assert info.value.setting == "state_dir"
    assert target.read_text() == "not yours"
    assert nerf_project.calls() == []
