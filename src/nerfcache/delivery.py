"""The run's video and the user's output folder: checked before the run, delivered after it.

``check_output_dir`` refuses, before any GPU minute is spent, a folder that cannot take the
video; ``deliver`` judges whether the script made a whole video and moves it into place, or
keeps it in ``{state_dir}/undelivered/`` when the folder went away during the run.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
from pathlib import Path
from typing import Any

from loguru import logger

from nerfcache._fs import atomic_write
from nerfcache.cache import META_DIR
from nerfcache.config import Settings
from nerfcache.errors import InvalidInputError
from nerfcache.run import RunOutcome

__all__ = ["UNDELIVERED_DIR", "VIDEO_NAME", "Delivery", "check_output_dir", "deliver"]

VIDEO_NAME = "output_NeRFFaceSpeech.mp4"
UNDELIVERED_DIR = "undelivered"
"""In ``state_dir``: videos that were made but could not be put in their output folder."""


@dataclasses.dataclass(frozen=True)
class Delivery:
    """Where the run's video went: ``video_path`` when delivered, else ``error`` says why."""

    video_path: Path | None = None
    error: str | None = None
    kept: Path | None = None
    """Where a video made but not delivered was kept, if it could be."""


def check_output_dir(output_path: Path | str, settings: Settings) -> Path:
    """Check that the video can be delivered into ``output_path``, creating nothing yet.

    Found now, not after minutes of GPU work: a folder that is a file, or cannot be created or
    written, a folder squatting on the video's name, a place inside nerfcache's own state.

    Raises:
        InvalidInputError: the folder cannot take the video (``field="output_path"``).

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


def deliver(
    outcome: RunOutcome, video: Path, output_dir: Path, settings: Settings, log: Any = logger
) -> Delivery:
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
        return Delivery(error=f"the script made no video (exit code {code}): {last}")
    if code is None or code < 0:
        return Delivery(error=f"the script was killed (exit code {code}): its video is not trusted")
    if code > 0:
        log.warning(
            "the script exited with {} after making its video (its clean-up failed): the video"
            " is delivered",
            code,
        )
    try:
        return Delivery(video_path=_move_into_place(video, output_dir / VIDEO_NAME))
    except OSError as problem:
        # output_dir was checked before the run; it went away, filled up or was locked since.
        # The video is GPU minutes of work: keep it where the user can get it.
        kept = _keep(video, settings)
        error = (
            f"the video was made but could not be put in {output_dir}"
            f" ({problem.strerror or problem}); "
            + (f"it is kept at {kept}" if kept else "it could not be kept either")
        )
        return Delivery(error=error, kept=kept)


def _keep(video: Path, settings: Settings) -> Path | None:
    """Move an undeliverable video to ``{state_dir}/undelivered/``; None if that fails too."""
    run_id = video.parent.name  # the staging dir is named for its run
    try:
        return _move_into_place(video, settings.state_dir / UNDELIVERED_DIR / f"{run_id}.mp4")
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
