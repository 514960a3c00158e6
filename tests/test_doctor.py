"""diagnose: what an installation check finds, and which setting each problem names."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from nerfcache import Settings
from nerfcache.doctor import Check, diagnose
from nerfcache.testing import FakeProject, make_fake_project


@pytest.fixture
def project(tmp_path: Path) -> FakeProject:
    return make_fake_project(tmp_path / "p")


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def test_a_sound_project_has_no_error(project: FakeProject) -> None:
    checks = diagnose(settings=project.settings)
    assert [c for c in checks if c.level == "error"] == []
    found = _by_name(checks)
    assert found["cache_script"].message.endswith("accepts --cache_dir")
    assert found["models"].message == project.model_name


def _remove_conda_python(project: FakeProject) -> None:
    project.settings.conda_python.unlink()


def _remove_scripts(project: FakeProject) -> None:
    project.settings.script.unlink()
    project.settings.cache_script.unlink()


def _remove_model_dir(project: FakeProject) -> None:
    shutil.rmtree(project.settings.model_dir)


BREAKING: dict[str, tuple[Callable[[FakeProject], None], list[str]]] = {
    "conda python": (_remove_conda_python, ["conda_python"]),
    "scripts": (_remove_scripts, ["script", "cache_script"]),
    "model dir": (_remove_model_dir, ["model_dir"]),
}


@pytest.mark.parametrize(("breaking", "settings"), BREAKING.values(), ids=BREAKING.keys())
def test_a_missing_part_is_an_error_naming_its_setting(
    project: FakeProject, breaking: Callable[[FakeProject], None], settings: list[str]
) -> None:
    breaking(project)
    errors = [c for c in diagnose(settings=project.settings) if c.level == "error"]
    assert [c.setting for c in errors] == settings
    for check in errors:
        assert check.name == check.setting
        assert check.message.endswith(f"; set {check.setting} (NERFCACHE_{check.name.upper()})")


def test_a_conda_python_that_hangs_is_given_up_on(project: FakeProject) -> None:
    python = project.root / "hanging-python"
    python.write_text("#!/bin/sh\nexec sleep 30\n")  # exec: the probe's kill reaches the sleep
    python.chmod(0o755)
    settings = project.settings.model_copy(update={"conda_python": python})
    found = _by_name(diagnose(settings=settings, timeout=0.2))
    assert found["conda_python"].level == "error"
    assert "no answer within 0.2 s" in found["conda_python"].message
    assert found["cache_script"].level == "warning"  # not probed once the Python fails


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ("    creat_final_video(outdir_valid_final, test_data, outdir)\n", "fake video"),
        (
            "    creat_final_video(outdir_valid_final, test_data, outdir, watermark=False)\n",
            "the web app's copy: no caption",
        ),
    ],
    ids=["upstream", "web app"],
)
def test_doctor_says_which_stock_script_it_found(
    project: FakeProject, line: str, said: str
) -> None:
    script = project.settings.script
    script.write_text(script.read_text() + line)
    message = _by_name(diagnose(settings=project.settings))["script"].message
    assert said in message
    assert message.startswith(f"the stock script {script} (")


def test_a_folder_that_is_no_project_is_said_first(tmp_path: Path) -> None:
    checks = diagnose(settings=Settings(project_root=tmp_path), timeout=5)
    first_error = next(c for c in checks if c.level == "error")
    assert first_error.name == "project_root"
    assert "does not look like a NeRFFaceSpeech project" in first_error.message
