"""The ``nerfcache`` command: make videos, warm and manage caches, check the installation.

Every listing takes ``--json``; tables are plain text when stdout is not a terminal. An error is
one line on stderr, exit code 2 for bad input and 1 for a failed run, unless ``--debug``.

The commands live by concern: ``generate`` (generate, warm, demo), ``caches`` (the ``cache``
group), ``setup`` (doctor, config); ``options`` holds what they share and ``output`` how they
print. This module makes the app, turns errors into one line, and registers every command.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Annotated, Any

import typer
import typer.core
from loguru import logger
from pydantic import ValidationError

from nerfcache.cli import caches, generate, setup
from nerfcache.cli.options import Options, ProjectRoot
from nerfcache.cli.output import describe
from nerfcache.errors import InvalidInputError, MissingFileError, NerfCacheError

__all__ = ["app", "main"]


class _Group(typer.core.TyperGroup):
    """Turns nerfcache's errors into one line and an exit code (a traceback with --debug)."""

    def invoke(self, ctx: Any) -> Any:  # typer's Context class is private
        try:
            return super().invoke(ctx)
        except (NerfCacheError, ValidationError, OSError) as error:
            if (isinstance(ctx.obj, Options) and ctx.obj.debug) or isinstance(
                error, BrokenPipeError
            ):
                raise  # a closed pipe (`nerfcache config | head`): click ends quietly
            typer.echo(f"error: {describe(error)}", err=True)
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
    ctx.obj = Options(project_root, debug)


# In the order `nerfcache --help` lists them.
app.command("generate")(generate.generate_command)
app.command("warm")(generate.warm_command)
app.command("doctor")(setup.doctor_command)
app.command("config")(setup.config_command)
app.command("demo")(generate.demo_command)
cache_app.command("list")(caches.list_command)
cache_app.command("show")(caches.show_command)
cache_app.command("verify")(caches.verify_command)
cache_app.command("clear")(caches.clear_command)
cache_app.command("prune")(caches.prune_command)
cache_app.command("export")(caches.export_command)
cache_app.command("import")(caches.import_command)


def main() -> None:
    """Entry point of the ``nerfcache`` command."""
    app()
