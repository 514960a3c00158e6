from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock

from nerfcache import (
    CacheStatus,
    CharacterCache,
)
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
                ["live", "live.lock", staging.run_id, f"{staging.run_id}.lock"]
            )
    finally:
        live.release()
    assert sorted(p.name for p in runs.iterdir()) == ["live", "live.lock"]
