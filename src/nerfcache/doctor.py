"""Check an installation: every configured path, the conda Python, the scripts, models, disk.

``diagnose(settings=...)`` returns one ``Check`` per thing it looked at; each problem names the
setting to change. ``nerfcache doctor`` prints them.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from nerfcache.cache import FindingLevel
from nerfcache.config import CODE_DIR_NAME, Settings, get_settings
from nerfcache.launch import plan_launch

__all__ = [
    "LOW_DISK_BYTES",
    "PROBE_TIMEOUT_S",
    "Check",
    "diagnose",
    "format_bytes",
    "free_bytes",
]

PROBE_TIMEOUT_S = 120.0
LOW_DISK_BYTES = 5 << 30  # a character's cache is 0.3-3 GB
_KIB = 1024


@dataclasses.dataclass(frozen=True)
class Check:
    """One check of ``diagnose``: a path, the conda Python, a script, the disk, ..."""

    name: str
    """What was checked: a setting (``conda_python``), ``models``, ``disk``, ``ffmpeg``, ..."""
    level: FindingLevel
    message: str
    """What was found; for a problem, it ends with the setting to change and its variable."""
    setting: str | None = None
    """The setting that decides this check, or None."""


def diagnose(*, settings: Settings | None = None, timeout: float = PROBE_TIMEOUT_S) -> list[Check]:
    """Check the installation that ``settings`` describe; a level ``"error"`` means runs fail.

    Nothing is changed: the conda Python is run twice (for its version, then the cache-capable
    script with ``--help``, to see that it accepts ``--cache_dir``), each for at most
    ``timeout`` seconds, and a temporary file is created and removed in ``cache_root``.

    Args:
        settings: the installation to check; defaults to ``get_settings()``.
        timeout: seconds each run of the conda Python may take.

    """
    settings = settings or get_settings()
    checks: list[Check] = []

    def check(name: str, level: FindingLevel, message: str, setting: str | None = None) -> None:
        if setting is not None and level != "ok":
            message += f"; set {setting} (NERFCACHE_{setting.upper()})"
        checks.append(Check(name, level, message, setting))

    def folder(setting: str, what: str, *, level: FindingLevel = "error") -> bool:
        path: Path = getattr(settings, setting)
        exists = path.is_dir()
        check(
            setting,
            "ok" if exists else level,
            f"{what} {path}" + ("" if exists else " is missing"),
            setting,
        )
        return exists

    if folder("project_root", "the project") and not settings.nerf_code_dir.is_dir():
        # Everything else follows from a wrong root: say that first, not as the seventh error.
        check(
            "project_root",
            "error",
            f"{settings.project_root} does not look like a NeRFFaceSpeech project: it has no"
            f" {CODE_DIR_NAME} folder (run from the project, or pass --project-root)",
            "project_root",
        )
    code = folder("nerf_code_dir", "the NeRFFaceSpeech code")
    folder("conda_env", "the conda env, whose bin/ goes first on PATH,", level="warning")
    # Probes run as the scripts do: the environment (PATH, PYTHONPATH, extra_env) and working
    # folder of a run, as plan_launch builds them; the file arguments are placeholders.
    plan = plan_launch(
        settings,
        script=settings.cache_script,
        cache_capable=True,
        outdir=Path(tempfile.gettempdir()),
        audio=Path("audio.wav"),
        image=Path("portrait.png"),
        network=Path("network.pkl"),
    )
    cwd = settings.nerf_code_dir if code else None
    python = settings.conda_python
    python_ok = False
    if not python.is_file():
        check("conda_python", "error", f"the conda Python {python} is missing", "conda_python")
    else:
        returncode, output = _probe(
            [str(python), "-c", "import sys; print(sys.version.split()[0])"], plan.env, cwd, timeout
        )
        python_ok = returncode == 0
        check(
            "conda_python",
            "ok" if python_ok else "error",
            f"{python} runs Python {output.strip()}"
            if python_ok
            else f"{python} does not start ({_last_line(output) or returncode})",
            "conda_python",
        )
    stock = settings.script.is_file()
    capable = settings.cache_script.is_file()
    check(
        "script",
        "ok" if stock else "warning" if capable else "error",
        f"the stock script {settings.script}"
        + (f" ({_which_stock_script(settings.script)})" if stock else " is missing"),
        "script",
    )
    if not capable:
        check(
            "cache_script",
            "warning" if stock else "error",
            f"the cache-capable script {settings.cache_script} is missing; runs use the stock"
            " script, cached through its --outdir",
            "cache_script",
        )
    elif python_ok:
        returncode, output = _probe(
            [str(python), str(settings.cache_script), "--help"], plan.env, cwd, timeout
        )
        accepts = returncode == 0 and "--cache_dir" in output
        check(
            "cache_script",
            "ok" if accepts else "error",
            f"{settings.cache_script} accepts --cache_dir"
            if accepts
            else f"{settings.cache_script} --help "
            + (
                f"failed ({_last_line(output) or returncode})"
                if returncode != 0
                else "does not list --cache_dir: it is not the cache-capable script"
            ),
            "cache_script",
        )
    else:
        check("cache_script", "warning", "not probed for --cache_dir: the conda Python fails")
    if folder("model_dir", "the models folder"):
        models = sorted(path.name for path in settings.model_dir.glob("*.pkl"))
        check(
            "models",
            "ok" if models else "error",
            ", ".join(models) if models else f"no .pkl network in {settings.model_dir}",
            None if models else "model_dir",
        )
    guide = settings.nerf_code_dir / settings.motion_guide_img_folder
    check(
        "motion_guide_img_folder",
        "ok" if guide.is_dir() else "error",
        f"the motion guide images {guide}" + ("" if guide.is_dir() else " are missing"),
        "motion_guide_img_folder",
    )
    for name, portrait in settings.characters.items():
        check(
            f"characters[{name}]",
            "ok" if portrait.is_file() else "error",
            f"the portrait {portrait}" + ("" if portrait.is_file() else " is missing"),
            "characters",
        )
    checks.extend(_disk_checks(settings.cache_root))
    path = plan.env.get("PATH", "")
    ffmpeg = shutil.which("ffmpeg", path=path)
    check(
        "ffmpeg",
        "ok" if ffmpeg else "warning",
        ffmpeg
        or "no ffmpeg on the scripts' PATH: they mux the video with it and exit 0 without a"
        " video when it is missing; install it in the conda env",
        None if ffmpeg else "conda_env",
    )
    return checks


def _disk_checks(cache_root: Path) -> list[Check]:
    existing = _existing_ancestor(cache_root)
    if cache_root.is_dir():
        try:
            with tempfile.TemporaryFile(dir=cache_root):
                writable = True
        except OSError:
            writable = False
    else:
        writable = existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)
    where = "" if cache_root.is_dir() else f" (it will be created in {existing})"
    fix = "; set cache_root (NERFCACHE_CACHE_ROOT)"
    checks = [
        Check(
            "cache_root",
            "ok" if writable else "error",
            f"{cache_root} is writable{where}"
            if writable
            else f"{cache_root} is not writable{fix}",
            "cache_root",
        )
    ]
    free = free_bytes(cache_root)
    checks.append(
        Check(
            "disk",
            "ok" if free >= LOW_DISK_BYTES else "warning",
            f"{format_bytes(free)} free for caches"
            + ("" if free >= LOW_DISK_BYTES else f" (a cache takes up to 3 GB){fix}"),
            "cache_root",
        )
    )
    return checks


def _probe(
    argv: list[str], env: Mapping[str, str], cwd: Path | None, timeout: float
) -> tuple[int | None, str]:
    """Run ``argv``; return its exit code (None if it did not run or finish) and output."""
    try:
        done = subprocess.run(
            argv,
            env=dict(env),
            cwd=cwd,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, f"no answer within {timeout:g} s"
    except OSError as error:
        return None, str(error)
    return done.returncode, done.stdout + done.stderr


def _which_stock_script(script: Path) -> str:
    """Say which stock script this is: upstream's captions every frame, the web app's does not.

    Upstream's ``creat_final_video`` call keeps its default watermark, a "fake video" caption
    burnt into every frame; the web app's copy passes ``watermark=False``.
    """
    try:
        source = script.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        return f"unreadable: {error.strerror}"
    if "watermark=False" in source:
        return "the web app's copy: no caption on the video"
    return 'upstream\'s: it burns a "fake video" caption into every frame of the video'


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# Public: the CLI's listings use these too, so `cache list` and the disk check agree.


def format_bytes(size: int) -> str:
    """``size`` for people: ``512 B``, ``1.5 GiB`` (powers of 1024)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < _KIB:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= _KIB
    return f"{value:.1f} TiB"


def free_bytes(path: Path) -> int:
    """Free disk space where ``path`` is, or would be created (its nearest existing parent)."""
    return shutil.disk_usage(_existing_ancestor(path)).free


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
