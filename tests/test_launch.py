"""find_script and plan_launch: which script, with which argv, environment and working directory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TypedDict

import pytest

from nerfcache import ConfigurationError, Settings
from nerfcache.launch import find_script, is_shell_safe, link_home, plan_launch, staged_name
from nerfcache.testing import FakeProject, make_fake_project

STOCK = "main_NeRFFaceSpeech_audio_driven_w_given_poses.py"
CACHE = "main_NeRFFaceSpeech_audio_driven_w_given_poses_cache.py"


@pytest.fixture
def project(tmp_path: Path) -> FakeProject:
    return make_fake_project(tmp_path / "p")


class PlanArgs(TypedDict):
    outdir: Path
    audio: Path
    image: Path
    network: Path


def _plan_args(project: FakeProject, tmp_path: Path) -> PlanArgs:
    return {
        "outdir": tmp_path / "out",
        "audio": project.audio,
        "image": project.character_dir() / "images" / "portrait.png",
        "network": project.settings.model_dir / project.model_name,
    }


# --- find_script --------------------------------------------------------------------------------


def test_the_cache_capable_script_is_preferred(project: FakeProject) -> None:
    script, cache_capable = find_script(project.settings)
    assert script == project.settings.cache_script
    assert script.name == CACHE
    assert cache_capable is True


def test_the_stock_script_is_the_fallback(project: FakeProject) -> None:
    project.use_stock_script_only()
    script, cache_capable = find_script(project.settings)
    assert script == project.settings.script
    assert script.name == STOCK
    assert cache_capable is False


def _remove_code_dir(settings: Settings) -> Path:
    shutil.rmtree(settings.nerf_code_dir)
    return settings.nerf_code_dir


def _remove_conda_python(settings: Settings) -> Path:
    settings.conda_python.unlink()
    return settings.conda_python


def _remove_both_scripts(settings: Settings) -> Path:
    settings.cache_script.unlink()
    settings.script.unlink()
    return settings.script


@pytest.mark.parametrize(
    ("setting", "remove"),
    [
        ("nerf_code_dir", _remove_code_dir),
        ("conda_python", _remove_conda_python),
        ("script", _remove_both_scripts),
    ],
)
def test_a_missing_path_names_the_setting_and_its_variable(project, setting, remove) -> None:
    missing = remove(project.settings)
    with pytest.raises(ConfigurationError) as excinfo:
        find_script(project.settings)
    error = excinfo.value
    assert isinstance(error, FileNotFoundError)
    assert error.setting == setting
    assert error.path == missing
    message = str(error)
    assert str(missing) in message
    assert setting in message
    assert f"NERFCACHE_{setting.upper()}" in message


def test_a_missing_script_error_also_names_the_cache_capable_script(project) -> None:
    _remove_both_scripts(project.settings)
    with pytest.raises(ConfigurationError, match="cache_script") as excinfo:
        find_script(project.settings)
    assert str(project.settings.cache_script) in str(excinfo.value)


def test_a_folder_where_the_conda_python_should_be_is_not_accepted(project) -> None:
    python = project.settings.conda_python
    python.unlink()
    python.mkdir()
    with pytest.raises(ConfigurationError) as excinfo:
        find_script(project.settings)
    assert excinfo.value.setting == "conda_python"


def test_settings_pointing_elsewhere_are_what_is_checked(project, tmp_path) -> None:
    elsewhere = tmp_path / "nowhere" / "python"
    settings = Settings(project_root=project.root, conda_python=elsewhere)
    with pytest.raises(ConfigurationError, match="NERFCACHE_CONDA_PYTHON") as excinfo:
        find_script(settings)
    assert excinfo.value.path == elsewhere


# --- plan_launch: argv and cwd ------------------------------------------------------------------


def test_argv_for_the_cache_capable_script(project, tmp_path) -> None:
    settings = project.settings
    args = _plan_args(project, tmp_path)
    plan = plan_launch(settings, script=settings.cache_script, cache_capable=True, **args)
    assert plan.argv == (
        str(settings.conda_python),
        str(settings.cache_script),
        f"--outdir={args['outdir']}",
        "--trunc=0.7",
        f"--network={args['network']}",
        f"--test_data={args['audio']}",
        f"--test_img={args['image']}",
        "--motion_guide_img_folder=frames",
        f"--cache_dir={args['outdir']}",
    )
    assert plan.script == settings.cache_script
    assert plan.cache_capable is True


def test_argv_for_the_stock_script_has_no_cache_dir(project, tmp_path) -> None:
    # The stock script is a click program: an unknown --cache_dir is "No such option", exit 2.
    project.use_stock_script_only()
    settings = project.settings
    script, cache_capable = find_script(settings)
    args = _plan_args(project, tmp_path)
    plan = plan_launch(settings, script=script, cache_capable=cache_capable, **args)
    assert plan.argv == (
        str(settings.conda_python),
        str(settings.script),
        f"--outdir={args['outdir']}",
        "--trunc=0.7",
        f"--network={args['network']}",
        f"--test_data={args['audio']}",
        f"--test_img={args['image']}",
        "--motion_guide_img_folder=frames",
    )
    assert not any(arg.startswith("--cache_dir") for arg in plan.argv)
    assert plan.script == settings.script
    assert plan.cache_capable is False


def test_the_network_is_given_as_an_absolute_path(project, tmp_path) -> None:
    # The script runs in nerf_code_dir, so a relative path would point somewhere else.
    settings = project.settings
    plan = plan_launch(
        settings, script=settings.cache_script, cache_capable=True, **_plan_args(project, tmp_path)
    )
    (network,) = [a.removeprefix("--network=") for a in plan.argv if a.startswith("--network=")]
    assert Path(network).is_absolute()
    assert Path(network) == settings.model_dir / project.model_name
    assert Path(network).is_file()


@pytest.mark.parametrize("trunc", [0.5, 1.0])
def test_trunc_comes_from_the_settings(project, tmp_path, trunc) -> None:
    settings = Settings(project_root=project.root, trunc=trunc)
    plan = plan_launch(
        settings, script=settings.cache_script, cache_capable=True, **_plan_args(project, tmp_path)
    )
    assert f"--trunc={trunc}" in plan.argv
    assert [a for a in plan.argv if a.startswith("--trunc=")] == [f"--trunc={trunc}"]


def test_the_working_directory_is_the_code_folder(project, tmp_path) -> None:
    settings = project.settings
    plan = plan_launch(
        settings, script=settings.cache_script, cache_capable=True, **_plan_args(project, tmp_path)
    )
    assert plan.cwd == settings.nerf_code_dir
    # What the real scripts open relative to it is there.
    assert (plan.cwd / "pretrained_networks" / "seg.pth").is_file()
    assert (plan.cwd / "frames").is_dir()


def test_a_run_s_private_view_is_its_working_directory_and_pythonpath(project, tmp_path) -> None:
    settings = project.settings
    view = tmp_path / "runs" / "r1" / "workdir"
    plan = plan_launch(
        settings,
        script=settings.cache_script,
        cache_capable=True,
        cwd=view,
        environ=INHERITED,
        **_plan_args(project, tmp_path),
    )
    assert plan.cwd == view
    # The real code folder on PYTHONPATH would bring back what every run shares.
    assert plan.env["PYTHONPATH"] == str(view)


# --- plan_launch: environment -------------------------------------------------------------------


INHERITED = {
    "PATH": os.pathsep.join(["/usr/local/bin", "/usr/bin"]),
    "PYTHONPATH": "/somewhere/else",
    "PYTHONUNBUFFERED": "0",
    "HOME": "/home/someone",
    "TORCH_HOME": "/inherited/torch",
}


def test_the_environment_runs_the_conda_env_with_the_code_on_pythonpath(project, tmp_path) -> None:
    settings = project.settings
    plan = plan_launch(
        settings,
        script=settings.cache_script,
        cache_capable=True,
        environ=INHERITED,
        **_plan_args(project, tmp_path),
    )
    path = plan.env["PATH"].split(os.pathsep)
    assert path[0] == str(settings.conda_env / "bin")
    assert path[1:] == ["/usr/local/bin", "/usr/bin"]
    assert plan.env["PYTHONPATH"] == str(settings.nerf_code_dir)
    assert plan.env["PYTHONUNBUFFERED"] == "1"
    assert plan.env["HOME"] == "/home/someone"
    # The conda "python" is what PATH finds first.
    assert shutil.which("python", path=plan.env["PATH"]) == str(settings.conda_python)


def test_without_an_inherited_path_only_the_conda_env_is_on_path(project, tmp_path) -> None:
    settings = project.settings
    plan = plan_launch(
        settings,
        script=settings.cache_script,
        cache_capable=True,
        environ={"HOME": "/home/someone"},
        **_plan_args(project, tmp_path),
    )
    assert plan.env["PATH"] == str(settings.conda_env / "bin")


def test_extra_env_is_added_and_wins_over_the_inherited_environment(project, tmp_path) -> None:
    settings = project.with_env(TORCH_HOME="/models/torch", FAKE_NERF_PTI_S=0.5)
    plan = plan_launch(
        settings,
        script=settings.cache_script,
        cache_capable=True,
        environ=INHERITED,
        **_plan_args(project, tmp_path),
    )
    assert plan.env["TORCH_HOME"] == "/models/torch"
    assert plan.env["FAKE_NERF_PTI_S"] == "0.5"
    assert plan.env["FAKE_NERF_LOG"] == str(project.log)
    assert INHERITED["TORCH_HOME"] == "/inherited/torch"  # the caller's mapping is left alone


@pytest.mark.parametrize(("gpu", "run_id"), [(None, None), ("2", "20261130T000000-1-abcdef")])
def test_the_gpu_and_the_run_are_named_in_the_environment(project, tmp_path, gpu, run_id) -> None:
    settings = project.settings
    inherited = {**INHERITED, "CUDA_VISIBLE_DEVICES": "0,1"}
    plan = plan_launch(
        settings,
        script=settings.cache_script,
        cache_capable=True,
        environ=inherited,
        gpu=gpu,
        run_id=run_id,
        **_plan_args(project, tmp_path),
    )
    assert plan.env["CUDA_VISIBLE_DEVICES"] == (gpu or "0,1")
    assert plan.env.get("NERFCACHE_RUN") == run_id


def test_the_process_environment_is_inherited_by_default(project, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NERFCACHE_TEST_INHERITED", "yes")
    settings = project.settings
    plan = plan_launch(
        settings, script=settings.cache_script, cache_capable=True, **_plan_args(project, tmp_path)
    )
    assert plan.env["NERFCACHE_TEST_INHERITED"] == "yes"
    assert not os.environ["PATH"].startswith(str(settings.conda_env))  # os.environ is untouched


# --- the names and paths the script is given ----------------------------------------------------


@pytest.mark.parametrize(
    ("source", "stem", "name"),
    [
        ("speech.wav", "audio", "audio.wav"),
        ("SPEECH.WAV", "audio", "audio.wav"),
        ("a b;touch PWNED;.wav", "audio", "audio.wav"),
        ("clip.mp3", "audio", "audio.mp3"),
        ("no-suffix", "audio", "audio"),
        ("clip.$(reboot)", "audio", "audio"),
        ("clip.wav;rm", "audio", "audio"),
        ("portrait.PNG", "portrait", "portrait.png"),
        ("绫波丽.jpg", "portrait", "portrait.jpg"),
        ("x.averyveryverylongsuffix", "portrait", "portrait"),
    ],
)
def test_inputs_get_plain_names_in_the_staging_dir(source: str, stem: str, name: str) -> None:
    # The scripts paste --test_data into a shell command unquoted.
    assert staged_name(Path("/uploads") / source, stem) == name
    assert is_shell_safe(name)


@pytest.mark.parametrize(
    ("path", "safe"),
    [
        ("/srv/app/assets/charactor/ayanami/.nerfcache/runs/20261130T000000-1-abcdef", True),
        ("/tmp/nerfcache-x_1/run", True),
        ("/my project/assets", False),
        ("/srv/a;touch PWNED;", False),
        ("/srv/$HOME", False),
        ("/srv/绫波丽", False),
        ("/srv/it's", False),
        ("", False),
    ],
)
def test_a_path_is_given_to_the_script_as_it_is_only_where_the_shell_takes_it_whole(
    path: str, safe: bool
) -> None:
    assert is_shell_safe(path) is safe


@pytest.mark.parametrize(
    ("temp_dir", "home"),
    [("/tmp", "/tmp"), ("/var/tmp/user_1", "/var/tmp/user_1"), ("/home/me/my temp", "/tmp")],
)
def test_shell_safe_links_are_made_in_a_shell_safe_temporary_folder(temp_dir, home) -> None:
    assert link_home(Path(temp_dir)) == Path(home)
