"""The ``nerf_project`` fixture: ``pytest_plugins = ["nerfcache.testing.pytest_plugin"]``."""

from __future__ import annotations

from pathlib import Path

import pytest

from nerfcache.testing import FakeProject, make_fake_project

__all__ = ["nerf_project"]


@pytest.fixture
def nerf_project(tmp_path: Path) -> FakeProject:
    """A fresh fake NeRFFaceSpeech project in ``tmp_path`` (see ``make_fake_project``)."""
    return make_fake_project(tmp_path / "project")
