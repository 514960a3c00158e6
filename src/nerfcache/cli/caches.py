"""The ``cache`` commands: list, show, verify, clear, prune, export and import."""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from nerfcache.archive import TRUST_WARNING, export_cache, import_cache
from nerfcache.cache import CacheStatus, CharacterCache, Pruning, list_caches, prune
from nerfcache.characters import find_test_image
from nerfcache.cli.options import Json, Yes, parse_age, parse_size, settings_of
from nerfcache.cli.output import count, in_use, info_json, jsonable, print_json, table, when
from nerfcache.config import Settings
from nerfcache.doctor import format_bytes, free_bytes
from nerfcache.errors import InvalidInputError, MissingFileError, NerfCacheError

__all__ = [
    "clear_command",
    "export_command",
    "import_command",
    "list_command",
    "prune_command",
    "show_command",
    "verify_command",
]

_NAMES_SHOWN = 20


def list_command(ctx: typer.Context, as_json: Json = False) -> None:
    """List every character's cache: status, size, last use, set-aside generations.

    Status is cold, warm, pti-only (the fit is redone), stale (the portrait or trunc changed
    since the build: it will be set aside and rebuilt), legacy or partial.

    Example: nerfcache cache list --json | jq -r '.[] | select(.status == "stale") | .character'
    """
    settings = _existing_cache_root(settings_of(ctx))
    caches = list_caches(settings=settings)
    if as_json:
        print_json([info_json(info) for info in caches])
        return
    table(
        ("character", "status", "cache", "on disk", "last used", "set aside", "in use"),
        [
            (
                info.character,
                info.status.value,
                format_bytes(info.size_bytes),
                format_bytes(info.total_bytes),
                when(info.last_used_at),
                str(len(info.generations)),
                in_use(info),
            )
            for info in caches
        ],
    )
    total = sum(info.total_bytes for info in caches)
    typer.echo(
        f"{count(len(caches), 'character')} in {settings.cache_root}: {format_bytes(total)} of"
        f" caches, {format_bytes(free_bytes(settings.cache_root))} free"
    )


def show_command(
    ctx: typer.Context,
    character: Annotated[str, typer.Argument(help="The character.")],
    as_json: Json = False,
) -> None:
    """Show one character's cache: its files, what it was built from, its generations.

    Example: nerfcache cache show ayanami
    """
    info = _cache(settings_of(ctx), character).info()
    if as_json:
        print_json(info_json(info))
        return
    fingerprint = info.fingerprint
    rows = [
        ("folder", str(info.path)),
        ("status", info.status.value),
        *((name, format_bytes(size)) for name, size in info.files.items()),
        ("cache", format_bytes(info.size_bytes)),
        (
            "on disk",
            f"{format_bytes(info.total_bytes)} (with set-aside generations and quarantine)",
        ),
        ("built", when(info.built_at)),
        ("last used", when(info.last_used_at)),
        ("portrait", info.image or "-"),
        ("network", info.network or "-"),
        ("trunc", f"{fingerprint.trunc:g}" if fingerprint else "-"),
        ("portrait sha256", fingerprint.image_sha256 if fingerprint else "-"),
        ("network sha256", fingerprint.network_sha256 if fingerprint else "-"),
        ("generations", ", ".join(info.generations) or "-"),
        ("quarantined", str(info.quarantined)),
        ("in use", in_use(info)),
    ]
    table(("", character), rows)


def verify_command(
    ctx: typer.Context,
    characters: Annotated[
        list[str] | None, typer.Argument(help="The characters (default: all).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Check against this network (default: the one used)."),
    ] = None,
    fix: Annotated[
        bool, typer.Option("--fix", help="Quarantine broken caches, set stale ones aside.")
    ] = False,
    as_json: Json = False,
) -> None:
    """Check caches without torch: complete archives, sizes, portrait, network, trunc.

    Reads every file (a CRC check of each archive member). Exit 1 if a problem was found and
    left in place; with --fix, a broken cache is quarantined (the next run rebuilds it) and a
    sound cache for another portrait, network or trunc is set aside.

    Example: nerfcache cache verify --fix
    """
    settings = settings_of(ctx)
    names = characters or [info.character for info in list_caches(settings=settings)]
    results = [_cache(settings, name).verify(model_name=model, fix=fix) for name in names]
    if as_json:
        print_json([{**jsonable(result), "ok": result.ok} for result in results])
    else:
        table(
            ("character", "status", "result", "problems"),
            [
                (
                    result.character,
                    result.status.value,
                    ("ok" if result.ok else "failed")
                    + (f", {result.action}" if result.action else ""),
                    "; ".join(
                        f"{f.subject}: {f.message}" for f in result.findings if f.level != "ok"
                    ),
                )
                for result in results
            ],
        )
    if any(not result.ok and result.action is None for result in results):
        raise typer.Exit(1)


def clear_command(
    ctx: typer.Context,
    characters: Annotated[list[str], typer.Argument(help="The characters.")],
    yes: Yes = False,
) -> None:
    """Delete characters' caches; without --yes, only show what would go.

    Deletes the four cache files, the byproduct PNGs the original launcher left in the folder
    (output_from_w_pivot_w_G_PTI.png, img_tesnor_224_resize_prc.png) and
    .nerfcache/ (set-aside generations, quarantine). Never images/, audio.wav or other files
    of yours. A cache in use (a build or a live run) is left alone, with exit code 1.

    Example: nerfcache cache clear ayanami --yes
    """
    settings = settings_of(ctx)
    caches = [_cache(settings, name) for name in characters]
    code = 0
    for cache in caches:
        info = cache.info()
        if not yes:
            busy = " (in use now: it would be left alone)" if info.in_use else ""
            typer.echo(f"would free {format_bytes(info.total_bytes)}: {cache.character}{busy}")
            continue
        try:
            freed = cache.clear()
        except NerfCacheError as error:
            typer.echo(f"error: {error}", err=True)
            code = 1
        else:
            typer.echo(f"freed {format_bytes(freed)}: {cache.character}")
    if not yes:
        typer.echo("nothing deleted: run again with --yes to delete")
    raise typer.Exit(code)


def prune_command(
    ctx: typer.Context,
    *,
    max_size: Annotated[
        int | None,
        typer.Option(
            parser=parse_size,
            metavar="SIZE",
            help="Remove least recently used caches until all take at most SIZE (50G, 800M).",
        ),
    ] = None,
    older_than: Annotated[
        timedelta | None,
        typer.Option(
            parser=parse_age, metavar="AGE", help="Remove caches unused for AGE (30d, 12h, 2w)."
        ),
    ] = None,
    keep: Annotated[
        int | None,
        typer.Option(min=0, help="Always keep the N most recently used (alone: remove the rest)."),
    ] = None,
    yes: Yes = False,
    as_json: Json = False,
) -> None:
    """Remove whole caches, least recently used first; without --yes, only show what would go.

    A cache in use (a build or a live run) is never removed, nor any file of yours.

    Example: nerfcache cache prune --max-size 200G --keep 10 --yes
    """
    if max_size is None and older_than is None and keep is None:
        raise typer.BadParameter("give --max-size, --older-than or --keep")
    result = prune(
        settings=_existing_cache_root(settings_of(ctx)),
        max_bytes=max_size,
        older_than=older_than,
        keep=keep,
        dry_run=not yes,
    )
    if as_json:
        print_json(
            {
                "dry_run": result.dry_run,
                "total_bytes": result.total_bytes,
                "freed_bytes": result.freed_bytes,
                "removed": [info_json(info) for info in result.removed],
                "skipped": [info_json(info) for info in result.skipped],
            }
        )
        return
    _print_pruning(result)


def _print_pruning(result: Pruning) -> None:
    verb = "would remove" if result.dry_run else "removed"
    outcomes = [(info, verb) for info in result.removed]
    outcomes += [(info, "in use: kept") for info in result.skipped]
    rows = [
        (
            info.character,
            info.status.value,
            format_bytes(info.total_bytes),
            when(info.last_used_at),
            what,
        )
        for info, what in outcomes
    ]
    if rows:
        table(("character", "status", "size", "last used", ""), rows)
    typer.echo(
        f"{'would free' if result.dry_run else 'freed'} {format_bytes(result.freed_bytes)} of"
        f" {format_bytes(result.total_bytes)}"
        + (": nothing deleted, run again with --yes to delete" if result.dry_run else "")
    )


def export_command(
    ctx: typer.Context,
    character: Annotated[str, typer.Argument(help="The character.")],
    destination: Annotated[Path, typer.Argument(help="The archive to write, or - for stdout.")],
    gzip: Annotated[bool, typer.Option("--gzip", help="Compress the archive.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace DESTINATION if it already exists.")
    ] = False,
) -> None:
    """Write a character's cache to a portable archive (tar, with a sha256 per file).

    An existing file is not replaced unless --force is given.

    Example: nerfcache cache export ayanami - | ssh gpu2 nerfcache cache import - --trust
    """
    to_stdout = str(destination) == "-"
    if to_stdout and sys.stdout.isatty():
        raise InvalidInputError(
            "not writing an archive to a terminal: redirect stdout or give a file name",
            field="destination",
        )
    # lexists: a symbolic link, even a dangling one, is something of the user's to replace.
    if not to_stdout and not force and os.path.lexists(destination):
        raise InvalidInputError(
            f"{destination} already exists: give another name, or --force to replace it",
            field="destination",
            value=destination,
        )
    header = export_cache(character, destination, settings=settings_of(ctx), compress=gzip)
    size = sum(header.cache.files.values())
    files = count(len(header.cache.files), "file")
    typer.echo(f"exported {character}: {files}, {format_bytes(size)}", err=True)


def import_command(
    ctx: typer.Context,
    source: Annotated[Path, typer.Argument(help="The archive, or - for stdin.")],
    trust: Annotated[
        bool,
        typer.Option(
            "--trust",
            help="Required: the .pt files are pickles that torch.load runs; import only archives"
            " from a source you trust.",
        ),
    ] = False,
    name: Annotated[
        str | None, typer.Option("--as", help="Import as this character (default: as exported).")
    ] = None,
) -> None:
    """Check an archive made by export and publish it as a character's cache.

    Every path, size and sha256 is checked before anything is published; the cache that was
    there is set aside (or quarantined if broken). WARNING: a cache's .pt files are pickles
    that the NeRF script loads with torch.load, which runs any code they hold, so --trust is
    required: import only archives from a source you trust.

    Example: nerfcache cache import ayanami.tar --trust
    """
    if not trust:
        raise InvalidInputError(f"{TRUST_WARNING}; add --trust to import", field="trust")
    settings = settings_of(ctx)
    done = import_cache(source, settings=settings, character=name, trust=True)
    files = done.manifest.files
    line = (
        f"imported {done.character}: {count(len(files), 'file')},"
        f" {format_bytes(sum(files.values()))}"
    )
    if done.replaced in (CacheStatus.WARM, CacheStatus.PTI_ONLY):
        line += f"; the {done.replaced.value} cache that was there is set aside"
    elif done.replaced is not CacheStatus.COLD:
        line += f"; the {done.replaced.value} cache that was there is quarantined"
    typer.echo(line)
    try:
        find_test_image(settings, done.character)
    except NerfCacheError:
        typer.echo(
            f"warning: no portrait for {done.character} here: put the same image in"
            f" {done.path / 'images'} (a cache is used only with the portrait it was built from)",
            err=True,
        )


def _existing_cache_root(settings: Settings) -> Settings:
    """``settings``, if its cache_root exists: a missing one is a wrong setting, not 0 caches."""
    if not settings.cache_root.is_dir():
        raise MissingFileError(
            f"cache_root {settings.cache_root} does not exist: set cache_root (environment"
            " variable NERFCACHE_CACHE_ROOT) or project_root (--project-root)",
            path=settings.cache_root,
        )
    return settings


def _cache(settings: Settings, character: str) -> CharacterCache:
    """The cache of a character that has a folder; a typo is an error, not a cold cache."""
    cache = CharacterCache(settings, character)
    if not cache.path.is_dir():
        root = settings.cache_root
        names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        names = [name for name in names if not name.startswith(".")]
        shown = ", ".join(names[:_NAMES_SHOWN]) + (", ..." if len(names) > _NAMES_SHOWN else "")
        raise MissingFileError(
            f"no character {character!r} in cache_root ({root}); known: {shown or 'none'}",
            path=cache.path,
        )
    return cache
