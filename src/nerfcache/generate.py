"""generate_video and its async forms: check the inputs, stage, run, publish, deliver.

The run logic is written once, in sync form (``generate_video``). ``agenerate_video`` drives
it from a worker thread and turns cancellation of the awaiting task into the sync cancel token,
as filelock's async locks drive its sync ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import inspect
import math
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from loguru import logger

from nerfcache._fs import atomic_write
from nerfcache._wav import write_wav
from nerfcache.cache import META_DIR, CacheStatus, CharacterCache, Fingerprint, digest_memo
from nerfcache.characters import (
    find_test_image,
    resolve_audio,
    resolve_model,
    validate_character,
)
from nerfcache.config import Settings, get_settings
from nerfcache.errors import (
    GenerationCancelled,
    GenerationError,
    GenerationTimeout,
    InvalidInputError,
)
from nerfcache.gpus import gpu_slot
from nerfcache.launch import find_script, plan_launch
from nerfcache.progress import ProgressEvent, ProgressTracker
from nerfcache.run import RunOutcome, run_plan
from nerfcache.workdir import working_dir

__all__ = [
    "VIDEO_NAME",
    "GenerationResult",
    "agenerate_video",
    "generate_video",
    "stream_video",
    "warm",
]

VIDEO_NAME = "output_NeRFFaceSpeech.mp4"
WORKDIR_NAME = "workdir"  # the run's private view of the code folder, inside its staging dir
# What the scripts' unquoted shell mux can take without splitting or running anything.
_SHELL_SAFE = re.compile(r"[A-Za-z0-9_./-]+")
_T = TypeVar("_T")

ProgressCallback = Callable[[ProgressEvent], object]


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    """What one ``generate_video`` call did. Truthy exactly when the video was made."""

    ok: bool
    returncode: int | None
    video_path: Path | None
    """``{output_path}/output_NeRFFaceSpeech.mp4`` when ``ok``, else None."""
    output_dir: Path
    cache_dir: Path
    script: Path
    cache_capable: bool
    """Whether the cache-capable script ran (else the stock one, through a seeded outdir)."""
    cache_hit: bool
    """The run started warm: PTI and 3DMM fitting were loaded, not computed."""
    cache_status_before: CacheStatus
    published: tuple[str, ...]
    """Cache files this run added to the character's cache."""
    duration_s: float
    command: tuple[str, ...]
    log_tail: tuple[str, ...]
    run_id: str
    gpu: str | None = None
    """The GPU slot's card (``CUDA_VISIBLE_DEVICES``), when ``settings.gpus`` is set."""
    error: str | None = None
    """Why no video was delivered, in a sentence; None when ``ok``."""
    kept_video: Path | None = None
    """Where the video was kept when it was made but could not be put in ``output_dir``
    (``{state_dir}/undelivered/``); None otherwise."""

    def __bool__(self) -> bool:
        return self.ok


@dataclasses.dataclass(frozen=True)
class _Inputs:
    """What a run for one character needs, checked and hashed."""

    character: str
    script: Path
    cache_capable: bool
    image: Path
    network: Path
    fingerprint: Fingerprint
    versions: tuple[tuple[int, int], tuple[int, int]]
    """(size, mtime) of the portrait and the network when they were hashed."""

    def changed(self, image: Path) -> str | None:
        """Which input changed since it was hashed (``image``: the run's copy), or None."""
        if _version(image) != self.versions[0]:
            return f"the portrait {self.image}"
        if _version(self.network) != self.versions[1]:
            return f"the network {self.network}"
        return None


def _version(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return (stat.st_size, stat.st_mtime_ns)


def _check_inputs(
    settings: Settings, character: str, model_name: str, test_image: Path | str | None
) -> _Inputs:
    """Check the installation, the character, its portrait and the model, then hash them.

    Hashing writes the hash memo: every check of the caller's own comes first.
    """
    script, cache_capable = find_script(settings)
    validate_character(character)
    image = find_test_image(settings, character, test_image)
    network = resolve_model(settings, model_name)
    versions = (_version(image), _version(network))
    fingerprint = Fingerprint.of(image, network, settings.trunc, memo=digest_memo(settings))
    return _Inputs(character, script, cache_capable, image, network, fingerprint, versions)


def _output_dir(output_path: Path | str, settings: Settings) -> Path:
    """Check that the video can be delivered into ``output_path``, creating nothing yet.

    Found now, not after minutes of GPU work: a folder that is a file, or cannot be created or
    written, a folder squatting on the video's name, a place inside nerfcache's own state.
    """
    output_dir = Path(os.path.abspath(output_path))

    def refuse(why: str) -> InvalidInputError:
        return InvalidInputError(
            f"output_path {str(output_dir)!r} {why}", field="output_path", value=output_path
        )

    real = Path(os.path.realpath(output_dir))
    for own in (settings.cache_root, settings.state_dir):
        own_real = Path(os.path.realpath(own))
        if real.is_relative_to(own_real) and (
            own is settings.state_dir or META_DIR in real.relative_to(own_real).parts
        ):
            raise refuse(f"is inside nerfcache's own folder {own}: choose another folder")
    existing = output_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise refuse(
            "exists and is not a folder"
            if existing == output_dir
            else f"cannot be created: {str(existing)!r} is a file"
        )
    if (output_dir / VIDEO_NAME).is_dir():
        raise refuse(f"holds a folder named {VIDEO_NAME}, where the video must go: move it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise refuse(
            "is not writable by this user"
            if existing == output_dir
            else f"cannot be created: {str(existing)!r} is not writable by this user"
        )
    return output_dir


def generate_video(
    audio_path: Path | str,
    character: str,
    output_path: Path | str,
    model_name: str,
    *,
    settings: Settings | None = None,
    test_image: Path | str | None = None,
    timeout: float | None = None,
    check: bool = False,
    cancel: threading.Event | None = None,
    on_line: Callable[[str], object] | None = None,
    on_progress: ProgressCallback | None = None,
) -> GenerationResult:
    """Make ``{output_path}/output_NeRFFaceSpeech.mp4`` from one audio clip and a character.

    Every input is checked before anything starts or is written. The character's PTI and 3DMM
    results are cached in ``{cache_root}/{character}`` and reused by later calls; concurrent
    calls for a cold character build it once.

    Args:
        audio_path: the speech to animate.
        character: the character's name (its folder under ``cache_root``).
        output_path: folder for the video; created if needed.
        model_name: a ``.pkl`` file name inside ``model_dir``.
        settings: defaults to ``get_settings()``.
        test_image: the portrait; by default from the registry or the character's folder.
        timeout: seconds before the run is killed; defaults to ``settings.timeout_s``.
        check: raise ``GenerationError`` instead of returning a failed result.
        cancel: set this event (from another thread) to stop the run.
        on_line: called with every line the script prints.
        on_progress: called with a ``ProgressEvent`` at each stage and progress step.

    Raises:
        InvalidInputError: a bad character or model name (also a ``ValueError``).
        MissingFileError: a missing audio, image or model (also a ``FileNotFoundError``).
        ConfigurationError: a configured path is missing; the message names the setting.
        GenerationTimeout: the run exceeded ``timeout`` and was killed (also a ``TimeoutError``).
        GenerationCancelled: ``cancel`` was set; the run was killed and cleaned up.
        GenerationError: with ``check=True``, the run did not make a video.

    """
    if on_progress is not None and inspect.iscoroutinefunction(on_progress):
        raise InvalidInputError(
            "on_progress is a coroutine function: pass it to agenerate_video or stream_video",
            field="on_progress",
            value=on_progress,
        )
    settings = settings or get_settings()
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        # NaN compares false with everything: unchecked, it would mean no limit at all.
        raise InvalidInputError(
            f"timeout must be a positive number of seconds (or None: no limit), not {timeout!r}",
            field="timeout",
            value=timeout,
        )
    audio = resolve_audio(audio_path)
    output_dir = _output_dir(output_path, settings)
    inputs = _check_inputs(settings, character, model_name, test_image)
    timeout = timeout if timeout is not None else settings.timeout_s
    tracker = ProgressTracker(on_progress or (lambda _event: None))
    try:
        result, outcome = _run(
            settings,
            inputs,
            tracker,
            audio=audio,
            output_dir=output_dir,
            timeout=timeout,
            cancel=cancel,
            on_line=on_line,
        )
    except BaseException as error:
        tracker.stage("failed", str(error) or type(error).__name__)
        raise
    if outcome.timed_out:
        tracker.stage("failed", f"timed out after {timeout} s")
        raise GenerationTimeout(
            f"NeRF run for {character!r} exceeded its timeout of {timeout} s and was killed",
            result=result,
        )
    if outcome.cancelled:
        tracker.stage("failed", "cancelled")
        raise GenerationCancelled(f"NeRF run for {character!r} was cancelled", result=result)
    tracker.stage("done" if result else "failed", result.error or "video ready")
    if check and not result:
        raise GenerationError(f"NeRF run for {character!r}: {result.error}", result=result)
    return result


def _run(
    settings: Settings,
    inputs: _Inputs,
    tracker: ProgressTracker,
    *,
    audio: Path,
    output_dir: Path,
    timeout: float | None,
    cancel: threading.Event | None,
    on_line: Callable[[str], object] | None,
) -> tuple[GenerationResult, RunOutcome]:
    cache = CharacterCache(settings, inputs.character)
    started = time.perf_counter()
    image, network = inputs.image, inputs.network

    def line(text: str) -> None:
        tracker.line(text)
        if on_line is not None:
            on_line(text)

    with cache.stage(
        inputs.fingerprint,
        image=image,
        network=network,
        cancel=cancel,
        on_wait=lambda: tracker.stage("waiting_for_cache", "another run is building this cache"),
    ) as staging:
        log = logger.bind(character=inputs.character, run_id=staging.run_id)
        warm = staging.status is CacheStatus.WARM
        log.info(
            "{} run with the {} script (cache {})",
            "warm" if warm else "building",
            "cache-capable" if inputs.cache_capable else "stock",
            staging.status_before.value,
        )
        if not inputs.cache_capable:
            log.warning(
                "cache-capable script not found at {}: using the stock script, cached through"
                " its --outdir",
                settings.cache_script,
            )
        tracker.plan(pti=staging.status is CacheStatus.COLD, fitting=not warm)
        with (
            # Before the GPU slot: a run waiting for the code folder holds no card.
            working_dir(
                settings,
                staging.path / WORKDIR_NAME,
                builds_pti=staging.status is CacheStatus.COLD,
                cancel=cancel,
                on_wait=lambda: tracker.stage("queued", "waiting for another build's PTI"),
                log=log,
            ) as cwd,
            gpu_slot(
                settings,
                cancel=cancel,
                on_queued=lambda: tracker.stage("queued", "waiting for a free GPU slot"),
            ) as gpu,
            _shell_safe(staging.path) as workdir,
        ):
            # The scripts paste the audio path into a shell command unquoted: stage it (and
            # the portrait, whose copy is then what the run uses) under plain names.
            portrait = staging.path / staging.add_input(image, "portrait")
            plan = plan_launch(
                settings,
                script=inputs.script,
                cache_capable=inputs.cache_capable,
                outdir=workdir,
                audio=workdir / staging.add_input(audio, "audio"),
                image=workdir / portrait.name,
                network=network,
                cwd=cwd,
                gpu=gpu,
                run_id=staging.run_id,
            )
            if changed := inputs.changed(portrait):
                # The cache would be recorded under the hash of what the run did not use.
                raise InvalidInputError(
                    f"{changed} changed while this run waited; nothing was run: try again",
                    field="inputs",
                    value=changed,
                )
            tracker.stage("loading", "starting the NeRF script")
            try:
                outcome = run_plan(plan, timeout=timeout, cancel=cancel, on_line=line, log=log)
            finally:
                # Also when the run was interrupted: finished PTI work is worth keeping.
                if changed := inputs.changed(portrait):
                    log.warning("{} changed during the run: nothing published", changed)
                    published: tuple[str, ...] = ()
                else:
                    published = cache.publish(staging, image=image, network=network)
        delivery = _deliver(outcome, staging.path / VIDEO_NAME, output_dir, settings, log)
        if delivery.error is not None:
            log.error("no video delivered: {}", delivery.error)
    result = GenerationResult(
        ok=delivery.error is None,
        returncode=outcome.returncode,
        video_path=delivery.video_path,
        output_dir=output_dir,
        cache_dir=cache.path,
        script=inputs.script,
        cache_capable=inputs.cache_capable,
        cache_hit=warm,
        cache_status_before=staging.status_before,
        published=published,
        duration_s=time.perf_counter() - started,
        command=plan.argv,
        log_tail=outcome.log_tail,
        run_id=staging.run_id,
        gpu=gpu,
        error=delivery.error,
        kept_video=delivery.kept,
    )
    return result, outcome


@dataclasses.dataclass(frozen=True)
class _Delivery:
    video_path: Path | None = None
    error: str | None = None
    kept: Path | None = None


def _deliver(
    outcome: RunOutcome, video: Path, output_dir: Path, settings: Settings, log: Any
) -> _Delivery:
    """Put the run's video in ``output_dir`` if the run made one; else say why not.

    Made means: the file is there and the script exited rather than being killed. Exit 0 is not
    enough: the scripts ignore ffmpeg's failure. Nor is it needed: the staging dir starts
    without a video, the mux that makes it runs to its end before the script goes on, and all
    that follows is the clean-up of ``epoch_0_final/`` and ``out_refine.mp4``. A script that
    exited with an error after making its video (that clean-up failed) made a whole video, as
    the original launcher judged too; a script killed by a signal (a timeout, a cancel, the OOM
    killer) may have died inside the mux, so its file is not trusted.
    """
    code = outcome.returncode
    if not (video.is_file() and video.stat().st_size > 0):
        last = outcome.log_tail[-1] if outcome.log_tail else "no output"
        error = f"the script made no video (exit code {code}): {last}"
    elif code is None or code < 0:
        error = f"the script was killed (exit code {code}): its video is not trusted"
    else:
        if code > 0:
            log.warning(
                "the script exited with {} after making its video (its clean-up failed): the"
                " video is delivered",
                code,
            )
        try:
            return _Delivery(video_path=_move_into_place(video, output_dir / VIDEO_NAME))
        except OSError as problem:
            # output_dir was checked before the run; it went away, filled up or was locked
            # since. The video is GPU minutes of work: keep it where the user can get it.
            kept = _keep(video, settings)
            error = (
                f"the video was made but could not be put in {output_dir}"
                f" ({problem.strerror or problem}); "
                + (f"it is kept at {kept}" if kept else "it could not be kept either")
            )
            return _Delivery(error=error, kept=kept)
    return _Delivery(error=error)


def warm(
    character: str,
    model_name: str,
    *,
    settings: Settings | None = None,
    test_image: Path | str | None = None,
    timeout: float | None = None,
) -> CacheStatus:
    """Build ``character``'s cache ahead of its first request; return the status found.

    A warm cache is left as it is (returns ``CacheStatus.WARM``, nothing run). Otherwise the
    script runs once on a short silent clip and the video is thrown away.

    Raises:
        GenerationError: the build failed (with the run's result).

    """
    settings = settings or get_settings()
    inputs = _check_inputs(settings, character, model_name, test_image)
    status = CharacterCache(settings, character).status(inputs.fingerprint)
    if status is CacheStatus.WARM:
        return status
    with tempfile.TemporaryDirectory(prefix="nerfcache-warm-") as tmp:
        audio = write_wav(Path(tmp) / "silence.wav", seconds=0.5)
        generate_video(
            audio,
            character,
            Path(tmp) / "out",
            model_name,
            settings=settings,
            test_image=test_image,
            timeout=timeout,
            check=True,
        )
    return status


async def agenerate_video(
    audio_path: Path | str,
    character: str,
    output_path: Path | str,
    model_name: str,
    *,
    settings: Settings | None = None,
    test_image: Path | str | None = None,
    timeout: float | None = None,
    check: bool = False,
    on_line: Callable[[str], object] | None = None,
    on_progress: Callable[[ProgressEvent], object | Awaitable[object]] | None = None,
) -> GenerationResult:
    """``generate_video`` for async code: the same parameters and result, never blocking the loop.

    The run (lock waits included) happens in a worker thread. ``on_progress`` may be a plain or
    an async callable; it is called in the event loop. ``on_line`` is called in the worker
    thread. Cancelling the awaiting task (``task.cancel()``, a client disconnect,
    ``asyncio.timeout``) stops the run: its process group is terminated, its staging dir
    removed, its locks released, then ``CancelledError`` propagates.
    """
    loop = asyncio.get_running_loop()
    cancel = threading.Event()
    call = functools.partial(
        generate_video,
        audio_path,
        character,
        output_path,
        model_name,
        settings=settings,
        test_image=test_image,
        timeout=timeout,
        check=check,
        cancel=cancel,
        on_line=on_line,
        on_progress=_in_loop(on_progress, loop) if on_progress is not None else None,
    )
    future = _in_thread(call, loop)
    try:
        await _settled(future)
    except asyncio.CancelledError:
        cancel.set()
        # Wait for the worker to kill the run and clean up before letting the cancel through.
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await _settled(future)
        if not future.cancelled():
            future.exception()  # retrieved: the cancellation is what the caller sees
        raise
    return future.result()


async def stream_video(
    audio_path: Path | str,
    character: str,
    output_path: Path | str,
    model_name: str,
    **options: Any,
) -> AsyncGenerator[ProgressEvent, None]:
    """Run like ``agenerate_video`` and yield its ``ProgressEvent``s, for SSE or websockets.

    The last event's stage is ``done`` or ``failed``; errors are raised after it. Leaving the
    ``async for`` early (or cancelling the consumer) cancels the run.
    """
    queue: asyncio.Queue[ProgressEvent] = asyncio.Queue()
    task = asyncio.ensure_future(
        agenerate_video(
            audio_path, character, output_path, model_name, on_progress=queue.put_nowait, **options
        )
    )
    try:
        while not (task.done() and queue.empty()):
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
            else:
                getter.cancel()
        task.result()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _settled(future: asyncio.Future[Any], wake_s: float = 0.2) -> None:
    """Wait until ``future`` is done, waking the loop every ``wake_s`` seconds meanwhile.

    The wake-ups are for signal handlers that hand their work to the loop with ``call_soon``,
    which does not wake a loop asleep in its selector (only ``call_soon_threadsafe`` does).
    ipykernel's is one: the notebook's stop button sends SIGINT, and for an awaited cell its
    handler schedules the cancel of the cell's task that way (tornado's ``add_callback``, called
    from the loop's own thread). Without a wake-up that cancel waited for the next event, after
    the whole run when the run reports nothing (ipython/ipykernel#881).
    """
    while not future.done():
        await asyncio.wait({future}, timeout=wake_s)


def _in_loop(
    callback: Callable[[ProgressEvent], object | Awaitable[object]], loop: asyncio.AbstractEventLoop
) -> Callable[[ProgressEvent], None]:
    """Wrap ``callback`` so that a worker thread can call it: it runs in ``loop``."""
    pending: set[asyncio.Future[object]] = set()  # the loop keeps only weak references

    def deliver(event: ProgressEvent) -> None:
        def call() -> None:
            outcome = callback(event)
            if inspect.isawaitable(outcome):
                task = asyncio.ensure_future(outcome)
                pending.add(task)
                task.add_done_callback(pending.discard)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            loop.call_soon_threadsafe(call)

    return deliver


def _in_thread(call: Callable[[], _T], loop: asyncio.AbstractEventLoop) -> asyncio.Future[_T]:
    """Run ``call`` in a thread of its own (runs last minutes: no pool to starve)."""
    future: asyncio.Future[_T] = loop.create_future()

    def settle(result: _T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result = call()
        except BaseException as error:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(settle, None, error)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=work, name="nerfcache-run", daemon=True).start()
    return future


@contextlib.contextmanager
def _shell_safe(path: Path) -> Iterator[Path]:
    """Yield ``path``, or a shell-safe symlink to it when its own spelling is not.

    cache_root and character names may hold spaces or shell metacharacters; the scripts paste
    ``--outdir`` into a shell command unquoted.
    """
    if _SHELL_SAFE.fullmatch(str(path)):
        yield path
        return
    base = Path(tempfile.mkdtemp(prefix="nerfcache-"))
    if not _SHELL_SAFE.fullmatch(str(base)):
        shutil.rmtree(base)
        base = Path(tempfile.mkdtemp(prefix="nerfcache-", dir="/tmp"))
    try:
        (base / "run").symlink_to(path, target_is_directory=True)
        yield base / "run"
    finally:
        shutil.rmtree(base)  # removes the link, never what it points to


def _keep(video: Path, settings: Settings) -> Path | None:
    """Move an undeliverable video to ``{state_dir}/undelivered/``; None if that fails too."""
    run_id = video.parent.name  # the staging dir is named for its run
    try:
        return _move_into_place(video, settings.state_dir / "undelivered" / f"{run_id}.mp4")
    except OSError:
        return None


def _move_into_place(source: Path, target: Path) -> Path:
    """Move ``source`` to ``target`` atomically, replacing an older video."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, target)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        with source.open("rb") as video, atomic_write(target) as file:
            shutil.copyfileobj(video, file)
    return target
