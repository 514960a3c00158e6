from __future__ import annotations

import json
from pathlib import Path

import pytest

from nerfcache import (
    CacheStatus,
    CharacterCache,
    Settings,
)
from nerfcache.cache import (
    CACHE_FILES,
    PTI_FILES,
)
from tests.cache.helpers import (
    FP,
    OTHER,
    build,
    write_pt,
)
from tests.conftest import files_opened

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
