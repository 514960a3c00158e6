from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock
from loguru import logger

from nerfcache.cache import CACHE_FILES
from nerfcache.testing import FakeProject

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


def lock_is_free(path: Path) -> bool:
    """Whether nobody holds the file lock at ``path``."""
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except TimeoutError:
        return False
    lock.release()
    return True


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and mtime: what a write anywhere would change."""
    return {
        str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in [folder, *sorted(folder.rglob("*"))]
    }


def published(project: FakeProject, character: str | None = None) -> set[str]:
    """The cache files published in a character's folder."""
    folder = project.character_dir(character)
    return {name for name in CACHE_FILES if (folder / name).exists()}


def staging_left(project: FakeProject, character: str | None = None) -> list[Path]:
    """Staging dirs and run locks still in a character's folder (none once runs are over)."""
    runs = project.character_dir(character) / ".nerfcache" / "runs"
    return sorted(runs.iterdir()) if runs.exists() else []


def run_python(code: str, *args: str) -> str:
    """Run ``code`` in a new Python process with ``sys.argv[1:] == args``; its last line out."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys\n" + code, *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()[-1]


def files_opened(code: str, *args: str) -> list[Path]:
    """Every file that ``code`` opens, run as ``run_python`` does.

    A new process remembers no hash; an audit hook sees every ``open``, whoever makes it.
    """
    watch = (
        "import os\n"
        "opened = []\n"
        "def _watch(event, args):\n"
        "    if event == 'open' and isinstance(args[0], (str, bytes, os.PathLike)):\n"
        "        opened.append(os.fsdecode(args[0]))\n"
        "sys.addaudithook(_watch)\n"
    )
    report = "\nimport json\nprint(json.dumps(opened))\n"
    return [Path(path) for path in json.loads(run_python(watch + code + report, *args))]


def run_workers(project: FakeProject, code: str, count: int, **settings: str) -> list[Any]:
    """Run ``count`` processes of ``code`` at once against ``project``; their JSON outputs.

    Each gets ``sys.argv[1:] == [audio, output folder]`` and sees the project only through
    NERFCACHE_* variables (``settings`` adds more, e.g. ``gpus="3"``).
    """
    env = {
        **os.environ,
        "NERFCACHE_PROJECT_ROOT": str(project.root),
        "NERFCACHE_EXTRA_ENV": json.dumps(project.settings.extra_env),
        **{f"NERFCACHE_{k.upper()}": v for k, v in settings.items()},
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(project.audio), str(project.root / f"worker{i}")],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]
    return [json.loads(proc.communicate(timeout=60)[0]) for proc in procs]
