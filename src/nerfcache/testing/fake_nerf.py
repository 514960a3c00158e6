"""A fake of the NeRFFaceSpeech talking-head scripts, faithful to DESIGN.md section 2.

Standard library only: it runs under whatever Python the launcher starts, without nerfcache.
Copied verbatim to both real file names; a stem ending in ``_cache`` makes it the cache-capable
script (it accepts ``--character_name`` and ``--cache_dir``), any other name the stock one.
Behaviour is steered by ``FAKE_NERF_*`` environment variables (durations, failures, a kill while
saving, log spam, a JSON-lines event log); see the nerfcache testing docs.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import traceback
import uuid
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["main"]

PROG = Path(__file__).name
VARIANT = "cache" if Path(__file__).stem.endswith("_cache") else "stock"
PTI_FILES = ("G_PTI.pt", "w_PTI.pt", "bg_PTI.pt")
FINAL_VIDEO = "output_NeRFFaceSpeech.mp4"
PLACEHOLDER = b"NERFCACHE FAKE VIDEO (placeholder: no ffmpeg)\n"
BAD_BYTES = b"\xff\xfe bad \x80 bytes\n"
MIB = 1024 * 1024


@dataclass(frozen=True)
class OptSpec:
    """One click option of the real script: its flag, help line and how click checks it."""

    flag: str
    metavar: str
    help: str
    required: bool = False
    default: str | None = None
    choices: tuple[str, ...] = ()
    is_float: bool = False


STOCK_OPTIONS = (
    OptSpec("--network", "TEXT", "Network pickle filename", required=True),
    OptSpec("--trunc", "FLOAT", "Truncation psi", default="1", is_float=True),
    OptSpec(
        "--noise-mode",
        "[const|random|none]",
        "Noise mode",
        default="const",
        choices=("const", "random", "none"),
    ),
    OptSpec("--outdir", "DIR", "Where to save the output images", required=True),
    OptSpec("--test_data", "TEXT", "Driving audio file"),
    OptSpec("--test_img", "TEXT", "Portrait image"),
    OptSpec("--motion_guide_img_folder", "TEXT", "Folder of motion guide frames"),
)
# Fact: only the cache-capable script knows these two; the stock one rejects them (exit 2).
CACHE_OPTIONS = (
    *STOCK_OPTIONS,
    OptSpec("--character_name", "TEXT", "Character name"),
    OptSpec("--cache_dir", "TEXT", "Directory for PTI and 3DMM caches"),
)
OPTIONS = CACHE_OPTIONS if VARIANT == "cache" else STOCK_OPTIONS


class UsageError(Exception):
    """A command-line error, reported the way click reports it (exit code 2)."""


@dataclass
class Job:
    """One run: the parsed options, where things go, and this run's unique token."""

    opts: dict[str, str | None]
    outdir: Path
    cache_dir: Path
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    error_code: int = 1  # becomes FAKE_NERF_FAIL_CODE when a simulated failure fires


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
    print(f"Usage: {PROG} [OPTIONS]\n\nOptions:")
    rows = [(f"{s.flag} {s.metavar}", s) for s in OPTIONS]
    for left, spec in rows:
        extra = "  [required]" if spec.required else ""
        extra = f"  [default: {spec.default}]" if spec.default is not None else extra
        text = f"{spec.help}{extra}"
        if len(left) > 30:  # click moves the help of a long option to its own line
            print(f"  {left}\n{'':34}{text}")
        else:
            print(f"  {left:<30}  {text}")
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


def _checkpoint(job: Job, phase: str) -> None:
    """FAKE_NERF_FAIL_AT: crash with a Python traceback at the start of `phase`."""
    if os.environ.get("FAKE_NERF_FAIL_AT") == phase:
        job.error_code = int(_env_float("FAKE_NERF_FAIL_CODE", 1))
        raise RuntimeError(f"simulated failure in {phase}")


def _tqdm(desc: str, total: int, redraws: int, seconds: float) -> None:
    """Draw a tqdm-style bar on stderr, redrawn with carriage returns (fact: tqdm, no newlines).

    Like tqdm (mininterval 0.1 s), a long phase redraws at least every 0.1 s.
    """
    redraws = max(redraws, min(int(seconds * 10), total))
    for i in range(redraws + 1):
        if i and seconds > 0:
            time.sleep(seconds / redraws)
        n = total * i // redraws
        elapsed = seconds * i / redraws  # the planned clock: stable output, "?it/s" when instant
        full, partial = divmod(n * 100 // total, 10)
        bar = ("#" * full + (str(partial) if partial else "")).ljust(10)
        rate = n / elapsed if elapsed > 0 else 0.0
        left = (total - n) / rate if rate else 0.0
        speed = f"{rate:4.1f}it/s" if rate else "?it/s"
        sys.stderr.write(
            f"\r{desc}{n * 100 // total:3d}%|{bar}| {n}/{total} "
            f"[{_mmss(elapsed)}<{_mmss(left)}, {speed}]"
        )
        sys.stderr.flush()
    sys.stderr.write("\n")
    sys.stderr.flush()


def _mmss(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
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


def _save_pt(path: Path, payload: dict[str, object]) -> None:
    """Write a torch.save-like zip straight to the final name (fact: no temp file, no rename)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", json.dumps(payload).encode())
        archive.writestr("archive/version", b"3")
        archive.writestr("archive/data/0", bytes(int(_env_float("FAKE_NERF_PT_KB", 4) * 1024)))
    blob = buf.getvalue()
    # Opening with "wb" truncates in place, as torch.save does: a hard link shares the damage.
    with path.open("wb") as fh:
        if os.environ.get("FAKE_NERF_KILL_DURING_SAVE") == path.name:
            fh.write(blob[: len(blob) // 2])
            fh.flush()
            os.fsync(fh.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        fh.write(blob)


def _load_pt(path: Path) -> dict[str, object]:
    """Load a .pt; a truncated one crashes exactly like torch.load (fact: later runs crash)."""
    try:
        with zipfile.ZipFile(path) as archive:
            data: object = json.loads(archive.read("archive/data.pkl"))
    except zipfile.BadZipFile:
        raise RuntimeError(
            "PytorchStreamReader failed reading zip archive: failed finding central directory"
        ) from None
    return data if isinstance(data, dict) else {}


def _check_preconditions(job: Job) -> None:
    """Crash like the real script when it is not started the way the original launcher did."""
    # Fact: it must run with cwd = NERF_CODE_DIR (relative pretrained_networks/seg.pth).
    if not Path("pretrained_networks/seg.pth").is_file():
        raise _missing("pretrained_networks/seg.pth")
    # Fact: the launcher set PYTHONPATH to NERF_CODE_DIR so that `import PTI` works.
    cwd = Path.cwd().resolve()
    entries = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if not any(Path(entry).resolve() == cwd for entry in entries if entry):
        raise ModuleNotFoundError("No module named 'PTI'", name="PTI")
    for flag, is_dir in (
        ("--network", False),
        ("--motion_guide_img_folder", True),
        ("--test_img", False),
        ("--test_data", False),
    ):
        value = job.opts[flag]
        if value is None:
            raise TypeError("expected str, bytes or os.PathLike object, not NoneType")
        if not (Path(value).is_dir() if is_dir else Path(value).is_file()):
            raise _missing(value)


def _pti(job: Job) -> dict[str, object]:
    """Load the PTI group if G_PTI.pt exists (that file alone decides), else compute and save."""
    cache = job.cache_dir
    if (cache / "G_PTI.pt").exists():
        group = [_load_pt(cache / name) for name in PTI_FILES]  # a missing w/bg file crashes
        g_pti, action = group[0], "loaded"
    else:
        _checkpoint(job, "pti")
        _tqdm("", 2000, 10, _env_float("FAKE_NERF_PTI_S"))
        g_pti = {
            "kind": "G_PTI",
            "image_sha256": _sha256(str(job.opts["--test_img"])),
            "network_sha256": _sha256(str(job.opts["--network"])),
            "trunc": float(str(job.opts["--trunc"])),
            "token": uuid.uuid4().hex,
        }
        for name in PTI_FILES:
            _save_pt(cache / name, {**g_pti, "kind": Path(name).stem})
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
    """Fact: every run, warm too, writes these into the cache dir and reads the 3DMM input back."""
    png = _png(job.token)
    for name in ("output_from_w_pivot_w_G_PTI.png", "img_tesnor_224_resize_prc.png"):
        (job.cache_dir / name).write_bytes(png)
    # Two runs sharing one cache dir race here: the other one's image would be fitted.
    if job.token.encode() not in (job.cache_dir / "img_tesnor_224_resize_prc.png").read_bytes():
        raise RuntimeError(
            "3DMM input img_tesnor_224_resize_prc.png was overwritten by another run"
        )


def _fitting(job: Job, g_pti: dict[str, object]) -> None:
    """Load fitted_coeffs.pt if present (valid only with its PTI group), else fit and save it."""
    path = job.cache_dir / "fitted_coeffs.pt"
    if path.exists():
        coeffs, action = _load_pt(path), "loaded"
    else:
        _checkpoint(job, "fitting")
        seconds = _env_float("FAKE_NERF_FIT_S")
        for stage in ("rigid", "non-rigid"):
            print(f"{stage} fitting", flush=True)
            _tqdm("", 500, 5, seconds / 2)
            print(f"done {stage} fitting. lm_loss: 0.0123", flush=True)
        coeffs = {
            "kind": "fitted_coeffs",
            "pti_token": g_pti.get("token"),
            "token": uuid.uuid4().hex,
        }
        _save_pt(path, coeffs)
        action = "computed"
    # Fact: fitted_img_*.png is a byproduct of every run (DESIGN.md section 2), warm ones too.
    (job.cache_dir / "fitted_img_0.png").write_bytes(_png(job.token))
    _log("phase", phase="fitting", action=action, pti_token=coeffs.get("pti_token"))


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
    deadline = time.monotonic() + 30
    while len(list(Path(folder).iterdir())) < int(count):
        if time.monotonic() > deadline:
            raise RuntimeError(f"barrier: fewer than {count} runs rendering at once")
        time.sleep(0.01)


def _render(job: Job) -> None:
    """Render the frames: tqdm progress, optional noise, then {outdir}/output.mp4."""
    _checkpoint(job, "rendering")
    _barrier()
    _tqdm("Processing frames: ", 100, 20, _env_float("FAKE_NERF_RENDER_S"))
    sys.stdout.flush()
    sys.stderr.flush()
    _spam(_env_float("FAKE_NERF_SPAM_MB"))
    if os.environ.get("FAKE_NERF_BAD_BYTES") == "1":
        for buffer in (sys.stdout.buffer, sys.stderr.buffer):
            buffer.write(BAD_BYTES)
            buffer.flush()
    frames = job.outdir / "output.mp4"
    ffmpeg = os.environ.get("FAKE_NERF_FFMPEG")
    if ffmpeg:
        image = str(job.opts["--test_img"])
        argv = [ffmpeg, "-y", "-loglevel", "error", "-loop", "1", "-i", image, "-t", "1"]
        argv += ["-r", "10", "-vf", "scale=128:128", "-pix_fmt", "yuv420p", "-c:v", "mpeg4"]
        subprocess.run([*argv, str(frames)], check=False, stdin=subprocess.DEVNULL)
    else:
        frames.write_bytes(PLACEHOLDER + job.token.encode() + b"\n")
    _log("phase", phase="rendering", action="ran")


def _mux(job: Job) -> None:
    """Fact: one shell command, audio path and outdir pasted UNQUOTED; its status is ignored."""
    _checkpoint(job, "mux")
    audio, out = job.opts["--test_data"], job.opts["--outdir"]
    ffmpeg = os.environ.get("FAKE_NERF_FFMPEG")
    if ffmpeg:
        command = (
            f"{ffmpeg} -y -loglevel error -i {out}/output.mp4 -i {audio} "
            f"-c:v copy -c:a aac -shortest {out}/{FINAL_VIDEO}"
        )
    else:
        command = f"cat {audio} > /dev/null && cp {out}/output.mp4 {out}/{FINAL_VIDEO}"
    if os.environ.get("FAKE_NERF_NO_VIDEO") != "1":
        os.system(command)  # a space breaks it, a ';' runs code: exactly the real hazard
    _log("phase", phase="mux", action="ran")


def _run(job: Job, args: list[str]) -> int:
    print(f'Loading networks from "{job.opts["--network"]}"...', flush=True)
    child_pid = None
    if os.environ.get("FAKE_NERF_SPAWN_CHILD") == "1":  # a grandchild the launcher must kill too
        child_pid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]).pid
    _log(
        "start",
        argv=args,
        cwd=str(Path.cwd()),
        variant=VARIANT,
        path=os.environ.get("PATH"),
        pythonpath=os.environ.get("PYTHONPATH"),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        cache_dir=str(job.cache_dir.absolute()),
        outdir=str(job.outdir.absolute()),
        child_pid=child_pid,
    )
    _check_preconditions(job)
    if (job.outdir / FINAL_VIDEO).exists():  # fact: an existing video means do nothing, exit 0
        print("The video already exist. Please check that.", flush=True)
        _log("skip")
        return 0
    _checkpoint(job, "loading")
    job.outdir.mkdir(parents=True, exist_ok=True)
    job.cache_dir.mkdir(parents=True, exist_ok=True)
    g_pti = _pti(job)
    _write_byproducts(job)
    _fitting(job, g_pti)
    _render(job)
    print("video processing .. ", flush=True)
    _mux(job)
    return 0


def _video_ok(outdir: Path) -> bool:
    video = outdir / FINAL_VIDEO
    return video.is_file() and video.stat().st_size > 0


def main(argv: list[str] | None = None) -> int:
    """Run the fake script with `argv` (default: sys.argv[1:]) and return its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        opts = _parse(args)
    except UsageError as err:
        print(
            f"Usage: {PROG} [OPTIONS]\nTry '{PROG} --help' for help.\n\nError: {err}",
            file=sys.stderr,
        )
        _log("exit", code=2, video=False)
        return 2
    if opts is None:
        _print_help()
        _log("exit", code=0, video=False)
        return 0
    outdir = Path(str(opts["--outdir"]))
    # The stock script caches in --outdir; the cache-capable one uses --cache_dir when given.
    cache_dir = Path(given) if (given := opts.get("--cache_dir")) else outdir
    job = Job(opts=opts, outdir=outdir, cache_dir=cache_dir)
    try:
        code = _run(job, args)
    except (OSError, RuntimeError, ImportError, TypeError) as exc:
        sys.stdout.flush()
        traceback.print_exception(type(exc), exc, exc.__traceback__)
        code = job.error_code
    _log("exit", code=code, video=_video_ok(outdir))
    return code


if __name__ == "__main__":
    sys.exit(main())
