"""Making videos: generate, warm, demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from nerfcache.cli import app
from nerfcache.testing import FakeProject
from tests.cli.helpers import cli, runner


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


def test_the_demo_as_a_real_process_shows_its_steps_and_leaves_nothing(tmp_path: Path) -> None:
    system_tmp = tmp_path / "tmp"
    system_tmp.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "nerfcache", "demo", "--scale", "0"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "TMPDIR": str(system_tmp)},
    )
    assert done.returncode == 0, done.stderr
    assert "warm" in done.stdout
    # What it is doing, while it does it: each run and its stages.
    assert "first video of 'ayanami' (cold" in done.stdout
    assert "pti: " in done.stderr and "rendering: " in done.stderr
    assert list(system_tmp.iterdir()) == []  # its temporary project is gone
    assert "--folder DIR to keep it" in done.stdout


def test_generate_cold_then_warm(nerf_project: FakeProject, tmp_path: Path) -> None:
    args = ("generate", str(nerf_project.audio), "ayanami", str(tmp_path / "out"), "-m", "ffhq.pkl")
    first = cli(nerf_project, *args)
    assert first.exit_code == 0, first.output
    assert f"video: {tmp_path / 'out' / 'output_NeRFFaceSpeech.mp4'}" in first.stdout
    assert "cold before; built G_PTI.pt, w_PTI.pt, bg_PTI.pt, fitted_coeffs.pt" in first.stdout
    # Not a terminal: one plain line per stage on stderr, no bar.
    stages = [line.split(":")[0] for line in first.stderr.splitlines()]
    assert stages == ["loading", "pti", "fitting", "rendering", "encoding", "done"]

    second = cli(nerf_project, *args, "--json")
    assert second.exit_code == 0, second.output
    result = json.loads(second.stdout)
    assert result["ok"] is True
    assert result["cache_hit"] is True
    assert result["cache_status_before"] == "warm"
    assert nerf_project.calls()[-1].loaded("pti")


def test_generate_bad_input_is_one_line_and_exit_2(nerf_project: FakeProject) -> None:
    result = cli(nerf_project, "generate", str(nerf_project.audio), "ayanami", "out", "-m", "x.pkl")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: model 'x.pkl' not found in model_dir")
    assert len(result.stderr.splitlines()) == 1
    assert nerf_project.calls() == []


def test_generate_failed_run_is_exit_1(nerf_project: FakeProject) -> None:
    extra = {**nerf_project.settings.extra_env, "FAKE_NERF_FAIL_AT": "rendering"}
    args = ("generate", str(nerf_project.audio), "ayanami", "out", "--model", "ffhq.pkl")
    result = runner.invoke(
        app,
        ["--project-root", str(nerf_project.root), *args],
        env={"NERFCACHE_EXTRA_ENV": json.dumps(extra)},
    )
    assert result.exit_code == 1
    assert "error: no video: the script made no video (exit code 1)" in result.stderr
    assert "rendering" in result.stderr  # the last lines of the script's output
    assert "failed:" not in result.stderr  # said once, as the error


def test_warm_builds_once_and_reports_each_character(nerf_project: FakeProject) -> None:
    result = cli(nerf_project, "warm", "ayanami", "ghost", "--model", "ffhq.pkl")
    assert result.exit_code == 2  # ghost has no portrait
    assert "ayanami: built (it was cold)" in result.stdout
    assert "ghost: failed: no test image for character 'ghost'" in result.stderr
    again = cli(nerf_project, "warm", "ayanami", "--model", "ffhq.pkl")
    assert again.exit_code == 0
    assert again.stdout.strip() == "ayanami: already warm"
    assert len(nerf_project.calls()) == 1
