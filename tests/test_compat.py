"""nerfcache.compat in the seed's web app: the tests play the app's part.

The app (TFG_ui_NeRFFaceSpeech) is reduced to what its launcher touched: a config module
(PROJECT_ROOT above ``app/``, MODEL_DIR, a portrait registry whose defaults live under the
second spelling ``assets/charactors/``), a root-logger handler that feeds its live log page, a
character list that shows every folder under ``assets/charactor/``, and FastAPI endpoints whose
background tasks call ``generate_video`` in worker threads and check only its truth.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import BackgroundTasks, FastAPI
from pydantic import BaseModel

from nerfcache import (
    CacheStatus,
    CharacterCache,
    Fingerprint,
    GenerationResult,
    Settings,
    make_generate_video,
)
from nerfcache.compat import LOGGER_NAME, CompatLauncher
from nerfcache.testing import FakeProject, write_png

pytestmark = pytest.mark.timeout(60)

VIDEO = "output_NeRFFaceSpeech.mp4"


# -- the app ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AppConfig:
    """The app's ``shared/config.py``: paths from PROJECT_ROOT, the folder above ``app/``."""

    PROJECT_ROOT: Path

    @property
    def MODEL_DIR(self) -> Path:  # noqa: N802 - the app's name
        return self.PROJECT_ROOT / "NeRFFaceSpeech_Code" / "pretrained_networks"

    @property
    def CHARACTER_DIR(self) -> Path:  # noqa: N802
        return self.PROJECT_ROOT / "assets" / "charactor"

    @property
    def OUTPUT_VIDEO_DIR(self) -> Path:  # noqa: N802
        return self.PROJECT_ROOT / "NeRFFaceSpeech_Code" / "outputs" / "video"

    @property
    def CHARACTER_TEST_IMAGES(self) -> dict[str, Path]:  # noqa: N802
        charactors = self.PROJECT_ROOT / "assets" / "charactors"  # sic: the second spelling
        return {"Aerith": charactors / "Aerith" / "Aerith.jpg", "Zack": charactors / "Zack.jpg"}

    def get_character_test_image(self, character: str) -> Path:
        """The registry if its file exists, then the character's folder; else ValueError."""
        registered = self.CHARACTER_TEST_IMAGES.get(character)
        if registered is not None and registered.exists():
            return registered
        for folder in (self.CHARACTER_DIR / character / "images", self.CHARACTER_DIR / character):
            images = sorted(folder.glob("*.jpg")) + sorted(folder.glob("*.png"))
            if images:
                return images[0]
        raise ValueError(f"未知角色: {character}（未找到测试图片）")  # noqa: RUF001 - the app's text

    def list_characters(self) -> list[str]:
        """What the character-list API returns: every folder under assets/charactor/."""
        return sorted(p.name for p in self.CHARACTER_DIR.iterdir() if p.is_dir())


class VideoRequest(BaseModel):
    audio_path: str  # the app makes it with TTS first; here it is given
    character: str
    model_name: str


def create_app(config: AppConfig, generate_video: Callable[..., Any]) -> FastAPI:
    """The app's backend: background tasks run the launcher in worker threads."""
    app = FastAPI()
    tasks: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    def run_video_generation_task(task_id: str, request: VideoRequest, video_dir: Path) -> None:
        with lock:
            tasks[task_id]["status"] = "running"
        try:
            ok = generate_video(
                audio_path=request.audio_path,
                character=request.character,
                output_path=str(video_dir),
                model_name=request.model_name,
            )
        except Exception as error:  # noqa: BLE001 - the app's outer handler
            update = {"status": "raised", "error": repr(error)}
        else:
            update = {"status": "completed" if ok else "failed", "result": ok}
        with lock:
            tasks[task_id].update(update, thread=threading.current_thread().name)

    @app.post("/generate_video")
    async def post_video(request: VideoRequest, background_tasks: BackgroundTasks) -> Any:
        task_id = uuid.uuid4().hex
        video_dir = config.OUTPUT_VIDEO_DIR / task_id
        video_dir.mkdir(parents=True)  # the app makes output_path itself
        with lock:
            tasks[task_id] = {"status": "pending", "video_dir": video_dir}
        background_tasks.add_task(run_video_generation_task, task_id, request, video_dir)
        return {"unique_id": task_id, "status": "pending"}

    @app.get("/generate_video/status/{task_id}")
    async def status(task_id: str) -> Any:
        with lock:
            return {"status": tasks[task_id]["status"]}

    @app.get("/character/list")
    async def characters() -> Any:
        return config.list_characters()

    app.state.tasks = tasks
    return app


def run_requests(app: FastAPI, *requests: dict[str, str]) -> list[dict[str, Any]]:
    """POST the requests at once, poll each to its end as the app's UI does; the tasks."""

    async def main() -> list[str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            posted = await asyncio.gather(
                *(client.post("/generate_video", json=body) for body in requests)
            )
            ids = [response.json()["unique_id"] for response in posted]
            deadline = time.monotonic() + 30
            for task_id in ids:
                while await status(client, task_id) in ("pending", "running"):
                    assert time.monotonic() < deadline, "the task never ended"
                    await asyncio.sleep(0.01)
            return ids

    return [app.state.tasks[task_id] for task_id in asyncio.run(main())]


async def status(client: httpx.AsyncClient, task_id: str) -> str:
    return str((await client.get(f"/generate_video/status/{task_id}")).json()["status"])


def characters(app: FastAPI) -> list[str]:
    async def main() -> list[str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return list((await client.get("/character/list")).json())

    return asyncio.run(main())


@dataclasses.dataclass(frozen=True)
class Record:
    level: int
    logger: str
    message: str
    thread: str
    has_traceback: bool


class BufferLogHandler(logging.Handler):
    """The app's handler on the root logger (its live log page): the message, by level."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[Record] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(
            Record(
                record.levelno,
                record.name,
                record.getMessage(),
                record.threadName or "",
                record.exc_info is not None,
            )
        )

    def errors(self) -> list[str]:
        return [r.message for r in self.records if r.level >= logging.ERROR]


@dataclasses.dataclass(frozen=True)
class WebApp:
    project: FakeProject
    config: AppConfig
    app: FastAPI
    log: BufferLogHandler
    aerith: Path

    def body(self, **overrides: str) -> dict[str, str]:
        return {
            "audio_path": str(self.project.audio),
            "character": "ayanami",
            "model_name": self.project.model_name,
            **overrides,
        }


@pytest.fixture
def app_log() -> Iterator[BufferLogHandler]:
    """The app's logging: root at INFO with its buffer handler (restored afterwards)."""
    root = logging.getLogger()
    handler, level = BufferLogHandler(), root.level
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def webapp(nerf_project: FakeProject, app_log: BufferLogHandler, monkeypatch) -> WebApp:
    """The app in the fake NeRF project, started from ``app/`` with the compat shim."""
    config = AppConfig(nerf_project.root)
    aerith = write_png(config.CHARACTER_TEST_IMAGES["Aerith"], (180, 60, 200))
    (nerf_project.root / "app").mkdir()
    monkeypatch.chdir(nerf_project.root / "app")  # where the app is always started
    monkeypatch.setenv("FAKE_NERF_LOG", str(nerf_project.log))  # inherited by the script
    # The shim, as app/shared/utils/run_nerffacespeech.py writes it.
    generate_video = make_generate_video(
        project_root=config.PROJECT_ROOT,
        model_dir=config.MODEL_DIR,
        test_image_lookup=config.get_character_test_image,
    )
    return WebApp(nerf_project, config, create_app(config, generate_video), app_log, aerith)


# -- a good run ------------------------------------------------------------------------------


def test_cold_then_warm_video_with_the_scripts_lines_in_the_apps_log(webapp: WebApp) -> None:
    (cold,) = run_requests(webapp.app, webapp.body())
    assert characters(webapp.app) == ["ayanami"]
    (warm,) = run_requests(webapp.app, webapp.body())
    assert characters(webapp.app) == ["ayanami"]  # nerfcache's state is not a character
    assert (webapp.project.root / ".nerfcache").is_dir()  # it exists, elsewhere

    for task in (cold, warm):
        assert task["status"] == "completed"
        assert isinstance(task["result"], GenerationResult)
        assert task["result"].video_path == task["video_dir"] / VIDEO
        # Only the video: the app moves it away, then removes the folder with rmdir.
        assert [p.name for p in task["video_dir"].iterdir()] == [VIDEO]
        assert task["thread"] != threading.main_thread().name
    # The script's byproduct PNGs stay in the run's folder: never taken for a portrait.
    assert not list(webapp.project.character_dir().glob("*.png"))
    first, second = webapp.project.calls()
    assert first.computed("pti") and first.computed("fitting")
    assert second.loaded("pti") and second.loaded("fitting")

    lines = [r for r in webapp.log.records if r.logger == LOGGER_NAME and r.level == logging.INFO]
    frames = [r for r in lines if "Processing frames" in r.message]
    assert len(frames) >= 10  # tqdm redraws are INFO lines, as the original logged them
    assert sum('Loading networks from "' in r.message for r in lines) == 2
    assert any("NeRF video ready" in r.message for r in lines)
    assert {r.thread for r in frames}.isdisjoint({threading.main_thread().name})
    assert webapp.log.errors() == []


def test_the_default_character_from_the_registry(webapp: WebApp) -> None:
    (task,) = run_requests(webapp.app, webapp.body(character="Aerith"))
    assert task["status"] == "completed", webapp.log.errors()
    assert (task["video_dir"] / VIDEO).stat().st_size > 0
    # Built from the registry's portrait (assets/charactors/Aerith/Aerith.jpg).
    settings = Settings(project_root=webapp.config.PROJECT_ROOT)
    network = webapp.config.MODEL_DIR / webapp.project.model_name
    fingerprint = Fingerprint.of(webapp.aerith, network, settings.trunc)
    assert CharacterCache(settings, "Aerith").status(fingerprint) is CacheStatus.WARM
    assert ".nerfcache" not in characters(webapp.app)


def test_concurrent_requests_from_worker_threads_build_once(webapp: WebApp, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_NERF_PTI_S", "0.3")
    webapp.project.add_character("Cloud")
    tasks = run_requests(webapp.app, *[webapp.body(character="Cloud")] * 3)
    assert [task["status"] for task in tasks] == ["completed"] * 3
    assert sum(call.computed("pti") for call in webapp.project.calls()) == 1
    assert threading.main_thread().name not in {task["thread"] for task in tasks}
    assert ".nerfcache" not in characters(webapp.app)


# -- failures: falsy, logged at ERROR, never raised ------------------------------------------


@dataclasses.dataclass(frozen=True)
class Failure:
    body: dict[str, str]
    reason: str
    """What the ERROR record says."""
    ran: bool = False
    """Whether the script ran (the result is then a falsy GenerationResult, else False)."""
    env: dict[str, str] = dataclasses.field(default_factory=dict)


FAILURES = {
    "unknown": Failure({"character": "Tifa"}, "未知角色: Tifa"),
    # The app's lookup finds assets/charactors/Aerith/Aerith.jpg through the "..".
    "bad-name": Failure({"character": "../charactors/Aerith"}, "invalid character name"),
    "registered-missing": Failure({"character": "Zack"}, "未知角色: Zack"),
    "no-model": Failure({"model_name": "nope.pkl"}, "not found in model_dir"),
    "not-pkl": Failure({"model_name": "ffhq.pt"}, "it must be a .pkl"),
    "no-audio": Failure(
        {"audio_path": "/nowhere/speech.wav"}, "audio file '/nowhere/speech.wav' does not exist"
    ),
    "conda-python": Failure(
        {}, "NERFCACHE_CONDA_PYTHON", env={"NERFCACHE_CONDA_PYTHON": "/nowhere/bin/python"}
    ),
    "bad-setting": Failure(
        {}, "invalid nerfcache setting trunc (NERFCACHE_TRUNC)", env={"NERFCACHE_TRUNC": "abc"}
    ),
    "fails": Failure(
        {}, "the script exited with 1", ran=True, env={"FAKE_NERF_FAIL_AT": "rendering"}
    ),
    "no-video": Failure({}, "the script exited with 0", ran=True, env={"FAKE_NERF_NO_VIDEO": "1"}),
    "timeout": Failure(
        {},
        "exceeded its timeout of 0.5 s",
        ran=True,
        env={"NERFCACHE_TIMEOUT_S": "0.5", "FAKE_NERF_RENDER_S": "30"},
    ),
}


@pytest.mark.parametrize("case", FAILURES.values(), ids=FAILURES.keys())
def test_a_failure_is_falsy_and_logged_never_raised(
    webapp: WebApp, monkeypatch, case: Failure
) -> None:
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    (task,) = run_requests(webapp.app, webapp.body(**case.body))
    assert task["status"] == "failed", task.get("error")
    errors = [r for r in webapp.log.records if r.level == logging.ERROR]
    assert any(r.logger == LOGGER_NAME and case.reason in r.message for r in errors), errors
    if case.ran:
        assert isinstance(task["result"], GenerationResult)
        assert not task["result"]
        assert not (task["video_dir"] / VIDEO).exists()
    else:
        assert task["result"] is False
        assert webapp.project.calls() == []
    assert ".nerfcache" not in characters(webapp.app)


def test_a_crash_logs_the_scripts_traceback_at_error(webapp: WebApp, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_NERF_FAIL_AT", "rendering")
    (task,) = run_requests(webapp.app, webapp.body())
    assert task["status"] == "failed"
    assert any(m.startswith("Traceback (most recent call last)") for m in webapp.log.errors())


# -- the launcher, called directly -----------------------------------------------------------


def launcher(webapp: WebApp, **options: Any) -> CompatLauncher:
    options.setdefault("test_image_lookup", webapp.config.get_character_test_image)
    return make_generate_video(project_root=webapp.config.PROJECT_ROOT, **options)


def test_positional_call_and_nerfcaches_own_portrait_lookup(webapp: WebApp) -> None:
    generate = make_generate_video(project_root=webapp.config.PROJECT_ROOT)
    result = generate(str(webapp.project.audio), "ayanami", "out", webapp.project.model_name)
    assert result
    assert result.video_path == webapp.project.root / "app" / "out" / VIDEO


def test_a_missing_portrait_from_the_lookup(webapp: WebApp) -> None:
    gone = webapp.project.root / "gone.jpg"
    generate = launcher(webapp, test_image_lookup=lambda _character: gone)
    assert generate(webapp.project.audio, "ayanami", "out", "ffhq.pkl") is False
    assert any(f"test image '{gone}' does not exist" in m for m in webapp.log.errors())


def test_an_unexpected_error_is_logged_with_its_traceback(webapp: WebApp) -> None:
    def lookup(character: str) -> Path:
        raise RuntimeError(f"registry broken for {character}")

    generate = launcher(webapp, test_image_lookup=lookup)
    assert generate(webapp.project.audio, "ayanami", "out", "ffhq.pkl") is False
    (record,) = [r for r in webapp.log.records if r.level == logging.ERROR]
    assert "RuntimeError: registry broken for ayanami" in record.message
    assert record.has_traceback


def test_the_stock_script_fallback_is_a_warning(webapp: WebApp) -> None:
    webapp.project.use_stock_script_only()
    assert launcher(webapp)(webapp.project.audio, "ayanami", "out", "ffhq.pkl")
    warnings = [r.message for r in webapp.log.records if r.level == logging.WARNING]
    assert any("cache-capable script not found" in m for m in warnings)
    assert webapp.log.errors() == []


def test_the_project_root_is_found_from_the_apps_folder(webapp: WebApp, monkeypatch) -> None:
    generate = make_generate_video(test_image_lookup=webapp.config.get_character_test_image)
    assert generate(webapp.project.audio, "ayanami", "out", "ffhq.pkl")  # cwd: {root}/app
    monkeypatch.chdir(webapp.project.root.parent)  # outside the project: nothing to find
    assert generate(webapp.project.audio, "ayanami", "out", "ffhq.pkl") is False
    assert any("NERFCACHE_NERF_CODE_DIR" in m for m in webapp.log.errors())


def test_an_unknown_setting_is_a_type_error_at_once() -> None:
    with pytest.raises(TypeError, match="modeldir"):
        make_generate_video(modeldir="models")
