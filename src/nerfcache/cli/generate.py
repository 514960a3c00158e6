"""Making videos: ``generate``, ``warm`` (build caches ahead of requests) and ``demo``."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from nerfcache.cache import CacheStatus
from nerfcache.cli.options import Model, settings_of
from nerfcache.cli.output import describe, jsonable, print_json, progress_reporter
from nerfcache.doctor import format_bytes
from nerfcache.errors import InvalidInputError, MissingFileError, NerfCacheError
from nerfcache.generate import generate_video, warm
from nerfcache.testing import make_fake_project

__all__ = ["DEMO_PHASES", "demo_command", "generate_command", "warm_command"]

# The seed's proportions: PTI 10-20 min, 3DMM up to minutes, rendering a few minutes.
DEMO_PHASES = {"FAKE_NERF_PTI_S": 2.0, "FAKE_NERF_FIT_S": 0.4, "FAKE_NERF_RENDER_S": 0.6}


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
    settings = settings_of(ctx)
    with progress_reporter() as on_progress:
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
        print_json(jsonable(result))
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
    settings = settings_of(ctx)
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
            typer.echo(f"{character}: failed: {describe(error)}", err=True)
            continue
        typer.echo(
            f"{character}: already warm"
            if before is CacheStatus.WARM
            else f"{character}: built (it was {before.value})"
        )
    raise typer.Exit(code)


def demo_command(
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
        with progress_reporter() as on_progress:
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
        console.print(
            f"Cache:  {results[0].cache_dir} ({format_bytes(size)}; a real one is 0.3-3 GB)"
        )
        for result in results:
            console.print(f"Video:  {result.video_path}", soft_wrap=True)
    else:
        console.print(
            f"The cache took {format_bytes(size)} (a real one, 0.3-3 GB). The demo project was"
            " temporary and is gone: run with --folder DIR to keep it and watch the videos."
        )
