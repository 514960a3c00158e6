"""The example app under real uvicorn worker processes, for the tests that need a real server."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from examples.fastapi_app.app import DATA_ENV, WORKER_HEADER
from nerfcache.testing import FakeProject

REPO = Path(__file__).resolve().parents[1]
START_S = 30.0
STOP_S = 20.0


@dataclasses.dataclass
class Server:
    """A running ``uvicorn --workers N`` serving the example app."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    workers: int

    def log_tail(self) -> str:
        """The server's last lines, for failure messages."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])

    def wait_ready(self) -> None:
        """Wait until the server answers (or fail with its log, if it exited or never did)."""
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"uvicorn exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/models", timeout=5).status_code == 200:
                    return
            time.sleep(0.05)
        pytest.fail(f"uvicorn did not answer within {START_S} s:\n{self.log_tail()}")

    def client_per_worker(self, tries: int = 300) -> dict[int, httpx.Client]:
        """One keep-alive client per worker process: every response it gets comes from it.

        Connections are opened until each worker has accepted one (the kernel decides which
        does). A response from any other worker fails the test.
        """
        clients: dict[int, httpx.Client] = {}
        for _ in range(tries):
            client = httpx.Client(base_url=self.url, timeout=30)
            pid = int(client.get("/models").headers[WORKER_HEADER])
            if pid in clients:
                client.close()
                continue
            client.event_hooks["response"] = [_answered_by(pid)]
            clients[pid] = client
            if len(clients) == self.workers:
                return clients
        for client in clients.values():
            client.close()
        pytest.fail(f"{tries} connections reached only workers {sorted(clients)}")


def _answered_by(pid: int) -> Callable[[httpx.Response], None]:
    def check(response: httpx.Response) -> None:
        answered = response.headers.get(WORKER_HEADER)
        assert answered == str(pid), f"{response.request.url} answered by {answered}, not {pid}"

    return check


@contextlib.contextmanager
def running_app(
    project: FakeProject, data: Path, *, workers: int = 2, **fake_env: str
) -> Iterator[Server]:
    """Serve the app for ``project`` (its runs see ``fake_env``) until the block ends.

    The server is stopped however the block ends: SIGTERM (uvicorn ends each worker, whose
    shutdown cancels its runs and kills their process groups), SIGKILL to its process group if
    it has not exited in time.
    """
    data.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {
        **os.environ,
        "NERFCACHE_PROJECT_ROOT": str(project.root),
        "NERFCACHE_EXTRA_ENV": json.dumps({**project.settings.extra_env, **fake_env}),
        DATA_ENV: str(data),
    }
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "examples.fastapi_app.app:create_app",
        "--workers", str(workers), "--host", "127.0.0.1", "--port", str(port),
        "--timeout-keep-alive", "300",  # a test's connection stays with its worker
        "--timeout-graceful-shutdown", "5",  # open event streams do not hold up the stop
    ]  # fmt: skip
    log = data / "uvicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        server = Server(f"http://127.0.0.1:{port}", process, log, workers)
        server.wait_ready()
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
