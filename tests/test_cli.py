from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock
from typer.testing import CliRunner

from nerfcache import MissingFileError, generate_video
from nerfcache.cache import CACHE_FILES
from nerfcache.cli import _parse_size, app
from nerfcache.testing import FAKE_SCRIPT, FakeProject, make_fake_project

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


def test_help_lists_the_demo() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "demo" in result.output


# -- the management commands, against a fake project --


def cli(project: FakeProject, *args: str, **env: str):
    """Run ``nerfcache --project-root {project} *args`` in this process (stdout: not a TTY)."""
    variables = {
        "NERFCACHE_EXTRA_ENV": json.dumps(project.settings.extra_env),
        "TTY_COMPATIBLE": "0",  # plain output, whatever FORCE_COLOR the shell has
        **env,
    }
    return runner.invoke(app, ["--project-root", str(project.root), *args], env=variables)


def build(project: FakeProject, character: str | None = None) -> None:
    """A warm cache, made by a real (fake-script) run."""
    name = character or project.character
    if not project.character_dir(name).exists():
        project.add_character(name)
    out = project.root / "videos" / name
    assert generate_video(project.audio, name, out, "ffhq.pkl", settings=project.settings)


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


def test_debug_lets_the_exception_through(nerf_project: FakeProject) -> None:
    args = ("--debug", "generate", str(nerf_project.audio), "ayanami", "out", "-m", "x.pkl")
    result = cli(nerf_project, *args)
    assert isinstance(result.exception, MissingFileError)


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


@pytest.mark.parametrize(
    "command",
    [["cache", "list"], ["cache", "prune", "--keep", "1", "--yes"]],
    ids=["list", "prune"],
)
def test_a_missing_cache_root_is_a_wrong_setting_not_zero_caches(
    nerf_project: FakeProject, command: list[str]
) -> None:
    root = nerf_project.settings.cache_root
    shutil.rmtree(root)
    result = cli(nerf_project, *command)
    assert result.exit_code == 2
    assert f"cache_root {root} does not exist" in result.stderr
    assert not root.exists()


def test_cache_list_json_and_plain(nerf_project: FakeProject) -> None:
    build(nerf_project)
    nerf_project.add_character("rei")
    result = cli(nerf_project, "cache", "list", "--json")
    assert result.exit_code == 0, result.output
    listed = {entry["character"]: entry for entry in json.loads(result.stdout)}
    assert sorted(listed) == ["ayanami", "rei"]
    ayanami = listed["ayanami"]
    assert ayanami["status"] == "warm"
    assert ayanami["in_use"] is False
    assert sorted(ayanami["files"]) == sorted(CACHE_FILES)
    assert ayanami["size_bytes"] == sum(ayanami["files"].values())
    assert len(ayanami["fingerprint"]["image_sha256"]) == 64
    assert listed["rei"]["status"] == "cold"

    plain = cli(nerf_project, "cache", "list")
    lines = plain.stdout.splitlines()
    assert lines[0].split() == [
        "character", "status", "cache", "on", "disk", "last", "used", "set", "aside", "in", "use"
    ]  # fmt: skip
    assert lines[1].split()[:2] == ["ayanami", "warm"]
    assert "│" not in plain.stdout  # no table borders when not a terminal


def test_cache_show(nerf_project: FakeProject) -> None:
    build(nerf_project)
    result = cli(nerf_project, "cache", "show", "ayanami", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["path"] == str(nerf_project.character_dir())
    assert shown["network"].endswith("ffhq.pkl")

    missing = cli(nerf_project, "cache", "show", "ayanmi")
    assert missing.exit_code == 2
    assert "error: no character 'ayanmi' in cache_root" in missing.stderr
    assert "known: ayanami" in missing.stderr


def test_cache_verify_then_fix(nerf_project: FakeProject) -> None:
    build(nerf_project)
    path = nerf_project.character_dir() / "w_PTI.pt"
    path.write_bytes(b"\0" * path.stat().st_size)  # same size: only reading tells

    found = cli(nerf_project, "cache", "verify", "--json")
    assert found.exit_code == 1
    (report,) = json.loads(found.stdout)
    assert report["ok"] is False
    assert report["status"] == "partial"
    assert [f["subject"] for f in report["findings"] if f["level"] == "error"] == ["w_PTI.pt"]

    fixed = cli(nerf_project, "cache", "verify", "ayanami", "--fix", "--json")
    assert fixed.exit_code == 0, fixed.output
    assert json.loads(fixed.stdout)[0]["action"] == "quarantined"
    assert cli(nerf_project, "cache", "verify").exit_code == 0  # now cold: nothing to check


def test_cache_clear_is_a_dry_run_without_yes(nerf_project: FakeProject) -> None:
    build(nerf_project)
    folder = nerf_project.character_dir()
    dry = cli(nerf_project, "cache", "clear", "ayanami")
    assert dry.exit_code == 0
    assert "would free" in dry.stdout
    assert "nothing deleted" in dry.stdout
    assert (folder / "G_PTI.pt").is_file()

    done = cli(nerf_project, "cache", "clear", "ayanami", "--yes")
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith("freed ")
    assert not (folder / "G_PTI.pt").exists()
    assert (folder / "audio.wav").is_file()
    assert (folder / "images" / "portrait.png").is_file()


def test_cache_prune_summary_and_locks(nerf_project: FakeProject) -> None:
    build(nerf_project, "busy")
    build(nerf_project, "idle")
    lock = FileLock(nerf_project.character_dir("busy") / ".nerfcache" / "runs" / "x-1-a.lock")
    with lock:
        dry = cli(nerf_project, "cache", "prune", "--max-size", "0", "--json")
        assert dry.exit_code == 0, dry.output
        summary = json.loads(dry.stdout)
        assert summary["dry_run"] is True
        assert [c["character"] for c in summary["removed"]] == ["idle"]
        assert [c["character"] for c in summary["skipped"]] == ["busy"]
        assert summary["freed_bytes"] == summary["removed"][0]["total_bytes"]
        assert (nerf_project.character_dir("idle") / "G_PTI.pt").is_file()

        done = cli(nerf_project, "cache", "prune", "--max-size", "0", "--yes")
        assert done.exit_code == 0, done.output
        assert "in use: kept" in done.stdout
    assert not (nerf_project.character_dir("idle") / "G_PTI.pt").exists()
    assert (nerf_project.character_dir("busy") / "G_PTI.pt").is_file()


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
    assert "pti:" not in made.stderr  # a bar, not a line per stage
    listed = cli(nerf_project, "cache", "list", TTY_COMPATIBLE="1")
    assert listed.exit_code == 0, listed.output
    assert "│ ayanami" in listed.stdout
    assert "1 character in " in listed.stdout  # not "1 characters"


def test_cache_clear_of_a_cache_in_use(nerf_project: FakeProject) -> None:
    build(nerf_project)
    with FileLock(nerf_project.character_dir() / ".nerfcache" / "build.lock"):
        dry = cli(nerf_project, "cache", "clear", "ayanami")
        assert "in use now" in dry.stdout
        result = cli(nerf_project, "cache", "clear", "ayanami", "--yes")
    assert result.exit_code == 1
    assert "is in use" in result.stderr
    assert (nerf_project.character_dir() / "G_PTI.pt").is_file()


def test_cache_prune_older_than(nerf_project: FakeProject) -> None:
    build(nerf_project)
    kept = cli(nerf_project, "cache", "prune", "--older-than", "1d", "--yes", "--json")
    assert kept.exit_code == 0, kept.output
    assert json.loads(kept.stdout)["removed"] == []
    gone = cli(nerf_project, "cache", "prune", "--older-than", "0s", "--yes", "--json")
    assert [c["character"] for c in json.loads(gone.stdout)["removed"]] == ["ayanami"]


@pytest.mark.parametrize(
    "args",
    [(), ("--max-size", "12X"), ("--older-than", "soon"), ("--keep", "-1")],
)
def test_cache_prune_bad_input(nerf_project: FakeProject, args) -> None:
    result = cli(nerf_project, "cache", "prune", *args)
    assert result.exit_code == 2


@pytest.mark.parametrize(
    ("text", "size"), [("0", 0), ("800M", 800 << 20), ("1.5g", 3 << 29), ("2TiB", 2 << 40)]
)
def test_sizes(text: str, size: int) -> None:
    assert _parse_size(text) == size


def test_export_and_import(nerf_project: FakeProject, tmp_path: Path) -> None:
    build(nerf_project)
    archive = tmp_path / "ayanami.tar.gz"
    exported = cli(nerf_project, "cache", "export", "ayanami", str(archive), "--gzip")
    assert exported.exit_code == 0, exported.output
    assert "exported ayanami: 4 files" in exported.stderr

    untrusted = cli(nerf_project, "cache", "import", str(archive), "--as", "rei")
    assert untrusted.exit_code == 2
    assert "torch.load" in untrusted.stderr
    assert "--trust" in untrusted.stderr
    assert not nerf_project.character_dir("rei").exists()

    imported = cli(nerf_project, "cache", "import", str(archive), "--as", "rei", "--trust")
    assert imported.exit_code == 0, imported.output
    assert imported.stdout.startswith("imported rei: 4 files")
    assert "no portrait for rei here" in imported.stderr


def test_commands_run_as_real_processes_through_a_pipe(tmp_path: Path) -> None:
    source = make_fake_project(tmp_path / "source")
    build(source)
    target = make_fake_project(tmp_path / "target", character="rei")
    command = [sys.executable, "-m", "nerfcache", "--project-root"]
    with subprocess.Popen(
        [*command, str(source.root), "cache", "export", "ayanami", "-"], stdout=subprocess.PIPE
    ) as export:
        done = subprocess.run(
            [*command, str(target.root), "cache", "import", "-", "--trust"],
            stdin=export.stdout,
            capture_output=True,
            text=True,
            check=False,
        )
    assert export.returncode == 0
    assert done.returncode == 0, done.stderr
    listing = subprocess.run(
        [*command, str(target.root), "cache", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    statuses = {c["character"]: c["status"] for c in json.loads(listing.stdout)}
    assert statuses == {"ayanami": "warm", "rei": "cold"}
    error = subprocess.run(
        [*command, str(target.root), "cache", "show", "ghost"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert error.returncode == 2
    assert error.stderr.startswith("error: no character 'ghost'")
    assert "Traceback" not in error.stderr


# -- doctor and config --


def test_doctor_on_a_sound_project(nerf_project: FakeProject) -> None:
    result = cli(nerf_project, "doctor", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    checks = {check["name"]: check for check in report["checks"]}
    assert checks["cache_script"]["level"] == "ok"
    assert "accepts --cache_dir" in checks["cache_script"]["message"]
    assert checks["models"]["message"] == "ffhq.pkl"
    assert checks["conda_python"]["level"] == "ok"
    assert checks["cache_root"]["level"] == "ok"


def _stock_as_cache_script(project: FakeProject) -> dict[str, str]:
    other = project.root / "other.py"  # a script that is not the cache-capable variant
    shutil.copyfile(FAKE_SCRIPT, other)
    return {"NERFCACHE_CACHE_SCRIPT": str(other)}


def _failing_python(project: FakeProject) -> dict[str, str]:
    python = project.root / "broken-python"
    python.write_text("#!/bin/sh\necho 'libpython missing' >&2\nexit 3\n")
    python.chmod(0o755)
    return {"NERFCACHE_CONDA_PYTHON": str(python)}


def _empty_model_dir(project: FakeProject) -> dict[str, str]:
    (project.settings.model_dir / "ffhq.pkl").unlink()
    return {}


def _cache_root_under_a_file(project: FakeProject) -> dict[str, str]:
    (project.root / "a-file").write_text("")
    return {"NERFCACHE_CACHE_ROOT": str(project.root / "a-file" / "caches")}


NO_SCRIPTS = {"NERFCACHE_SCRIPT": "x.py", "NERFCACHE_CACHE_SCRIPT": "y.py"}
BROKEN: dict[str, tuple[dict[str, str] | Callable[[FakeProject], dict[str, str]], str, str]] = {
    "code dir": ({"NERFCACHE_NERF_CODE_DIR": "nowhere"}, "nerf_code_dir", ""),
    "python missing": ({"NERFCACHE_CONDA_PYTHON": "nope"}, "conda_python", ""),
    "python broken": (_failing_python, "conda_python", "libpython missing"),
    "stock script": (NO_SCRIPTS, "script", ""),
    "cache script": (NO_SCRIPTS, "cache_script", ""),
    "not cache-capable": (_stock_as_cache_script, "cache_script", "does not list --cache_dir"),
    "model dir": ({"NERFCACHE_MODEL_DIR": "nowhere"}, "model_dir", ""),
    "no models": (_empty_model_dir, "models", "no .pkl"),
    "motion guide": (
        {"NERFCACHE_MOTION_GUIDE_IMG_FOLDER": "none"},
        "motion_guide_img_folder",
        "",
    ),
    "registry": ({"NERFCACHE_CHARACTERS": '{"rei": "rei.png"}'}, "characters[rei]", ""),
    "cache root": (_cache_root_under_a_file, "cache_root", "not writable"),
}


@pytest.mark.parametrize(("breaking", "name", "says"), BROKEN.values(), ids=BROKEN.keys())
def test_doctor_reports_each_broken_path(nerf_project: FakeProject, breaking, name, says) -> None:
    env = breaking(nerf_project) if callable(breaking) else breaking
    result = cli(nerf_project, "doctor", "--json", **env)
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is False
    check = {c["name"]: c for c in report["checks"]}[name]
    assert check["level"] == "error"
    assert says in check["message"]
    setting = check["setting"] or "model_dir"
    assert f"NERFCACHE_{setting.upper()}" in check["message"]  # each problem names its setting


def test_config_tells_where_each_value_came_from(nerf_project: FakeProject) -> None:
    Path(".env").write_text("NERFCACHE_KEEP_GENERATIONS=5\nNERFCACHE_TRUNC=0.9\n")  # cwd: tmp_path
    result = cli(nerf_project, "config", "--json", NERFCACHE_TRUNC="0.5")
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)
    assert config["project_root"] == {
        "value": str(nerf_project.root),
        "source": "keyword",
        "variable": "NERFCACHE_PROJECT_ROOT",
    }
    assert (config["trunc"]["value"], config["trunc"]["source"]) == (0.5, "env")
    assert (config["keep_generations"]["value"], config["keep_generations"]["source"]) == (
        5,
        ".env",
    )
    assert config["model_dir"]["source"] == "default"
    assert config["model_dir"]["value"] == str(nerf_project.settings.model_dir)


@pytest.mark.parametrize(
    ("where", "env", "source"),
    [
        ("app", {}, "search"),
        ("app", {"NERFCACHE_PROJECT_ROOT": "/srv/nerf"}, "env"),
        ("", {}, "cwd"),
    ],
)
def test_config_tells_how_project_root_was_found(
    nerf_project: FakeProject, monkeypatch, where: str, env: dict[str, str], source: str
) -> None:
    folder = (nerf_project.root / where) if where else nerf_project.root.parent
    folder.mkdir(exist_ok=True)
    monkeypatch.chdir(folder)
    result = runner.invoke(app, ["config", "--json"], env={"TTY_COMPATIBLE": "0", **env})
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)["project_root"]
    expected = {"search": nerf_project.root, "env": Path("/srv/nerf"), "cwd": folder}[source]
    assert (found["value"], found["source"]) == (str(expected), source)
    table = runner.invoke(app, ["config"], env={"TTY_COMPATIBLE": "0", **env})
    (row,) = [line for line in table.stdout.splitlines() if line.startswith("project_root")]
    assert source in row.split()


def test_an_invalid_setting_is_one_line(nerf_project: FakeProject) -> None:
    result = cli(nerf_project, "cache", "list", NERFCACHE_TRUNC="abc")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: invalid setting trunc (NERFCACHE_TRUNC)")
    assert len(result.stderr.splitlines()) == 1


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
