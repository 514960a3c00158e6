from __future__ import annotations

import dataclasses
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from filelock import FileLock

import nerfcache.cache.manage
from nerfcache import (
    CacheBusyError,
    CacheStatus,
    CharacterCache,
    Fingerprint,
    InvalidInputError,
    NerfCacheError,
)
from nerfcache.cache import CACHE_FILES, PTI_FILES, CacheInfo, list_caches, prune
from nerfcache.cache.manage import _choose
from nerfcache.characters import BYPRODUCTS, find_test_image
from nerfcache.testing import FakeProject, write_png
from tests.conftest import files_opened

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)


def write_pt(path: Path, payload: bytes = b"tensor-bytes") -> Path:
    """A file shaped like torch.save's output: a zip archive (stored, not compressed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
    return path


def fingerprint(project: FakeProject, character: str) -> Fingerprint:
    image = find_test_image(project.settings, character)
    return Fingerprint.of(image, project.settings.model_dir / project.model_name, 0.7)


def publish(
    project: FakeProject,
    character: str,
    *,
    names: tuple[str, ...] = CACHE_FILES,
    last_used: datetime | None = None,
    payload: bytes = b"tensor-bytes",
) -> CharacterCache:
    """Publish a cache the way a run does: written in a staging dir, then published."""
    if not project.character_dir(character).exists():
        project.add_character(character)
    cache = CharacterCache(project.settings, character)
    image = find_test_image(project.settings, character)
    network = project.settings.model_dir / project.model_name
    with cache.stage(fingerprint(project, character), image=image, network=network) as staging:
        for name in names:
            write_pt(staging.path / name, payload)
        cache.publish(staging, image=image, network=network)
    if last_used is not None:
        manifest = cache.manifest()
        assert manifest is not None
        changed = manifest.model_copy(update={"last_used_at": last_used})
        cache.manifest_path.write_text(changed.model_dump_json())
    return cache


def user_files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and ".nerfcache" not in p.parts and p.name not in CACHE_FILES
    }


def corrupt_a_member(path: Path) -> None:
    """Flip a byte inside the stored data: same size, complete archive, a wrong CRC."""
    data = bytearray(path.read_bytes())
    at = data.index(b"tensor-bytes")
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


# -- list_caches --


def test_list_caches_of_a_missing_cache_root(tmp_path: Path) -> None:
    from nerfcache import Settings

    assert list_caches(Settings(project_root=tmp_path)) == []


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

    caches = {info.character: info for info in list_caches(settings)}

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
    (info,) = (i for i in list_caches(settings) if i.character == "rei")
    assert info.status is CacheStatus.STALE


def test_list_caches_reads_no_cache_file(nerf_project: FakeProject) -> None:
    for name in ("a", "b", "c"):
        publish(nerf_project, name)
    list_caches(nerf_project.settings)  # a first listing remembers the portraits' hashes
    code = (
        "from nerfcache import Settings, list_caches\n"
        "caches = list_caches(Settings(project_root=sys.argv[1]))\n"
        "statuses = {info.character: info.status for info in caches}\n"
        "assert statuses == {'a': 'warm', 'ayanami': 'cold', 'b': 'warm', 'c': 'warm'}, statuses\n"
    )
    opened = files_opened(code, str(nerf_project.root))
    assert nerf_project.settings.state_dir / "digests.json" in opened
    assert [path for path in opened if path.suffix in (".pt", ".png")] == []  # no hash, no unzip


def test_list_caches_counts_generations_and_quarantine(nerf_project: FakeProject) -> None:
    cache = publish(nerf_project, "rei")
    write_png(nerf_project.character_dir("rei") / "images" / "portrait.png", (9, 9, 9))
    publish(nerf_project, "rei")  # the old cache is set aside as a generation
    (cache.meta / "quarantine" / "x").mkdir(parents=True)
    info = cache.info()
    assert info.status is CacheStatus.WARM
    assert len(info.generations) == 1
    assert info.quarantined == 1
    assert info.total_bytes >= 2 * info.size_bytes  # the set-aside files count too


def test_in_use_follows_the_locks(nerf_project: FakeProject) -> None:
    cache = publish(nerf_project, "rei")
    assert not cache.in_use()
    runs = cache.meta / "runs"
    (runs / "dead").mkdir(parents=True)
    (runs / "dead.lock").touch()  # a crashed run: its lock is free
    assert not cache.info().in_use

    live = FileLock(runs / "live.lock")
    with live:
        info = cache.info()
        assert (info.live_runs, info.building, info.in_use) == (1, False, True)
    with FileLock(cache.meta / "build.lock"):
        info = cache.info()
        assert (info.live_runs, info.building, info.in_use) == (0, True, True)


def test_listing_creates_nothing(nerf_project: FakeProject) -> None:
    legacy = nerf_project.character_dir("legacy")
    for name in CACHE_FILES:
        write_pt(legacy / name)
    before = sorted(nerf_project.root.rglob("*"))
    list_caches(nerf_project.settings)
    assert sorted(nerf_project.root.rglob("*")) == before


# -- verify --


def test_verify_a_sound_cache(nerf_project: FakeProject) -> None:
    cache = publish(nerf_project, "rei")
    result = cache.verify()
    assert result.ok
    assert result.status is CacheStatus.WARM
    assert result.action is None
    assert {f.subject for f in result.findings} == {*CACHE_FILES, "trunc", "portrait", "network"}
    assert all(f.level == "ok" for f in result.findings)


def test_verify_finds_a_damaged_member_that_status_misses(nerf_project: FakeProject) -> None:
    cache = publish(nerf_project, "rei")
    corrupt_a_member(cache.path / "w_PTI.pt")
    assert cache.status() is CacheStatus.WARM  # sizes match: only reading tells

    result = cache.verify()
    assert not result.ok
    assert result.status is CacheStatus.PARTIAL
    (bad,) = (f for f in result.findings if f.level == "error")
    assert bad.subject == "w_PTI.pt"
    assert "CRC" in bad.message
    assert cache.status() is CacheStatus.WARM  # without fix nothing moves

    before = user_files(cache.path)
    fixed = cache.verify(fix=True)
    assert fixed.action == "quarantined"
    assert cache.status() is CacheStatus.COLD
    (folder,) = (cache.meta / "quarantine").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == sorted([*CACHE_FILES, "manifest.json"])
    assert user_files(cache.path) == before


@pytest.mark.parametrize(
    ("files", "truncate", "level", "status"),
    [
        (CACHE_FILES, None, "warning", CacheStatus.LEGACY),
        (PTI_FILES, None, "error", CacheStatus.PARTIAL),
        (CACHE_FILES, "bg_PTI.pt", "error", CacheStatus.PARTIAL),
    ],
)
def test_verify_without_a_manifest(nerf_project, files, truncate, level, status) -> None:
    cache = CharacterCache(nerf_project.settings, "ayanami")
    for name in files:
        write_pt(cache.path / name)
    if truncate:
        (cache.path / truncate).write_bytes((cache.path / truncate).read_bytes()[:20])
    result = cache.verify()
    assert result.status is status
    assert max((f.level for f in result.findings), key=["ok", "warning", "error"].index) == level


def _missing(cache: CharacterCache) -> None:
    (cache.path / "fitted_coeffs.pt").unlink()


def _resized(cache: CharacterCache) -> None:
    write_pt(cache.path / "bg_PTI.pt", b"a longer payload than before")


def _unreadable_manifest(cache: CharacterCache) -> None:
    cache.manifest_path.write_text("{not json")


def _unlisted(cache: CharacterCache) -> None:
    manifest = cache.manifest()
    assert manifest is not None
    files = {n: s for n, s in manifest.files.items() if n != "fitted_coeffs.pt"}
    cache.manifest_path.write_text(manifest.model_copy(update={"files": files}).model_dump_json())


@pytest.mark.parametrize(
    ("damage", "subject", "says"),
    [
        (_missing, "fitted_coeffs.pt", "missing"),
        (_resized, "bg_PTI.pt", "where the manifest says"),
        (_unreadable_manifest, "manifest", "unreadable"),
        (_unlisted, "fitted_coeffs.pt", "not listed in the manifest"),
    ],
)
def test_verify_reports_what_does_not_match(nerf_project, damage, subject, says) -> None:
    cache = publish(nerf_project, "rei")
    damage(cache)
    result = cache.verify()
    assert result.status is CacheStatus.PARTIAL
    errors = [f for f in result.findings if f.level == "error"]
    assert [f.subject for f in errors] == [subject]
    assert says in errors[0].message


def test_verify_warns_of_an_interrupted_publish_and_fix_finishes_it(nerf_project) -> None:
    cache = publish(nerf_project, "rei")
    cache.manifest_path.rename(cache.meta / "manifest.pending.json")
    result = cache.verify()
    assert ("manifest", "warning") in {(f.subject, f.level) for f in result.findings}
    fixed = cache.verify(fix=True)
    assert fixed.ok
    assert fixed.status is CacheStatus.WARM
    assert cache.manifest_path.is_file()


def test_verify_without_a_portrait(nerf_project: FakeProject) -> None:
    cache = publish(nerf_project, "rei")
    (cache.path / "images" / "portrait.png").unlink()
    result = cache.verify()
    assert result.ok
    (portrait,) = (f for f in result.findings if f.subject == "portrait")
    assert portrait.level == "warning"


def test_verify_a_stale_cache_and_set_it_aside(nerf_project: FakeProject) -> None:
    cache = publish(nerf_project, "rei")
    key = fingerprint(nerf_project, "rei").key
    write_png(nerf_project.character_dir("rei") / "images" / "portrait.png", (5, 5, 5))
    result = cache.verify()
    assert result.status is CacheStatus.STALE
    assert [f.subject for f in result.findings if f.level == "error"] == ["portrait"]

    fixed = cache.verify(fix=True)
    assert fixed.action == "set aside"
    assert cache.status() is CacheStatus.COLD
    assert (cache.meta / "generations" / key / "G_PTI.pt").is_file()  # kept: a rename back


def test_verify_against_another_network(nerf_project: FakeProject) -> None:
    cache = publish(nerf_project, "rei")
    other = nerf_project.settings.model_dir / "other.pkl"
    other.write_bytes(b"another network")
    result = cache.verify(model_name="other.pkl")
    assert [f.subject for f in result.findings if f.level == "error"] == ["network"]
    with pytest.raises(InvalidInputError):
        cache.verify(model_name="../x.pkl")


def test_verify_cannot_check_a_network_that_is_gone(nerf_project: FakeProject) -> None:
    cache = publish(nerf_project, "rei")
    (nerf_project.settings.model_dir / nerf_project.model_name).unlink()
    result = cache.verify()
    assert result.ok
    (network,) = (f for f in result.findings if f.subject == "network")
    assert network.level == "warning"
    assert "not checked" in network.message


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

    plan = prune(nerf_project.settings, keep=1, dry_run=True, now=NOW)
    assert [i.character for i in plan.removed] == ["a", "b"]
    assert {i.character: i.status for i in list_caches(nerf_project.settings)}["a"] == "warm"

    done = prune(nerf_project.settings, keep=1, now=NOW)
    assert not done.dry_run
    assert [i.character for i in done.removed] == ["a", "b"]
    assert done.freed_bytes == plan.freed_bytes
    statuses = {i.character: i.status for i in list_caches(nerf_project.settings)}
    assert statuses == {"a": "cold", "ayanami": "cold", "b": "cold", "c": "warm"}
    assert {name: user_files(nerf_project.character_dir(name)) for name in "abc"} == before


def test_prune_never_touches_a_locked_cache(nerf_project: FakeProject) -> None:
    busy = publish(nerf_project, "busy", last_used=NOW - timedelta(days=90))
    publish(nerf_project, "idle", last_used=NOW - timedelta(days=60))
    with FileLock(busy.meta / "runs" / "20240101-1-abc.lock"):
        done = prune(nerf_project.settings, older_than=timedelta(days=30), now=NOW)
    assert [i.character for i in done.skipped] == ["busy"]
    assert [i.character for i in done.removed] == ["idle"]
    assert busy.status() is CacheStatus.WARM


def test_prune_skips_a_cache_that_became_busy_after_the_listing(
    nerf_project: FakeProject, monkeypatch
) -> None:
    cache = publish(nerf_project, "rei")
    build = FileLock(cache.meta / "build.lock")
    real = nerfcache.cache.manage.list_caches

    def listing_then_a_build_starts(settings):
        caches = real(settings)
        build.acquire()
        return caches

    monkeypatch.setattr(nerfcache.cache.manage, "list_caches", listing_then_a_build_starts)
    try:
        done = prune(nerf_project.settings, keep=0)
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
        prune(nerf_project.settings, keep=0)
    assert not isinstance(raised.value, CacheBusyError)
    assert cache.status() is CacheStatus.WARM
    assert [p.name for p in outside.iterdir()] == ["20240101T000000-partial"]


@pytest.mark.parametrize(
    "criteria",
    [{}, {"max_bytes": -1}, {"keep": -2}, {"older_than": timedelta(days=-1)}],
)
def test_prune_needs_a_valid_criterion(nerf_project: FakeProject, criteria) -> None:
    with pytest.raises(InvalidInputError):
        prune(nerf_project.settings, **criteria)
