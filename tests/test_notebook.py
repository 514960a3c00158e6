"""docs/notebooks.md in a real Jupyter kernel: the stop button stops a run; the logs print once.

Each test starts an ipykernel through jupyter_client, as a notebook front end does, with the
fake project in its environment (``NERFCACHE_*``), and presses the stop button with
``interrupt_kernel()``: SIGINT to the kernel's process group, or with ``interrupt_mode``
"message" an interrupt request that the kernel turns into SIGINT to itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from nerfcache.generate import VIDEO_NAME
from nerfcache.testing import FakeProject
from tests.conftest import lock_is_free, process_gone, published, staging_left, wait_until

STOPPED_WITHIN_S = 5.0  # from the interrupt to the cell's end: the run killed and cleaned up
DOCS = Path(__file__).parents[1] / "docs" / "notebooks.md"

# The forms docs/notebooks.md shows, as a user types them in a cell; AUDIO is set by a first cell.
CELLS = {
    "sync": 'generate_video(AUDIO, "ayanami", "out", "ffhq.pkl")',
    "await": 'await agenerate_video(AUDIO, "ayanami", "out", "ffhq.pkl")',
    "stream": (
        'async for event in stream_video(AUDIO, "ayanami", "out", "ffhq.pkl"):\n'
        "    print(event.stage, flush=True)"
    ),
}
# How each form ends when stopped: a sync cell is interrupted where it runs; for an awaited
# cell ipykernel cancels the cell's task.
STOPPED_WITH = {"sync": "KeyboardInterrupt", "await": "CancelledError", "stream": "CancelledError"}


@dataclasses.dataclass
class Kernel:
    """A running kernel and a client, as a notebook front end holds them."""

    manager: KernelManager
    client: BlockingKernelClient
    project: FakeProject
    output: dict[str, str] = dataclasses.field(default_factory=dict)
    """msg_id -> what the cell printed so far (stdout and stderr)."""
    running: set[str] = dataclasses.field(default_factory=set)
    """Cells sent that have not ended."""

    def start(self, code: str) -> str:
        """Send a cell without waiting for it; its msg_id."""
        msg_id: str = self.client.execute(code)
        self.output[msg_id] = ""
        self.running.add(msg_id)
        return msg_id

    def run(self, code: str, timeout: float = 15) -> tuple[dict[str, Any], str]:
        """Run a cell to its end: its reply's content and what it printed."""
        msg_id = self.start(code)
        reply = self.reply(msg_id, timeout)
        assert reply is not None, f"the cell still runs after {timeout} s: {code}"
        return reply, self.output[msg_id]

    def printed(self, msg_id: str, text: str, timeout: float = 15) -> bool:
        """Wait until the cell has printed ``text``."""
        return self._read_output(lambda _message: text in self.output[msg_id], timeout)

    def reply(self, msg_id: str, timeout: float) -> dict[str, Any] | None:
        """The content of the cell's reply once the kernel is idle; None if it still runs then.

        Idle, not just replied: the output's last flush comes after the reply, and after an
        error ipykernel aborts the requests that reach it before it is done with the error.
        """
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self.client.get_shell_msg(timeout=left)
            except queue.Empty:
                return None
            if message["parent_header"].get("msg_id") == msg_id:
                if not self._read_output(
                    lambda m: _is_idle(m, msg_id), deadline - time.monotonic()
                ):
                    return None
                self.running.discard(msg_id)
                return dict(message["content"])
        return None

    def _read_output(self, done: Callable[[dict[str, Any]], bool], timeout: float) -> bool:
        """Read iopub, keeping the cells' output, until ``done(message)``; False on timeout."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self.client.get_iopub_msg(timeout=left)
            except queue.Empty:
                return False
            parent = message["parent_header"].get("msg_id")
            if message["msg_type"] == "stream" and parent in self.output:
                self.output[parent] += message["content"]["text"]
            if done(message):
                return True
        return False


def _is_idle(message: dict[str, Any], msg_id: str) -> bool:
    return bool(
        message["msg_type"] == "status"
        and message["content"]["execution_state"] == "idle"
        and message["parent_header"].get("msg_id") == msg_id
    )


@pytest.fixture
def start_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Kernel]]:
    """Start a kernel in ``tmp_path`` whose nerfcache settings come from NERFCACHE_* variables.

    ``start_kernel(project, interrupt_mode="signal", gpus=None, **fake_env)``; its first cell
    imports the docs' names and sets ``AUDIO`` to the project's audio.
    """
    # jupyter_client writes the connection file to its runtime dir: keep it in the test's folder.
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    kernels: list[Kernel] = []

    def start(
        project: FakeProject,
        interrupt_mode: str = "signal",
        gpus: str | None = None,
        **fake_env: object,
    ) -> Kernel:
        specs = tmp_path / "kernelspecs"
        spec = specs / "nerfcache-test" / "kernel.json"
        spec.parent.mkdir(parents=True, exist_ok=True)
        spec.write_text(
            json.dumps(
                {
                    # This interpreter, whatever kernels the machine has installed.
                    "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    "display_name": "nerfcache tests",
                    "language": "python",
                    "interrupt_mode": interrupt_mode,
                }
            ),
            encoding="utf-8",
        )
        env = {
            **os.environ,
            "NERFCACHE_PROJECT_ROOT": str(project.root),
            "NERFCACHE_EXTRA_ENV": json.dumps(project.with_env(**fake_env).extra_env),
        }
        if gpus is not None:
            env["NERFCACHE_GPUS"] = gpus
        manager = KernelManager(
            kernel_name="nerfcache-test",
            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(specs)]),
        )
        manager.start_kernel(cwd=str(tmp_path), env=env)
        client = manager.client()
        client.start_channels()
        kernel = Kernel(manager, client, project)
        kernels.append(kernel)
        client.wait_for_ready(timeout=20)
        reply, _ = kernel.run(
            "from nerfcache import agenerate_video, generate_video, stream_video\n"
            f"AUDIO = {str(project.audio)!r}"
        )
        assert reply["status"] == "ok", reply
        return kernel

    yield start
    for kernel in kernels:
        if kernel.running:  # a cell that did not stop
            kill_runs(kernel.project)
        kernel.client.stop_channels()
        kernel.manager.shutdown_kernel(now=True)


def kill_runs(project: FakeProject) -> None:
    """Kill the process groups of the project's unfinished runs, while their launcher lives.

    For a launcher that did not stop them: killing it kills the script (its parent-death
    signal), not what the script started. A live launcher has not reaped the script yet, so
    the group id is still the run's.
    """
    for call in project.calls():
        if call.exit is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(call.pid, signal.SIGKILL)


def fake_running(project: FakeProject) -> bool:
    """Whether the fake script has started (its log's start record is there)."""
    try:
        return bool(project.calls())
    except ValueError:  # the record is being written
        return False


@pytest.mark.slow
@pytest.mark.timeout(30)
@pytest.mark.parametrize("interrupt_mode", ["signal", "message"])
@pytest.mark.parametrize("form", ["sync", "await", "stream"])
def test_the_stop_button_stops_a_run(
    start_kernel: Callable[..., Kernel],
    nerf_project: FakeProject,
    tmp_path: Path,
    form: str,
    interrupt_mode: str,
) -> None:
    kernel = start_kernel(nerf_project, interrupt_mode, FAKE_NERF_PTI_S=60, FAKE_NERF_SPAWN_CHILD=1)
    cell = kernel.start(CELLS[form])
    assert wait_until(lambda: fake_running(nerf_project))

    kernel.manager.interrupt_kernel()
    reply = kernel.reply(cell, STOPPED_WITHIN_S)

    assert reply is not None, f"the cell still runs {STOPPED_WITHIN_S} s after the interrupt"
    assert (reply["status"], reply["ename"]) == ("error", STOPPED_WITH[form])
    (call,) = nerf_project.calls()
    assert isinstance(call.start["child_pid"], int)
    assert process_gone(call.pid) and process_gone(call.start["child_pid"])
    assert call.exit is None  # killed in its PTI, not finished
    assert staging_left(nerf_project) == []
    assert lock_is_free(nerf_project.character_dir() / ".nerfcache" / "build.lock")
    assert published(nerf_project) == set()
    assert not (tmp_path / "out" / VIDEO_NAME).exists()
    # The kernel lives on: the next cell runs.
    reply, printed = kernel.run("print('still here')")
    assert (reply["status"], printed) == ("ok", "still here\n")


@pytest.mark.slow
@pytest.mark.timeout(30)
def test_the_stop_button_stops_a_stream_queued_for_a_gpu(
    start_kernel: Callable[..., Kernel], nerf_project: FakeProject
) -> None:
    """Also while nothing is reported: no progress event wakes the loop to take the stop."""
    kernel = start_kernel(nerf_project, gpus="0")
    slot_path = nerf_project.settings.state_dir / "gpu-slots" / "gpu0-slot0.lock"
    slot_path.parent.mkdir(parents=True)
    slot = FileLock(slot_path)
    with slot:  # another process's run holds the only GPU slot
        cell = kernel.start(CELLS["stream"])
        assert kernel.printed(cell, "queued")

        kernel.manager.interrupt_kernel()
        reply = kernel.reply(cell, STOPPED_WITHIN_S)

        assert reply is not None, f"the cell still runs {STOPPED_WITHIN_S} s after the interrupt"
        assert (reply["status"], reply["ename"]) == ("error", "CancelledError")
        assert nerf_project.calls() == []
        assert staging_left(nerf_project) == []
        assert lock_is_free(nerf_project.character_dir() / ".nerfcache" / "build.lock")
    reply, _ = kernel.run("print('still here')")
    assert reply["status"] == "ok"


@pytest.mark.timeout(30)
def test_a_script_interrupted_in_asyncio_run_still_gets_keyboard_interrupt(
    nerf_project: FakeProject, tmp_path: Path
) -> None:
    """Outside a kernel Ctrl-C is asyncio.run's: the run is stopped, then KeyboardInterrupt."""
    settings = nerf_project.with_env(FAKE_NERF_PTI_S=60, FAKE_NERF_SPAWN_CHILD=1)
    script = (
        "import asyncio, sys\n"
        "from nerfcache import Settings, agenerate_video\n"
        "settings = Settings.model_validate_json(sys.argv[1])\n"
        "asyncio.run(agenerate_video(sys.argv[2], 'ayanami', 'out', 'ffhq.pkl',"
        " settings=settings))\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script, settings.model_dump_json(), str(nerf_project.audio)],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert wait_until(lambda: fake_running(nerf_project))
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=STOPPED_WITHIN_S)
        finally:
            if proc.poll() is None:
                kill_runs(nerf_project)
                proc.kill()
    assert proc.returncode != 0
    assert stderr.rstrip().splitlines()[-1] == "KeyboardInterrupt"
    (call,) = nerf_project.calls()
    assert isinstance(call.start["child_pid"], int)
    assert process_gone(call.pid) and process_gone(call.start["child_pid"])
    assert call.exit is None
    assert staging_left(nerf_project) == []
    assert published(nerf_project) == set()


def docs_cell(heading: str) -> str:
    """The first code block under ``## heading`` in docs/notebooks.md."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None
    return match.group(1)


@pytest.mark.slow
@pytest.mark.timeout(30)
def test_the_logging_recipe_prints_each_line_once_and_no_redraws(
    start_kernel: Callable[..., Kernel], nerf_project: FakeProject
) -> None:
    kernel = start_kernel(nerf_project, FAKE_NERF_PTI_S=0.5)
    for _ in range(2):  # a notebook's cells get run again
        reply, _ = kernel.run(docs_cell("Logs"))
        assert reply["status"] == "ok", reply

    reply, printed = kernel.run(CELLS["sync"])

    assert reply["status"] == "ok", reply
    lines = printed.splitlines()
    assert len([line for line in lines if "started pid" in line]) == 1, printed
    assert len([line for line in lines if "exited with" in line]) == 1, printed
    assert not [line for line in lines if "%|" in line or "DEBUG" in line], printed
    assert any("Loading networks from" in line for line in lines)  # the script's own lines
