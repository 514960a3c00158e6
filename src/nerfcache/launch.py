"""LaunchPlan: which NeRF script to run, with which argv, environment and working directory.

Every decision about the command is here: which script, the options and their paths, the names
the inputs get in the staging dir, and whether the script is given the staging dir itself or a
shell-safe link to it. Pure decisions: nothing here does I/O beyond ``stat``; ``generate`` makes
the files and the link these functions name.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path

from nerfcache.config import Settings
from nerfcache.errors import ConfigurationError

__all__ = [
    "AUDIO_STEM",
    "PORTRAIT_STEM",
    "RUN_VARIABLE",
    "LaunchPlan",
    "find_script",
    "is_shell_safe",
    "link_home",
    "plan_launch",
    "staged_name",
]

RUN_VARIABLE = "NERFCACHE_RUN"
"""Set to the run id in the script's environment, which its children inherit: what a dead
launcher left running can be found and stopped by the next run of the character."""
AUDIO_STEM = "audio"
PORTRAIT_STEM = "portrait"
"""The names (before their suffix) of the run's copies of the audio and the portrait."""
# What the scripts' unquoted shell mux can take without splitting or running anything.
_SHELL_SAFE = re.compile(r"[A-Za-z0-9_./-]+")
_PLAIN_SUFFIX = re.compile(r"\.[a-z0-9]{1,10}")
_LAST_RESORT_TEMP = Path("/tmp")  # noqa: S108 - only its name is used, for a private mkdtemp


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    """Everything needed to start one NeRF run."""

    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str] = dataclasses.field(repr=False)
    script: Path
    cache_capable: bool


def find_script(settings: Settings) -> tuple[Path, bool]:
    """Return the script to run and whether it is the cache-capable one.

    The cache-capable script is preferred; the stock one is the fallback. Also checks that the
    conda Python and the NeRF code folder exist, naming the setting to fix when they do not.
    """
    _require(settings.nerf_code_dir, "nerf_code_dir", "the NeRFFaceSpeech code folder", is_dir=True)
    _require(settings.conda_python, "conda_python", "the NeRFFaceSpeech conda Python")
    if not os.access(settings.conda_python, os.X_OK):
        raise ConfigurationError(
            f"the conda Python {settings.conda_python} is not executable: set conda_python"
            " (environment variable NERFCACHE_CONDA_PYTHON) to the environment's bin/python",
            setting="conda_python",
            path=settings.conda_python,
        )
    if settings.cache_script.is_file():
        return settings.cache_script, True
    _require(
        settings.script,
        "script",
        f"neither the cache-capable script ({settings.cache_script}, setting cache_script) nor"
        " the stock script",
    )
    return settings.script, False


def plan_launch(
    settings: Settings,
    *,
    script: Path,
    cache_capable: bool,
    outdir: Path,
    audio: Path,
    image: Path,
    network: Path,
    cwd: Path | None = None,
    gpu: str | None = None,
    run_id: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> LaunchPlan:
    """Build the command for one run; ``outdir`` doubles as the cache dir where supported.

    ``cwd`` is the run's working directory, the code folder as the script sees it (a private
    view of ``nerf_code_dir`` made by ``nerfcache.workdir``); None means the code folder itself.

    ``gpu`` sets ``CUDA_VISIBLE_DEVICES`` (a GPU slot's card); None leaves it as inherited.

    The stock script rejects unknown options (click: "No such option", exit 2), so it gets no
    ``--cache_dir``: it caches inside ``--outdir`` instead, which the caller seeds.
    """
    argv = [
        str(settings.conda_python),
        str(script),
        f"--outdir={outdir}",
        f"--trunc={settings.trunc}",
        f"--network={network}",
        f"--test_data={audio}",
        f"--test_img={image}",
        f"--motion_guide_img_folder={settings.motion_guide_img_folder}",
    ]
    if cache_capable:
        argv.append(f"--cache_dir={outdir}")
    env = dict(os.environ if environ is None else environ)
    cwd = settings.nerf_code_dir if cwd is None else cwd
    # The original launcher ran the script with the conda env first on PATH and the code folder
    # on PYTHONPATH. The scripts do not need the latter (they put PTI, SadTalker ... on sys.path
    # relative to their working directory), but where it is kept, it must be the run's view:
    # the real code folder there would bring back the files every run shares.
    env["PATH"] = os.pathsep.join(
        p for p in (str(settings.conda_env / "bin"), env.get("PATH", "")) if p
    )
    env["PYTHONPATH"] = str(cwd)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings.extra_env)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if run_id is not None:
        env[RUN_VARIABLE] = run_id
    return LaunchPlan(
        argv=tuple(argv),
        # The scripts open pretrained_networks/, PTI/, frames ... relative to the code folder.
        cwd=cwd,
        env=env,
        script=script,
        cache_capable=cache_capable,
    )


def staged_name(source: Path, stem: str) -> str:
    """The name an input gets in the staging dir: ``stem`` and the source's suffix, if plain.

    The scripts paste ``--test_data`` into a shell command unquoted; inside the staging dir, under
    this name, it is harmless whatever the user called it (``a b;touch PWNED;.wav`` becomes
    ``audio.wav``). The suffix is kept, lowercased, where it is a plain one: decoders look at it.
    """
    suffix = source.suffix.lower()
    return stem + (suffix if _PLAIN_SUFFIX.fullmatch(suffix) else "")


def is_shell_safe(path: Path | str) -> bool:
    """Whether the scripts' unquoted shell command takes ``path`` as one word that runs nothing.

    ``cache_root`` and character names may hold spaces, ``;`` or non-ASCII letters; the scripts
    paste ``--outdir`` into their ffmpeg command as it is. Such a staging dir is given to the
    script through a shell-safe symbolic link instead (made in ``link_home``).
    """
    return _SHELL_SAFE.fullmatch(str(path)) is not None


def link_home(temp_dir: Path) -> Path:
    """Where the folder holding a shell-safe link to a staging dir is made.

    ``temp_dir`` (the system's temporary folder) where its own path is shell-safe, else
    ``/tmp``. The folder is a ``mkdtemp`` (whose names are shell-safe) holding one link, ``run``.
    """
    return temp_dir if is_shell_safe(temp_dir) else _LAST_RESORT_TEMP


def _require(path: Path, setting: str, what: str, *, is_dir: bool = False) -> None:
    if not (path.is_dir() if is_dir else path.is_file()):
        raise ConfigurationError(
            f"{what} was not found at {path}: set {setting} (environment variable"
            f" NERFCACHE_{setting.upper()}) or project_root",
            setting=setting,
            path=path,
        )
