"""A launcher process for the kill tests: one generate_video call, SIGKILLed at a chosen step.

Run as ``python launcher_worker.py SPEC_JSON``. ``os.replace`` is patched to kill this process
right after the rename named by ``spec["kill"]``: ``pending-manifest-written``,
``file-N-moved`` (the N-th cache file moved from the staging dir into the character folder),
``manifest-committed``, ``video-delivered``; any other value kills nothing (the test then kills
the process itself). Deterministic: no timing decides where the kill lands.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from nerfcache import Settings, generate_video
from nerfcache.cache import CACHE_FILES

VIDEO = "output_NeRFFaceSpeech.mp4"


def main() -> int:
    spec = json.loads(sys.argv[1])
    kill_at = spec["kill"]
    real_replace = os.replace
    moved = 0

    def step(src: Path, dst: Path) -> str:
        nonlocal moved
        if dst.name == "manifest.pending.json":
            return "pending-manifest-written"
        if dst.name in CACHE_FILES and src.parent.parent.name == "runs":
            moved += 1
            return f"file-{moved}-moved"
        if dst.name == "manifest.json" and src.name == "manifest.pending.json":
            return "manifest-committed"
        if dst.name == VIDEO:
            return "video-delivered"
        return ""

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str], **kwargs: object) -> None:
        real_replace(src, dst, **kwargs)  # type: ignore[arg-type]
        if step(Path(src), Path(dst)) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace  # type: ignore[assignment]
    settings = Settings(project_root=spec["root"], extra_env=spec["extra_env"])
    result = generate_video(
        spec["audio"], spec["character"], spec["out"], spec["model"], settings=settings
    )
    print(json.dumps({"ok": result.ok}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
