"""What the reliability tests check after every crash, kill and hostile input."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path

from nerfcache import CacheStatus, CharacterCache, GenerationResult, generate_video
from nerfcache.cache import CACHE_FILES
from nerfcache.testing import FakeProject
from tests.conftest import lock_is_free, process_gone, published, staging_left, wait_until

VIDEO = "output_NeRFFaceSpeech.mp4"


def generate(project: FakeProject, out: str | Path = "out", **kwargs) -> GenerationResult:
    """generate_video on the project's defaults; keywords override them."""
    kwargs.setdefault("settings", project.settings)
    return generate_video(
        kwargs.pop("audio", project.audio),
        kwargs.pop("character", project.character),
        project.root / out,
        kwargs.pop("model_name", project.model_name),
        **kwargs,
    )


def tree(root: Path, *, skip: Callable[[Path], bool] = lambda _p: False) -> dict[str, str]:
    """Every entry below ``root``: relative path -> what it is (content hash, link target, dir).

    Symlinks are recorded, never followed.
    """
    entries: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        for name in [*dirs, *files]:
            path = here / name
            if skip(path):
                continue
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                what = f"link -> {path.readlink()}"
            elif stat.S_ISDIR(mode):
                what = "dir"
            else:
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            entries[str(path.relative_to(root))] = what
        dirs[:] = [d for d in dirs if not skip(here / d)]
    return entries


def changes(before: dict[str, str], after: dict[str, str]) -> set[str]:
    """Paths added, removed or changed between two ``tree`` snapshots."""
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def user_files(folder: Path) -> dict[str, str]:
    """The user's own files in a character folder: everything but nerfcache's and the cache's."""
    return tree(
        folder,
        skip=lambda p: p.name == ".nerfcache" or (p.parent == folder and p.name in CACHE_FILES),
    )


def is_complete_zip(path: Path) -> bool:
    """Whether ``path`` is a complete zip archive, as torch.save writes."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile):
        return False


def lock_free(path: Path) -> bool:
    """Whether nobody holds the file lock at ``path``; a missing one is free (and not made)."""
    return not path.exists() or lock_is_free(path)


def assert_sound(project: FakeProject, character: str | None = None) -> CacheStatus:
    """The published cache checks out, no run is left over and no lock is held."""
    folder = project.character_dir(character)
    status = CharacterCache(project.settings, character or project.character).status()
    assert status in (CacheStatus.COLD, CacheStatus.PTI_ONLY, CacheStatus.WARM), status
    for name in published(project, character):
        assert is_complete_zip(folder / name), f"{name} is not a complete archive"
    assert staging_left(project, character) == []
    for lock in ("build.lock", "state.lock"):
        assert lock_free(folder / ".nerfcache" / lock), f"{lock} is held"
    return status


def running_fake_pid(project: FakeProject) -> int:
    """The pid of the fake script run that has started and not exited (waits for its start)."""
    assert wait_until(lambda: any(c.exit is None for c in project.calls()), timeout=10)
    return next(c.pid for c in reversed(project.calls()) if c.exit is None)


def kill_on(
    project: FakeProject, marker: str, ready: Callable[[], bool] | None = None
) -> Callable[[str], None]:
    """An ``on_line`` hook that SIGKILLs the running fake script when a line contains ``marker``.

    With ``ready``, it waits for that condition after the marker before it kills (for what the
    script does without printing, such as ffmpeg muxing into pipes nobody reads).
    """
    fired = False

    def hook(line: str) -> None:
        nonlocal fired
        if not fired and marker in line:
            fired = True
            assert ready is None or wait_until(ready), "the kill's condition never came"
            os.kill(running_fake_pid(project), signal.SIGKILL)

    return hook


def all_gone(pids: list[int], timeout: float = 10) -> bool:
    """Whether every pid has exited (within ``timeout``)."""
    return wait_until(lambda: all(process_gone(pid) for pid in pids), timeout=timeout)
