"""A small FastAPI app on nerfcache: start, watch, stream, cancel and fetch talking-head videos.

Run it (with the fake NeRF script, no GPU) from the repository root::

    .venv/bin/pip install uvicorn
    NERFCACHE_PROJECT_ROOT=/path/to/project \
        .venv/bin/uvicorn --factory examples.fastapi_app.app:create_app

Endpoints: ``POST /videos`` (form fields ``character``, ``model``, file ``audio``) starts a run and
returns its id; ``GET /videos/{id}`` its status and progress; ``GET /videos/{id}/events`` the same
as Server-Sent Events; ``DELETE /videos/{id}`` cancels it; ``GET /videos/{id}/file`` serves the MP4.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import FileResponse, StreamingResponse

from nerfcache import (
    InvalidInputError,
    MissingFileError,
    ProgressEvent,
    Settings,
    agenerate_video,
    get_settings,
)
from nerfcache.characters import find_test_image, resolve_model, validate_character

MAX_UPLOAD_BYTES = 50 * 1024 * 1024
AUDIO_SUFFIXES = {".wav", ".mp3", ".m4a", ".flac", ".ogg"}
FINISHED = {"done", "failed", "cancelled"}


@dataclasses.dataclass
class Job:
    """One video being made."""

    id: str
    character: str
    model: str
    output_dir: Path
    status: str = "running"
    error: str | None = None
    events: list[ProgressEvent] = dataclasses.field(default_factory=list)
    task: asyncio.Task[Any] | None = None
    changed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def update(self, event: ProgressEvent) -> None:
        """Record a progress event (called in the event loop) and wake the SSE streams."""
        self.events.append(event)
        self._notify()

    def finish(self, status: str, error: str | None = None) -> None:
        """Record how the run ended."""
        self.status, self.error = status, error
        self._notify()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def view(self) -> dict[str, Any]:
        """The job as JSON: status, error and the latest progress event."""
        last = self.events[-1] if self.events else None
        return {
            "id": self.id,
            "character": self.character,
            "model": self.model,
            "status": self.status,
            "error": self.error,
            "progress": dataclasses.asdict(last) if last else None,
        }


def create_app(settings: Settings | None = None, *, data_dir: Path | None = None) -> FastAPI:
    """Build the app; ``data_dir`` holds uploads and videos (a temporary folder by default)."""
    settings = settings or get_settings()
    data = data_dir or Path(tempfile.mkdtemp(prefix="nerfcache-app-"))
    jobs: dict[str, Job] = {}
    app = FastAPI(title="nerfcache example")

    def job_or_404(job_id: str) -> Job:
        if job_id not in jobs:
            raise HTTPException(404, f"no video {job_id!r}")
        return jobs[job_id]

    @app.post("/videos", status_code=202)
    async def start(
        character: Annotated[str, Form()],
        model: Annotated[str, Form()],
        audio: Annotated[UploadFile, File()],
    ) -> dict[str, str]:
        try:  # the library's own checks, before anything is stored or started
            validate_character(character)
            resolve_model(settings, model)
            find_test_image(settings, character)
        except InvalidInputError as error:
            raise HTTPException(422, str(error)) from error
        except MissingFileError as error:
            raise HTTPException(404, str(error)) from error
        job_id = uuid.uuid4().hex
        suffix = Path(audio.filename or "").suffix.lower()
        # Stored under our own name: the uploader's file name never reaches a path.
        upload = data / "uploads" / f"{job_id}{suffix if suffix in AUDIO_SUFFIXES else '.wav'}"
        await _save_limited(audio, upload)
        job = Job(job_id, character, model, data / "videos" / job_id)
        jobs[job_id] = job
        job.task = asyncio.create_task(_run(job, upload, settings))
        return {"id": job_id}

    @app.get("/videos/{job_id}")
    async def status(job_id: str) -> dict[str, Any]:
        return job_or_404(job_id).view()

    @app.get("/videos/{job_id}/events")
    async def events(job_id: str) -> StreamingResponse:
        return StreamingResponse(_sse(job_or_404(job_id)), media_type="text/event-stream")

    @app.delete("/videos/{job_id}")
    async def cancel(job_id: str) -> dict[str, Any]:
        job = job_or_404(job_id)
        if job.task is not None and not job.task.done():
            job.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job.task  # returns once the run is killed and cleaned up
        return job.view()

    @app.get("/videos/{job_id}/file")
    async def file(job_id: str) -> FileResponse:
        job = job_or_404(job_id)
        if job.status != "done":
            raise HTTPException(409, f"video {job_id!r} is {job.status}")
        return FileResponse(job.output_dir / "output_NeRFFaceSpeech.mp4", media_type="video/mp4")

    return app


async def _run(job: Job, audio: Path, settings: Settings) -> None:
    try:
        result = await agenerate_video(
            audio,
            job.character,
            job.output_dir,
            job.model,
            settings=settings,
            on_progress=job.update,
        )
    except asyncio.CancelledError:
        job.finish("cancelled")
        raise
    except Exception as error:  # noqa: BLE001 - any failure must end the job, not hang it
        job.finish("failed", str(error))
    else:
        if result:
            job.finish("done")
        else:
            job.finish("failed", result.log_tail[-1] if result.log_tail else "no output")
    finally:
        audio.unlink(missing_ok=True)


async def _save_limited(upload: UploadFile, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with target.open("wb") as out:
        while chunk := await upload.read(1 << 20):
            size += len(chunk)
            if size > MAX_UPLOAD_BYTES:
                out.close()
                target.unlink()
                raise HTTPException(413, f"audio larger than {MAX_UPLOAD_BYTES} bytes")
            out.write(chunk)


async def _sse(job: Job) -> AsyncIterator[str]:
    sent = 0
    while True:
        changed = job.changed
        for event in job.events[sent:]:
            yield f"event: progress\ndata: {json.dumps(dataclasses.asdict(event))}\n\n"
        sent = len(job.events)
        if job.status in FINISHED:
            yield f"event: {job.status}\ndata: {json.dumps(job.view())}\n\n"
            return
        await changed.wait()
