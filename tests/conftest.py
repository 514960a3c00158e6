from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from loguru import logger

pytest_plugins = ["nerfcache.testing.pytest_plugin"]


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No NERFCACHE_* variable or .env file from the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith(("NERFCACHE_", "FAKE_NERF_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def log_messages() -> Iterator[list[tuple[str, str]]]:
    """(level, message) of everything nerfcache logs during the test."""
    messages: list[tuple[str, str]] = []
    logger.enable("nerfcache")
    sink = logger.add(lambda m: messages.append((m.record["level"].name, m.record["message"])))
    yield messages
    logger.remove(sink)
    logger.disable("nerfcache")


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll ``condition`` until it holds; False if it still does not after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie awaiting its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")
