"""A fake of the NeRFFaceSpeech talking-head scripts: what a launcher can observe, as they do it.

Standard library only: it runs under whatever Python the launcher starts, without nerfcache.
Copied verbatim to both real file names; a stem ending in ``_cache`` makes it the cache-capable
script (it accepts ``--character_name`` and ``--cache_dir``), any other name the stock one.

It follows the web app's copy of the code (``dogLeft233/TFG_ui_NeRFFaceSpeech``), read in
``StyleNeRF/main_NeRFFaceSpeech_audio_driven_w_given_poses[_cache].py``, ``audio2NeRF_utils.py``,
``PTI/training_pti/coaches/{base,single_id}_coach.py``, ``PTI/training_pti/projectors/
w_projector.py``, ``3DMM-Fitting-Pytorch/fit_single_img_custom.py`` and
``SadTalker/src/generate_batch.py``: the same options, output lines and streams, files written
and deleted (relative ones in the working directory), the reads relative to the working
directory at the points where the real code does them, and the same errors. docs/testing.md has
the table. Behaviour is steered by ``FAKE_NERF_*`` environment variables (durations, failures,
a kill while saving, log spam, barriers, a JSON-lines event log).
"""

from __future__ import annotations

import errno
import glob
import hashlib
import io
import json
import math
import os
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import traceback
import uuid
import wave
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

__all__ = ["CODE_FILES", "main"]

PROG = Path(__file__).name
VARIANT = "cache" if Path(__file__).stem.endswith("_cache") else "stock"
PTI_FILES = ("G_PTI.pt", "w_PTI.pt", "bg_PTI.pt")
FINAL_VIDEO = "output_NeRFFaceSpeech.mp4"
PLACEHOLDER = b"NERFCACHE FAKE VIDEO (placeholder: no ffmpeg)\n"
BAD_BYTES = b"\xff\xfe bad \x80 bytes\n"
MIB = 1024 * 1024
FPS = 25  # SadTalker's get_data_mel and the video writer: 25 frames a second
MEL_RATE = 16000  # librosa.load(path, sr=16000)

# What the real code reads relative to its working directory (weights under
# pretrained_networks/, modules under the folders it puts on sys.path), in the order it reads
# them. make_fake_project creates stand-ins for all of them.
SEG = "pretrained_networks/seg.pth"
BFM_DEEP3D = "pretrained_networks/BFM/BFM_model_front.mat"
DEEP3D_WEIGHTS = "pretrained_networks/Deep3DFaceRecon_pytorch/face_recon/epoch_20.pth"
SADTALKER = "pretrained_networks/sad_talker_pretrained/SadTalker_V0.0.2_256.safetensors"
BFM_FITTING = "pretrained_networks/BFM_for_3DMM-Fitting-Pytorch/BFM/BFM09_model_info.mat"
LIPAINT = "pretrained_networks/LipaintNet.pt"
MODULES = {  # sys.path entry -> the modules imported from it
    "Deep3DFaceRecon_pytorch": ("Deep3Dmodels/__init__.py",),
    "PTI": ("training_pti/coaches/single_id_coach.py",),
    "SadTalker": ("src/face3d/models/networks.py", "src/audio2exp_models/networks.py"),
    "3DMM-Fitting-Pytorch": ("fit_single_img_custom.py",),
    "SadTalker/src": ("generate_batch.py",),
}
CODE_FILES = (
    SEG,
    BFM_DEEP3D,
    DEEP3D_WEIGHTS,
    SADTALKER,
    BFM_FITTING,
    LIPAINT,
    *(f"{root}/{module}" for root, modules in MODULES.items() for module in modules),
)
"""Every file the fake reads relative to its working directory, as the real scripts do."""

# PTI's relative output folders (PTI/configs/paths_config.py) and names (single_id_coach.py).
CHECKPOINTS_DIR = "./checkpoints"
EMBEDDING_DIR = "./embeddings"
INPUT_DATA_ID = "barcelona"
PTI_KEYWORD = "PTI"
RUN_NAME = ""  # global_config.run_name
PROJECTION_STEPS = 1000  # w_projector.project overrides num_steps with 1000
TUNING_STEPS = 2000  # SingleIDCoach_custom(..., tun_iter=2000)
RIGID_STEPS, NONRIGID_STEPS = 1000, 500  # fit_3dmm: first_rf_iters, first_nrf_iters
AUDIO2EXP_BANNER = (
    "########################### audio2exp_model Loading Done #################################"
)


@dataclass(frozen=True)
class OptSpec:
    """One click option of the real script: its flag, help line and how click checks it."""

    flag: str
    metavar: str
    help: str = ""
    required: bool = False
    default: str | None = None
    show_default: bool = False
    choices: tuple[str, ...] = ()
    is_float: bool = False


STOCK_OPTIONS = (
    OptSpec("--network", "TEXT", "Network pickle filename", required=True),
    OptSpec("--trunc", "FLOAT", "Truncation psi", default="1", show_default=True, is_float=True),
    OptSpec(
        "--noise-mode",
        "[const|random|none]",
        "Noise mode",
        default="const",
        show_default=True,
        choices=("const", "random", "none"),
    ),
    OptSpec("--outdir", "DIR", "Where to save the output images", required=True),
    # Fact: the three inputs default to "." (the working directory), not to "missing".
    OptSpec("--test_data", "TEXT", default="."),
    OptSpec("--test_img", "TEXT", default="."),
    OptSpec("--motion_guide_img_folder", "TEXT", default="."),
)
# Fact: only the cache-capable script knows these two; the stock one rejects them (exit 2).
CACHE_OPTIONS = (
    *STOCK_OPTIONS,
    OptSpec("--character_name", "TEXT", "Character name for caching PTI and 3DMM results"),
    OptSpec(
        "--cache_dir",
        "TEXT",
        "Custom cache directory for PTI and 3DMM results. If specified, this takes"
        " precedence over character_name",
    ),
)
OPTIONS = CACHE_OPTIONS if VARIANT == "cache" else STOCK_OPTIONS


class UsageError(Exception):
    """A command-line error, reported the way click reports it (exit code 2)."""


class UnidentifiedImageError(OSError):
    """PIL's error for a file that is not an image."""

    __module__ = "PIL"  # the traceback's last line reads like the real one


@dataclass
class Job:
    """One run: the parsed options, where things go, and this run's unique token."""

    opts: dict[str, str]
    outdir: str
    cache_dir: str
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    error_code: int = 1  # becomes FAKE_NERF_FAIL_CODE when a simulated failure fires

    def opt(self, flag: str) -> str:
        return self.opts[flag]


def _parse(args: list[str]) -> dict[str, str | None] | None:
    """Parse like click: all tokens first, then values in invocation order. None means --help."""
    by_flag = {spec.flag: spec for spec in OPTIONS}
    given: dict[str, str] = {}  # insertion order is click's invocation order; last value wins
    extra: list[str] = []
    wants_help = False
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            extra.extend(rest)
            break
        if not arg.startswith("--"):
            extra.append(arg)
            continue
        flag, eq, value = arg.partition("=")
        if flag == "--help":
            if eq:
                raise UsageError("Option '--help' does not take a value.")
            wants_help = True
            continue
        if flag not in by_flag:
            raise UsageError(f"No such option: {flag}")
        if not eq:
            if not rest:
                raise UsageError(f"Option '{flag}' requires an argument.")
            value = rest.pop(0)
        given[flag] = value
    if extra:
        plural = "s" if len(extra) > 1 else ""
        raise UsageError(f"Got unexpected extra argument{plural} ({' '.join(extra)})")
    if wants_help:  # click's --help is eager: it wins over missing or invalid values
        return None
    order = [by_flag[flag] for flag in given] + [s for s in OPTIONS if s.flag not in given]
    return {spec.flag: _convert(spec, given.get(spec.flag, spec.default)) for spec in order}


def _convert(spec: OptSpec, raw: str | None) -> str | None:
    if raw is None:
        if spec.required:
            raise UsageError(f"Missing option '{spec.flag}'.")
        return None
    if spec.is_float:
        try:
            float(raw)
        except ValueError:
            raise UsageError(
                f"Invalid value for '{spec.flag}': '{raw}' is not a valid float."
            ) from None
    if spec.choices and raw not in spec.choices:
        allowed = ", ".join(f"'{c}'" for c in spec.choices)
        raise UsageError(f"Invalid value for '{spec.flag}': '{raw}' is not one of {allowed}.")
    return raw


def _print_help() -> None:
    """Print click's help: a 30-column option column, help wrapped at 78 columns."""
    print(f"Usage: {PROG} [OPTIONS]\n\nOptions:")
    rows = [(f"{s.flag} {s.metavar}", s) for s in OPTIONS]
    for left, spec in rows:
        extra = "  [required]" if spec.required else ""
        extra = f"  [default: {spec.default}]" if spec.show_default else extra
        lines = textwrap.wrap(f"{spec.help}{extra}", 44) or [""]
        if len(left) > 30:  # click moves the help of a long option to its own line
            print(f"  {left}")
            first = f"{'':34}{lines[0]}"
        else:
            first = f"  {left:<30}  {lines[0]}"
        print(first.rstrip())
        for line in lines[1:]:
            print(f"{'':34}{line}")
    print(f"  {'--help':<30}  Show this message and exit.")


def _log(event: str, **fields: object) -> None:
    """Append one JSON line to FAKE_NERF_LOG with a single O_APPEND write (never interleaved)."""
    path = os.environ.get("FAKE_NERF_LOG")
    if not path:
        return
    record = {"pid": os.getpid(), "t": time.time(), "event": event, **fields}
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_APPEND | os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _env_float(name: str, default: float = 0.0) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


def _missing(path: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)


def _open(path: str) -> BinaryIO:
    """open(path, "rb"), whose errors name the path exactly as the real code's open() does."""
    return open(path, "rb")  # noqa: PTH123


def _join(folder: str, name: str) -> str:
    """os.path.join for the real code's f-strings and joins (the messages show these strings)."""
    return f"{folder}{name}" if not folder or folder.endswith("/") else f"{folder}/{name}"


def _makedirs(path: str) -> None:
    """os.makedirs(path, exist_ok=True), which fails on an empty path."""
    if not path:
        raise _missing(path)
    Path(path).mkdir(parents=True, exist_ok=True)


def _checkpoint(job: Job, phase: str) -> None:
    """FAKE_NERF_FAIL_AT: crash with a Python traceback at the start of `phase`."""
    if os.environ.get("FAKE_NERF_FAIL_AT") == phase:
        job.error_code = int(_env_float("FAKE_NERF_FAIL_CODE", 1))
        raise RuntimeError(f"simulated failure in {phase}")


def _read(path: str) -> None:
    """Open a file the way torch.load or scipy's loadmat does: a missing one raises."""
    with _open(path):
        pass


def _import(root: str, module: str) -> None:
    """``sys.path.insert(0, root)`` (relative to the working directory), then import ``module``.

    ``module`` is the file the import needs, e.g. ``training_pti/coaches/single_id_coach.py``;
    the error names the first missing part, as Python's import system does.
    """
    parts = module.removesuffix("/__init__.py").removesuffix(".py").split("/")
    for depth in range(1, len(parts) + 1):
        here = Path(root, *parts[:depth])
        last = depth == len(parts)
        found = (here.is_dir() or here.with_suffix(".py").is_file()) if last else here.is_dir()
        if not found:
            name = ".".join(parts[:depth])
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)


def _bar_charset() -> str:
    """The charset of tqdm: Unicode blocks when stderr's encoding can write them, else ASCII."""
    try:
        "\u2588\u2589".encode(sys.stderr.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return " 123456789#"
    return " " + "".join(map(chr, range(0x258F, 0x2587, -1)))


def _interval(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Bar:
    """A tqdm bar on stderr (tqdm's format_meter, no terminal), each redraw after a CR."""

    def __init__(self, desc: str, total: int) -> None:
        self.prefix = f"{desc}: " if desc else ""
        self.total = total
        self.charset = _bar_charset()
        self.started = time.monotonic()
        self.last_len = 0
        self.draw(0)

    def draw(self, n: int) -> None:
        line = self.format(n, time.monotonic() - self.started)
        # tqdm pads with spaces when the new status is shorter than the last one
        sys.stderr.write("\r" + line + " " * max(self.last_len - len(line), 0))
        sys.stderr.flush()
        self.last_len = len(line)

    def format(self, n: int, elapsed: float) -> str:
        rate = n / elapsed if n and elapsed > 0 else None
        if rate is None:
            rate_fmt = "?it/s"
        elif rate < 1:
            rate_fmt = f"{1 / rate:5.2f}s/it"
        else:
            rate_fmt = f"{rate:5.2f}it/s"
        if not self.total:  # tqdm(range(0)): no bar, a counter
            return f"{self.prefix}{n}it [{_interval(elapsed)}, {rate_fmt}]"
        frac = n / self.total
        syms = len(self.charset) - 1
        full, part = divmod(int(frac * 10 * syms), syms)
        bar = self.charset[-1] * full
        if full < 10:
            bar += self.charset[part] + self.charset[0] * (10 - full - 1)
        remaining = _interval((self.total - n) / rate) if rate else "?"
        return (
            f"{self.prefix}{frac * 100:3.0f}%|{bar}| {n}/{self.total}"
            f" [{_interval(elapsed)}<{remaining}, {rate_fmt}]"
        )

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


def _progress(
    desc: str,
    total: int,
    seconds: float,
    *,
    redraws: int = 4,
    stop: int | None = None,
    work: Callable[[int, int], None] | None = None,
) -> None:
    """Run a loop of ``total`` steps under a tqdm bar, in a few redraws; ``stop`` breaks early.

    Like tqdm (mininterval 0.1 s), a long loop redraws at least every 0.1 s. ``work(start,
    end)`` does the steps between two redraws.
    """
    end = total if stop is None else max(0, min(stop, total))
    bar = Bar(desc, total)
    redraws = min(max(redraws, int(seconds * 10)), end)
    done = 0
    for i in range(1, redraws + 1):
        upto = end * i // redraws
        if seconds > 0:
            time.sleep(seconds / redraws)
        if work is not None:
            work(done, upto)
        done = upto
        bar.draw(done)
    bar.close()


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with _open(path) as fh:
        for block in iter(lambda: fh.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def _png(token: str) -> bytes:
    """Return a valid 1x1 PNG whose tEXt chunk carries this run's token."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    text = b"nerfcache-run\x00" + token.encode()
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"tEXt", text)
        + chunk(b"IDAT", zlib.compress(b"\x00\x80"))
        + chunk(b"IEND", b"")
    )


# PNG, JPEG, GIF, BMP, WebP (RIFF), TIFF: what PIL identifies among the usual portrait formats
IMAGE_MAGIC = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"RIFF",
    b"II*\x00",
    b"MM\x00*",
)


def _is_image(path: str) -> bool:
    """Whether PIL could open ``path``: an image file (directories and other files fail)."""
    try:
        with _open(path) as fh:
            head = fh.read(8)
    except OSError:
        return False
    return head.startswith(IMAGE_MAGIC)


def _open_image(path: str) -> None:
    """PIL.Image.open(path): a missing path, a folder or a non-image raises like PIL does."""
    with _open(path) as fh:  # FileNotFoundError, or IsADirectoryError for the default "."
        if not fh.read(8).startswith(IMAGE_MAGIC):
            raise UnidentifiedImageError(f"cannot identify image file {path!r}")


def _save_pt(path: str, payload: dict[str, object]) -> None:
    """torch.save: a zip straight at the final name (no temp file, no rename).

    Like torch (1.12 and later), a missing parent folder is a RuntimeError naming it.
    """
    parent = path.rpartition("/")[0]
    if parent and not Path(parent).is_dir():
        raise RuntimeError(f"Parent directory {parent} does not exist.")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", json.dumps(payload).encode())
        archive.writestr("archive/version", b"3")
        archive.writestr("archive/data/0", bytes(int(_env_float("FAKE_NERF_PT_KB", 4) * 1024)))
    blob = buf.getvalue()
    # Opening with "wb" truncates in place, as torch.save does: a hard link shares the damage.
    with Path(path).open("wb") as fh:
        if os.environ.get("FAKE_NERF_KILL_DURING_SAVE") == Path(path).name:
            fh.write(blob[: len(blob) // 2])
            fh.flush()
            os.fsync(fh.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        fh.write(blob)


def _load_pt(path: str) -> dict[str, object]:
    """torch.load: a missing file raises FileNotFoundError, a truncated one torch's error."""
    try:
        with _open(path) as fh, zipfile.ZipFile(fh) as archive:
            data: object = json.loads(archive.read("archive/data.pkl"))
    except zipfile.BadZipFile:
        raise RuntimeError(
            "PytorchStreamReader failed reading zip archive: failed finding central directory"
        ) from None
    return data if isinstance(data, dict) else {}


def _wait_for(done: Callable[[], bool], failure: str) -> None:
    deadline = time.monotonic() + 30
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(failure)
        time.sleep(0.01)


class PtiBarrier:
    """FAKE_NERF_PTI_BARRIER=<dir>:<n>: n cold builds overlap inside PTI, then end in turn.

    Not a real-script fact: it makes the real race on ``./embeddings`` and ``./checkpoints``
    happen without timing anything. A real PTI takes many minutes, so two builds started a
    little apart are both inside it, and the first to finish ``rmtree``s both folders while the
    other is still tuning. Here each build waits after its W projection (folders made, pivot
    saved) until n builds have arrived, then saves its tuned checkpoint only after the build
    that arrived before it has left PTI. With a shared working directory the second save then
    fails, as the real one does; with private working directories every build succeeds.
    """

    def __init__(self, spec: str) -> None:
        folder, count = spec.rsplit(":", 1)
        self.folder, self.count = Path(folder), int(count)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rank = 0
        while True:  # arrival order, by exclusive creation
            try:
                fd = os.open(self.folder / f"arrived-{self.rank}", os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                self.rank += 1
            else:
                os.close(fd)
                break

    def wait_for_all(self) -> None:
        _wait_for(
            lambda: len(list(self.folder.glob("arrived-*"))) >= self.count,
            f"PTI barrier: fewer than {self.count} cold builds inside PTI at once",
        )

    def wait_for_turn(self) -> None:
        if self.rank:
            _wait_for(
                (self.folder / f"left-{self.rank - 1}").exists,
                "PTI barrier: the build before this one never left PTI",
            )

    def leave(self) -> None:
        (self.folder / f"left-{self.rank}").touch()


def _coach(job: Job) -> None:
    """SingleIDCoach_custom(...).train(): PTI's files live in the WORKING directory.

    base_coach.py makes ./checkpoints; train() makes ./embeddings/barcelona/PTI/<c> (c: the
    first character of the image's file name), projects (bar 1), saves the W pivot there, tunes
    (bar 2, stops early below an LPIPS threshold), saves ./checkpoints/model__<c>.pt and then
    rmtree's both folders, whoever else is using them. Nothing is read back from them.
    """
    image = job.opt("--test_img")
    image_name = image.split("/")[-1][0]
    Path(CHECKPOINTS_DIR).mkdir(parents=True, exist_ok=True)
    w_path_dir = f"{EMBEDDING_DIR}/{INPUT_DATA_ID}"
    embedding_dir = f"{w_path_dir}/{PTI_KEYWORD}/{image_name}"
    for folder in (w_path_dir, f"{w_path_dir}/{PTI_KEYWORD}", embedding_dir):
        Path(folder).mkdir(parents=True, exist_ok=True)
    _progress("", PROJECTION_STEPS, _env_float("FAKE_NERF_PROJECTION_S"))
    _save_pt(f"{embedding_dir}/0.pt", {"kind": "w_pivot", "token": job.token})
    spec = os.environ.get("FAKE_NERF_PTI_BARRIER")
    barrier = PtiBarrier(spec) if spec else None
    try:
        if barrier:
            barrier.wait_for_all()
        steps = os.environ.get("FAKE_NERF_PTI_TUNING_STEPS", "").strip()
        _progress(
            "",
            TUNING_STEPS,
            _env_float("FAKE_NERF_PTI_S"),
            redraws=8,
            stop=int(steps) if steps else None,
        )
        if barrier:
            barrier.wait_for_turn()
        _save_pt(
            f"{CHECKPOINTS_DIR}/model_{RUN_NAME}_{image_name}.pt",
            {"kind": "checkpoint", "token": job.token},
        )
        for folder in ("embeddings", "checkpoints"):
            if Path(folder).exists():
                shutil.rmtree(folder)
                print(f"Deleted folder: {folder}")
    finally:
        if barrier:
            barrier.leave()


def _pti(job: Job) -> dict[str, object]:
    """Load the PTI group if G_PTI.pt is a file (that file alone decides), else compute it."""
    cache = job.cache_dir
    if Path(f"{cache}/G_PTI.pt").is_file():
        group = [_load_pt(f"{cache}/{name}") for name in PTI_FILES]  # a missing w/bg crashes
        g_pti, action = group[0], "loaded"
    else:
        _import("PTI", MODULES["PTI"][0])
        _checkpoint(job, "pti")
        _coach(job)
        g_pti = {
            "kind": "G_PTI",
            "image_sha256": _sha256(job.opt("--test_img")),
            "network_sha256": _sha256(job.opt("--network")),
            "trunc": float(job.opt("--trunc")),
            "token": uuid.uuid4().hex,
        }
        for name in PTI_FILES:
            _save_pt(f"{cache}/{name}", {**g_pti, "kind": Path(name).stem})
        action = "computed"
    _log(
        "phase",
        phase="pti",
        action=action,
        image_sha256=g_pti.get("image_sha256"),
        network_sha256=g_pti.get("network_sha256"),
        token=g_pti.get("token"),
    )
    return g_pti


def _write_byproducts(job: Job) -> None:
    """Fact: every run, warm too, writes these into the cache dir and reads the 3DMM input back.

    In between it loads SadTalker's audio2exp model (SadTalker/ on sys.path, its weights).
    """
    png = _png(job.token)
    cache = job.cache_dir
    Path(f"{cache}/output_from_w_pivot_w_G_PTI.png").write_bytes(png)
    Path(f"{cache}/img_tesnor_224_resize_prc.png").write_bytes(png)
    for module in MODULES["SadTalker"]:
        _import("SadTalker", module)
    _read(SADTALKER)
    print(AUDIO2EXP_BANNER)
    Path(f"{cache}/img_tesnor_224_resize_prc.png").write_bytes(png)
    # Two runs sharing one cache dir race here: the real one would silently fit the other
    # run's image; the fake says so.
    if job.token.encode() not in Path(f"{cache}/img_tesnor_224_resize_prc.png").read_bytes():
        raise RuntimeError(
            "3DMM input img_tesnor_224_resize_prc.png was overwritten by another run"
            " (the real script would fit the other run's image without a word)"
        )


def _fitting(job: Job, g_pti: dict[str, object]) -> None:
    """fit_3dmm: load fitted_coeffs.pt if present (valid only with its PTI group), else fit.

    The module is imported first, warm or cold (3DMM-Fitting-Pytorch/ on sys.path). Nothing
    else is written: render_3dmm returns before saving fitted_img_* because get_lm=True.
    """
    _import("3DMM-Fitting-Pytorch", MODULES["3DMM-Fitting-Pytorch"][0])
    path = f"{job.cache_dir}/fitted_coeffs.pt"
    if Path(path).is_file():
        coeffs, action = _load_pt(path), "loaded"
    else:
        _checkpoint(job, "fitting")
        seconds = _env_float("FAKE_NERF_FIT_S")
        print("loading models")
        _read(BFM_FITTING)
        print("loading images")
        print("image is loaded. width: 224, height: 224")
        print("A face is detected. l: 12, t: 16, r: 212, b: 216")
        print("landmarks detected.")
        print("start rigid fitting")
        _progress("", RIGID_STEPS, seconds * 2 / 3)
        print("done rigid fitting. lm_loss: 0.012300")
        print("start non-rigid fitting")
        _progress("", NONRIGID_STEPS, seconds / 3)
        losses = (
            "lm_loss",
            "photo_loss",
            "tex_loss",
            "id_reg_loss",
            "exp_reg_loss",
            "tex_reg_loss",
        )
        print("done non rigid fitting.", "".join(f"{n}: 0.012300\t" for n in losses))
        coeffs = {
            "kind": "fitted_coeffs",
            "pti_token": g_pti.get("token"),
            "token": uuid.uuid4().hex,
        }
        _save_pt(path, coeffs)
        action = "computed"
    _log("phase", phase="fitting", action=action, pti_token=coeffs.get("pti_token"))


def _audio_frames(audio: str) -> int:
    """SadTalker's frame count: the audio resampled to 16 kHz, 640 samples a frame (25 fps)."""
    with _open(audio) as fh:  # librosa fails on a missing path, or a folder such as "."
        try:
            with wave.open(fh) as clip:
                frames, rate = clip.getnframes(), clip.getframerate()
        except (wave.Error, EOFError):
            return FPS  # not a WAV the fake can read (the real one decodes it): say one second
    samples = math.ceil(frames * MEL_RATE / rate)  # librosa's resampled length
    return int(samples / (MEL_RATE / FPS))


def _spam(megabytes: float) -> None:
    """FAKE_NERF_SPAM_MB: flood both streams with short lines and ~1 MiB newline-free lines."""
    budget = int(megabytes * MIB)
    streams = (sys.stdout.buffer, sys.stderr.buffer)
    i = 0
    while budget > 0:
        short = b"".join(b"[render] frame chunk %07d ok\n" % n for n in range(8192))
        short = short[: min(len(short), budget)]
        long_line = b"x" * min(MIB, max(budget - len(short), 0)) + b"\n"
        streams[i % 2].write(short)
        streams[(i + 1) % 2].write(long_line)
        budget -= len(short) + len(long_line)
        i += 1
    for stream in streams:
        stream.flush()


def _barrier() -> None:
    """FAKE_NERF_BARRIER=<dir>:<n>: wait in rendering until n runs are rendering at once.

    Not a real-script fact: it lets a test prove that runs overlap, without timing anything.
    """
    spec = os.environ.get("FAKE_NERF_BARRIER")
    if not spec:
        return
    folder, count = spec.rsplit(":", 1)
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / str(os.getpid())).touch()
    _wait_for(
        lambda: len(list(Path(folder).iterdir())) >= int(count),
        f"barrier: fewer than {count} runs rendering at once",
    )


def _render(job: Job) -> str:
    """Mel frames, then one PNG a frame into {outdir}/epoch_0_final; return that folder."""
    frames_dir = _join(job.outdir, "epoch_0_final")
    Path(frames_dir).mkdir(parents=True, exist_ok=True)
    _read(LIPAINT)
    _import("SadTalker/src", MODULES["SadTalker/src"][0])
    total = _audio_frames(job.opt("--test_data"))
    _progress("mel:", total, 0.0, redraws=1)
    # Fact: the motion guide folder is listed only now, after PTI, the fit and the mel frames.
    guide = job.opt("--motion_guide_img_folder")
    names = sorted(os.listdir(guide))  # noqa: PTH208  # its errors are the real one's
    _checkpoint(job, "rendering")
    _barrier()
    png = _png(job.token)

    def frames(start: int, end: int) -> None:
        for i in range(start, end):
            if i >= len(names) or not _is_image(_join(guide, names[i])):
                print("pose undetected")  # fewer guide images than frames
            Path(f"{frames_dir}/epoch_0_frame_{i}.png").write_bytes(png)

    _progress("Processing frames", total, _env_float("FAKE_NERF_RENDER_S"), redraws=10, work=frames)
    sys.stdout.flush()
    sys.stderr.flush()
    _spam(_env_float("FAKE_NERF_SPAM_MB"))
    if os.environ.get("FAKE_NERF_BAD_BYTES") == "1":
        for buffer in (sys.stdout.buffer, sys.stderr.buffer):
            buffer.write(BAD_BYTES)
            buffer.flush()
    _log("phase", phase="rendering", action="ran", frames=total)
    return frames_dir


def _final_video(job: Job, frames_dir: str) -> None:
    """creat_final_video (the web app's copy): out_refine.mp4, the mux, then the clean-up.

    Fact: the mux is one shell command with the audio path and outdir pasted in UNQUOTED; its
    output goes to pipes nobody reads and its status only decides a second try. The clean-up
    checks that each thing exists before deleting it, so it raises only where the file system
    itself refuses: a failed mux still exits 0.
    """
    print("video processing .. ")
    _checkpoint(job, "mux")
    # glob, as the real code does: a folder name with [ ] * ? matches nothing, and then
    # `size` was never assigned.
    count = len(glob.glob(f"{frames_dir}/*.png"))  # noqa: PTH207
    if not count:
        raise UnboundLocalError("local variable 'size' referenced before assignment")
    out, audio = job.outdir, job.opt("--test_data")
    refine = f"{out}/out_refine.mp4"
    ffmpeg = os.environ.get("FAKE_NERF_FFMPEG")
    if ffmpeg:  # a real MP4 at 25 fps: the portrait as a still, one frame per rendered frame
        argv = [ffmpeg, "-y", "-loglevel", "error", "-loop", "1", "-i", job.opt("--test_img")]
        argv += ["-t", f"{count / FPS:.2f}", "-r", str(FPS), "-vf", "scale=128:128"]
        argv += ["-pix_fmt", "yuv420p", "-c:v", "mpeg4", refine]
        subprocess.run(argv, check=False, stdin=subprocess.DEVNULL)
        # The web app's mux re-encodes with libx264 (upstream's copies the stream): H.264 is
        # also what a browser's <video> plays.
        mux = (
            f"{shlex.quote(ffmpeg)} -y -loglevel error -i {audio} -i {out}/out_refine.mp4"
            f" -c:v libx264 -preset ultrafast -crf 23 -pix_fmt yuv420p -c:a aac -b:a 128k"
            f" -movflags +faststart -shortest {out}/{FINAL_VIDEO}"
        )
    else:
        Path(refine).write_bytes(PLACEHOLDER + job.token.encode() + b"\n")
        mux = f"cat {audio} > /dev/null && cp {out}/out_refine.mp4 {out}/{FINAL_VIDEO}"
    print("Using ffmpeg:", shutil.which("ffmpeg"))
    no_video = os.environ.get("FAKE_NERF_NO_VIDEO") == "1"
    status = 1
    if not no_video:  # a space breaks it, a ';' runs code: exactly the real hazard
        status = subprocess.call(  # noqa: S602
            mux, shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    if status != 0 and not Path(f"{out}/{FINAL_VIDEO}").exists():
        # The web app retries with -b:v in place of -crf, its output no longer captured.
        print("ffmpeg -crf 参数不支持\uff0c尝试使用 -b:v 替代")  # the fullwidth comma is real
        if not no_video:
            os.system(mux)
    # The clean-up can fail only where the file system refuses (a permission, a link in the
    # way): FAKE_NERF_FAIL_AT=cleanup stands for that, after the video was made.
    _checkpoint(job, "cleanup")
    epoch_folder = _join(out, "epoch_0_final")
    if Path(epoch_folder).exists():
        shutil.rmtree(epoch_folder)
        print(f"Deleted folder: {epoch_folder}")
    out_refine_path = _join(out, "out_refine.mp4")
    if Path(out_refine_path).exists():
        Path(out_refine_path).unlink()
        print(f"Deleted file: {out_refine_path}")
    _log("phase", phase="mux", action="ran")


def _cache_dir(opts: dict[str, str | None], outdir: str) -> str:
    """The cache-capable script's choice: --cache_dir, else character/{name}, else --outdir."""
    if VARIANT != "cache":
        return outdir
    if (given := opts.get("--cache_dir")) is not None:
        return given
    if (name := opts.get("--character_name")) is not None:
        return f"character/{name}"
    return outdir


def _announce_cache_dir(job: Job) -> None:
    """Fact: made and announced before the video check, so a skipped run makes it too."""
    if VARIANT != "cache":
        return
    if job.opts.get("--cache_dir") is not None:
        _makedirs(job.cache_dir)
        print(f"Using custom cache directory: {job.cache_dir}")
    elif job.opts.get("--character_name") is not None:
        _makedirs(job.cache_dir)
        print(f"Using character-based cache directory: {job.cache_dir}")
    else:
        print(f"Using output directory as cache directory: {job.cache_dir}")


def _overwrite_inputs(job: Job) -> None:
    """FAKE_NERF_OVERWRITE_INPUTS=1: save over ``--test_img`` and ``--test_data`` in place.

    Not a fact of the real scripts (they are not known to do it): a script that saves to the
    path it was given, as ``PIL.Image.save`` or a re-encode to the same path would. Opening
    with ``"wb"`` truncates and rewrites that very file (its inode): through a hard link, the
    user's own. One byte more keeps both files readable (decoders skip trailing bytes).
    """
    if os.environ.get("FAKE_NERF_OVERWRITE_INPUTS") != "1":
        return
    for flag in ("--test_img", "--test_data"):
        path = Path(job.opt(flag))
        path.write_bytes(path.read_bytes() + b"\n")
        _log("overwrote", option=flag, path=str(path))


def _cwd_entries() -> dict[str, str]:
    """What the working directory holds: name -> ``link``, ``dir`` or ``file``."""
    entries: dict[str, str] = {}
    for entry in os.scandir("."):
        kind = "link" if entry.is_symlink() else "dir" if entry.is_dir() else "file"
        entries[entry.name] = kind
    return dict(sorted(entries.items()))


def _run(job: Job, args: list[str]) -> int:
    child_pid = None
    if os.environ.get("FAKE_NERF_SPAWN_CHILD") == "1":  # a grandchild the launcher must kill too
        child_pid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]).pid
    daemon_pid = _spawn_daemon() if os.environ.get("FAKE_NERF_SPAWN_DAEMON") == "1" else None
    _log(
        "start",
        argv=args,
        cwd=str(Path.cwd()),
        cwd_entries=_cwd_entries(),
        variant=VARIANT,
        path=os.environ.get("PATH"),
        pythonpath=os.environ.get("PYTHONPATH"),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        cache_dir=os.path.abspath(job.cache_dir),
        outdir=os.path.abspath(job.outdir),
        child_pid=child_pid,
        daemon_pid=daemon_pid,
    )
    _makedirs(job.outdir)
    _announce_cache_dir(job)
    if Path(f"{job.outdir}/{FINAL_VIDEO}").is_file():  # fact: a video there means do nothing
        print("The video already exist. Please check that.")
        _log("skip")
        return 0
    network = job.opt("--network")
    if Path(network).is_dir():  # `glob` is the function audio2NeRF_utils star-exported
        raise AttributeError("'function' object has no attribute 'glob'")
    print(f'Loading networks from "{network}"...')
    _read(network)  # dnnlib.util.open_url opens a local path with open(path, "rb")
    _checkpoint(job, "loading")
    _open_image(job.opt("--test_img"))
    _overwrite_inputs(job)
    Path(f"{job.outdir}/input_img.png").write_bytes(_png(job.token))
    _read(SEG)
    _import("Deep3DFaceRecon_pytorch", MODULES["Deep3DFaceRecon_pytorch"][0])
    _read(BFM_DEEP3D)
    print("model [FaceReconModel] was created")
    _read(DEEP3D_WEIGHTS)
    print(f"loading the model from {DEEP3D_WEIGHTS}")
    g_pti = _pti(job)
    _write_byproducts(job)
    _fitting(job, g_pti)
    frames_dir = _render(job)
    _final_video(job, frames_dir)
    return 0


def _spawn_daemon() -> int:
    """Start a daemon the classic way; return its pid once it runs.

    Fork, ``setsid`` (a session and process group of its own: a kill of the script's group
    misses it), fork again and leave, so it is nobody's child and never a session leader; its
    standard streams go to /dev/null, so it holds none of the launcher's pipes. It keeps the
    environment, as a daemon a real script starts would.
    """
    read, write = os.pipe()
    first = os.fork()
    if first == 0:  # the intermediate child
        try:
            os.close(read)
            os.setsid()
            daemon = os.fork()
            if daemon == 0:
                os.close(write)
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                sleep = [sys.executable, "-c", "import time; time.sleep(600)"]
                os.execv(sys.executable, sleep)  # noqa: S606 - a fixed command, no shell needed
            os.write(write, str(daemon).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(first, 0)
    with os.fdopen(read, "rb") as pipe:
        return int(pipe.read())


def _video_ok(outdir: str) -> bool:
    video = Path(outdir, FINAL_VIDEO)
    return video.is_file() and video.stat().st_size > 0


def main(argv: list[str] | None = None) -> int:
    """Run the fake script with `argv` (default: sys.argv[1:]) and return its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        parsed = _parse(args)
    except UsageError as err:
        print(
            f"Usage: {PROG} [OPTIONS]\nTry '{PROG} --help' for help.\n\nError: {err}",
            file=sys.stderr,
        )
        _log("exit", code=2, video=False)
        return 2
    if parsed is None:
        _print_help()
        _log("exit", code=0, video=False)
        return 0
    opts = {flag: value for flag, value in parsed.items() if value is not None}
    outdir = opts["--outdir"]
    job = Job(opts=opts, outdir=outdir, cache_dir=_cache_dir(parsed, outdir))
    try:
        code = _run(job, args)
    except Exception as exc:  # noqa: BLE001  # die as an uncaught error does: traceback, exit 1
        traceback.print_exception(type(exc), exc, exc.__traceback__)
        code = job.error_code
    _log("exit", code=code, video=_video_ok(outdir))
    return code


if __name__ == "__main__":
    sys.exit(main())
