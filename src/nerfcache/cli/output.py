"""How the commands print: tables, JSON, the progress reporter and the small formats they share.

Tables are rich on a terminal and aligned plain text otherwise (a pipe, a file, a cron job), so
that scripts can read them; JSON is one document on stdout.
"""

from __future__ import annotations

import contextlib
import json
import textwrap
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

import typer
from pydantic import TypeAdapter, ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from nerfcache.cache import CacheInfo
from nerfcache.errors import NerfCacheError
from nerfcache.progress import ProgressEvent

__all__ = [
    "count",
    "describe",
    "in_use",
    "info_json",
    "jsonable",
    "print_json",
    "progress_reporter",
    "table",
    "when",
]


# One adapter per type, made on first use: building one costs milliseconds, using it
# microseconds, and `cache list --json` dumps a row per character (10,000 took 19 s with an
# adapter per row).
_ADAPTERS: dict[type[Any], TypeAdapter[Any]] = {}


def jsonable(value: object) -> Any:
    """``value`` (a dataclass of the library) as JSON-ready data."""
    kind = type(value)
    adapter = _ADAPTERS.get(kind)
    if adapter is None:
        adapter = _ADAPTERS[kind] = TypeAdapter(kind)
    return adapter.dump_python(value, mode="json")


def info_json(info: CacheInfo) -> dict[str, Any]:
    """A listing's row as JSON: the dataclass's fields and ``in_use``."""
    data: dict[str, Any] = jsonable(info)
    data["in_use"] = info.in_use
    return data


def print_json(data: object) -> None:
    """Print ``data`` as one JSON document on stdout."""
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table on a terminal; else aligned plain text, without colour or borders."""
    console = Console()
    if console.is_terminal:
        shown = Table(*columns)
        for row in rows:
            shown.add_row(*(Text(cell) for cell in row))
        console.print(shown)
        return
    widths = [
        max([len(column), *(len(row[i]) for row in rows)]) for i, column in enumerate(columns)
    ]
    for line in (columns, *rows):
        typer.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )


@contextlib.contextmanager
def progress_reporter() -> Iterator[Callable[[ProgressEvent], None]]:
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
        # The script's text is cut at a word, not mid-word, to fit beside the bar.
        description = textwrap.shorten(f"{event.stage}: {what}", 50, placeholder=" ...")
        progress.update(task, completed=event.overall, description=description)

    try:
        yield bar
    finally:
        progress.stop()


def describe(error: BaseException) -> str:
    """``error`` as the one line after ``error:``, saying what to fix."""
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        return f"invalid setting {field} (NERFCACHE_{field.upper()}): {first['msg']}"
    if isinstance(error, OSError) and not isinstance(error, NerfCacheError) and error.filename:
        return f"{error.strerror or error}: {error.filename}"
    return " ".join(str(error).split()) or type(error).__name__


def count(n: int, noun: str) -> str:
    """``1 file``, ``2 files``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def when(moment: datetime | None) -> str:
    """A moment in local time to the minute, or ``-``."""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M") if moment else "-"


def in_use(info: CacheInfo) -> str:
    """What holds a cache: ``building``, ``2 run(s)`` or ``no``."""
    if info.building:
        return "building"
    return f"{info.live_runs} run(s)" if info.live_runs else "no"
