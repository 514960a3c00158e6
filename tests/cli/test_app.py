"""The app: help, error handling, the entry points."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import nerfcache.cli
from nerfcache import MissingFileError
from nerfcache.cli import app, main
from nerfcache.testing import FakeProject
from tests.cli.helpers import cli, runner


def test_help_lists_the_demo() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "demo" in result.output


@pytest.mark.parametrize(
    "command",
    [
        ["generate"], ["warm"], ["doctor"], ["config"], ["demo"],
        ["cache", "list"], ["cache", "show"], ["cache", "verify"], ["cache", "clear"],
        ["cache", "prune"], ["cache", "export"], ["cache", "import"],
    ],
)  # fmt: skip
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output


def test_debug_lets_the_exception_through(nerf_project: FakeProject) -> None:
    args = ("--debug", "generate", str(nerf_project.audio), "ayanami", "out", "-m", "x.pkl")
    result = cli(nerf_project, *args)
    assert isinstance(result.exception, MissingFileError)


def test_an_invalid_setting_is_one_line(nerf_project: FakeProject) -> None:
    result = cli(nerf_project, "cache", "list", NERFCACHE_TRUNC="abc")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: invalid setting trunc (NERFCACHE_TRUNC)")
    assert len(result.stderr.splitlines()) == 1


def test_a_reader_that_leaves_early_gets_no_broken_pipe_error(tmp_path: Path) -> None:
    # `nerfcache config | head -1`: a pipe whose reader is gone (closed before the command runs,
    # so that every write meets it closed).
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "nerfcache", "--project-root", str(tmp_path), "config"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        os.close(write)
    assert "Broken pipe" not in done.stderr
    assert "error" not in done.stderr.lower()


def test_the_entry_points_run_the_app() -> None:
    (script,) = entry_points(group="console_scripts", name="nerfcache")
    assert script.load() is main
    done = subprocess.run(
        [sys.executable, "-m", "nerfcache", "cache", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert all(name in done.stdout for name in ("list", "prune", "export", "import"))


def test_the_cli_uses_no_private_name_of_another_module() -> None:
    package = Path(nerfcache.cli.__file__).parent
    private = [
        f"{path.name}: {node.module}.{alias.name}"
        for path in sorted(package.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nerfcache")
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert private == []
