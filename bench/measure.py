"""What every benchmark shares: timing statistics, the machine, throwaway projects, bare runs.

The "child" is the fake NeRF script shipped in ``nerfcache.testing`` at zero phase times (unless a
benchmark sets them): it starts like the real script, loads or writes its cache files, renders a
placeholder and muxes it through its shell command, so a run costs what starting and finishing a
Python script costs, and nothing else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import nerfcache
from nerfcache import GenerationResult, Settings, generate_video
from nerfcache.cache import CACHE_FILES
from nerfcache.generate import VIDEO_NAME
from nerfcache.launch import plan_launch
from nerfcache.testing import FakeProject, make_fake_project

__all__ = [
    "BareRun",
    "Row",
    "Stats",
    "call",
    "load",
    "machine",
    "project",
    "read_io_bytes",
    "rss_kib",
    "sparse_file",
    "timed",
]

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Stats:
    """Samples of one measure: median and spread (quartiles and range)."""

    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: list[float]) -> Stats:
        """Wrap ``samples`` (at least one)."""
        if not samples:
            raise ValueError("no samples")
        return cls(tuple(samples))

    @property
    def median(self) -> float:
        """The median sample."""
        return statistics.median(self.samples)

    @property
    def quartiles(self) -> tuple[float, float]:
        """First and third quartile (both the median when there are fewer than 4 samples)."""
        if len(self.samples) < 4:
            return self.median, self.median
        q1, _, q3 = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q1, q3

    def fmt(self, unit: str, scale: float = 1.0, digits: int = 1) -> tuple[str, str]:
        """Return ("median unit", "spread") with values multiplied by ``scale``."""

        def num(value: float) -> str:
            return f"{value * scale:.{digits}f}"

        median = f"{num(self.median)} {unit}".strip()
        lo, hi = min(self.samples), max(self.samples)
        if len(self.samples) == 1:
            return median, "n=1"
        q1, q3 = self.quartiles
        n = len(self.samples)
        if n < 4:
            return median, f"range {num(lo)} to {num(hi)}, n={n}"
        return median, f"IQR {num(q1)} to {num(q3)}, range {num(lo)} to {num(hi)}, n={n}"


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the results table."""

    bench: str
    measure: str
    value: str
    spread: str = ""
    target: str = ""
    met: bool | None = None
    """None when the row is a plain measurement with no target."""

    @property
    def verdict(self) -> str:
        """``met``, ``NOT MET`` or empty."""
        if self.met is None:
            return ""
        return "met" if self.met else "NOT MET"


def timed(call: Callable[[], object]) -> float:
    """Return how long ``call()`` took, in seconds (``time.perf_counter``)."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


# -- the machine --


def machine() -> dict[str, str]:
    """Name the machine: CPU model, cores, memory, Python, OS, nerfcache and its commit."""
    cpuinfo = _read("/proc/cpuinfo")
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    cpu = fields.get("model name", platform.processor() or "unknown CPU")
    family, model = fields.get("cpu family"), fields.get("model")
    if family and model:
        cpu += f" (family {family}, model {model})"
    if "hypervisor" in fields.get("flags", "").split():
        cpu += ", virtual machine"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = next(
        (line.split()[1] for line in _read("/proc/meminfo").splitlines() if "MemTotal" in line),
        "",
    )
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = "+changes" if _git("status", "--porcelain", "--untracked-files=no") else ""
    return {
        "CPU": cpu,
        "cores": f"{cores} usable ({os.cpu_count()} online)",
        "memory": f"{int(memory) / 1024**2:.0f} GiB" if memory else "unknown",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "OS": f"{platform.system()} {platform.release()}",
        "nerfcache": f"{_version()} ({commit}{dirty})" if commit else _version(),
        "load at start": load(),
    }


def load() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews timings."""
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _git(*args: str) -> str:
    git = shutil.which("git")
    if git is None:
        return ""
    try:
        done = subprocess.run(
            [git, *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("nerfcache")
    except PackageNotFoundError:
        return getattr(nerfcache, "__version__", "unknown")


# -- processes --


def read_io_bytes() -> int:
    """Bytes this process has read so far (``rchar`` in /proc/self/io), or -1 where unknown."""
    for line in _read("/proc/self/io").splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return -1


def rss_kib(field: str = "VmRSS") -> int:
    """This process's resident set (``VmRSS``) or its peak (``VmHWM``), in KiB; -1 if unknown."""
    for line in _read("/proc/self/status").splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return -1


# -- files and projects --


@contextlib.contextmanager
def project(name: str) -> Iterator[FakeProject]:
    """A throwaway fake NeRFFaceSpeech project, removed on the way out."""
    folder = Path(tempfile.mkdtemp(prefix=f"nerfcache-bench-{name}-"))
    try:
        yield make_fake_project(folder / "project")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def sparse_file(path: Path, size: int) -> Path:
    """Create a file of ``size`` bytes that takes no disk space (``truncate``): zeros to read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        file.truncate(size)
    return path


class BareRun:
    """Run the command of a warm ``generate_video`` call with a bare ``subprocess.run``.

    The staging dir named in ``result.command`` is gone after the call, so each bare run gets a
    comparable one, prepared before the clock starts: a fresh folder on the same filesystem
    with hard links to the published cache files, and to the audio and portrait under the names
    nerfcache gives them. Argv, environment and working directory are the launcher's own (the
    environment from the ``LaunchPlan`` for the same settings).
    """

    def __init__(self, result: GenerationResult, settings: Settings, scratch: Path) -> None:
        self.staging = _option(result.command, "outdir")
        self.argv = result.command
        self.cache_dir = result.cache_dir
        self.scratch = scratch
        plan = plan_launch(
            settings,
            script=result.script,
            cache_capable=result.cache_capable,
            outdir=Path(self.staging),
            audio=Path(self.staging) / "audio.wav",
            image=Path(self.staging) / "portrait.png",
            network=Path(_option(result.command, "network")),
        )
        if plan.argv != self.argv:
            raise RuntimeError(f"the launch plan differs from the run's command: {plan.argv}")
        self.env: Mapping[str, str] = plan.env
        self.cwd = plan.cwd
        self._count = 0

    def prepare(self, audio: Path, image: Path) -> tuple[str, ...]:
        """Seed a fresh staging folder (not timed); return the argv that uses it."""
        self._count += 1
        folder = self.scratch / f"bare-{self._count:04d}"
        folder.mkdir(parents=True)
        for name in CACHE_FILES:
            os.link(self.cache_dir / name, folder / name)
        os.link(audio, folder / "audio.wav")
        os.link(image, folder / "portrait.png")
        return tuple(arg.replace(self.staging, str(folder)) for arg in self.argv)

    def run(self, argv: tuple[str, ...], *, capture: bool = True) -> None:
        """Run ``argv`` to its end (collecting its output, or into /dev/null); check the video."""
        sink = subprocess.PIPE if capture else subprocess.DEVNULL
        done = subprocess.run(
            argv,
            cwd=self.cwd,
            env=dict(self.env),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            check=False,
        )
        video = Path(_option(argv, "outdir")) / VIDEO_NAME
        if done.returncode != 0 or not video.is_file():
            tail = (done.stderr or b"")[-500:]
            raise RuntimeError(f"bare run failed ({done.returncode}): {tail!r}")


def _option(argv: tuple[str, ...], name: str) -> str:
    prefix = f"--{name}="
    return next(arg[len(prefix) :] for arg in argv if arg.startswith(prefix))


def call(
    fake: FakeProject,
    out: Path,
    *,
    character: str | None = None,
    model: str | None = None,
    settings: Settings | None = None,
) -> GenerationResult:
    """One ``generate_video`` call that must succeed."""
    result = generate_video(
        fake.audio,
        character or fake.character,
        out,
        model or fake.model_name,
        settings=settings or fake.settings,
    )
    if not result:
        raise RuntimeError(f"generate_video failed: {result.log_tail[-5:]}")
    return result
