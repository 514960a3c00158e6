"""Checking the installation: doctor and config."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from nerfcache.cli import app
from nerfcache.testing import FAKE_SCRIPT, FakeProject
from tests.cli.helpers import cli, runner


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
