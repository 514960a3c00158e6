from __future__ import annotations

import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from filelock import FileLock

from nerfcache import (
    CacheBusyError,
    CacheStatus,
    CharacterCache,
    NerfCacheError,
    Settings,
)
from nerfcache.cache import (
    CACHE_FILES,
    FIT_FILES,
    PTI_FILES,
)
from nerfcache.characters import BYPRODUCTS
from nerfcache.testing import FakeProject, write_png
from tests.cache.helpers import (
    FP,
    OTHER,
    build,
    publish,
    user_files,
    write_pt,
)

# -- preparing a run --


def test_stale_is_set_aside_and_restored_by_rename(cache: CharacterCache) -> None:
    build(cache, FP)
    inode = (cache.path / "G_PTI.pt").stat().st_ino
    build(cache, OTHER)
    assert cache.status(OTHER) is CacheStatus.WARM
    assert (cache.path / "G_PTI.pt").read_bytes() != b""
    with cache.stage(FP, image=Path("i"), network=Path("n")) as staging:
        assert staging.status_before is CacheStatus.STALE
        assert staging.status is CacheStatus.WARM
    assert (cache.path / "G_PTI.pt").stat().st_ino == inode  # the very same file, renamed back
    assert cache.status(FP) is CacheStatus.WARM
    assert (cache.meta / "generations" / OTHER.key / "manifest.json").is_file()


def test_keep_generations_zero_deletes_stale_caches(settings: Settings) -> None:
    cache = CharacterCache(settings.model_copy(update={"keep_generations": 0}), "rei")
    build(cache, FP)
    build(cache, OTHER)
    assert list((cache.meta / "generations").iterdir()) == []


def test_legacy_is_adopted_and_partial_quarantined(cache: CharacterCache) -> None:
    for name in CACHE_FILES:
        write_pt(cache.path / name)
    with cache.stage(FP, image=Path("i"), network=Path("n")) as staging:
        assert staging.status_before is CacheStatus.LEGACY
        assert staging.status is CacheStatus.WARM
        assert sorted(p.name for p in staging.path.iterdir()) == sorted(CACHE_FILES)
    manifest = cache.manifest()
    assert manifest is not None and manifest.fingerprint == FP

    (cache.path / "w_PTI.pt").unlink()
    before = user_files(cache.path)
    with cache.stage(FP, image=Path("i"), network=Path("n")) as staging:
        assert staging.status_before is CacheStatus.PARTIAL
        assert staging.status is CacheStatus.COLD
    assert not any((cache.path / name).exists() for name in CACHE_FILES)
    (quarantined,) = (cache.meta / "quarantine").iterdir()
    assert sorted(p.name for p in quarantined.iterdir()) == sorted(
        ["G_PTI.pt", "bg_PTI.pt", "fitted_coeffs.pt", "manifest.json"]
    )
    assert user_files(cache.path) == before


# -- publishing --


def test_only_complete_groups_are_published(cache: CharacterCache) -> None:
    assert build(cache, names=("G_PTI.pt", "w_PTI.pt")) == ()
    assert build(cache, names=FIT_FILES) == ()  # a fit without its PTI group is worthless
    assert cache.status(FP) is CacheStatus.COLD


def test_truncated_file_is_never_published(cache: CharacterCache) -> None:
    with cache.stage(FP, image=Path("i"), network=Path("n")) as staging:
        for name in CACHE_FILES:
            write_pt(staging.path / name)
        data = (staging.path / "bg_PTI.pt").read_bytes()
        (staging.path / "bg_PTI.pt").write_bytes(data[:10])
        assert cache.publish(staging, image=Path("i"), network=Path("n")) == ()
    assert cache.status(FP) is CacheStatus.COLD


def test_a_fit_is_published_only_on_the_pti_it_was_seeded_with(cache: CharacterCache) -> None:
    build(cache, names=PTI_FILES)
    with cache.stage(FP, image=Path("i"), network=Path("n")) as staging:
        assert sorted(p.name for p in staging.path.iterdir()) == sorted(PTI_FILES)
        write_pt(staging.path / "fitted_coeffs.pt")
        assert cache.publish(staging, image=Path("i"), network=Path("n")) == FIT_FILES
    assert cache.status(FP) is CacheStatus.WARM


def test_a_fit_on_a_replaced_pti_is_not_published(cache: CharacterCache) -> None:
    build(cache, names=PTI_FILES)
    with cache.stage(FP, image=Path("i"), network=Path("n")) as staging:
        (staging.path / "G_PTI.pt").unlink()
        write_pt(staging.path / "G_PTI.pt", b"a new pti")  # a new file, not through the link
        write_pt(staging.path / "fitted_coeffs.pt")
        assert cache.publish(staging, image=Path("i"), network=Path("n")) == ()
    assert cache.status(FP) is CacheStatus.PTI_ONLY


def test_a_fit_is_not_published_beside_a_pti_replaced_meanwhile(cache: CharacterCache) -> None:
    build(cache, names=PTI_FILES)
    with cache.stage(FP, image=Path("i"), network=Path("n")) as staging:
        for name in PTI_FILES:  # another host rebuilt the PTI group (a lock that did not hold)
            payload = zipfile.ZipFile(cache.path / name).read("archive/data.pkl")
            (cache.path / name).unlink()
            write_pt(cache.path / name, payload)
        assert cache.status(FP) is CacheStatus.PTI_ONLY
        write_pt(staging.path / "fitted_coeffs.pt")
        assert cache.publish(staging, image=Path("i"), network=Path("n")) == ()
    assert cache.status(FP) is CacheStatus.PTI_ONLY


def test_a_file_rewritten_through_its_link_quarantines_the_cache(cache: CharacterCache) -> None:
    build(cache)
    with cache.stage(FP, image=Path("i"), network=Path("n")) as staging:
        # torch.save opens the existing name for writing: through a hard link, that is the
        # published file itself.
        with (staging.path / "w_PTI.pt").open("r+b") as file:
            file.write(b"garbage!")
        cache.publish(staging, image=Path("i"), network=Path("n"))
    assert cache.status(FP) is CacheStatus.COLD  # rebuilt by the next run, never trusted
    assert any((cache.meta / "quarantine").rglob("w_PTI.pt"))


# -- recording use --


def test_runs_record_their_use_at_most_once_a_minute(cache: CharacterCache) -> None:
    build(cache)
    manifest = cache.manifest()
    assert manifest is not None
    long_ago = datetime.now(timezone.utc) - timedelta(days=3)
    cache.manifest_path.write_text(
        manifest.model_copy(update={"last_used_at": long_ago}).model_dump_json()
    )
    with cache.stage(FP, image=Path("i"), network=Path("n")):
        pass
    used = cache.manifest()
    assert used is not None
    assert used.last_used_at > long_ago + timedelta(days=2)  # prune sees the use
    written = cache.manifest_path.stat()
    # The runs of the next minute leave the manifest as it is: no rewrite and fsync each.
    for _ in range(3):
        with cache.stage(FP, image=Path("i"), network=Path("n")):
            pass
    again = cache.manifest_path.stat()
    assert (again.st_ino, again.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    assert cache.manifest() == used


# -- clear --


def test_clear_removes_only_cache_files(nerf_project: FakeProject) -> None:
    cache = publish(nerf_project, "rei")
    write_png(cache.path / "images" / "portrait.png", (7, 7, 7))
    publish(nerf_project, "rei")  # a set-aside generation too
    for name in BYPRODUCTS:
        write_png(cache.path / name, (0, 0, 0))
    # The real scripts never write fitted_img_*.png: a file so named is the user's.
    write_png(cache.path / "fitted_img_0.png", (0, 0, 0))
    (cache.path / "notes.txt").write_text("mine")
    write_png(cache.path / "my_fitted_img_0.png", (1, 1, 1))  # not a byproduct's name
    (cache.path / "images" / "fitted_img_0.png").write_bytes(b"a user's, in images/")
    keep = user_files(cache.path)
    for name in BYPRODUCTS:
        del keep[name]
    total = cache.info().total_bytes

    assert cache.clear() == total
    assert user_files(cache.path) == keep
    assert not any((cache.path / name).exists() for name in CACHE_FILES)
    assert sorted(p.name for p in cache.meta.iterdir()) == ["build.lock", "runs", "state.lock"]
    assert cache.status() is CacheStatus.COLD
    assert cache.info().total_bytes == 0


def test_clear_of_a_character_without_a_folder(nerf_project: FakeProject) -> None:
    cache = CharacterCache(nerf_project.settings, "nobody")
    assert cache.clear() == 0
    assert not cache.path.exists()


@pytest.mark.parametrize("holder", ["build.lock", "runs/20240101-1-abc.lock"])
def test_clear_leaves_a_cache_in_use_alone(nerf_project: FakeProject, holder: str) -> None:
    cache = publish(nerf_project, "rei")
    lock_path = cache.meta / holder
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path), pytest.raises(CacheBusyError, match="in use") as raised:
        cache.clear()
    assert raised.value.character == "rei"
    assert cache.status() is CacheStatus.WARM


@pytest.mark.parametrize("link", [".nerfcache", ".nerfcache/runs"])
def test_clear_never_deletes_through_a_linked_folder(
    nerf_project: FakeProject, tmp_path: Path, link: str
) -> None:
    outside = tmp_path / "outside"
    for name in ("generations/g", "quarantine/q", "x"):
        (outside / name).mkdir(parents=True)
        (outside / name / "important.txt").write_text("keep me")
    (outside / "manifest.json").write_text("precious")
    before = sorted(outside.rglob("*"))
    cache = CharacterCache(nerf_project.settings, "ayanami")
    (cache.path / link).parent.mkdir(parents=True, exist_ok=True)
    (cache.path / link).symlink_to(outside, target_is_directory=True)
    with pytest.raises(NerfCacheError, match="symbolic link"):
        cache.clear()
    with pytest.raises(NerfCacheError, match="symbolic link"):
        cache.verify(fix=True)
    assert sorted(outside.rglob("*")) == before


def test_clear_reaps_dead_runs(nerf_project: FakeProject) -> None:
    cache = publish(nerf_project, "rei")
    runs = cache.meta / "runs"
    (runs / "dead").mkdir(parents=True)
    (runs / "dead" / "G_PTI.pt").write_bytes(b"half")
    (runs / "dead.lock").touch()
    assert cache.clear() > 0
    assert list(runs.iterdir()) == []
