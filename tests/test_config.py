from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from nerfcache import Settings, get_settings
from nerfcache.config import find_project_root

STOCK = "main_NeRFFaceSpeech_audio_driven_w_given_poses.py"
CACHE = "main_NeRFFaceSpeech_audio_driven_w_given_poses_cache.py"


def test_defaults_follow_project_root(tmp_path: Path) -> None:
    s = Settings(project_root=tmp_path)
    code = tmp_path / "NeRFFaceSpeech_Code"
    assert s.nerf_code_dir == code
    assert s.conda_env == tmp_path / "environment" / "nerffacespeech"
    assert s.conda_python == tmp_path / "environment" / "nerffacespeech" / "bin" / "python"
    assert s.script == code / "StyleNeRF" / STOCK
    assert s.cache_script == code / "StyleNeRF" / CACHE
    assert s.model_dir == code / "pretrained_networks"
    assert s.cache_root == tmp_path / "assets" / "charactor"
    assert s.characters == {}
    assert s.trunc == 0.7
    assert s.motion_guide_img_folder == "frames"
    assert s.timeout_s is None
    assert s.extra_env == {}
    assert s.keep_generations == 2


def test_project_root_defaults_to_the_working_directory_made_absolute(tmp_path: Path) -> None:
    # conftest chdirs into tmp_path
    assert Settings().project_root == tmp_path
    assert Settings(project_root="sub/../other").project_root == tmp_path / "other"


def test_environment_overrides_and_derived_paths_follow(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NERFCACHE_PROJECT_ROOT", str(tmp_path / "proj"))
    monkeypatch.setenv("NERFCACHE_CONDA_ENV", "/opt/conda/envs/nerf")
    monkeypatch.setenv("NERFCACHE_TRUNC", "0.5")
    monkeypatch.setenv("NERFCACHE_TIMEOUT_S", "600")
    monkeypatch.setenv("NERFCACHE_CHARACTERS", json.dumps({"绫波丽": "portraits/rei.png"}))
    monkeypatch.setenv("NERFCACHE_EXTRA_ENV", json.dumps({"TORCH_HOME": "/models/torch"}))
    s = Settings()
    assert s.project_root == tmp_path / "proj"
    assert s.conda_python == Path("/opt/conda/envs/nerf/bin/python")
    assert s.trunc == 0.5
    assert s.timeout_s == 600
    assert s.characters == {"绫波丽": tmp_path / "proj" / "portraits" / "rei.png"}
    assert s.extra_env == {"TORCH_HOME": "/models/torch"}


def test_keywords_beat_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NERFCACHE_CACHE_ROOT", "/env/cache")
    s = Settings(project_root=tmp_path, cache_root="caches")
    assert s.cache_root == tmp_path / "caches"


def test_dotenv_file_is_read(tmp_path) -> None:
    (tmp_path / ".env").write_text("NERFCACHE_MODEL_DIR=models\n")
    assert Settings(project_root=tmp_path).model_dir == tmp_path / "models"


@pytest.mark.parametrize(
    ("field", "value"), [("trunc", "x"), ("timeout_s", "0"), ("keep_generations", "-1")]
)
def test_bad_values_are_rejected(tmp_path, field: str, value: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(project_root=tmp_path, **{field: value})  # type: ignore[arg-type]


def test_get_settings_is_cached_and_creates_nothing(tmp_path) -> None:
    get_settings.cache_clear()
    try:
        assert get_settings() is get_settings()
        assert get_settings().project_root == tmp_path
        assert list(tmp_path.iterdir()) == []
    finally:
        get_settings.cache_clear()


def test_settings_are_immutable(tmp_path) -> None:
    s = Settings(project_root=tmp_path)
    with pytest.raises(ValidationError):
        s.trunc = 1.0  # type: ignore[misc]


def make_project(folder: Path) -> Path:
    """A project root: a folder holding NeRFFaceSpeech_Code, with the web app's ``app/``."""
    (folder / "NeRFFaceSpeech_Code").mkdir(parents=True)
    (folder / "app" / "backend").mkdir(parents=True)
    return folder


def test_project_root_is_found_from_a_subfolder(tmp_path: Path, monkeypatch) -> None:
    root = make_project(tmp_path / "proj")
    monkeypatch.chdir(root / "app" / "backend")
    assert Settings().project_root == root
    assert Settings().model_dir == root / "NeRFFaceSpeech_Code" / "pretrained_networks"
    monkeypatch.chdir(root)
    assert Settings().project_root == root


def test_the_nearest_project_root_wins(tmp_path: Path, monkeypatch) -> None:
    outer = make_project(tmp_path / "outer")
    inner = make_project(outer / "app" / "inner")
    monkeypatch.chdir(inner / "app")
    assert find_project_root() == inner
    assert find_project_root(outer / "app") == outer


def test_environment_and_dotenv_beat_the_search(tmp_path: Path, monkeypatch) -> None:
    root = make_project(tmp_path / "proj")
    monkeypatch.chdir(root / "app")
    (root / "app" / ".env").write_text(f"NERFCACHE_PROJECT_ROOT={tmp_path / 'from-dotenv'}\n")
    assert Settings().project_root == tmp_path / "from-dotenv"
    monkeypatch.setenv("NERFCACHE_PROJECT_ROOT", str(tmp_path / "from-env"))
    assert Settings().project_root == tmp_path / "from-env"


def test_without_a_code_folder_above_it_is_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "NeRFFaceSpeech_Code").write_text("a file, not the code folder")
    (tmp_path / "sub").mkdir()
    assert find_project_root(tmp_path / "sub") is None
    assert Settings().project_root == tmp_path  # conftest chdirs into tmp_path
