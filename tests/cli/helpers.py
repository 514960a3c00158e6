"""Running the ``nerfcache`` command in this process, against a fake project."""

from __future__ import annotations

import json

from typer.testing import CliRunner, Result

from nerfcache import generate_video
from nerfcache.cli import app
from nerfcache.testing import FakeProject

__all__ = ["build", "cli", "runner"]

runner = CliRunner()


def cli(project: FakeProject, *args: str, **env: str) -> Result:
    """Run ``nerfcache --project-root {project} *args`` in this process (stdout: not a TTY)."""
    variables = {
        "NERFCACHE_EXTRA_ENV": json.dumps(project.settings.extra_env),
        "TTY_COMPATIBLE": "0",  # plain output, whatever FORCE_COLOR the shell has
        **env,
    }
    return runner.invoke(app, ["--project-root", str(project.root), *args], env=variables)


def build(project: FakeProject, character: str | None = None) -> None:
    """A warm cache, made by a real (fake-script) run."""
    name = character or project.character
    if not project.character_dir(name).exists():
        project.add_character(name)
    out = project.root / "videos" / name
    assert generate_video(project.audio, name, out, "ffhq.pkl", settings=project.settings)
