"""The ``nerfcache`` command: make videos, warm and manage caches, check the installation.

Every listing takes ``--json``; tables are plain text when stdout is not a terminal. An error is
one line on stderr, exit code 2 for bad input and 1 for a failed run, unless ``--debug``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core
from loguru import logger
from pydantic import TypeAdapter, ValidationError
from pydantic_settings import DotEnvSettingsSource, EnvSettingsSource
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from nerfcache.archive import TRUST_WARNING, export_cache, import_cache
from nerfcache.cache import (
    CacheInfo,
    CacheStatus,
    CharacterCache,
    Pruning,
    Verification,
    list_caches,
    prune,
)
from nerfcache.characters import find_test_image
from nerfcache.config import Settings, find_project_root
from nerfcache.doctor import PROBE_TIMEOUT_S, _bytes, _free_bytes, diagnose
from nerfcache.errors import InvalidInputError, MissingFileError, NerfCacheError
from nerfcache.generate import GenerationResult, generate_video, warm
from nerfcache.progress import ProgressEvent
from nerfcache.testing import make_fake_project

__all__ = ["app", "main"]

# The seed's proportions: PTI 10-20 min, 3DMM up to minutes, rendering a few minutes.
DEMO_PHASES = {"FAKE_NERF_PTI_S": 2.0, "FAKE_NERF_FIT_S": 0.4, "FAKE_NERF_RENDER_S": 0.6}
_NAMES_SHOWN = 20


@dataclasses.dataclass(frozen=True)
class _Options:
    project_root: Path | None
    debug: bool


class _Group(typer.core.TyperGroup):
    """Turns nerfcache's errors into one line and an exit code (a traceback with --debug)."""

    def invoke(self, ctx: Any) -> Any:  # typer's Context class is private
        try:
            return super().invoke(ctx)
        except (NerfCacheError, ValidationError, OSError) as error:
            if (isinstance(ctx.obj, _Options) and ctx.obj.debug) or isinstance(
                error, BrokenPipeError
            ):
                raise  # a closed pipe (`nerfcache config | head`): click ends quietly
            typer.echo(f"error: {_describe(error)}", err=True)
            bad_input = (InvalidInputError, MissingFileError, ValidationError)
            raise typer.Exit(2 if isinstance(error, bad_input) else 1) from None


app = typer.Typer(
    cls=_Group,
    help="Run NeRFFaceSpeech with a per-character cache of its PTI and 3DMM work.",
    no_args_is_help=True,
    add_completion=False,
)
cache_app = typer.Typer(
    help="See and manage the per-character caches under cache_root.", no_args_is_help=True
)
app.add_typer(cache_app, name="cache")

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


@app.callback()
def _main(
    ctx: typer.Context,
    project_root: ProjectRoot = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every step.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    with contextlib.suppress(ValueError):
        logger.remove(0)  # loguru's default sink: the command prints its own format
    level = "DEBUG" if debug else "INFO" if verbose else "WARNING"
    sink = logger.add(sys.stderr, level=level, format="{level}: {message}")
    logger.enable("nerfcache")

    def restore() -> None:  # for callers that run the command in their own process (tests)
        logger.remove(sink)
        logger.disable("nerfcache")

    ctx.call_on_close(restore)
    ctx.obj = _Options(project_root, debug)


# -- making videos -------------------------------------------------------------------------


@app.command("generate")
def generate_command(
    ctx: typer.Context,
    *,
    audio: Annotated[Path, typer.Argument(help="The speech to animate.")],
    character: Annotated[str, typer.Argument(help="The character (its folder in cache_root).")],
    output: Annotated[Path, typer.Argument(help="Folder for output_NeRFFaceSpeech.mp4.")],
    model: Model,
    image: Annotated[
        Path | None, typer.Option(help="The portrait (default: the character's images/).")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(min=0, help="Kill the run after this many seconds.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Make one video. Exit 0 if it was made, 1 if the run failed, 2 for bad input.

    Example: nerfcache generate speech.wav ayanami out/ --model ffhq.pkl
    """
    settings = _settings(ctx)
    with _progress_reporter() as on_progress:
        result = generate_video(
            audio,
            character,
            output,
            model,
            settings=settings,
            test_image=image,
            timeout=timeout,
            on_progress=on_progress,
        )
    if as_json:
        _print_json(TypeAdapter(GenerationResult).dump_python(result, mode="json"))
    elif result:
        how = (
            "warm: PTI and 3DMM loaded"
            if result.cache_hit
            else f"{result.cache_status_before.value} before; built"
            f" {', '.join(result.published) or 'nothing new'}"
        )
        typer.echo(f"video: {result.video_path}")
        typer.echo(f"cache: {how}")
        typer.echo(f"time:  {result.duration_s:.1f} s")
    if not result:
        typer.echo(f"error: no video: {result.error}", err=True)
        for line in result.log_tail[-5:]:
            typer.echo(f"  {line}", err=True)
        raise typer.Exit(1)


@app.command("warm")
def warm_command(
    ctx: typer.Context,
    characters: Annotated[list[str], typer.Argument(help="The characters to build.")],
    model: Model,
    image: Annotated[
        Path | None, typer.Option(help="The portrait, for a single character.")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(min=0, help="Kill a build after this many seconds.")
    ] = None,
) -> None:
    """Build caches before the first request asks for them (a warm one is left alone).

    Each build runs the script once on a short silent clip and throws the video away. Exit 1
    if a build failed, 2 if a name or file was wrong; the other characters are built anyway.

    Example: nerfcache warm ayanami rei --model ffhq.pkl
    """
    if image is not None and len(characters) > 1:
        raise typer.BadParameter("give one character with --image", param_hint="--image")
    settings = _settings(ctx)
    console = Console(stderr=True)
    code = 0
    for character in characters:
        try:
            with (
                console.status(f"building {character}")
                if console.is_terminal
                else contextlib.nullcontext()
            ):
                before = warm(
                    character, model, settings=settings, test_image=image, timeout=timeout
                )
        except (NerfCacheError, OSError) as error:  # one failure does not stop the others
            bad_input = isinstance(error, (InvalidInputError, MissingFileError))
            code = max(code, 2 if bad_input else 1)
            typer.echo(f"{character}: failed: {_describe(error)}", err=True)
            continue
        typer.echo(
            f"{character}: already warm"
            if before is CacheStatus.WARM
            else f"{character}: built (it was {before.value})"
        )
    raise typer.Exit(code)


# -- caches --------------------------------------------------------------------------------


@cache_app.command("list")
def list_command(ctx: typer.Context, as_json: Json = False) -> None:
    """List every character's cache: status, size, last use, set-aside generations.

    Status is cold, warm, pti-only (the fit is redone), stale (the portrait or trunc changed
    since the build: it will be set aside and rebuilt), legacy or partial.

    Example: nerfcache cache list --json | jq -r '.[] | select(.status == "stale") | .character'
    """
    settings = _existing_cache_root(_settings(ctx))
    caches = list_caches(settings)
    if as_json:
        _print_json([_info_json(info) for info in caches])
        return
    _table(
        ("character", "status", "cache", "on disk", "last used", "set aside", "in use"),
        [
            (
                info.character,
                info.status.value,
                _bytes(info.size_bytes),
                _bytes(info.total_bytes),
                _when(info.last_used_at),
                str(len(info.generations)),
                _in_use(info),
            )
            for info in caches
        ],
    )
    total = sum(info.total_bytes for info in caches)
    typer.echo(
        f"{_count(len(caches), 'character')} in {settings.cache_root}: {_bytes(total)} of caches,"
        f" {_bytes(_free_bytes(settings.cache_root))} free"
    )


@cache_app.command("show")
def show_command(
    ctx: typer.Context,
    character: Annotated[str, typer.Argument(help="The character.")],
    as_json: Json = False,
) -> None:
    """Show one character's cache: its files, what it was built from, its generations.

    Example: nerfcache cache show ayanami
    """
    info = _cache(_settings(ctx), character).info()
    if as_json:
        _print_json(_info_json(info))
        return
    fingerprint = info.fingerprint
    rows = [
        ("folder", str(info.path)),
        ("status", info.status.value),
        *((name, _bytes(size)) for name, size in info.files.items()),
        ("cache", _bytes(info.size_bytes)),
        ("on disk", f"{_bytes(info.total_bytes)} (with set-aside generations and quarantine)"),
        ("built", _when(info.built_at)),
        ("last used", _when(info.last_used_at)),
        ("portrait", info.image or "-"),
        ("network", info.network or "-"),
        ("trunc", f"{fingerprint.trunc:g}" if fingerprint else "-"),
        ("portrait sha256", fingerprint.image_sha256 if fingerprint else "-"),
        ("network sha256", fingerprint.network_sha256 if fingerprint else "-"),
        ("generations", ", ".join(info.generations) or "-"),
        ("quarantined", str(info.quarantined)),
        ("in use", _in_use(info)),
    ]
    _table(("", character), rows)


@cache_app.command("verify")
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
    settings = _settings(ctx)
    names = characters or [info.character for info in list_caches(settings)]
    results = [_cache(settings, name).verify(model_name=model, fix=fix) for name in names]
    if as_json:
        _print_json(
            [
                {**TypeAdapter(Verification).dump_python(result, mode="json"), "ok": result.ok}
                for result in results
            ]
        )
    else:
        _table(
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


@cache_app.command("clear")
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
    settings = _settings(ctx)
    caches = [_cache(settings, name) for name in characters]
    code = 0
    for cache in caches:
        info = cache.info()
        if not yes:
            busy = " (in use now: it would be left alone)" if info.in_use else ""
            typer.echo(f"would free {_bytes(info.total_bytes)}: {cache.character}{busy}")
            continue
        try:
            freed = cache.clear()
        except NerfCacheError as error:
            typer.echo(f"error: {error}", err=True)
            code = 1
        else:
            typer.echo(f"freed {_bytes(freed)}: {cache.character}")
    if not yes:
        typer.echo("nothing deleted: run again with --yes to delete")
    raise typer.Exit(code)


def _parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if match is None:
        raise typer.BadParameter(f"{text!r} is not a size such as 800M, 50G or 1.5T")
    return int(float(match[1]) * 1024 ** "_kmgt".index(match[2].lower() or "_"))


def _parse_age(text: str) -> timedelta:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text, re.IGNORECASE)
    if match is None:
        raise typer.BadParameter(f"{text!r} is not an age such as 36h, 30d or 2w")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    return timedelta(**{unit[match[2].lower()]: float(match[1])})


@cache_app.command("prune")
def prune_command(
    ctx: typer.Context,
    *,
    max_size: Annotated[
        int | None,
        typer.Option(
            parser=_parse_size,
            metavar="SIZE",
            help="Remove least recently used caches until all take at most SIZE (50G, 800M).",
        ),
    ] = None,
    older_than: Annotated[
        timedelta | None,
        typer.Option(
            parser=_parse_age, metavar="AGE", help="Remove caches unused for AGE (30d, 12h, 2w)."
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
        _existing_cache_root(_settings(ctx)),
        max_bytes=max_size,
        older_than=older_than,
        keep=keep,
        dry_run=not yes,
    )
    if as_json:
        _print_json(
            {
                "dry_run": result.dry_run,
                "total_bytes": result.total_bytes,
                "freed_bytes": result.freed_bytes,
                "removed": [_info_json(info) for info in result.removed],
                "skipped": [_info_json(info) for info in result.skipped],
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
            _bytes(info.total_bytes),
            _when(info.last_used_at),
            what,
        )
        for info, what in outcomes
    ]
    if rows:
        _table(("character", "status", "size", "last used", ""), rows)
    typer.echo(
        f"{'would free' if result.dry_run else 'freed'} {_bytes(result.freed_bytes)} of"
        f" {_bytes(result.total_bytes)}"
        + (": nothing deleted, run again with --yes to delete" if result.dry_run else "")
    )


@cache_app.command("export")
def export_command(
    ctx: typer.Context,
    character: Annotated[str, typer.Argument(help="The character.")],
    destination: Annotated[Path, typer.Argument(help="The archive to write, or - for stdout.")],
    gzip: Annotated[bool, typer.Option("--gzip", help="Compress the archive.")] = False,
) -> None:
    """Write a character's cache to a portable archive (tar, with a sha256 per file).

    Example: nerfcache cache export ayanami - | ssh gpu2 nerfcache cache import - --trust
    """
    if str(destination) == "-" and sys.stdout.isatty():
        raise InvalidInputError(
            "not writing an archive to a terminal: redirect stdout or give a file name",
            field="destination",
        )
    header = export_cache(character, destination, settings=_settings(ctx), compress=gzip)
    size = sum(header.cache.files.values())
    files = _count(len(header.cache.files), "file")
    typer.echo(f"exported {character}: {files}, {_bytes(size)}", err=True)


@cache_app.command("import")
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
    settings = _settings(ctx)
    done = import_cache(source, settings=settings, character=name, trust=True)
    files = done.manifest.files
    line = f"imported {done.character}: {_count(len(files), 'file')}, {_bytes(sum(files.values()))}"
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


# -- the installation ----------------------------------------------------------------------


@app.command("doctor")
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
    checks = diagnose(_settings(ctx), timeout=timeout)
    if as_json:
        _print_json(
            {
                "ok": all(c.level != "error" for c in checks),
                "checks": [dataclasses.asdict(check) for check in checks],
            }
        )
    else:
        _table(("check", "result", "detail"), [(c.name, c.level, c.message) for c in checks])
    if any(check.level == "error" for check in checks):
        raise typer.Exit(1)


@app.command("config")
def config_command(ctx: typer.Context, as_json: Json = False) -> None:
    """Show the effective settings and where each came from: keyword, env, .env or default.

    project_root's default says how it was found: search (the nearest folder at or above the
    working directory holding NeRFFaceSpeech_Code) or cwd (none: the working directory).

    Example: NERFCACHE_TRUNC=0.5 nerfcache config
    """
    settings = _settings(ctx)
    options: _Options = ctx.obj
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
        _print_json(
            {
                field: {"value": value, "source": source, "variable": variable}
                for field, value, source, variable in rows
            }
        )
        return
    _table(
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


@app.command()
def demo(
    folder: Annotated[
        Path | None,
        typer.Option(help="Where to build the demo project (default: a new temporary folder)."),
    ] = None,
    character: Annotated[str, typer.Option(help="The demo character's name.")] = "ayanami",
    scale: Annotated[
        float, typer.Option(min=0, help="Multiply the simulated phase times (0: instant).")
    ] = 1.0,
) -> None:
    """Generate one character twice with the fake NeRF script: cold, then warm.

    Example: nerfcache demo --folder ./nerfcache-demo
    """
    console = Console()
    if folder is not None and folder.exists() and any(folder.iterdir()):
        raise typer.BadParameter(f"{folder} is not empty; pick a new folder", param_hint="--folder")
    with contextlib.ExitStack() as stack:
        if folder is None:  # nothing left behind in /tmp: --folder keeps the project
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nerfcache-demo-")))
        else:
            root = folder
        _demo(console, root, character, scale, kept=folder is not None)


def _demo(console: Console, root: Path, character: str, scale: float, *, kept: bool) -> None:
    project = make_fake_project(root, character=character, real_video=True)
    phases = {name: seconds * scale for name, seconds in DEMO_PHASES.items()}
    settings = project.with_env(**phases)
    console.print(
        "[bold]nerfcache demo[/bold]: the NeRF step is [bold]simulated[/bold] by the fake script"
        f" shipped with nerfcache (PTI {phases['FAKE_NERF_PTI_S']:g} s, 3DMM"
        f" {phases['FAKE_NERF_FIT_S']:g} s, rendering {phases['FAKE_NERF_RENDER_S']:g} s;"
        " the real ones take minutes)."
    )
    table = Table("run", "cache before", "PTI", "3DMM fit", "time")
    results = []
    for run, what in (("first", "cold: PTI and the fit are computed"), ("second", "warm")):
        console.print(f"{run} video of {character!r} ({what})...")
        with _progress_reporter() as on_progress:
            result = generate_video(
                project.audio,
                character,
                root / "videos" / run,
                project.model_name,
                settings=settings,
                check=True,
                on_progress=on_progress,
            )
        results.append(result)
        call = project.calls()[-1]
        table.add_row(
            run,
            result.cache_status_before.value,
            "computed" if call.computed("pti") else "skipped (cached)",
            "computed" if call.computed("fitting") else "skipped (cached)",
            f"{result.duration_s:.2f} s",
        )
    console.print(table)
    cold, warm = (r.duration_s for r in results)
    size = sum(p.stat().st_size for p in results[0].cache_dir.glob("*.pt"))
    console.print(
        f"The warm run took {warm / cold:.0%} of the cold one ({1 - warm / cold:.0%} saved)."
    )
    if kept:
        console.print(f"Cache:  {results[0].cache_dir} ({_bytes(size)}; a real one is 0.3-3 GB)")
        for result in results:
            console.print(f"Video:  {result.video_path}", soft_wrap=True)
    else:
        console.print(
            f"The cache took {_bytes(size)} (a real one, 0.3-3 GB). The demo project was"
            " temporary and is gone: run with --folder DIR to keep it and watch the videos."
        )


def main() -> None:
    """Entry point of the ``nerfcache`` command."""
    app()


# -- helpers -------------------------------------------------------------------------------


def _settings(ctx: typer.Context) -> Settings:
    options: _Options = ctx.obj
    if options.project_root is not None:
        return Settings(project_root=options.project_root)
    return Settings()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


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


@contextlib.contextmanager
def _progress_reporter() -> Iterator[Callable[[ProgressEvent], None]]:
    """A progress bar on stderr when it is a terminal, else one line per stage."""
    console = Console(stderr=True)
    if not console.is_terminal:
        stages: list[str] = []

        def plain(event: ProgressEvent) -> None:
            # A failure is the command's own last word (its "error:" line), not a stage.
            if event.stage != "failed" and (not stages or stages[-1] != event.stage):
                stages.append(event.stage)
                typer.echo(f"{event.stage}: {event.message}", err=True)

        yield plain
        return
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    progress = Progress(*columns, console=console, transient=True)
    task = progress.add_task("starting", total=1.0)

    def bar(event: ProgressEvent) -> None:
        progress.start()  # on the first event: bad inputs fail before any bar shows
        what = "skipped, cached" if event.skipped else event.message
        description = textwrap.shorten(f"{event.stage}: {what}", 50, placeholder=" ...")
        progress.update(task, completed=event.overall, description=description)

    try:
        yield bar
    finally:
        progress.stop()


def _info_json(info: CacheInfo) -> dict[str, Any]:
    data: dict[str, Any] = TypeAdapter(CacheInfo).dump_python(info, mode="json")
    data["in_use"] = info.in_use
    return data


def _print_json(data: object) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table on a terminal; else aligned plain text, without colour or borders."""
    console = Console()
    if console.is_terminal:
        table = Table(*columns)
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))
        console.print(table)
        return
    widths = [
        max([len(column), *(len(row[i]) for row in rows)]) for i, column in enumerate(columns)
    ]
    for line in (columns, *rows):
        typer.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )


def _describe(error: BaseException) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        return f"invalid setting {field} (NERFCACHE_{field.upper()}): {first['msg']}"
    if isinstance(error, OSError) and not isinstance(error, NerfCacheError) and error.filename:
        return f"{error.strerror or error}: {error.filename}"
    return " ".join(str(error).split()) or type(error).__name__


def _when(moment: datetime | None) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M") if moment else "-"


def _in_use(info: CacheInfo) -> str:
    if info.building:
        return "building"
    return f"{info.live_runs} run(s)" if info.live_runs else "no"
