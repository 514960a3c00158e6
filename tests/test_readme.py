"""The README's snippets, run as written: the SSE app (errors reach the client), the pytest one."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nerfcache import get_settings
from nerfcache.testing import FakeProject, write_wav

README = Path(__file__).resolve().parents[1] / "README.md"


def snippet() -> str:
    """The first Python block of the README's FastAPI section."""
    section = README.read_text(encoding="utf-8").split("### From FastAPI", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the README's FastAPI section has no Python snippet"
    return match.group(1)


@pytest.fixture
def app(
    nerf_project: FakeProject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """The snippet's app, run where its relative paths lead into a fake project."""
    write_wav(tmp_path / "speech.wav")  # the working directory is tmp_path (conftest)
    monkeypatch.setenv("NERFCACHE_PROJECT_ROOT", str(nerf_project.root))
    monkeypatch.setenv("NERFCACHE_EXTRA_ENV", json.dumps(nerf_project.settings.extra_env))
    get_settings.cache_clear()
    namespace: dict[str, Any] = {"__name__": "readme_snippet"}
    exec(compile(snippet(), str(README), "exec"), namespace)  # noqa: S102 - our own README
    yield namespace["app"]
    get_settings.cache_clear()


def get(app: Any, path: str) -> tuple[int, str]:
    async def main() -> tuple[int, str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            response = await client.get(path)
            return response.status_code, response.text

    return asyncio.run(main())


def test_a_video_streams_its_progress(app) -> None:
    status, body = get(app, "/demo/ayanami")
    assert status == 200
    assert body.splitlines()[-2] == "data: done 100%"
    assert "event: error" not in body


@pytest.mark.parametrize(
    ("character", "status", "message"),
    [("nobody", 404, "no test image"), (".hidden", 422, "invalid character name")],
)
def test_a_bad_request_is_a_4xx_before_streaming(app, character, status, message) -> None:
    code, body = get(app, f"/demo/{character}")
    assert code == status
    assert message in json.loads(body)["detail"]


def test_a_failure_while_streaming_is_an_error_event(app, tmp_path) -> None:
    (tmp_path / "speech.wav").unlink()
    status, body = get(app, "/demo/ayanami")
    assert status == 200  # the stream had started: the reason comes as an event
    name, data = body.strip().splitlines()[-2:]
    assert name == "event: error"
    assert "speech.wav" in json.loads(data.removeprefix("data: "))


def test_a_failed_run_is_an_error_event(app, nerf_project, monkeypatch) -> None:
    env = {**nerf_project.settings.extra_env, "FAKE_NERF_FAIL_AT": "rendering"}
    monkeypatch.setenv("NERFCACHE_EXTRA_ENV", json.dumps(env))
    get_settings.cache_clear()
    status, body = get(app, "/demo/ayanami")
    assert status == 200
    assert "data: failed" in body
    name, data = body.strip().splitlines()[-2:]
    assert name == "event: error"
    assert "simulated failure in rendering" in json.loads(data.removeprefix("data: "))


def test_the_readme_s_pytest_example_passes_and_writes_only_in_tmp_path(tmp_path: Path) -> None:
    section = README.read_text(encoding="utf-8").split("### Testing your app without a GPU", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the README's testing section has no Python snippet"
    conftest, test = match.group(1).split("# test_app.py\n")
    folder = tmp_path / "users_app"
    folder.mkdir()
    (folder / "conftest.py").write_text(conftest)
    (folder / "test_app.py").write_text(test)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "."],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    assert sorted(p.name for p in folder.iterdir()) == ["conftest.py", "test_app.py"]
