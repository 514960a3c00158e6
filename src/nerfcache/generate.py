"""generate_video: check the inputs, stage a run, run the NeRF script, publish, move the video."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from loguru import logger

from nerfcache.cache import CacheStatus, CharacterCache, Fingerprint
from nerfcache.characters import (
    find_test_image,
    resolve_audio,
    resolve_model,
    validate_character,
)
from nerfcache.config import Settings, get_settings
from nerfcache.errors import (
    ConfigurationError,
    GenerationError,
    GenerationTimeout,
    InvalidInputError,
)
from nerfcache.launch import find_script, plan_launch
from nerfcache.run import run_plan

__all__ = ["VIDEO_NAME", "GenerationResult", "generate_video"]

VIDEO_NAME = "output_NeRFFaceSpeech.mp4"
# What the scripts' unquoted shell mux can take without splitting or running anything.
_SHELL_SAFE = re.compile(r"[A-Za-z0-9_./-]+")


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

    def __bool__(self) -> bool:
        return self.ok


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
    on_line: Callable[[str], None] | None = None,
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

    Raises:
        InvalidInputError: a bad character or model name (also a ``ValueError``).
        MissingFileError: a missing audio, image or model (also a ``FileNotFoundError``).
        ConfigurationError: a configured path is missing; the message names the setting.
        GenerationTimeout: the run exceeded ``timeout`` and was killed (also a ``TimeoutError``).
        GenerationError: with ``check=True``, the run did not make a video.

    """
    settings = settings or get_settings()
    script, cache_capable = find_script(settings)
    validate_character(character)
    audio = resolve_audio(audio_path)
    image = find_test_image(settings, character, test_image)
    network = resolve_model(settings, model_name)
    output_dir = Path(os.path.abspath(output_path))
    if output_dir.exists() and not output_dir.is_dir():
        raise InvalidInputError(
            f"output_path {str(output_dir)!r} exists and is not a folder",
            field="output_path",
            value=output_path,
        )
    timeout = timeout if timeout is not None else settings.timeout_s

    cache = CharacterCache(settings, character)
    memo = settings.cache_root / ".nerfcache" / "digests.json"
    fingerprint = Fingerprint.of(image, network, settings.trunc, memo=memo)
    started = time.perf_counter()
    with cache.stage(fingerprint, image=image, network=network) as staging:
        log = logger.bind(character=character, run_id=staging.run_id)
        log.info(
            "{} run with the {} script (cache {})",
            "warm" if staging.status is CacheStatus.WARM else "building",
            "cache-capable" if cache_capable else "stock",
            staging.status_before.value,
        )
        if not cache_capable:
            log.warning(
                "cache-capable script not found at {}: using the stock script, cached through"
                " its --outdir",
                settings.cache_script,
            )
        with _shell_safe(staging.path) as workdir:
            plan = plan_launch(
                settings,
                script=script,
                cache_capable=cache_capable,
                outdir=workdir,
                # The scripts paste the audio path into a shell command unquoted: stage it
                # (and the portrait) under plain names in the plain workdir.
                audio=workdir / _stage_input(audio, staging.path, "audio"),
                image=workdir / _stage_input(image, staging.path, "portrait"),
                network=network,
            )
            try:
                outcome = run_plan(plan, timeout=timeout, cancel=cancel, on_line=on_line, log=log)
            except PermissionError as error:
                raise ConfigurationError(
                    f"the conda Python {settings.conda_python} could not be started ({error});"
                    " set conda_python (NERFCACHE_CONDA_PYTHON) to an executable",
                    setting="conda_python",
                    path=settings.conda_python,
                ) from error
        published = cache.publish(staging, image=image, network=network)
        video = staging.path / VIDEO_NAME
        # Exit 0 is not enough: the scripts ignore ffmpeg's failure.
        ok = outcome.returncode == 0 and video.is_file() and video.stat().st_size > 0
        video_path = _move_into_place(video, output_dir / VIDEO_NAME) if ok else None
        if not ok:
            log.error("no video: the script exited with {}", outcome.returncode)
    result = GenerationResult(
        ok=ok,
        returncode=outcome.returncode,
        video_path=video_path,
        output_dir=output_dir,
        cache_dir=cache.path,
        script=script,
        cache_capable=cache_capable,
        cache_hit=staging.status is CacheStatus.WARM,
        cache_status_before=staging.status_before,
        published=published,
        duration_s=time.perf_counter() - started,
        command=plan.argv,
        log_tail=outcome.log_tail,
        run_id=staging.run_id,
    )
    if outcome.timed_out:
        raise GenerationTimeout(
            f"NeRF run for {character!r} exceeded its timeout of {timeout} s and was killed",
            result=result,
        )
    if check and not ok:
        last = result.log_tail[-1] if result.log_tail else "no output"
        raise GenerationError(
            f"NeRF run for {character!r} made no video (exit code {result.returncode}): {last}",
            result=result,
        )
    return result


def _stage_input(source: Path, folder: Path, stem: str) -> str:
    """Link (or copy) ``source`` into ``folder`` under a plain name; return that name."""
    suffix = source.suffix if _SHELL_SAFE.fullmatch(source.suffix[1:] or "x") else ""
    name = stem + suffix.lower()
    try:
        os.link(source, folder / name)
    except OSError:
        shutil.copyfile(source, folder / name)
    return name


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


def _move_into_place(source: Path, target: Path) -> Path:
    """Move ``source`` to ``target`` atomically, replacing an older video."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, target)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target
