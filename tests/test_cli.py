from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from nerfcache.cli import app

runner = CliRunner()


def test_demo_runs_cold_then_warm(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--folder", str(folder), "--scale", "0"])
    assert result.exit_code == 0, result.output
    assert "simulated" in result.output
    first, second = (
        line for line in result.output.splitlines() if line.startswith(("│ first", "│ second"))
    )
    assert "cold" in first and first.count("computed") == 2
    assert "warm" in second and second.count("skipped (cached)") == 2
    for run in ("first", "second"):
        assert (folder / "videos" / run / "output_NeRFFaceSpeech.mp4").stat().st_size > 0


def test_demo_refuses_a_folder_in_use(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    result = runner.invoke(app, ["demo", "--folder", str(tmp_path)])
    assert result.exit_code == 2
    assert "not empty" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_command_runs_as_a_real_process(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nerfcache",
            "demo",
            "--folder",
            str(tmp_path / "d"),
            "--scale",
            "0",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "warm" in done.stdout


def test_help_lists_the_demo() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "demo" in result.output
