from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import IO

import pytest
from filelock import FileLock

from nerfcache import (
    CacheStatus,
    CharacterCache,
    InvalidInputError,
    generate_video,
)
from nerfcache.cache import (
    CACHE_FILES,
    PTI_FILES,
    digests,
)
from nerfcache.testing import FakeProject, write_png
from tests.cache.helpers import (
    corrupt_a_member,
    fingerprint,
    publish,
    user_files,
    write_pt,
)

# -- info --


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


def test_a_warm_run_goes_through_while_verify_hashes(
    nerf_project: FakeProject, monkeypatch
) -> None:
    project, settings = nerf_project, nerf_project.settings

    def run(out: str):
        return generate_video(
            project.audio,
            project.character,
            project.root / out,
            project.model_name,
            settings=settings,
        )

    assert run("cold")
    # The network under another name: a file verify has never hashed, so it must read it.
    shutil.copyfile(settings.model_dir / project.model_name, settings.model_dir / "copy.pkl")
    hashing, warm_run_done = threading.Event(), threading.Event()
    sha256_of = digests.sha256_of

    def held_until_the_warm_run_is_done(file: IO[bytes], **kwargs) -> str:
        hashing.set()
        if not warm_run_done.wait(30):  # the warm run waits for this verify: neither moves
            raise AssertionError("no warm run went through while verify was hashing")
        return sha256_of(file, **kwargs)

    monkeypatch.setattr(digests, "sha256_of", held_until_the_warm_run_is_done)
    cache = CharacterCache(settings, project.character)
    with ThreadPoolExecutor(1) as pool:
        verifying = pool.submit(cache.verify, model_name="copy.pkl", fix=True)
        assert hashing.wait(30)
        warm = run("warm")
        warm_run_done.set()
        verified = verifying.result()

    assert warm.cache_hit
    assert verified.ok
    assert verified.action is None
    assert ("network", "ok") in {(f.subject, f.level) for f in verified.findings}
