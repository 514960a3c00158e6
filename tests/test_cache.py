from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest
from filelock import FileLock

from nerfcache import CacheStatus, CharacterCache, Fingerprint, Settings
from nerfcache.cache import CACHE_FILES, FIT_FILES, PTI_FILES, file_sha256
from tests.conftest import files_opened, run_python

FP = Fingerprint(image_sha256="i" * 64, network_sha256="n" * 64, trunc=0.7)
OTHER = Fingerprint(image_sha256="j" * 64, network_sha256="n" * 64, trunc=0.7)


def write_pt(path: Path, payload: bytes = b"tensor") -> Path:
    """A file shaped like torch.save's output: a zip archive."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(project_root=tmp_path)


@pytest.fixture
def cache(settings: Settings) -> CharacterCache:
    cache = CharacterCache(settings, "rei")
    cache.path.mkdir(parents=True)
    (cache.path / "images").mkdir()
    (cache.path / "images" / "rei.png").write_bytes(b"portrait")
    return cache


def build(
    cache: CharacterCache, fingerprint: Fingerprint = FP, names=CACHE_FILES
) -> tuple[str, ...]:
    """Publish ``names`` the way a run does: written in a staging dir, then published."""
    with cache.stage(fingerprint, image=Path("img"), network=Path("net")) as staging:
        for name in names:
            write_pt(staging.path / name, fingerprint.key.encode())
        return cache.publish(staging, image=Path("img"), network=Path("net"))


def user_files(cache: CharacterCache) -> list[Path]:
    return sorted(
        p
        for p in cache.path.rglob("*")
        if ".nerfcache" not in p.parts and p.name not in CACHE_FILES
    )


# -- status --


def test_status_of_a_character_without_a_folder(settings: Settings) -> None:
    assert CharacterCache(settings, "nobody").status(FP) is CacheStatus.COLD
    assert not (settings.cache_root / "nobody").exists()


def test_status_cold_warm_stale_pti_only(cache: CharacterCache) -> None:
    assert cache.status(FP) is CacheStatus.COLD
    assert build(cache) == CACHE_FILES
    assert cache.status(FP) is CacheStatus.WARM
    assert cache.status() is CacheStatus.WARM
    assert cache.status(OTHER) is CacheStatus.STALE
    (cache.path / "fitted_coeffs.pt").unlink()
    assert cache.status(FP) is CacheStatus.PARTIAL  # the manifest lists it


def test_status_pti_only(cache: CharacterCache) -> None:
    assert build(cache, names=PTI_FILES) == PTI_FILES
    assert cache.status(FP) is CacheStatus.PTI_ONLY


@pytest.mark.parametrize(
    ("files", "truncate", "status"),
    [
        (CACHE_FILES, None, CacheStatus.LEGACY),
        (PTI_FILES, None, CacheStatus.PARTIAL),  # incomplete: the fit is missing
        (("G_PTI.pt",), None, CacheStatus.PARTIAL),
        (CACHE_FILES, "w_PTI.pt", CacheStatus.PARTIAL),
        (CACHE_FILES, "fitted_coeffs.pt", CacheStatus.PARTIAL),
    ],
)
def test_status_without_a_manifest(cache, files, truncate, status) -> None:
    for name in files:
        write_pt(cache.path / name)
    if truncate:
        data = (cache.path / truncate).read_bytes()
        (cache.path / truncate).write_bytes(data[: len(data) // 2])
    assert cache.status(FP) is status


def test_damaged_manifest_or_files_are_partial(cache: CharacterCache) -> None:
    build(cache)
    with (cache.path / "G_PTI.pt").open("ab") as file:
        file.write(b"x")  # a size the manifest does not list
    assert cache.status(FP) is CacheStatus.PARTIAL
    build(cache)  # quarantines, then rebuilds
    assert cache.status(FP) is CacheStatus.WARM
    cache.manifest_path.write_text("{not json")
    assert cache.status(FP) is CacheStatus.PARTIAL


def test_status_reads_no_file_contents(cache: CharacterCache) -> None:
    build(cache)
    code = (
        "from nerfcache import CharacterCache, Fingerprint, Settings\n"
        "cache = CharacterCache(Settings(project_root=sys.argv[1]), 'rei')\n"
        f"assert cache.status({FP!r}) == 'warm'\n"
    )
    opened = files_opened(code, str(cache.settings.project_root))
    assert cache.manifest_path in opened
    assert [path for path in opened if path.suffix == ".pt"] == []


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
    before = user_files(cache)
    with cache.stage(FP, image=Path("i"), network=Path("n")) as staging:
        assert staging.status_before is CacheStatus.PARTIAL
        assert staging.status is CacheStatus.COLD
    assert not any((cache.path / name).exists() for name in CACHE_FILES)
    (quarantined,) = (cache.meta / "quarantine").iterdir()
    assert sorted(p.name for p in quarantined.iterdir()) == sorted(
        ["G_PTI.pt", "bg_PTI.pt", "fitted_coeffs.pt", "manifest.json"]
    )
    assert user_files(cache) == before


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


# -- crash recovery --


def test_an_interrupted_publish_is_completed(cache: CharacterCache) -> None:
    build(cache)
    manifest = cache.manifest_path.read_text()
    # The launcher died after moving the files, before committing the pending manifest.
    cache.manifest_path.rename(cache.meta / "manifest.pending.json")
    with cache.stage(FP, image=Path("i"), network=Path("n")) as staging:
        assert staging.status_before is CacheStatus.WARM
    assert json.loads(cache.manifest_path.read_text())["files"] == json.loads(manifest)["files"]
    assert not (cache.meta / "manifest.pending.json").exists()


def test_an_interrupted_publish_with_missing_files_is_dropped(cache: CharacterCache) -> None:
    build(cache)
    cache.manifest_path.rename(cache.meta / "manifest.pending.json")
    (cache.path / "fitted_coeffs.pt").unlink()  # it never got moved
    with cache.stage(FP, image=Path("i"), network=Path("n")) as staging:
        assert staging.status_before is CacheStatus.PARTIAL
    assert not (cache.meta / "manifest.pending.json").exists()
    assert cache.status(FP) is CacheStatus.COLD


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


# -- hashing --


def test_file_hash_is_computed_once_per_file_version(tmp_path: Path) -> None:
    network = tmp_path / "net.pkl"
    network.write_bytes(b"weights" * 1000)
    memo = tmp_path / "digests.json"
    first = file_sha256(network, memo=memo)
    assert first == hashlib.sha256(network.read_bytes()).hexdigest()

    # New bytes, but the same size, mtime and inode: to nerfcache, the same version, not read.
    version = network.stat()
    with network.open("r+b") as file:
        file.write(b"W")
    os.utime(network, ns=(version.st_atime_ns, version.st_mtime_ns))
    assert file_sha256(network, memo=memo) == first
    in_a_new_process = (
        "from pathlib import Path\n"
        "from nerfcache.cache import file_sha256\n"
        "memo = Path(sys.argv[2]) if len(sys.argv) > 2 else None\n"
        "print(file_sha256(Path(sys.argv[1]), memo=memo))\n"
    )
    assert run_python(in_a_new_process, str(network), str(memo)) == first  # the memo file
    assert run_python(in_a_new_process, str(network)) != first  # nothing remembered: read

    network.write_bytes(b"other weights")  # another size: another version
    assert file_sha256(network, memo=memo) == hashlib.sha256(b"other weights").hexdigest()


def test_fingerprint_key_is_stable_and_distinct() -> None:
    assert FP.key == Fingerprint("i" * 64, "n" * 64, 0.7).key
    assert len({FP.key, OTHER.key, Fingerprint("i" * 64, "n" * 64, 0.5).key}) == 3
