"""Test without a GPU: a temporary NeRFFaceSpeech project driven by a faithful fake script.

``make_fake_project(folder)`` lays out the real project structure (scripts at the real paths,
the code folder's ``PTI/``, ``SadTalker/`` ... and ``pretrained_networks/`` with stand-in files,
``frames/``, a conda "Python", a model ``.pkl``, a character with ``images/``) with
``fake_nerf.py`` standing in for both NeRF scripts. In a pytest suite, one line gives the
``nerf_project`` fixture::

    pytest_plugins = ["nerfcache.testing.pytest_plugin"]
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import struct
import sys
import zlib
from pathlib import Path

from nerfcache._wav import write_wav
from nerfcache.config import CACHE_SCRIPT, STOCK_SCRIPT, Settings
from nerfcache.testing.fake_nerf import CODE_FILES

__all__ = ["FAKE_SCRIPT", "FakeCall", "FakeProject", "make_fake_project", "write_png", "write_wav"]

FAKE_SCRIPT = Path(__file__).with_name("fake_nerf.py")
STAND_IN_MODULE = (
    b"# A stand-in: nerfcache's fake NeRF script only checks that this module exists.\n"
)
STAND_IN_WEIGHTS = b"fake weights: nerfcache's fake NeRF script only opens this file\n"


@dataclasses.dataclass(frozen=True)
class FakeCall:
    """One run of the fake script, read back from its JSON-lines log."""

    pid: int
    start: dict[str, object]
    phases: dict[str, dict[str, object]]
    """Phase name (``pti``, ``fitting``, ``rendering``, ``mux``) -> its log record."""
    exit: dict[str, object] | None
    """The exit record; None if the process was killed."""

    @property
    def argv(self) -> list[str]:
        """The options the script was given."""
        return [str(arg) for arg in self.start["argv"]]  # type: ignore[attr-defined]

    def option(self, name: str) -> str | None:
        """The value of ``--name=value`` in argv, or None."""
        prefix = f"--{name}="
        return next((a[len(prefix) :] for a in self.argv if a.startswith(prefix)), None)

    def computed(self, phase: str) -> bool:
        """Whether the expensive ``phase`` (``pti`` or ``fitting``) was computed, not loaded."""
        return self.phases.get(phase, {}).get("action") == "computed"

    def loaded(self, phase: str) -> bool:
        """Whether ``phase`` was loaded from the cache."""
        return self.phases.get(phase, {}).get("action") == "loaded"


@dataclasses.dataclass(frozen=True)
class FakeProject:
    """A temporary project in the real layout, with the fake NeRF script at both real paths."""

    root: Path
    settings: Settings
    character: str
    model_name: str
    audio: Path
    log: Path

    def with_env(self, **variables: object) -> Settings:
        """Settings whose runs see extra environment variables, e.g. ``FAKE_NERF_PTI_S=0.5``."""
        extra = {**self.settings.extra_env, **{k: str(v) for k, v in variables.items()}}
        return self.settings.model_copy(update={"extra_env": extra})

    def calls(self) -> list[FakeCall]:
        """Every run of the fake script so far, in start order."""
        if not self.log.exists():
            return []
        by_pid: dict[int, dict[str, object]] = {}
        for line in self.log.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            entry = by_pid.setdefault(record["pid"], {"phases": {}, "exit": None})
            if record["event"] == "start":
                entry["start"] = record
            elif record["event"] == "phase":
                entry["phases"][record["phase"]] = record  # type: ignore[index]
            elif record["event"] == "exit":
                entry["exit"] = record
        calls = [
            FakeCall(pid=pid, start=e["start"], phases=e["phases"], exit=e["exit"])  # type: ignore[arg-type]
            for pid, e in by_pid.items()
            if "start" in e
        ]
        return sorted(calls, key=lambda c: float(c.start["t"]))  # type: ignore[arg-type]

    def character_dir(self, character: str | None = None) -> Path:
        """``{cache_root}/{character}``."""
        return self.settings.cache_root / (character or self.character)

    def add_character(self, name: str, *, color: tuple[int, int, int] = (200, 150, 120)) -> Path:
        """Create a character with a portrait in ``images/``; return the portrait."""
        return write_png(self.character_dir(name) / "images" / "portrait.png", color)

    def use_stock_script_only(self) -> None:
        """Remove the cache-capable script, as on an install that only has the stock one."""
        self.settings.cache_script.unlink()


def make_fake_project(
    folder: Path,
    *,
    character: str = "ayanami",
    model_name: str = "ffhq.pkl",
    real_video: bool = False,
) -> FakeProject:
    """Lay out a NeRFFaceSpeech project in ``folder`` that runs the fake script.

    With ``real_video`` the fake makes a small real MP4 (the portrait as a still, with the
    audio) where ``imageio-ffmpeg`` is installed; otherwise, and by default because it is
    faster, a marked placeholder. Runs log what they saw to ``folder/fake_nerf.log``.
    """
    folder = Path(os.path.abspath(folder))
    code = folder / "NeRFFaceSpeech_Code"
    (code / "StyleNeRF").mkdir(parents=True)
    for name in (STOCK_SCRIPT, CACHE_SCRIPT):
        shutil.copyfile(FAKE_SCRIPT, code / "StyleNeRF" / name)
    # The upstream tree's other top-level folders and the weights under pretrained_networks/:
    # the fake opens them relative to its working directory where the real scripts do.
    for relative in CODE_FILES:
        stand_in = code / relative
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_bytes(STAND_IN_MODULE if stand_in.suffix == ".py" else STAND_IN_WEIGHTS)
    # Motion guide frames for the default one-second audio (25 fps); neither public repository
    # ships a frames/ folder, it is the user's.
    for index in range(25):
        write_png(code / "frames" / f"{index:04d}.png", (90, 90, 90))
    (code / "pretrained_networks" / model_name).write_bytes(b"fake network " + os.urandom(64))

    python = folder / "environment" / "nerffacespeech" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n', encoding="utf-8")
    python.chmod(python.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    log = folder / "fake_nerf.log"
    env = {"FAKE_NERF_LOG": str(log)}
    ffmpeg = _ffmpeg() if real_video else None
    if ffmpeg:
        env["FAKE_NERF_FFMPEG"] = ffmpeg
    settings = Settings(project_root=folder, extra_env=env)
    project = FakeProject(
        root=folder,
        settings=settings,
        character=character,
        model_name=model_name,
        audio=write_wav(folder / "inputs" / "speech.wav"),
        log=log,
    )
    project.add_character(character)
    # A user's own file in the character folder: it must survive everything nerfcache does.
    write_wav(project.character_dir() / "audio.wav")
    return project


def _ffmpeg() -> str | None:
    try:
        import imageio_ffmpeg  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError:
        return None
    return str(imageio_ffmpeg.get_ffmpeg_exe())


def write_png(path: Path, color: tuple[int, int, int], size: int = 32) -> Path:
    """Write a small solid-colour PNG (standard library only); return ``path``."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(color) * size
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * size))
        + chunk(b"IEND", b"")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path
