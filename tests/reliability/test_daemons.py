"""A daemon the script starts outside its process group dies with the run, however the run ends.

The fake's ``FAKE_NERF_SPAWN_DAEMON`` double-forks a process into a session of its own (as a
daemon does), out of reach of a kill of the script's process group. It still carries the run's
``NERFCACHE_RUN`` mark in its environment, which is how the launcher finds it.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest

from nerfcache import GenerationCancelled, GenerationTimeout
from nerfcache.testing import FakeProject
from tests.conftest import process_gone, staging_left, wait_until
from tests.reliability.helpers import generate


@pytest.fixture
def daemons(nerf_project: FakeProject) -> Iterator[list[int]]:
    """The daemons the fake started in this test; any still running at the end is killed."""
    found: list[int] = []
    yield found
    for call in nerf_project.calls():
        pid = call.start.get("daemon_pid")
        if isinstance(pid, int) and not process_gone(pid):
            os.kill(pid, signal.SIGKILL)


def the_daemon(project: FakeProject, found: list[int]) -> int:
    (call,) = project.calls()
    pid = call.start["daemon_pid"]
    assert isinstance(pid, int)
    found.append(pid)
    return pid


@pytest.mark.parametrize("ending", ["timeout", "cancel", "success", "failure"])
def test_a_daemon_dies_with_its_run(nerf_project: FakeProject, daemons, ending: str) -> None:
    knobs = {"FAKE_NERF_SPAWN_DAEMON": "1"}
    cancel = threading.Event()
    if ending in ("timeout", "cancel"):
        knobs["FAKE_NERF_PTI_S"] = "60"
    if ending == "failure":
        knobs["FAKE_NERF_FAIL_AT"] = "rendering"
    settings = nerf_project.with_env(**knobs)

    def on_line(line: str) -> None:
        if ending == "cancel" and "| 0/2000" in line:
            cancel.set()

    if ending == "timeout":
        with pytest.raises(GenerationTimeout):
            generate(nerf_project, settings=settings, timeout=5)
    elif ending == "cancel":
        with pytest.raises(GenerationCancelled):
            generate(nerf_project, settings=settings, cancel=cancel, on_line=on_line)
    else:
        result = generate(nerf_project, settings=settings)
        assert result.ok is (ending == "success"), result.log_tail[-5:]

    daemon = the_daemon(nerf_project, daemons)
    assert wait_until(lambda: process_gone(daemon), timeout=5), f"daemon {daemon} survived"
    assert staging_left(nerf_project) == []
