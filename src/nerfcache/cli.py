"""The ``nerfcache`` command."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from loguru import logger
from rich.console import Console
from rich.table import Table

from nerfcache.generate import generate_video
from nerfcache.testing import make_fake_project

__all__ = ["app", "main"]

app = typer.Typer(
    help="Run NeRFFaceSpeech with a per-character cache of its PTI and 3DMM work.",
    no_args_is_help=True,
    add_completion=False,
)

# The seed's proportions: PTI 10-20 min, 3DMM up to minutes, rendering a few minutes.
DEMO_PHASES = {"FAKE_NERF_PTI_S": 2.0, "FAKE_NERF_FIT_S": 0.4, "FAKE_NERF_RENDER_S": 0.6}


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every step.")] = False,
) -> None:
    logger.remove()
    logger.enable("nerfcache")
    logger.add(sys.stderr, level="INFO" if verbose else "WARNING", format="{level}: {message}")


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
    root = folder or Path(tempfile.mkdtemp(prefix="nerfcache-demo-"))
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
    for run in ("first", "second"):
        result = generate_video(
            project.audio,
            character,
            root / "videos" / run,
            project.model_name,
            settings=settings,
            check=True,
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
    console.print(f"Cache:  {results[0].cache_dir} ({size / 1024:.0f} KiB; a real one is 0.3-3 GB)")
    for result in results:
        console.print(f"Video:  {result.video_path}", soft_wrap=True)
    if folder is None:
        console.print(f"Demo project kept in {root}; remove it with: rm -r {root}", soft_wrap=True)


def main() -> None:
    """Entry point of the ``nerfcache`` command."""
    app()
