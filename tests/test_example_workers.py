"""The example app under ``uvicorn --workers 2``: every job is seen the same from either worker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.fastapi_app.app import WORKER_HEADER
from nerfcache import warm
from nerfcache.testing import FakeProject, write_png
from tests.conftest import process_gone, staging_left, wait_until
from tests.example_server import Server, running_app

pytestmark = pytest.mark.slow


@pytest.fixture
def server(nerf_project: FakeProject, tmp_path: Path) -> Iterator[Server]:
    # ayanami is warm (runs take a moment); a new character's PTI takes a minute, until cancelled.
    warm("ayanami", "ffhq.pkl", settings=nerf_project.settings)
    with running_app(nerf_project, tmp_path / "data", FAKE_NERF_PTI_S="60") as server:
        yield server


@pytest.fixture
def workers(server: Server) -> Iterator[list[httpx.Client]]:
    clients = server.client_per_worker()
    yield list(clients.values())
    for client in clients.values():
        client.close()


def start(client: httpx.Client, project: FakeProject, **fields: Any) -> str:
    files: dict[str, Any] = {"audio": ("speech.wav", project.audio.read_bytes(), "audio/wav")}
    if "portrait" in fields:
        files["portrait"] = ("portrait.png", fields.pop("portrait"), "image/png")
    response = client.post(
        "/videos", data={"character": "ayanami", "model": "ffhq.pkl", **fields}, files=files
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def sse(client: httpx.Client, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    events, name = [], ""
    with client.stream("GET", f"/videos/{job_id}/events") as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def test_status_events_and_download_from_either_worker(nerf_project, server, workers) -> None:
    for runs, other in (workers, workers[::-1]):
        job_id = start(runs, nerf_project)
        # Fresh connections, as a browser's polls may be: each worker answers for the job.
        answered: set[str] = set()
        for _ in range(300):
            response = httpx.get(f"{server.url}/videos/{job_id}", timeout=30)
            assert response.status_code == 200
            assert response.json()["id"] == job_id
            answered.add(response.headers[WORKER_HEADER])
            if len(answered) == len(workers):
                break
        else:
            pytest.fail(f"300 connections reached only workers {answered}")

        events = sse(other, job_id)  # a stream from the worker that does not run the job
        assert events[-1][0] == "done"
        progress = [data for name, data in events if name == "progress"]
        assert [p["stage"] for p in progress if p["skipped"]] == ["pti", "fitting"]
        assert progress[-1]["overall"] == 1.0

        videos = []
        for client in workers:
            assert client.get(f"/videos/{job_id}").json()["status"] == "done"
            video = client.get(f"/videos/{job_id}/file")
            assert video.status_code == 200
            assert video.headers["content-type"] == "video/mp4"
            videos.append(video.content)
        assert videos[0] == videos[1]
        assert videos[0].startswith(b"NERFCACHE FAKE VIDEO")


def test_cancel_from_the_worker_that_does_not_run_the_job(nerf_project, workers, tmp_path):
    runs, other = workers
    png = write_png(tmp_path / "rei.png", (200, 120, 90)).read_bytes()
    job_id = start(runs, nerf_project, character="rei", portrait=png)

    def in_pti() -> bool:
        progress = other.get(f"/videos/{job_id}").json()["progress"] or {}
        return progress.get("stage") == "pti"

    assert wait_until(in_pti, timeout=30)

    view = other.delete(f"/videos/{job_id}").json()
    assert view["status"] == "cancelled"
    assert sse(runs, job_id)[-1][0] == "cancelled"
    assert runs.get(f"/videos/{job_id}/file").status_code == 409
    call = nerf_project.calls()[-1]
    assert "/rei/" in str(call.option("test_img"))
    assert call.exit is None  # killed in PTI, not finished
    assert process_gone(call.pid)
    assert staging_left(nerf_project, "rei") == []
