"""A fake NeRFFaceSpeech project to try the app on without a GPU (``scripts/serve`` makes one).

``python -m examples.fastapi_app.fake_project FOLDER`` makes ``FOLDER/project`` once (the fake
NeRF script, character ``ayanami``, model ``ffhq.pkl``) and prints the shell lines that point
the app at it; runs take seconds, in the real proportions, so the progress bar has time to move.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

from nerfcache.config import CODE_DIR_NAME
from nerfcache.testing import make_fake_project

__all__ = ["PHASE_SECONDS", "main", "prepare"]

PHASE_SECONDS = {
    "FAKE_NERF_PROJECTION_S": "2",
    "FAKE_NERF_PTI_S": "6",
    "FAKE_NERF_FIT_S": "2",
    "FAKE_NERF_RENDER_S": "3",
}
"""A cold run takes about 13 s, a warm one about 3 s."""


def prepare(folder: Path) -> dict[str, str]:
    """Make the project in ``folder/project`` unless it is there; return the app's environment."""
    project = folder.absolute() / "project"
    if not (project / CODE_DIR_NAME).is_dir():
        # Made aside and renamed: an interrupted first start leaves no half project behind.
        partial = folder.absolute() / f".project-{os.getpid()}"
        make_fake_project(partial, real_video=True)
        partial.rename(project)
    extra = dict(PHASE_SECONDS)
    try:
        import imageio_ffmpeg  # type: ignore[import-untyped]  # noqa: PLC0415 - [video] extra
    except ImportError:
        pass  # the fake writes a placeholder, which no player plays
    else:
        extra["FAKE_NERF_FFMPEG"] = str(imageio_ffmpeg.get_ffmpeg_exe())
    return {"NERFCACHE_PROJECT_ROOT": str(project), "NERFCACHE_EXTRA_ENV": json.dumps(extra)}


def main(argv: list[str] | None = None) -> int:
    """Print ``export`` lines for a POSIX shell's ``eval``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m examples.fastapi_app.fake_project FOLDER", file=sys.stderr)
        return 2
    for name, value in prepare(Path(args[0])).items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
