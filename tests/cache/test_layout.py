from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from nerfcache import (
    Fingerprint,
)
from nerfcache.cache import CACHE_FILES, PTI_FILES, CacheStatus, Manifest
from nerfcache.cache.layout import cache_files, cache_status, footprint, inventory, read_manifest
from tests.cache.helpers import (
    FP,
    OTHER,
    write_pt,
)

NOW = datetime(2024, 6, 1, tzinfo=timezone.utc)


def test_fingerprint_key_is_stable_and_distinct() -> None:
    assert FP.key == Fingerprint("i" * 64, "n" * 64, 0.7).key
    assert len({FP.key, OTHER.key, Fingerprint("i" * 64, "n" * 64, 0.5).key}) == 3


def folder_with(tmp_path: Path, names: tuple[str, ...], listed: tuple[str, ...] | None) -> Path:
    """A cache folder holding ``names``; a manifest listing ``listed`` (None: no manifest)."""
    folder = tmp_path / "rei"
    folder.mkdir()
    for name in names:
        write_pt(folder / name)
    if listed is not None:
        files = {name: (folder / name).stat().st_size if name in names else 1 for name in listed}
        manifest = Manifest(
            fingerprint=FP, files=files, image="i", network="n", built_at=NOW, last_used_at=NOW
        )
        (folder / ".nerfcache").mkdir()
        (folder / ".nerfcache" / "manifest.json").write_text(manifest.model_dump_json())
    return folder


@pytest.mark.parametrize(
    ("names", "listed", "status"),
    [
        ((), None, CacheStatus.COLD),
        (CACHE_FILES, CACHE_FILES, CacheStatus.WARM),
        (PTI_FILES, PTI_FILES, CacheStatus.PTI_ONLY),
        (CACHE_FILES, None, CacheStatus.LEGACY),
        (PTI_FILES, None, CacheStatus.PARTIAL),  # no manifest, an incomplete set: a crash
        (PTI_FILES, CACHE_FILES, CacheStatus.PARTIAL),  # a listed file is missing
        (CACHE_FILES, PTI_FILES, CacheStatus.PARTIAL),  # a file the manifest does not list
        (("G_PTI.pt",), ("G_PTI.pt",), CacheStatus.PARTIAL),  # no complete PTI group
    ],
)
def test_cache_status(tmp_path: Path, names, listed, status) -> None:
    folder = folder_with(tmp_path, names, listed)
    manifest = read_manifest(folder / ".nerfcache" / "manifest.json")
    assert cache_status(folder, manifest, cache_files(folder)) is status
    if status in (CacheStatus.WARM, CacheStatus.PTI_ONLY):
        assert cache_status(folder, manifest, cache_files(folder), OTHER) is CacheStatus.STALE


def test_a_file_of_another_size_than_listed_is_partial(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, CACHE_FILES, CACHE_FILES)
    write_pt(folder / "bg_PTI.pt", b"a longer payload than before")
    manifest = read_manifest(folder / ".nerfcache" / "manifest.json")
    assert cache_status(folder, manifest, cache_files(folder)) is CacheStatus.PARTIAL


def test_an_unreadable_manifest_is_partial(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, CACHE_FILES, CACHE_FILES)
    (folder / ".nerfcache" / "manifest.json").write_text("{not json")
    manifest = read_manifest(folder / ".nerfcache" / "manifest.json")
    assert manifest is None
    assert cache_status(folder, manifest, cache_files(folder)) is CacheStatus.PARTIAL


def test_inventory_counts_what_clear_frees_once(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, CACHE_FILES, CACHE_FILES)
    generation = folder / ".nerfcache" / "generations" / "old"
    generation.mkdir(parents=True)
    os.link(folder / "G_PTI.pt", generation / "G_PTI.pt")  # a hard link: counted once
    (folder / "output_from_w_pivot_w_G_PTI.png").write_bytes(b"a byproduct")
    (folder / "images").mkdir()
    (folder / "images" / "rei.png").write_bytes(b"the user's portrait, not counted")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big").write_bytes(b"x" * 10_000)
    (folder / ".nerfcache" / "linked").symlink_to(outside, target_is_directory=True)

    stock = inventory(folder)
    sizes = {name: (folder / name).stat().st_size for name in CACHE_FILES}
    assert stock.files == sizes
    meta = sum(p.lstat().st_size for p in (folder / ".nerfcache").rglob("*") if p.is_file())
    meta -= (generation / "G_PTI.pt").stat().st_size
    assert stock.total_bytes == sum(sizes.values()) + len(b"a byproduct") + meta
    assert stock.meta == {"manifest.json", "generations", "linked"}
    assert footprint(folder) == stock.total_bytes


def test_inventory_of_a_missing_folder(tmp_path: Path) -> None:
    stock = inventory(tmp_path / "nobody")
    assert (stock.files, stock.total_bytes, stock.meta) == ({}, 0, frozenset())
