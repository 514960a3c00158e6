from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from filelock import FileLock

import nerfcache.cache.manage
from nerfcache import (
    CacheBusyError,
    CacheStatus,
    InvalidInputError,
    NerfCacheError,
    Settings,
)
from nerfcache.cache import (
    CACHE_FILES,
    PTI_FILES,
    CacheInfo,
    list_caches,
    prune,
)
from nerfcache.cache.manage import _choose
from nerfcache.testing import FakeProject, write_png
from tests.cache.helpers import (
    fingerprint,
    publish,
    user_files,
    write_pt,
)
from tests.conftest import files_opened

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)


# -- list_caches --


def test_list_caches_of_a_missing_cache_root(tmp_path: Path) -> None:

    assert list_caches(settings=Settings(project_root=tmp_path)) == []


def test_list_caches_reports_every_state(nerf_project: FakeProject) -> None:
    project = nerf_project
    settings = project.settings
    publish(project, "warm", last_used=NOW)
    publish(project, "half", names=PTI_FILES)
    project.add_character("cold")
    legacy = project.character_dir("legacy")
    for name in CACHE_FILES:
        write_pt(legacy / name)
    write_pt(project.character_dir("partial") / "G_PTI.pt")
    publish(project, "repainted")
    write_png(project.character_dir("repainted") / "images" / "portrait.png", (1, 2, 3))
    (settings.cache_root / "notes.txt").write_text("not a character")
    (settings.cache_root / ".nerfcache").mkdir(exist_ok=True)

    caches = {info.character: info for info in list_caches(settings=settings)}

    assert list(caches) == sorted(caches)
    assert {name: info.status for name, info in caches.items()} == {
        "ayanami": CacheStatus.COLD,
        "cold": CacheStatus.COLD,
        "half": CacheStatus.PTI_ONLY,
        "legacy": CacheStatus.LEGACY,
        "partial": CacheStatus.PARTIAL,
        "repainted": CacheStatus.STALE,  # built from another portrait: the next run rebuilds
        "warm": CacheStatus.WARM,
    }
    warm = caches["warm"]
    assert sorted(warm.files) == sorted(CACHE_FILES)
    assert warm.size_bytes == sum(warm.files.values())
    assert warm.size_bytes <= warm.total_bytes
    assert warm.last_used_at == NOW
    assert warm.built_at is not None
    assert warm.fingerprint == fingerprint(project, "warm")
    assert warm.network == str(settings.model_dir / project.model_name)
    assert not warm.in_use
    assert caches["cold"].files == {}
    assert caches["cold"].total_bytes == 0
    assert caches["legacy"].built_at is None
    assert caches["legacy"].last_used_at is not None  # from the files' times


def test_list_caches_notices_a_changed_trunc(nerf_project: FakeProject) -> None:
    publish(nerf_project, "rei")
    settings = nerf_project.settings.model_copy(update={"trunc": 0.5})
    (info,) = (i for i in list_caches(settings=settings) if i.character == "rei")
    assert info.status is CacheStatus.STALE


def test_list_caches_reads_no_cache_file(nerf_project: FakeProject) -> None:
    for name in ("a", "b", "c"):
        publish(nerf_project, name)
    list_caches(settings=nerf_project.settings)  # a first listing remembers the portraits' hashes
    code = (
        "from nerfcache import Settings, list_caches\n"
        "caches = list_caches(settings=Settings(project_root=sys.argv[1]))\n"
        "statuses = {info.character: info.status for info in caches}\n"
        "assert statuses == {'a': 'warm', 'ayanami': 'cold', 'b': 'warm', 'c': 'warm'}, statuses\n"
    )
    opened = files_opened(code, str(nerf_project.root))
    assert nerf_project.settings.state_dir / "digests.jsonl" in opened
    assert [path for path in opened if path.suffix in (".pt", ".png")] == []  # no hash, no unzip


def test_listing_creates_nothing(nerf_project: FakeProject) -> None:
    legacy = nerf_project.character_dir("legacy")
    for name in CACHE_FILES:
        write_pt(legacy / name)
    before = sorted(nerf_project.root.rglob("*"))
    list_caches(settings=nerf_project.settings)
    assert sorted(nerf_project.root.rglob("*")) == before


# -- prune: the choice (no I/O) --


def info(name: str, days_ago: float | None, size: int = 100, *, live: int = 0) -> CacheInfo:
    used = NOW - timedelta(days=days_ago) if days_ago is not None else None
    return CacheInfo(
        character=name,
        path=Path(name),
        status=CacheStatus.WARM,
        files={},
        size_bytes=size,
        total_bytes=size,
        built_at=used,
        last_used_at=used,
        fingerprint=None,
        image=None,
        network=None,
        generations=(),
        quarantined=0,
        live_runs=live,
        building=False,
    )


CACHES = [info("new", 1), info("mid", 10), info("old", 100), info("junk", None, 10)]


@pytest.mark.parametrize(
    ("criteria", "removed"),
    [
        ({"max_bytes": 1000}, []),
        ({"max_bytes": 300}, ["junk"]),  # 310 bytes: the least recently used goes
        ({"max_bytes": 250}, ["junk", "old"]),  # least recently used first, until it fits
        ({"max_bytes": 0}, ["junk", "old", "mid", "new"]),
        ({"older_than": timedelta(days=30)}, ["junk", "old"]),
        ({"older_than": timedelta(days=5)}, ["junk", "old", "mid"]),
        ({"keep": 2}, ["junk", "old"]),
        ({"keep": 10}, []),
        ({"keep": 0}, ["junk", "old", "mid", "new"]),
        ({"max_bytes": 0, "keep": 1}, ["junk", "old", "mid"]),
        ({"older_than": timedelta(days=30), "max_bytes": 150}, ["junk", "old", "mid"]),
    ],
)
def test_prune_chooses_least_recently_used_first(criteria, removed) -> None:
    options = {"max_bytes": None, "older_than": None, "keep": 0, **criteria}
    plan = _choose(CACHES, now=NOW, **options)
    assert [i.character for i in plan.removed] == removed
    assert plan.freed_bytes == sum(i.total_bytes for i in plan.removed)
    assert plan.total_bytes == 310
    assert plan.dry_run


def test_prune_skips_a_cache_in_use_and_goes_on() -> None:
    caches = [info("new", 1), dataclasses.replace(info("old", 100), live_runs=1), info("mid", 9)]
    plan = _choose(caches, max_bytes=150, older_than=None, keep=0, now=NOW)
    assert [i.character for i in plan.skipped] == ["old"]
    assert [i.character for i in plan.removed] == ["mid", "new"]  # still over: old is kept


# -- prune: on disk --


def test_prune_dry_run_then_for_real(nerf_project: FakeProject) -> None:
    for days, name in enumerate(["c", "b", "a"]):
        publish(nerf_project, name, last_used=NOW - timedelta(days=days))
    before = {name: user_files(nerf_project.character_dir(name)) for name in "abc"}

    plan = prune(settings=nerf_project.settings, keep=1, dry_run=True, now=NOW)
    assert [i.character for i in plan.removed] == ["a", "b"]
    assert {i.character: i.status for i in list_caches(settings=nerf_project.settings)}[
        "a"
    ] == "warm"

    done = prune(settings=nerf_project.settings, keep=1, now=NOW)
    assert not done.dry_run
    assert [i.character for i in done.removed] == ["a", "b"]
    assert done.freed_bytes == plan.freed_bytes
    statuses = {i.character: i.status for i in list_caches(settings=nerf_project.settings)}
    assert statuses == {"a": "cold", "ayanami": "cold", "b": "cold", "c": "warm"}
    assert {name: user_files(nerf_project.character_dir(name)) for name in "abc"} == before


def test_prune_never_touches_a_locked_cache(nerf_project: FakeProject) -> None:
    busy = publish(nerf_project, "busy", last_used=NOW - timedelta(days=90))
    publish(nerf_project, "idle", last_used=NOW - timedelta(days=60))
    with FileLock(busy.meta / "runs" / "20240101-1-abc.lock"):
        done = prune(settings=nerf_project.settings, older_than=timedelta(days=30), now=NOW)
    assert [i.character for i in done.skipped] == ["busy"]
    assert [i.character for i in done.removed] == ["idle"]
    assert busy.status() is CacheStatus.WARM


def test_prune_skips_a_cache_that_became_busy_after_the_listing(
    nerf_project: FakeProject, monkeypatch
) -> None:
    cache = publish(nerf_project, "rei")
    build = FileLock(cache.meta / "build.lock")
    real = nerfcache.cache.manage.list_caches

    def listing_then_a_build_starts(*, settings):
        caches = real(settings=settings)
        build.acquire()
        return caches

    monkeypatch.setattr(nerfcache.cache.manage, "list_caches", listing_then_a_build_starts)
    try:
        done = prune(settings=nerf_project.settings, keep=0)
    finally:
        build.release()
    assert [i.character for i in done.skipped] == ["rei"]
    assert done.removed == ()
    assert done.freed_bytes == 0
    assert cache.status() is CacheStatus.WARM


def test_prune_says_why_it_cannot_clear_a_cache_that_is_not_in_use(
    nerf_project: FakeProject, tmp_path: Path
) -> None:
    cache = publish(nerf_project, "rei")
    outside = tmp_path / "outside"
    (outside / "20240101T000000-partial").mkdir(parents=True)
    (cache.meta / "quarantine").symlink_to(outside, target_is_directory=True)
    assert not cache.in_use()
    # Not "in use: kept": the refusal names the link, which is what the user has to fix.
    with pytest.raises(NerfCacheError, match="quarantine is a symbolic link") as raised:
        prune(settings=nerf_project.settings, keep=0)
    assert not isinstance(raised.value, CacheBusyError)
    assert cache.status() is CacheStatus.WARM
    assert [p.name for p in outside.iterdir()] == ["20240101T000000-partial"]


@pytest.mark.parametrize(
    "criteria",
    [{}, {"max_bytes": -1}, {"keep": -2}, {"older_than": timedelta(days=-1)}],
)
def test_prune_needs_a_valid_criterion(nerf_project: FakeProject, criteria) -> None:
    with pytest.raises(InvalidInputError):
        prune(settings=nerf_project.settings, **criteria)
