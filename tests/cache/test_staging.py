from __future__ import annotations

import os
import stat
from pathlib import Path

from filelock import FileLock

from nerfcache import (
    CacheStatus,
    CharacterCache,
)
from nerfcache.cache import CACHE_FILES
from tests.cache.helpers import (
    FP,
    build,
)


def test_seeding_falls_back_to_copies_where_links_fail(cache: CharacterCache, monkeypatch) -> None:
    build(cache)

    def no_links(_src, _dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    with cache.stage(FP, image=Path("i"), network=Path("n")) as staging:
        copy = staging.path / "G_PTI.pt"
        assert copy.read_bytes() == (cache.path / "G_PTI.pt").read_bytes()
        assert not copy.samefile(cache.path / "G_PTI.pt")
        assert cache.publish(staging, image=Path("i"), network=Path("n")) == ()
    assert cache.status(FP) is CacheStatus.WARM


def test_dead_runs_are_reaped_live_ones_kept(cache: CharacterCache) -> None:
    runs = cache.meta / "runs"
    (runs / "dead").mkdir(parents=True)
    (runs / "dead" / "G_PTI.pt").write_bytes(b"half")
    (runs / "dead.lock").touch()
    (runs / "live").mkdir()
    live = FileLock(runs / "live.lock")
    live.acquire()
    try:
        with cache.stage(FP, image=Path("i"), network=Path("n")) as staging:
            assert sorted(p.name for p in runs.iterdir()) == sorted(
                ["live", "live.lock", *(staging.run_id + s for s in ("", ".lock", ".owner"))]
            )
    finally:
        live.release()
    assert sorted(p.name for p in runs.iterdir()) == ["live", "live.lock"]


def test_inputs_are_copied_never_linked(cache: CharacterCache, tmp_path: Path) -> None:
    # Whatever the script writes to its --test_img, the user's file stays as it was.
    mine = tmp_path / "uploads" / "portrait.png"
    mine.parent.mkdir()
    mine.write_bytes(b"the user's portrait")
    with cache.stage(FP, image=Path("i"), network=Path("n")) as staging:
        copy = staging.add_input(mine, "portrait.png")
        assert copy == staging.path / "portrait.png"
        assert not copy.samefile(mine)
        # Same bytes and the same mtime: the copy says which version of the portrait it is.
        assert copy.read_bytes() == mine.read_bytes()
        assert copy.stat().st_mtime_ns == mine.stat().st_mtime_ns
        copy.write_bytes(b"written over by the script")
    assert mine.read_bytes() == b"the user's portrait"


def test_published_files_are_read_only_once_a_run_links_them(cache: CharacterCache) -> None:
    # A script (not root) that opens its hard link for writing fails rather than changing
    # the published file; a root one is caught after the run (test_store).
    build(cache)
    with cache.stage(FP, image=Path("i"), network=Path("n")) as staging:
        for name in CACHE_FILES:
            assert (staging.path / name).samefile(cache.path / name)
            assert stat.S_IMODE((cache.path / name).stat().st_mode) & 0o222 == 0
    assert cache.status(FP) is CacheStatus.WARM
    assert cache.clear() > 0  # read-only files are still removed
    assert not any((cache.path / name).exists() for name in CACHE_FILES)
