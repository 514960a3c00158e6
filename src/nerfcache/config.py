"""Settings: PROJECT_ROOT and every path derived from it, from keywords, environment or ``.env``."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["CODE_DIR_NAME", "Settings", "find_project_root", "get_settings"]

CODE_DIR_NAME = "NeRFFaceSpeech_Code"
"""The NeRF code folder's name: the folder holding it is a project root."""
STOCK_SCRIPT = "main_NeRFFaceSpeech_audio_driven_w_given_poses.py"
CACHE_SCRIPT = "main_NeRFFaceSpeech_audio_driven_w_given_poses_cache.py"


def find_project_root(start: Path | str | None = None) -> Path | None:
    """Return the nearest folder at or above ``start`` that holds ``NeRFFaceSpeech_Code``, or None.

    ``start`` defaults to the working directory. Apps often run from a subfolder of their
    project (the seed's web app from ``app/``); git finds its repository the same way.
    """
    here = Path(os.path.abspath(Path.cwd() if start is None else start))
    for folder in (here, *here.parents):
        try:
            if (folder / CODE_DIR_NAME).is_dir():
                return folder
        except OSError:  # a folder we may not look into: keep climbing
            continue
    return None


def _default_project_root() -> Path:
    return find_project_root() or Path.cwd()


def _under(field: str, *parts: str) -> Any:
    """Return a default factory for a path below an earlier field (which is already absolute)."""
    return Field(default_factory=lambda data: Path(data[field], *parts))


class Settings(BaseSettings):
    """Where NeRFFaceSpeech lives and how to run it.

    Every field can be given as a keyword or as an environment variable ``NERFCACHE_<FIELD>``
    (also read from ``.env``). Relative paths are taken relative to ``project_root``; derived
    paths follow ``project_root`` unless set themselves. Nothing is created on disk.
    """

    model_config = SettingsConfigDict(
        env_prefix="NERFCACHE_", env_file=".env", extra="ignore", frozen=True
    )

    project_root: Path = Field(default_factory=_default_project_root)
    """Unset: the nearest folder at or above the working directory that holds
    ``NeRFFaceSpeech_Code``, else the working directory."""
    nerf_code_dir: Path = _under("project_root", CODE_DIR_NAME)
    conda_env: Path = _under("project_root", "environment", "nerffacespeech")
    conda_python: Path = _under("conda_env", "bin", "python")
    script: Path = _under("nerf_code_dir", "StyleNeRF", STOCK_SCRIPT)
    cache_script: Path = _under("nerf_code_dir", "StyleNeRF", CACHE_SCRIPT)
    model_dir: Path = _under("nerf_code_dir", "pretrained_networks")
    cache_root: Path = _under("project_root", "assets", "charactor")
    state_dir: Path = _under("project_root", ".nerfcache")
    """Host-wide state (hash memo, GPU slots, locks): outside cache_root, where apps list
    characters."""
    characters: dict[str, Path] = Field(default_factory=dict)
    trunc: float = 0.7
    motion_guide_img_folder: str = "frames"
    timeout_s: float | None = Field(default=None, gt=0)
    extra_env: dict[str, str] = Field(default_factory=dict)
    keep_generations: int = Field(default=2, ge=0)
    gpus: str | None = Field(default=None, pattern=r"^\s*\d+(\s*,\s*\d+)*\s*$")
    jobs_per_gpu: int = Field(default=1, ge=1)

    @field_validator("project_root", mode="after")
    @classmethod
    def _absolute_root(cls, value: Path) -> Path:
        return Path(os.path.abspath(value.expanduser()))

    @field_validator(
        "nerf_code_dir",
        "conda_env",
        "conda_python",
        "script",
        "cache_script",
        "model_dir",
        "cache_root",
        "state_dir",
        mode="after",
    )
    @classmethod
    def _relative_to_root(cls, value: Path, info: ValidationInfo) -> Path:
        return _absolute(value, info.data.get("project_root"))

    @field_validator("characters", mode="after")
    @classmethod
    def _registry_relative_to_root(
        cls, value: dict[str, Path], info: ValidationInfo
    ) -> dict[str, Path]:
        return {
            name: _absolute(path, info.data.get("project_root")) for name, path in value.items()
        }


def _absolute(path: Path, root: Path | None) -> Path:
    # root is None only when project_root itself failed validation: pydantic reports that.
    return Path(os.path.abspath((root or Path.cwd()) / path.expanduser()))


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, read once from the environment (and ``.env``).

    Call ``get_settings.cache_clear()`` after changing the environment.
    """
    return Settings()
