"""A FastAPI app on nerfcache: a page and an API to make, watch, cancel and fetch videos.

It works under any number of uvicorn workers: jobs live in a ``JobStore`` (SQLite in the app's
data folder), so whichever worker answers sees every job. From a clone, on the fake NeRF script
(no GPU)::

    scripts/serve                                   # http://127.0.0.1:8000, two workers
    NERFCACHE_PROJECT_ROOT=/path/to/project scripts/serve --port 8080   # a real project

Endpoints: ``GET /`` the page; ``GET /characters`` and ``GET /models`` what can be picked;
``POST /videos`` (form fields ``character``, ``model``, file ``audio``, and file ``portrait`` to
make a new character) starts a run and returns its id; ``GET /videos/{id}`` its status and
progress; ``GET /videos/{id}/events`` the same as Server-Sent Events; ``DELETE /videos/{id}``
cancels it; ``GET /videos/{id}/file`` serves the MP4. Every response names the worker that
answered in ``X-Worker-Pid``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Header, HTTPException, Response, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, StreamingResponse
from filelock import FileLock
from loguru import logger
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from examples.fastapi_app.jobs import Job, JobStore, SqliteJobStore
from nerfcache import (
    InvalidInputError,
    MissingFileError,
    NerfCacheError,
    Settings,
    agenerate_video,
    get_settings,
    list_caches,
)
from nerfcache.characters import (
    character_dir,
    find_test_image,
    resolve_model,
    validate_character,
)

__all__ = ["DATA_ENV", "WORKER_HEADER", "create_app", "data_folder"]

DATA_ENV = "NERFCACHE_APP_DATA"
WORKER_HEADER = "X-Worker-Pid"
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
MAX_PORTRAIT_BYTES = 10 * 1024 * 1024
AUDIO_SUFFIXES = {".wav", ".mp3", ".m4a", ".flac", ".ogg"}
VIDEO_NAME = "output_NeRFFaceSpeech.mp4"
POLL_S = 0.25
"""How often event streams, cancel requests and running jobs look at the store."""
LOST_AFTER_S = 30.0
"""A running job whose worker has not written its heartbeat for this long has lost its worker."""
KEEPALIVE_S = 15.0
CANCEL_WAIT_S = 30.0
PAGE = Path(__file__).with_name("page.html")


def data_folder(settings: Settings) -> Path:
    """The app's data folder: ``$NERFCACHE_APP_DATA``, else ``{project_root}/nerfcache-app``.

    Every worker must find the same folder, so it is never a temporary one; nor inside
    ``state_dir``, where nerfcache refuses to write videos.
    """
    given = os.environ.get(DATA_ENV)
    return Path(given).absolute() if given else settings.project_root / "nerfcache-app"


def create_app(
    settings: Settings | None = None,
    *,
    data_dir: Path | None = None,
    store: JobStore | None = None,
) -> FastAPI:
    """Build the app.

    ``data_dir`` holds the job store, uploads and videos (default: ``data_folder(settings)``);
    ``store`` replaces the SQLite job store.
    """
    settings = settings or get_settings()
    data = data_dir or data_folder(settings)
    jobs = _Jobs(settings, data, store or SqliteJobStore(data / "jobs.sqlite3"))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await jobs.stop()

    app = FastAPI(title="nerfcache example", lifespan=lifespan)
    app.add_middleware(_WorkerHeader)
    page = PAGE.read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/characters")
    def characters() -> list[dict[str, Any]]:  # a plain def: FastAPI runs it in a thread
        listed = {info.character: info.status.value for info in list_caches(settings=settings)}
        names = sorted(set(listed) | set(settings.characters))
        return [
            {"name": n, "status": listed.get(n, "cold"), "portrait": _has_portrait(settings, n)}
            for n in names
        ]

    @app.get("/models")
    def models() -> list[str]:
        return sorted(path.name for path in settings.model_dir.glob("*.pkl"))

    @app.post("/videos", status_code=202)
    async def start(
        character: Annotated[str, Form()],
        model: Annotated[str, Form()],
        audio: Annotated[UploadFile, File()],
        portrait: Annotated[UploadFile | None, File()] = None,
    ) -> dict[str, str]:
        if portrait is not None and not portrait.filename:
            portrait = None  # a form's empty file field
        return {"id": await jobs.submit(character, model, audio, portrait)}

    @app.get("/videos/{job_id}")
    async def status(job_id: str) -> dict[str, Any]:
        return jobs.current(job_id).view()

    @app.get("/videos/{job_id}/events")
    async def events(job_id: str, last_event_id: Annotated[int, Header()] = 0) -> StreamingResponse:
        jobs.current(job_id)  # an unknown job is a 404, before the stream starts
        return StreamingResponse(
            jobs.stream(job_id, after=last_event_id),  # resumes where a dropped stream stopped
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )

    @app.delete("/videos/{job_id}")
    async def cancel(job_id: str, response: Response) -> dict[str, Any]:
        job = await jobs.cancel(job_id)
        if not job.finished:
            response.status_code = 202  # asked, not yet done: the status endpoint will tell
        return job.view()

    @app.get("/videos/{job_id}/file")
    async def file(job_id: str) -> FileResponse:
        job = jobs.current(job_id)
        if job.status != "done":
            raise HTTPException(409, f"video {job_id!r} is {job.status}")
        path = jobs.videos / job_id / VIDEO_NAME
        if not path.is_file():
            raise HTTPException(410, f"video {job_id!r} was made but has been removed since")
        return FileResponse(path, media_type="video/mp4")

    return app


class _Jobs:
    """The jobs as one worker sees them: it runs those it started, and reads all from the store."""

    def __init__(self, settings: Settings, data: Path, store: JobStore) -> None:
        self.settings = settings
        self.store = store
        self.data = data
        self.videos = data / "videos"
        self.tasks: dict[str, asyncio.Task[None]] = {}
        """The jobs running in this worker."""
        self.stopping = False

    def current(self, job_id: str) -> Job:
        """The job as the store has it (404 if unknown); a job whose worker died ends failed."""
        job = self.store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no video {job_id!r}")
        lost = time.time() - job.heartbeat > LOST_AFTER_S
        if not job.finished and lost and job_id not in self.tasks:
            self.store.finish(job_id, "failed", "the app worker making this video stopped")
            job = self.store.get(job_id) or job
        return job

    async def submit(
        self, character: str, model: str, audio: UploadFile, portrait: UploadFile | None
    ) -> str:
        """Check a request, store its uploads and start its job here; return the job's id."""
        try:  # the library's own checks, before anything is stored or started
            validate_character(character)
            resolve_model(self.settings, model)
            if portrait is None:
                find_test_image(self.settings, character)
        except InvalidInputError as error:
            raise HTTPException(422, str(error)) from error
        except MissingFileError as error:
            raise HTTPException(404, str(error)) from error
        job_id = uuid.uuid4().hex
        suffix = Path(audio.filename or "").suffix.lower()
        # Stored under our own name: the uploader's file name never reaches a path.
        upload = self.data / "uploads" / f"{job_id}{suffix if suffix in AUDIO_SUFFIXES else '.wav'}"
        await _save_limited(audio, upload)
        if portrait is not None:
            try:
                image = await _read_limited(portrait, MAX_PORTRAIT_BYTES)
                await asyncio.to_thread(_add_character, self.settings, self.data, character, image)
            except BaseException:
                upload.unlink(missing_ok=True)
                raise
        self.start(self.store.create(job_id, character, model), upload)
        return job_id

    def start(self, job: Job, audio: Path) -> None:
        """Run ``job`` in this worker."""
        task = asyncio.create_task(self._run(job, audio))
        self.tasks[job.id] = task
        task.add_done_callback(lambda _: self.tasks.pop(job.id, None))

    async def _run(self, job: Job, audio: Path) -> None:
        watcher = asyncio.create_task(self._watch(job.id, asyncio.current_task()))
        log = logger.bind(job=job.id, character=job.character)
        try:
            result = await agenerate_video(
                audio,
                job.character,
                self.videos / job.id,
                job.model,
                settings=self.settings,
                on_progress=functools.partial(self.store.add_event, job.id),
            )
        except asyncio.CancelledError:
            if self.stopping:
                self.store.finish(job.id, "failed", "the app stopped before the video was made")
            else:
                self.store.finish(job.id, "cancelled")
            raise
        except Exception as error:  # noqa: BLE001 - any failure must end the job, not hang it
            log.opt(exception=error).info("video failed")
            self.store.finish(job.id, "failed", str(error))
        else:
            if result:
                self.store.finish(job.id, "done")
            else:
                tail = result.log_tail[-1] if result.log_tail else "no output"
                self.store.finish(job.id, "failed", f"the NeRF script failed: {tail}")
        finally:
            watcher.cancel()
            audio.unlink(missing_ok=True)

    async def _watch(self, job_id: str, task: asyncio.Task[Any] | None) -> None:
        """Keep the job's heartbeat and cancel its task when any worker asks."""
        while True:
            await asyncio.sleep(POLL_S)
            try:
                cancel = self.store.beat(job_id)
            except Exception:  # noqa: BLE001 - a busy store must not end the watch
                logger.opt(exception=True).warning("job store unavailable")
                continue
            if cancel and task is not None:
                task.cancel()
                return

    async def cancel(self, job_id: str) -> Job:
        """Ask for the job to be cancelled and wait (a while) until it has ended."""
        self.current(job_id)
        job = self.store.request_cancel(job_id)
        if job_id in self.tasks:  # ours: no need to wait for the watcher
            self.tasks[job_id].cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CANCEL_WAIT_S
        while (job is None or not job.finished) and loop.time() < deadline:
            await asyncio.sleep(POLL_S)
            job = self.current(job_id)
        return job or self.current(job_id)

    async def stream(self, job_id: str, *, after: int) -> AsyncIterator[str]:
        """The job's events as Server-Sent Events, from event number ``after`` to its end."""
        yield "retry: 1000\n\n"
        quiet = 0.0
        while True:
            # Status first: a job that had ended had written all its events by then.
            job = self.current(job_id)
            for seq, event in self.store.events(job_id, after):
                data = json.dumps(dataclasses.asdict(event))
                yield f"id: {seq}\nevent: progress\ndata: {data}\n\n"
                after, quiet = seq, 0.0
            if job.finished:
                yield f"event: {job.status}\ndata: {json.dumps(job.view())}\n\n"
                return
            if quiet >= KEEPALIVE_S:  # a comment, so that proxies keep a quiet stream open
                yield ": keep-alive\n\n"
                quiet = 0.0
            await asyncio.sleep(POLL_S)
            quiet += POLL_S

    async def stop(self) -> None:
        """End this worker's runs (the app is shutting down): kill them and wait for clean-up."""
        self.stopping = True
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _WorkerHeader:
    """Name the answering worker process in every response (which worker served what)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.header = (WORKER_HEADER.lower().encode(), str(os.getpid()).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_pid(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_pid if scope["type"] == "http" else send)


def _has_portrait(settings: Settings, character: str) -> bool:
    try:
        find_test_image(settings, character)
    except NerfCacheError:
        return False
    return True


def _add_character(settings: Settings, data: Path, character: str, image: bytes) -> Path:
    """Make ``character`` with ``image`` as its portrait, in ``{cache_root}/{character}/images``.

    A character that already has a portrait is a 409: its cache belongs to that portrait.
    """
    suffix = _image_suffix(image)
    folder = character_dir(settings, character)
    # One lock for all workers, so that two uploads for one new name do not both win.
    with FileLock(data / "characters.lock", timeout=10):
        if _has_portrait(settings, character):
            raise HTTPException(
                409,
                f"character {character!r} already has a portrait: pick it, or give the new"
                " portrait another name",
            )
        target = folder / "images" / f"portrait{suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        partial.write_bytes(image)
        partial.replace(target)  # never a half-written portrait under a portrait's name
    return target


def _image_suffix(image: bytes) -> str:
    # The NeRF script opens the portrait with PIL, which takes PNG and JPEG; anything else
    # would fail only after the run started.
    if image.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if image.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    raise HTTPException(422, "the portrait must be a PNG or JPEG image")


async def _read_limited(upload: UploadFile, limit: int) -> bytes:
    content = await upload.read(limit + 1)
    if len(content) > limit:
        raise HTTPException(413, f"{upload.filename or 'file'} is larger than {limit} bytes")
    return content


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
