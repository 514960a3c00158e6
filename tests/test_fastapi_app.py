"""The example app in examples/fastapi_app, driven in-process with httpx against the fake script.

Two apps over one data folder stand for two uvicorn workers here; tests/test_example_workers.py
runs the real thing.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.fastapi_app import app as example
from examples.fastapi_app.jobs import SqliteJobStore
from nerfcache import CacheStatus, CharacterCache, Settings, warm
from nerfcache.testing import FakeProject, write_png
from tests.conftest import process_gone

Client = httpx.AsyncClient


def serve(settings: Settings, data: Path | None, test: Callable[[Client], Awaitable[Any]]) -> Any:
    """Run ``test`` against a fresh app in one event loop (the app's runs live in it too)."""

    async def main() -> Any:
        transport = httpx.ASGITransport(app=example.create_app(settings, data_dir=data))
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await test(client)

    return asyncio.run(main())


def serve_two(
    settings: Settings, data: Path, test: Callable[[Client, Client], Awaitable[Any]]
) -> Any:
    """Run ``test`` against two apps sharing ``data``, as two workers share it."""

    def client(app: Any) -> Client:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")

    async def main() -> Any:
        first = example.create_app(settings, data_dir=data)
        second = example.create_app(settings, data_dir=data)
        async with client(first) as one, client(second) as two:
            return await test(one, two)

    return asyncio.run(main())


async def post(
    client: Client,
    project: FakeProject,
    character: str = "ayanami",
    model: str = "ffhq.pkl",
    portrait: bytes | None = None,
):
    files = {"audio": ("my speech; rm -rf ~.wav", project.audio.read_bytes(), "audio/wav")}
    if portrait is not None:
        files["portrait"] = ("../../me.png", portrait, "image/png")
    return await client.post("/videos", data={"character": character, "model": model}, files=files)


async def sse(
    client: Client, job_id: str, headers: dict[str, str] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """Read the event stream to its end: (event name, data) pairs."""
    return [(name, data) for name, data, _ in await sse_with_ids(client, job_id, headers)]


async def sse_with_ids(
    client: Client, job_id: str, headers: dict[str, str] | None = None
) -> list[tuple[str, dict[str, Any], str | None]]:
    """Read the event stream to its end: (event name, data, id) triples."""
    events = []
    async with client.stream("GET", f"/videos/{job_id}/events", headers=headers) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        name, event_id = "", None
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("id: "):
                event_id = line.removeprefix("id: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: ")), event_id))
                event_id = None
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


@pytest.fixture
def png(tmp_path: Path) -> bytes:
    return write_png(tmp_path / "upload.png", (10, 20, 30)).read_bytes()


def test_another_worker_sees_status_events_cancel_and_the_video(nerf_project, tmp_path, png):
    async def test(runs: Client, other: Client) -> None:
        job_id = (await post(runs, nerf_project)).json()["id"]
        assert (await sse(other, job_id))[-1][0] == "done"
        assert (await other.get(f"/videos/{job_id}")).json()["status"] == "done"
        video = await other.get(f"/videos/{job_id}/file")
        assert video.content.startswith(b"NERFCACHE FAKE VIDEO")

        slow = (await post(runs, nerf_project, character="rei", portrait=png)).json()["id"]
        await poll(other, slow, lambda v: (v["progress"] or {}).get("stage") == "pti")
        # The other app does not run the job: the running one notices the request and stops.
        assert (await other.delete(f"/videos/{slow}")).json()["status"] == "cancelled"
        assert (await sse(runs, slow))[-1][0] == "cancelled"

    warm("ayanami", "ffhq.pkl", settings=nerf_project.settings)  # fast, before PTI takes 60 s
    serve_two(nerf_project.with_env(FAKE_NERF_PTI_S="60"), tmp_path / "data", test)
    slow_call = nerf_project.calls()[-1]
    assert slow_call.exit is None  # killed in PTI
    assert process_gone(slow_call.pid)


def test_events_resume_after_the_last_event_id(nerf_project, tmp_path) -> None:
    async def test(client: Client) -> None:
        job_id = (await post(client, nerf_project)).json()["id"]
        events = await sse_with_ids(client, job_id)
        ids = [event_id for name, _, event_id in events if name == "progress"]
        assert all(ids) and len(ids) > 2
        resumed = await sse_with_ids(client, job_id, headers={"Last-Event-ID": str(ids[1])})
        assert [e for e in resumed if e[0] == "progress"] == [
            e for e in events if e[0] == "progress"
        ][2:]
        assert resumed[-1][0] == "done"

    serve(nerf_project.settings, tmp_path / "data", test)


def test_a_job_whose_worker_died_ends_failed(nerf_project, tmp_path, monkeypatch) -> None:
    store = SqliteJobStore(tmp_path / "data" / "jobs.sqlite3")
    store.create("orphan", "ayanami", "ffhq.pkl")  # as a worker killed mid-run leaves it
    monkeypatch.setattr(example, "LOST_AFTER_S", 0.0)

    async def test(client: Client) -> None:
        view = (await client.get("/videos/orphan")).json()
        assert view["status"] == "failed"
        assert "stopped" in view["error"]
        assert (await sse(client, "orphan"))[-1][0] == "failed"

    serve(nerf_project.settings, tmp_path / "data", test)


def test_a_portrait_makes_a_new_character(nerf_project, tmp_path, png) -> None:
    async def test(client: Client) -> None:
        assert [c["name"] for c in (await client.get("/characters")).json()] == ["ayanami"]
        response = await post(client, nerf_project, character="绫波丽", portrait=png)
        assert response.status_code == 202
        assert (await sse(client, response.json()["id"]))[-1][0] == "done"
        listed = (await client.get("/characters")).json()
        assert {"name": "绫波丽", "status": "warm", "portrait": True} in listed
        # Its cache belongs to that portrait: another one under the same name is refused.
        again = await post(client, nerf_project, character="绫波丽", portrait=png)
        assert again.status_code == 409
        assert "already has a portrait" in again.json()["detail"]
        not_an_image = await post(client, nerf_project, character="rei", portrait=b"GIF89a")
        assert not_an_image.status_code == 422
        assert "PNG or JPEG" in not_an_image.json()["detail"]

    serve(nerf_project.settings, tmp_path / "data", test)
    portrait = nerf_project.character_dir("绫波丽") / "images" / "portrait.png"
    assert portrait.read_bytes() == png  # under our name, never the uploader's "../../me.png"
    assert not nerf_project.character_dir("rei").exists()
    assert len(nerf_project.calls()) == 1


def test_the_page_and_what_it_lists(nerf_project, tmp_path) -> None:
    async def test(client: Client) -> None:
        page = await client.get("/")
        assert page.headers["content-type"].startswith("text/html")
        # Self-contained: the machines it runs on often have no internet.
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)
        assert "EventSource" in page.text
        assert (await client.get("/models")).json() == ["ffhq.pkl"]
        listed = (await client.get("/characters")).json()
        assert listed == [{"name": "ayanami", "status": "cold", "portrait": True}]
        assert page.headers[example.WORKER_HEADER] == str(os.getpid())

    serve(nerf_project.settings, tmp_path / "data", test)


def test_jobs_and_videos_live_in_the_data_folder_not_in_tmp(
    nerf_project, tmp_path, monkeypatch
) -> None:
    tmp = tmp_path / "tmp"  # the temporary folder of this process and its children
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))

    async def test(client: Client) -> str:
        job_id: str = (await post(client, nerf_project)).json()["id"]
        assert (await sse(client, job_id))[-1][0] == "done"
        return job_id

    job_id = serve(nerf_project.settings, None, test)
    data = nerf_project.root / "nerfcache-app"
    assert (data / "jobs.sqlite3").is_file()
    assert (data / "videos" / job_id / "output_NeRFFaceSpeech.mp4").is_file()
    assert list(tmp.iterdir()) == []

    monkeypatch.setenv(example.DATA_ENV, "elsewhere")
    assert example.data_folder(nerf_project.settings) == Path.cwd() / "elsewhere"
