from __future__ import annotations

from pathlib import Path

import pytest

from nerfcache import CharacterCache, Settings


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
