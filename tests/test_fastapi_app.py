"""The example app in examples/fastapi_app, driven with httpx against the fake NeRF script."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.fastapi_app import app as example
from nerfcache import CacheStatus, CharacterCache, Settings
from nerfcache.testing import FakeProject
from tests.conftest import process_gone

Client = httpx.AsyncClient


def serve(settings: Settings, data: Path, test: Callable[[Client], Awaitable[Any]]) -> Any:
    """Run ``test`` against a fresh app in one event loop (the app's runs live in it too)."""

    async def main() -> Any:
        transport = httpx.ASGITransport(app=example.create_app(settings, data_dir=data))
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await test(client)

    return asyncio.run(main())


async def post(
    client: Client, project: FakeProject, character: str = "ayanami", model: str = "ffhq.pkl"
):
    return await client.post(
        "/videos",
        data={"character": character, "model": model},
        files={"audio": ("my speech; rm -rf ~.wav", project.audio.read_bytes(), "audio/wav")},
    )


async def sse(client: Client, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Read the event stream to its end: (event name, data) pairs."""
    events = []
    async with client.stream("GET", f"/videos/{job_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        name = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    return events


async def poll(
    client: Client, job_id: str, condition: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Poll the status endpoint, as a browser would, until ``condition`` holds."""
    async with asyncio.timeout(30):
        while not condition(view := dict((await client.get(f"/videos/{job_id}")).json())):
            await asyncio.sleep(0.02)
    return view


def test_make_a_video_and_fetch_it(nerf_project: FakeProject, tmp_path: Path) -> None:
    async def test(client: Client) -> None:
        response = await post(client, nerf_project)
        assert response.status_code == 202
        job_id = response.json()["id"]
        events = await sse(client, job_id)
        assert events[-1][0] == "done"
        stages = [data["stage"] for name, data in events if name == "progress"]
        assert stages[-1] == "done"
        assert "pti" in stages and "rendering" in stages
        view = (await client.get(f"/videos/{job_id}")).json()
        assert view["status"] == "done"
        assert view["progress"]["overall"] == 1.0
        video = await client.get(f"/videos/{job_id}/file")
        assert video.status_code == 200
        assert video.headers["content-type"] == "video/mp4"
        assert video.content.startswith(b"NERFCACHE FAKE VIDEO")

    serve(nerf_project.settings, tmp_path / "data", test)
    assert not list((tmp_path / "data" / "uploads").iterdir())  # the upload is not kept


def test_two_requests_for_one_cold_character_build_it_once(nerf_project, tmp_path) -> None:
    async def test(client: Client) -> None:
        ids = [(await post(client, nerf_project)).json()["id"] for _ in range(2)]
        for job_id in ids:
            assert (await sse(client, job_id))[-1][0] == "done"

    serve(nerf_project.with_env(FAKE_NERF_PTI_S="0.3"), tmp_path / "data", test)
    assert len(nerf_project.calls()) == 2
    assert sum(call.computed("pti") for call in nerf_project.calls()) == 1


def test_cancel_mid_render_leaves_no_process_and_no_partial_cache(nerf_project, tmp_path) -> None:
    async def test(client: Client) -> None:
        job_id = (await post(client, nerf_project)).json()["id"]
        view = await poll(
            client, job_id, lambda v: (v["progress"] or {}).get("stage") == "rendering"
        )
        assert view["status"] == "running"
        assert (await client.delete(f"/videos/{job_id}")).json()["status"] == "cancelled"
        assert (await client.get(f"/videos/{job_id}/file")).status_code == 409
        assert (await sse(client, job_id))[-1][0] == "cancelled"

    serve(nerf_project.with_env(FAKE_NERF_RENDER_S="60"), tmp_path / "data", test)
    (call,) = nerf_project.calls()
    assert process_gone(call.pid)
    assert list((nerf_project.character_dir() / ".nerfcache" / "runs").iterdir()) == []
    # PTI and the fit were done before rendering: published whole, nothing partial.
    assert CharacterCache(nerf_project.settings, "ayanami").status() is CacheStatus.WARM


@pytest.mark.parametrize(
    ("character", "model", "status", "message"),
    [
        ("../etc", "ffhq.pkl", 422, "invalid character name"),
        ("nobody", "ffhq.pkl", 404, "no test image"),
        ("ayanami", "../x.pkl", 422, "invalid model name"),
        ("ayanami", "missing.pkl", 404, "not found in model_dir"),
    ],
)
def test_bad_input_is_a_4xx_with_the_library_message(  # noqa: PLR0917
    nerf_project, tmp_path, character, model, status, message
) -> None:
    async def test(client: Client) -> None:
        response = await post(client, nerf_project, character=character, model=model)
        assert response.status_code == status
        assert message in response.json()["detail"]

    serve(nerf_project.settings, tmp_path / "data", test)
    assert nerf_project.calls() == []


def test_uploads_are_size_limited(nerf_project, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(example, "MAX_UPLOAD_BYTES", 1000)

    async def test(client: Client) -> None:
        assert (await post(client, nerf_project)).status_code == 413

    serve(nerf_project.settings, tmp_path / "data", test)
    assert list((tmp_path / "data" / "uploads").iterdir()) == []
    assert nerf_project.calls() == []


def test_unknown_video_is_404(nerf_project, tmp_path) -> None:
    async def test(client: Client) -> None:
        for method, path in [("GET", ""), ("DELETE", ""), ("GET", "/file"), ("GET", "/events")]:
            assert (await client.request(method, f"/videos/nope{path}")).status_code == 404

    serve(nerf_project.settings, tmp_path / "data", test)


def test_a_broken_installation_fails_the_job_instead_of_hanging_it(nerf_project, tmp_path) -> None:
    nerf_project.settings.conda_python.unlink()

    async def test(client: Client) -> None:
        job_id = (await post(client, nerf_project)).json()["id"]
        name, view = (await sse(client, job_id))[-1]
        assert name == "failed"
        assert "NERFCACHE_CONDA_PYTHON" in view["error"]

    serve(nerf_project.settings, tmp_path / "data", test)
