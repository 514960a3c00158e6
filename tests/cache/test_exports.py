from __future__ import annotations

import importlib

import pytest

import nerfcache.cache

# What nerfcache.cache exported when it was one module; doctor imports FindingLevel and
# generate META_DIR, which were outside its __all__.
BEFORE_THE_SPLIT = {
    "CACHE_FILES",
    "FIT_FILES",
    "PTI_FILES",
    "CacheInfo",
    "CacheStatus",
    "CharacterCache",
    "Finding",
    "Fingerprint",
    "Manifest",
    "Pruning",
    "Snapshot",
    "Staging",
    "Verification",
    "digest_memo",
    "file_sha256",
    "list_caches",
    "prune",
}
MODULES = ["digests", "folder", "inspection", "layout", "manage", "staging", "store"]


def test_the_package_still_exports_what_the_module_did() -> None:
    assert set(nerfcache.cache.__all__) == BEFORE_THE_SPLIT | {"FindingLevel", "META_DIR"}
    for name in nerfcache.cache.__all__:
        assert getattr(nerfcache.cache, name) is not None


@pytest.mark.parametrize("module", [*MODULES, "nerfcache._fs", "nerfcache._procs"])
def test_every_module_declares_all(module: str) -> None:
    mod = importlib.import_module(module if "." in module else f"nerfcache.cache.{module}")
    assert mod.__all__
    assert all(hasattr(mod, name) for name in mod.__all__)
