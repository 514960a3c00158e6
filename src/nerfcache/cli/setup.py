"""Checking the installation: ``doctor`` (paths, Python, scripts) and ``config`` (settings)."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated

import typer
from pydantic_settings import DotEnvSettingsSource, EnvSettingsSource

from nerfcache.cli.options import Json, Options, settings_of
from nerfcache.cli.output import print_json, table
from nerfcache.config import Settings, find_project_root
from nerfcache.doctor import PROBE_TIMEOUT_S, diagnose

__all__ = ["config_command", "doctor_command"]


def doctor_command(
    ctx: typer.Context,
    timeout: Annotated[
        float, typer.Option(min=1, help="Seconds each probe of the conda Python may take.")
    ] = PROBE_TIMEOUT_S,
    as_json: Json = False,
) -> None:
    """Check the installation: every configured path, the conda Python, the scripts, models.

    Also whether the cache-capable script accepts --cache_dir (it is run with --help), that
    cache_root is writable and the free disk. Each problem names the setting to change. Exit 1
    if a check failed.

    Example: nerfcache doctor
    """
    checks = diagnose(settings=settings_of(ctx), timeout=timeout)
    if as_json:
        print_json(
            {
                "ok": all(c.level != "error" for c in checks),
                "checks": [dataclasses.asdict(check) for check in checks],
            }
        )
    else:
        table(("check", "result", "detail"), [(c.name, c.level, c.message) for c in checks])
    if any(check.level == "error" for check in checks):
        raise typer.Exit(1)


def config_command(ctx: typer.Context, as_json: Json = False) -> None:
    """Show the effective settings and where each came from: keyword, env, .env or default.

    project_root's default says how it was found: search (the nearest folder at or above the
    working directory holding NeRFFaceSpeech_Code) or cwd (none: the working directory).

    Example: NERFCACHE_TRUNC=0.5 nerfcache config
    """
    settings = settings_of(ctx)
    options: Options = ctx.obj
    keywords = {"project_root"} if options.project_root else set()
    from_env = EnvSettingsSource(Settings)()
    from_dotenv = DotEnvSettingsSource(Settings)()
    values = settings.model_dump(mode="json")
    rows = []
    for field in Settings.model_fields:
        source = (
            "keyword"
            if field in keywords
            else "env"
            if field in from_env
            else ".env"
            if field in from_dotenv
            else _default_source(field)
        )
        rows.append((field, values[field], source, f"NERFCACHE_{field.upper()}"))
    if as_json:
        print_json(
            {
                field: {"value": value, "source": source, "variable": variable}
                for field, value, source, variable in rows
            }
        )
        return
    table(
        ("setting", "value", "from", "variable"),
        [
            (field, value if isinstance(value, str) else json.dumps(value), source, variable)
            for field, value, source, variable in rows
        ],
    )


def _default_source(field: str) -> str:
    """Where a field's default came from: ``search`` and ``cwd`` tell apart project_root's two."""
    if field != "project_root":
        return "default"
    return "cwd" if find_project_root() is None else "search"
