"""How the commands print: plain text off a terminal, tables and a bar on one."""

from __future__ import annotations

import pytest

from nerfcache.cli.output import progress_reporter
from nerfcache.progress import ProgressEvent
from nerfcache.testing import FakeProject
from tests.cli.helpers import build, cli


def test_plain_output_of_every_listing(nerf_project: FakeProject) -> None:
    build(nerf_project)
    for command in (["cache", "show", "ayanami"], ["doctor"], ["config"], ["cache", "verify"]):
        result = cli(nerf_project, *command)
        assert result.exit_code == 0, (command, result.output)
        assert result.stdout.strip()
        assert "│" not in result.stdout
        assert "\x1b[" not in result.stdout  # no colour codes either


def test_a_terminal_gets_tables_and_a_progress_bar(nerf_project: FakeProject) -> None:
    args = ("generate", str(nerf_project.audio), "ayanami", "out", "-m", "ffhq.pkl")
    made = cli(nerf_project, *args, TTY_COMPATIBLE="1")
    assert made.exit_code == 0, made.output
    # A bar (which may show "pti: ..." as it redraws), not a plain line per stage.
    assert "━" in made.stderr
    assert not any(line.startswith("pti:") for line in made.stderr.splitlines())
    listed = cli(nerf_project, "cache", "list", TTY_COMPATIBLE="1")
    assert listed.exit_code == 0, listed.output
    assert "│ ayanami" in listed.stdout
    assert "1 character in " in listed.stdout  # not "1 characters"


def test_the_progress_bar_cuts_the_scripts_text_at_a_word(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("COLUMNS", "160")
    message = "Loading networks from pretrained_networks/ffhq_1024.pkl and the 3DMM basis"
    with progress_reporter() as report:
        report(ProgressEvent("loading", None, 0.1, message, elapsed_s=0.5))
    shown = capsys.readouterr().err
    assert "loading: Loading networks from ..." in shown
    assert "pretrained_" not in shown  # no word cut in the middle
