"""generate_video and warm: check the inputs, stage, run, publish, deliver.

The run logic is written once, here, in sync form; ``generate_async`` drives it from a worker
thread. Which command the script gets (names, paths, environment) is ``launch``'s decision;
whether its video counts and where it goes, ``delivery``'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from loguru import logger

from nerfcache._wav import write_wav
from nerfcache.cache import CacheStatus, CharacterCache, Fingerprint, digest_memo
from nerfcache.characters import find_test_image, resolve_audio, resolve_model
from nerfcache.config import Settings, get_settings
from nerfcache.delivery import VIDEO_NAME, check_output_dir, deliver
from nerfcache.errors import (
    GenerationCancelled,
    GenerationError,
    GenerationTimeout,
    InvalidInputError,
)
from nerfcache.gpus import gpu_slot
from nerfcache.launch import (
    AUDIO_STEM,
    PORTRAIT_STEM,
    find_script,
    is_shell_safe,
    link_home,
    plan_launch,
    staged_name,
)
from nerfcache.progress import ProgressEvent, ProgressTracker
from nerfcache.run import RunOutcome, run_plan
from nerfcache.workdir import working_dir

__all__ = ["VIDEO_NAME", "GenerationResult", "generate_video", "warm"]

WORKDIR_NAME = "workdir"  # the run's private view of the code folder, inside its staging dir

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

    cache: CharacterCache
    script: Path
    cache_capable: bool
    image: Path
    network: Path
    fingerprint: Fingerprint
    versions: tuple[tuple[int, int], tuple[int, int]]
    """(size, mtime) of the portrait and the network when they were hashed."""

    @property
    def character(self) -> str:
        """The character's name."""
        return self.cache.character

    def changed(self, portrait: Path, *, during_run: bool = False) -> str | None:
        """Which input is not the version that was hashed, or None.

        ``portrait`` is the run's copy of the portrait, which keeps the original's (size,
        mtime): before the run it differs when the user replaced the portrait since it was
        hashed; after the run, when the script wrote over its copy.
        """
        if not _is_version(portrait, self.versions[0]):
            if during_run:
                return f"the run's copy of the portrait ({portrait.name})"
            return f"the portrait {self.image}"
        if not _is_version(self.network, self.versions[1]):
            return f"the network {self.network}"
        return None


def _version(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return (stat.st_size, stat.st_mtime_ns)


def _is_version(path: Path, version: tuple[int, int]) -> bool:
    """Whether ``path`` is still the file of that (size, mtime); a file gone is not."""
    try:
        return _version(path) == version
    except OSError:
        return False


def _check_inputs(
    settings: Settings, character: str, model_name: str, test_image: Path | str | None
) -> _Inputs:
    """Check the installation, the character, its portrait and the model, then hash them.

    The character's name is checked once, by ``CharacterCache``, whose folder the rest of the
    run uses. Hashing writes the hash memo: every check of the caller's own comes first.
    """
    script, cache_capable = find_script(settings)
    cache = CharacterCache(settings, character)
    image = find_test_image(settings, character, test_image, folder=cache.path)
    network = resolve_model(settings, model_name)
    versions = (_version(image), _version(network))
    fingerprint = Fingerprint.of(image, network, settings.trunc, memo=digest_memo(settings))
    return _Inputs(cache, script, cache_capable, image, network, fingerprint, versions)


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        # NaN compares false with everything: unchecked, it would mean no limit at all.
        raise InvalidInputError(
            f"timeout must be a positive number of seconds (or None: no limit), not {timeout!r}",
            field="timeout",
            value=timeout,
        )


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
    _check_timeout(timeout)
    audio = resolve_audio(audio_path)
    output_dir = check_output_dir(output_path, settings)
    inputs = _check_inputs(settings, character, model_name, test_image)
    return _generate(
        settings,
        inputs,
        audio=audio,
        output_dir=output_dir,
        timeout=timeout if timeout is not None else settings.timeout_s,
        check=check,
        cancel=cancel,
        on_line=on_line,
        on_progress=on_progress,
    )


def _generate(
    settings: Settings,
    inputs: _Inputs,
    *,
    audio: Path,
    output_dir: Path,
    timeout: float | None,
    check: bool,
    cancel: threading.Event | None = None,
    on_line: Callable[[str], object] | None = None,
    on_progress: ProgressCallback | None = None,
) -> GenerationResult:
    """Run the checked ``inputs``; raise on timeout, cancel (and with ``check``, on failure)."""
    character = inputs.character
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
    cache = inputs.cache
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
            _shell_safe(staging.path) as outdir,
        ):
            # The scripts paste the audio path into a shell command unquoted: the inputs are
            # copied into the staging dir under plain names. Copies, never links: whatever the
            # script writes there, the user's files stay as they were; and the copy of the
            # portrait is what the run uses, so it is what is checked against the hash.
            audio_name = staged_name(audio, AUDIO_STEM)
            image_name = staged_name(image, PORTRAIT_STEM)
            portrait = staging.add_input(image, image_name)
            staging.add_input(audio, audio_name)
            plan = plan_launch(
                settings,
                script=inputs.script,
                cache_capable=inputs.cache_capable,
                outdir=outdir,
                audio=outdir / audio_name,
                image=outdir / image_name,
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
                if changed := inputs.changed(portrait, during_run=True):
                    log.warning("{} changed during the run: nothing published", changed)
                    published: tuple[str, ...] = ()
                else:
                    published = cache.publish(staging, image=image, network=network)
        delivery = deliver(outcome, staging.path / VIDEO_NAME, output_dir, settings, log)
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
    _check_timeout(timeout)
    inputs = _check_inputs(settings, character, model_name, test_image)
    status = inputs.cache.status(inputs.fingerprint)
    if status is CacheStatus.WARM:
        return status
    with tempfile.TemporaryDirectory(prefix="nerfcache-warm-") as tmp:
        _generate(
            settings,
            inputs,
            audio=write_wav(Path(tmp) / "silence.wav", seconds=0.5),
            output_dir=Path(tmp) / "out",
            timeout=timeout if timeout is not None else settings.timeout_s,
            check=True,
        )
    return status


@contextlib.contextmanager
def _shell_safe(path: Path) -> Iterator[Path]:
    """Yield ``path``, or a shell-safe symlink to it when its own spelling is not.

    ``launch`` decides (``is_shell_safe``, ``link_home``); this makes the link, in a private
    ``mkdtemp`` folder removed on the way out.
    """
    if is_shell_safe(path):
        yield path
        return
    base = Path(tempfile.mkdtemp(prefix="nerfcache-", dir=link_home(Path(tempfile.gettempdir()))))
    try:
        (base / "run").symlink_to(path, target_is_directory=True)
        yield base / "run"
    finally:
        shutil.rmtree(base)  # removes the link, never what it points to
