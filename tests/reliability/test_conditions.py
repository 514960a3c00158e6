"""A cache root that cannot be written, a missing conda Python, a script that exits 0 without a
video, a flood of undecodable output: each is a clear error, and nothing is lost.

"Nothing lost": the user's files in the character folder, the published cache, and the video
already in the output folder are exactly as they were.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from nerfcache import (
    CacheStatus,
    ConfigurationError,
    GenerationError,
    Settings,
)
from nerfcache.testing import FakeProject
from tests.conftest import staging_left
from tests.reliability.helpers import VIDEO, assert_sound, generate, tree, user_files


@pytest.fixture
def warm_project(nerf_project: FakeProject) -> FakeProject:
    """A project whose character is warm and whose output folder holds an earlier video."""
    assert generate(nerf_project, "first")
    (nerf_project.root / "out").mkdir()
    (nerf_project.root / "out" / VIDEO).write_bytes(b"yesterday's video")
    return nerf_project


def everything(project: FakeProject) -> dict[str, str]:
    """The project's files, less the fake script's own log."""
    return tree(project.root, skip=lambda p: p == project.log)


def nothing_lost(project: FakeProject, before: dict[str, str]) -> None:
    after = everything(project)
    folder = project.character_dir()
    lost = {p for p in before if p not in after or before[p] != after[p]}
    # Checking out a warm cache refreshes its manifest's last-used time: that may change.
    lost.discard(str((folder / ".nerfcache" / "manifest.json").relative_to(project.root)))
    lost = {p for p in lost if "digests.json" not in p}
    assert lost == set()
    assert (project.root / "out" / VIDEO).read_bytes() == b"yesterday's video"


# -- a cache root nerfcache cannot write to --


def unwritable_cache_root(project: FakeProject) -> Settings:
    """Settings whose cache_root cannot be created: it lies below a regular file.

    Works as root too, where file modes do not stop writes.
    """
    blocker = project.root / "not-a-folder"
    blocker.write_text("a file where a folder should be")
    return project.settings.model_copy(update={"cache_root": blocker / "charactor"})


def test_unwritable_cache_root_names_the_setting_and_loses_nothing(warm_project) -> None:
    settings = unwritable_cache_root(warm_project)
    portrait = warm_project.character_dir() / "images" / "portrait.png"
    before = everything(warm_project)

    with pytest.raises(ConfigurationError, match="NERFCACHE_CACHE_ROOT") as info:
        generate(warm_project, settings=settings, test_image=portrait)

    assert info.value.setting == "cache_root"
    assert "not-a-folder" in str(info.value)  # it names where it could not write
    assert len(warm_project.calls()) == 1  # nothing was started
    nothing_lost(warm_project, before)


def test_read_only_cache_root_is_an_error_and_loses_nothing(warm_project, tmp_path) -> None:
    root = warm_project.settings.cache_root
    before = everything(warm_project)
    # A read-only mount, which stops root too (file modes do not): the command runs in a mount
    # namespace of its own where cache_root is mounted read-only.
    command = [
        "unshare", "-m", "sh", "-c", 'mount --bind -o ro "$1" "$1" && shift && exec "$@"', "sh",
        str(root), sys.executable, "-m", "nerfcache", "--project-root", str(warm_project.root),
        "generate", str(warm_project.audio), "ayanami", str(tmp_path / "out"),
        "--model", "ffhq.pkl",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr  # a configuration error, like bad input
    assert "cache_root must be writable" in done.stderr
    assert "NERFCACHE_CACHE_ROOT" in done.stderr
    assert "Traceback" not in done.stderr
    nothing_lost(warm_project, before)
    assert len(warm_project.calls()) == 1


def test_a_lock_that_cannot_be_opened_names_the_setting(warm_project) -> None:
    # A read-only or foreign-owned .nerfcache makes opening state.lock fail (EACCES, EROFS);
    # root opens anything, so a folder in the lock's place makes the same open fail (EISDIR).
    lock = warm_project.character_dir() / ".nerfcache" / "state.lock"
    lock.unlink()
    lock.mkdir()
    before = everything(warm_project)

    with pytest.raises(ConfigurationError, match="NERFCACHE_CACHE_ROOT") as info:
        generate(warm_project)

    assert info.value.setting == "cache_root"
    assert len(warm_project.calls()) == 1
    nothing_lost(warm_project, before)


# -- a missing conda Python --


def test_missing_conda_python_is_a_configuration_error_and_loses_nothing(warm_project) -> None:
    before = everything(warm_project)
    settings = warm_project.settings.model_copy(
        update={"conda_python": warm_project.root / "no-such-env" / "bin" / "python"}
    )

    with pytest.raises(ConfigurationError, match="NERFCACHE_CONDA_PYTHON") as info:
        generate(warm_project, settings=settings)

    assert info.value.setting == "conda_python"
    assert len(warm_project.calls()) == 1
    nothing_lost(warm_project, before)
    assert assert_sound(warm_project) is CacheStatus.WARM


# -- exit 0 without a video --


def test_exit_zero_without_a_video_is_a_failure_and_keeps_the_cache(nerf_project) -> None:
    (nerf_project.root / "out").mkdir()
    (nerf_project.root / "out" / VIDEO).write_bytes(b"yesterday's video")
    mine = user_files(nerf_project.character_dir())
    settings = nerf_project.with_env(FAKE_NERF_NO_VIDEO="1")

    result = generate(nerf_project, settings=settings)
    assert not result
    assert result.returncode == 0
    assert result.video_path is None
    with pytest.raises(GenerationError, match="made no video") as info:
        generate(nerf_project, settings=settings, check=True)
    assert info.value.result is not None and info.value.result.returncode == 0

    # The cold run's PTI and fit were good: kept, so the next run only renders.
    assert assert_sound(nerf_project) is CacheStatus.WARM
    assert (nerf_project.root / "out" / VIDEO).read_bytes() == b"yesterday's video"
    assert user_files(nerf_project.character_dir()) == mine
    assert generate(nerf_project, "again").cache_hit


# -- a flood of undecodable output --


def test_a_non_utf8_flood_then_a_crash_is_a_clear_error(nerf_project) -> None:
    (nerf_project.root / "out").mkdir()
    (nerf_project.root / "out" / VIDEO).write_bytes(b"yesterday's video")
    settings = nerf_project.with_env(
        FAKE_NERF_SPAM_MB="8", FAKE_NERF_BAD_BYTES="1", FAKE_NERF_FAIL_AT="mux"
    )

    with pytest.raises(GenerationError, match="simulated failure in mux") as info:
        generate(nerf_project, settings=settings, check=True)

    result = info.value.result
    assert result is not None and not result
    assert result.returncode == 1
    assert any("\ufffd" in line for line in result.log_tail)  # decoded, with replacements
    assert len(result.log_tail) <= 40
    assert all(len(line) <= 4096 + len(" [line truncated]") for line in result.log_tail)
    assert (nerf_project.root / "out" / VIDEO).read_bytes() == b"yesterday's video"
    assert assert_sound(nerf_project) is CacheStatus.WARM  # it failed after the fit
    assert staging_left(nerf_project) == []


def test_a_non_utf8_flood_still_makes_the_video(nerf_project) -> None:
    settings = nerf_project.with_env(FAKE_NERF_SPAM_MB="8", FAKE_NERF_BAD_BYTES="1")
    result = generate(nerf_project, settings=settings)
    assert result, result.log_tail[-5:]
    assert result.video_path is not None and result.video_path.stat().st_size > 0
