"""kill -9 at every point of a run: the next run succeeds, and nothing truncated is ever used.

The script is killed in each phase of a cold run (and of warm and pti-only runs), by the fake's
own ``FAKE_NERF_KILL_DURING_SAVE`` or by an ``on_line`` hook that SIGKILLs it when it prints a
phase's first line while that phase sleeps for 30 s: no timing decides where the kill lands. The
launcher itself is SIGKILLed in a subprocess at each step of publishing (a patched ``os.replace``
kills its own process right after a chosen rename) and while the script runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from nerfcache import CacheStatus
from nerfcache.cache import CACHE_FILES, PTI_FILES
from nerfcache.testing import FakeProject
from tests.conftest import process_gone, published, staging_left, tree, wait_until
from tests.reliability.helpers import (
    VIDEO,
    all_gone,
    assert_sound,
    generate,
    is_complete_zip,
    kill_on,
    running_fake_pid,
    user_files,
)

NOTHING: frozenset[str] = frozenset()
PTI = frozenset(PTI_FILES)
ALL = frozenset(CACHE_FILES)
LAUNCHER = Path(__file__).with_name("launcher_worker.py")

# An ffmpeg for the fake that hangs in the mux (after writing half a video) so the script can be
# killed there: the fake runs it through its shell, as the real scripts run ffmpeg.
FFMPEG_STUB = """#!/bin/sh
for last; do :; done
case " $* " in
  *" -shortest "*)
    printf 'half a video' > "$last"
    echo $$ > "{pidfile}"
    exec sleep 30 ;;
  *) printf 'frames' > "$last" ;;
esac
"""

# phase -> (FAKE_NERF_* knobs, the line that triggers the kill or None, published afterwards)
COLD_KILLS: dict[str, tuple[dict[str, str], str | None, frozenset[str]]] = {
    "loading": ({"FAKE_NERF_PTI_S": "30"}, "Loading networks from", NOTHING),
    "pti": ({"FAKE_NERF_PTI_S": "30"}, "| 0/2000", NOTHING),
    "pti-saving-G": ({"FAKE_NERF_KILL_DURING_SAVE": "G_PTI.pt"}, None, NOTHING),
    "pti-saving-w": ({"FAKE_NERF_KILL_DURING_SAVE": "w_PTI.pt"}, None, NOTHING),
    "pti-saving-bg": ({"FAKE_NERF_KILL_DURING_SAVE": "bg_PTI.pt"}, None, NOTHING),
    "fitting": ({"FAKE_NERF_FIT_S": "30"}, "rigid fitting", PTI),
    "fitting-saving": ({"FAKE_NERF_KILL_DURING_SAVE": "fitted_coeffs.pt"}, None, PTI),
    "rendering": ({"FAKE_NERF_RENDER_S": "30"}, "Processing frames:   0%", ALL),
    # The web app's mux sends ffmpeg's output to pipes it never reads: the stub's pid file says
    # when it muxes (see killed_run).
    "mux": ({}, "Using ffmpeg:", ALL),
}


@pytest.fixture
def ffmpeg_stub(tmp_path: Path) -> tuple[Path, Path]:
    """The hanging ffmpeg, and the file where it writes its pid."""
    pidfile = tmp_path / "ffmpeg.pid"
    stub = tmp_path / "bin" / "ffmpeg"
    stub.parent.mkdir()
    stub.write_text(FFMPEG_STUB.format(pidfile=pidfile), encoding="utf-8")
    stub.chmod(0o755)
    return stub, pidfile


def knobs(phase: str, env: dict[str, str], stub: Path) -> dict[str, str]:
    return {**env, "FAKE_NERF_FFMPEG": str(stub)} if phase == "mux" else env


def with_old_video(project: FakeProject, out: str = "out") -> Path:
    """An output folder holding an earlier video, which a failed run must leave as it was."""
    folder = project.root / out
    folder.mkdir()
    (folder / VIDEO).write_bytes(b"yesterday's video")
    return folder / VIDEO


def fake_pids(project: FakeProject, stub_pidfile: Path) -> list[int]:
    pids = [call.pid for call in project.calls()]
    if stub_pidfile.exists():
        pids.append(int(stub_pidfile.read_text()))
    return pids


def kill_hook(project: FakeProject, phase: str, pidfile: Path) -> Callable[[str], None] | None:
    marker = COLD_KILLS[phase][1]
    if marker is None:
        return None
    return kill_on(project, marker, ready=pidfile.exists if phase == "mux" else None)


def killed_run(project: FakeProject, phase: str, stub: Path, pidfile: Path):
    env, _, _ = COLD_KILLS[phase]
    settings = project.with_env(**knobs(phase, env, stub))
    hook = kill_hook(project, phase, pidfile)
    return generate(project, settings=settings, on_line=hook)


# -- the script, killed in each phase --


@pytest.mark.parametrize("phase", list(COLD_KILLS))
def test_script_killed_in_each_phase_of_a_cold_run(nerf_project, ffmpeg_stub, phase) -> None:
    stub, pidfile = ffmpeg_stub
    mine = user_files(nerf_project.character_dir())
    old_video = with_old_video(nerf_project)

    killed = killed_run(nerf_project, phase, stub, pidfile)

    assert not killed
    assert killed.returncode == -signal.SIGKILL
    expected = COLD_KILLS[phase][2]
    assert published(nerf_project) == expected  # complete groups only, nothing truncated
    assert set(killed.published) == expected
    assert assert_sound(nerf_project) in (CacheStatus.COLD, CacheStatus.PTI_ONLY, CacheStatus.WARM)
    assert old_video.read_bytes() == b"yesterday's video"
    assert all_gone(fake_pids(nerf_project, pidfile)), "a process of the killed run survived"
    (killed_call,) = nerf_project.calls()

    again = generate(nerf_project, "out2")

    assert again, again.log_tail[-5:]
    last = nerf_project.calls()[-1]
    assert last.exit is not None and last.exit["code"] == 0  # nothing truncated was loaded
    assert last.loaded("pti") == ("G_PTI.pt" in expected)
    assert last.loaded("fitting") == ("fitted_coeffs.pt" in expected)
    if last.loaded("pti"):  # the very PTI the killed run computed: no GPU work thrown away
        assert last.phases["pti"]["token"] == killed_call.phases["pti"]["token"]
    assert assert_sound(nerf_project) is CacheStatus.WARM
    assert user_files(nerf_project.character_dir()) == mine
    assert old_video.read_bytes() == b"yesterday's video"


@pytest.mark.parametrize("phase", ["loading", "rendering", "mux"])
def test_script_killed_in_a_warm_run_leaves_the_cache_as_it_was(
    nerf_project, ffmpeg_stub, phase
) -> None:
    stub, pidfile = ffmpeg_stub
    assert generate(nerf_project, "first")
    folder = nerf_project.character_dir()
    cache = {name: ((folder / name).stat().st_ino, (folder / name).read_bytes()) for name in ALL}
    env = {**COLD_KILLS[phase][0], "FAKE_NERF_RENDER_S": "30"} if phase != "mux" else {}
    settings = nerf_project.with_env(**knobs(phase, env, stub))
    hook = kill_hook(nerf_project, phase, pidfile)
    assert hook is not None

    killed = generate(nerf_project, settings=settings, on_line=hook)

    assert not killed
    assert killed.cache_hit
    assert killed.returncode == -signal.SIGKILL
    assert {n: ((folder / n).stat().st_ino, (folder / n).read_bytes()) for n in ALL} == cache
    assert assert_sound(nerf_project) is CacheStatus.WARM
    assert all_gone(fake_pids(nerf_project, pidfile))
    assert generate(nerf_project, "again").cache_hit


@pytest.mark.parametrize("phase", ["fitting", "fitting-saving"])
def test_script_killed_while_redoing_the_fit_keeps_the_pti_group(nerf_project, phase) -> None:
    failed = generate(nerf_project, settings=nerf_project.with_env(FAKE_NERF_FAIL_AT="fitting"))
    assert not failed
    assert assert_sound(nerf_project) is CacheStatus.PTI_ONLY
    env, marker, _ = COLD_KILLS[phase]
    hook = kill_on(nerf_project, marker) if marker else None

    killed = generate(nerf_project, settings=nerf_project.with_env(**env), on_line=hook)

    assert killed.returncode == -signal.SIGKILL
    assert killed.cache_status_before is CacheStatus.PTI_ONLY
    assert published(nerf_project) == PTI
    assert assert_sound(nerf_project) is CacheStatus.PTI_ONLY
    again = generate(nerf_project, "again")
    assert again
    assert nerf_project.calls()[-1].loaded("pti")
    assert sum(call.computed("pti") for call in nerf_project.calls()) == 1


# -- the launcher itself, killed --


def launch_worker(project: FakeProject, out: str, kill: str, **knobs: str) -> subprocess.Popen[str]:
    spec = {
        "root": str(project.root),
        "extra_env": {**project.settings.extra_env, **knobs},
        "audio": str(project.audio),
        "character": project.character,
        "model": project.model_name,
        "out": str(project.root / out),
        "kill": kill,
    }
    return subprocess.Popen(
        [sys.executable, str(LAUNCHER), json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# kill point -> whether the next run finds the cache complete (else it rebuilds it)
PUBLISH_STEPS = {
    "pending-manifest-written": False,
    "file-1-moved": False,
    "file-2-moved": False,
    "file-3-moved": False,
    "file-4-moved": True,
    "manifest-committed": True,
    "video-delivered": True,
}


@pytest.mark.parametrize("step", list(PUBLISH_STEPS))
def test_launcher_killed_at_each_step_of_publishing(nerf_project, step) -> None:
    mine = user_files(nerf_project.character_dir())
    old_video = with_old_video(nerf_project)

    worker = launch_worker(nerf_project, "out", step)
    _, stderr = worker.communicate(timeout=30)

    assert worker.returncode == -signal.SIGKILL, stderr
    folder = nerf_project.character_dir()
    for name in published(nerf_project):
        assert is_complete_zip(folder / name)
    delivered = old_video.read_bytes()
    if step == "video-delivered":
        assert delivered.startswith(b"NERFCACHE FAKE VIDEO")  # the new one, whole
    else:
        assert delivered == b"yesterday's video"
    (first,) = nerf_project.calls()

    again = generate(nerf_project, "out2")

    assert again, again.log_tail[-5:]
    last = nerf_project.calls()[-1]
    assert last.exit is not None and last.exit["code"] == 0
    reused = PUBLISH_STEPS[step]
    assert again.cache_hit is reused
    assert last.loaded("pti") is reused
    if reused:
        assert last.phases["pti"]["token"] == first.phases["pti"]["token"]
    assert assert_sound(nerf_project) is CacheStatus.WARM  # the dead launcher's staging: reaped
    assert user_files(folder) == mine


def start_and_kill_the_launcher(project: FakeProject, tmp_path: Path, **knobs: str) -> int:
    """Start a launcher, SIGKILL it while its script renders; return the script's pid."""
    barrier = tmp_path / "barrier"
    # Two runs would have to render at once to pass this barrier: the script waits in it (up
    # to the fake's 30 s), so it is certainly rendering when the launcher is killed.
    worker = launch_worker(project, "out", "never", FAKE_NERF_BARRIER=f"{barrier}:2", **knobs)
    try:
        assert wait_until(lambda: barrier.is_dir() and any(barrier.iterdir()), timeout=20)
        script = running_fake_pid(project)
    finally:
        worker.kill()
        worker.communicate(timeout=10)
    assert worker.returncode == -signal.SIGKILL
    return script


def test_launcher_killed_while_the_script_runs_then_the_next_run_succeeds(
    nerf_project, tmp_path
) -> None:
    mine = user_files(nerf_project.character_dir())
    code = tree(nerf_project.settings.nerf_code_dir)
    script = start_and_kill_the_launcher(nerf_project, tmp_path)
    try:
        again = generate(nerf_project, "out2")
        assert again, again.log_tail[-5:]
        # The dead launcher's staging dir, with the script's private working dir, was reaped;
        # removing that view removed its links, never the code they point to.
        assert staging_left(nerf_project) == []
        assert tree(nerf_project.settings.nerf_code_dir) == code
        assert assert_sound(nerf_project) is CacheStatus.WARM
        assert user_files(nerf_project.character_dir()) == mine
    finally:
        if not process_gone(script):
            os.kill(script, signal.SIGKILL)


def test_launcher_killed_while_the_script_runs_leaves_no_orphan(nerf_project, tmp_path) -> None:
    # The script runs in a session of its own (so that a timeout kills its whole group): it
    # must still not outlive its launcher, or it keeps the GPU busy for nothing.
    script = start_and_kill_the_launcher(nerf_project, tmp_path)
    try:
        assert wait_until(lambda: process_gone(script), timeout=5)
    finally:
        if not process_gone(script):
            os.kill(script, signal.SIGKILL)


@pytest.mark.parametrize("kind", ["child", "daemon"])
def test_launcher_killed_while_the_script_runs_leaves_no_grandchild(
    nerf_project, tmp_path, kind
) -> None:
    """What the script started (ffmpeg, data loader workers, a daemon in a session of its own)
    must not outlive the launcher."""
    knob = f"FAKE_NERF_SPAWN_{kind.upper()}"
    script = start_and_kill_the_launcher(nerf_project, tmp_path, **{knob: "1"})
    child = nerf_project.calls()[-1].start[f"{kind}_pid"]
    assert isinstance(child, int)
    try:
        generate(nerf_project, "out2")  # the next check-out of the character, at the latest
        assert wait_until(lambda: process_gone(script) and process_gone(child), timeout=2)
    finally:
        for pid in (script, child):
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)
