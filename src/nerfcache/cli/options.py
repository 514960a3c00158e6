"""What the commands share: the global options, common options and their parsers, the settings."""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from nerfcache.config import Settings

__all__ = [
    "Json",
    "Model",
    "Options",
    "ProjectRoot",
    "Yes",
    "parse_age",
    "parse_size",
    "settings_of",
]


@dataclasses.dataclass(frozen=True)
class Options:
    """The options given before the command (``ctx.obj`` of every command)."""

    project_root: Path | None
    debug: bool


ProjectRoot = Annotated[
    Path | None,
    typer.Option(
        "--project-root",
        help="The NeRFFaceSpeech project (default: NERFCACHE_PROJECT_ROOT, .env, or here).",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Model = Annotated[str, typer.Option("--model", "-m", help="A .pkl file name in model_dir.")]
Yes = Annotated[bool, typer.Option("--yes", help="Delete; without it, only show what would go.")]


def settings_of(ctx: typer.Context) -> Settings:
    """The settings in effect: ``--project-root`` as a keyword, the rest from env and .env."""
    options: Options = ctx.obj
    if options.project_root is not None:
        return Settings(project_root=options.project_root)
    return Settings()


def parse_size(text: str) -> int:
    """``800M``, ``1.5g``, ``2TiB`` as bytes (powers of 1024); ``0`` is 0."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if match is None:
        raise typer.BadParameter(f"{text!r} is not a size such as 800M, 50G or 1.5T")
    return int(float(match[1]) * 1024 ** "_kmgt".index(match[2].lower() or "_"))


def parse_age(text: str) -> timedelta:
    """``36h``, ``30d``, ``2w`` (or ``s``, ``m``) as a timedelta."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text, re.IGNORECASE)
    if match is None:
        raise typer.BadParameter(f"{text!r} is not an age such as 36h, 30d or 2w")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    return timedelta(**{unit[match[2].lower()]: float(match[1])})
