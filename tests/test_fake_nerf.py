"""The fake NeRF script behaves like the real scripts (DESIGN.md section 2)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import wave
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

FAKE = Path(__file__).resolve().parents[1] / "src" / "nerfcache" / "testing" / "fake_nerf.py"
STOCK = "main_NeRFFaceSpeech_audio_driven_w_given_poses.py"
CACHE = "main_NeRFFaceSpeech_audio_driven_w_given_poses_cache.py"
PT_FILES = ("G_PTI.pt", "w_PTI.pt", "bg_PTI.pt", "fitted_coeffs.pt")
BYPRODUCTS = ("output_from_w_pivot_w_G_PTI.png", "img_tesnor_224_resize_prc.png")
VIDEO = "output_NeRFFaceSpeech.mp4"
PTI_READER_ERROR = (
    "RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory"
)


def _png(size: int = 16) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + b"\x80\x40\x20" * size for _ in range(size))
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _wav(path: Path) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"\x00\x00" * 3200)
    return path


@dataclass
class Layout:
    """A NERF_CODE_DIR with both scripts, plus a network, a portrait and an audio clip."""

    root: Path
    code: Path
    network: Path
    image: Path
    audio: Path
    log: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": os.environ["PATH"],
            "PYTHONPATH": str(self.code),
            "FAKE_NERF_LOG": str(self.log),
        }
        env.update(extra)
        return env

    def run(
        self,
        outdir: Path,
        *,
        cache_dir: Path | None = None,
        script: str = CACHE,
        audio: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        args: list[str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        if args is None:
            args = [
                f"--outdir={outdir}",
                "--trunc=0.7",
                f"--network={self.network}",
                f"--test_data={audio or self.audio}",
                f"--test_img={self.image}",
                "--motion_guide_img_folder=frames",
            ]
            if cache_dir is not None:
                args.append(f"--cache_dir={cache_dir}")
        return subprocess.run(
            [sys.executable, str(self.code / "StyleNeRF" / script), *args],
            cwd=cwd or self.code,
            env=env if env is not None else self.env(),
            capture_output=True,
            check=False,
            timeout=30,
        )

    def events(self, event: str | None = None) -> list[dict[str, object]]:
        if not self.log.exists():
            return []
        records = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [r for r in records if event is None or r["event"] == event]

    def phases(self) -> dict[str, str]:
        """The action of each phase of the LAST run in the log."""
        last_pid = self.events("start")[-1]["pid"]
        return {
            str(r["phase"]): str(r["action"]) for r in self.events("phase") if r["pid"] == last_pid
        }


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    code = tmp_path / "nerf"
    (code / "StyleNeRF").mkdir(parents=True)
    (code / "pretrained_networks").mkdir()
    (code / "pretrained_networks" / "seg.pth").write_bytes(b"seg")
    (code / "frames").mkdir()
    (code / "frames" / "0000.png").write_bytes(_png())
    for name in (STOCK, CACHE):
        shutil.copyfile(FAKE, code / "StyleNeRF" / name)
    network = tmp_path / "models" / "model.pkl"
    network.parent.mkdir()
    network.write_bytes(b"network weights")
    image = tmp_path / "portrait.png"
    image.write_bytes(_png())
    audio = _wav(tmp_path / "speech.wav")
    return Layout(tmp_path, code, network, image, audio, tmp_path / "log.jsonl")


def _is_pt(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return {"archive/data.pkl", "archive/version", "archive/data/0"} <= set(archive.namelist())


def _pt_data(path: Path) -> dict[str, object]:
    with zipfile.ZipFile(path) as archive:
        data: dict[str, object] = json.loads(archive.read("archive/data.pkl"))
    return data


def test_cache_variant_cold_then_warm(layout: Layout) -> None:
    cache = layout.root / "cache"
    cold = layout.run(layout.root / "out1", cache_dir=cache)
    assert cold.returncode == 0, cold.stderr
    assert layout.phases() == {
        "pti": "computed",
        "fitting": "computed",
        "rendering": "ran",
        "mux": "ran",
    }
    assert all(_is_pt(cache / name) for name in PT_FILES)
    assert not any((layout.root / "out1" / name).exists() for name in PT_FILES)
    assert (layout.root / "out1" / VIDEO).stat().st_size > 0
    g_pti = _pt_data(cache / "G_PTI.pt")
    assert _pt_data(cache / "fitted_coeffs.pt")["pti_token"] == g_pti["token"]
    assert g_pti["trunc"] == 0.7
    cold_byproducts = {name: (cache / name).read_bytes() for name in BYPRODUCTS}

    warm = layout.run(layout.root / "out2", cache_dir=cache)
    assert warm.returncode == 0, warm.stderr
    assert layout.phases()["pti"] == "loaded"
    assert layout.phases()["fitting"] == "loaded"
    pti_records = layout.events("phase")
    assert [r["token"] for r in pti_records if r["phase"] == "pti"] == [g_pti["token"]] * 2
    # Byproducts are rewritten on warm runs too (each run stamps its own token).
    assert all((cache / name).read_bytes() != cold_byproducts[name] for name in BYPRODUCTS)
    assert (layout.root / "out2" / VIDEO).exists()
    assert [r["code"] for r in layout.events("exit")] == [0, 0]


def test_stock_variant_caches_in_outdir(layout: Layout) -> None:
    out = layout.root / "out"
    # The `--opt value` form works as well as `--opt=value`.
    args = [
        "--network",
        str(layout.network),
        "--outdir",
        str(out),
        "--test_data",
        str(layout.audio),
        "--test_img",
        str(layout.image),
        "--motion_guide_img_folder",
        "frames",
    ]
    assert layout.run(out, script=STOCK, args=args).returncode == 0
    assert all(_is_pt(out / name) for name in PT_FILES)
    start = layout.events("start")[0]
    assert start["variant"] == "stock"
    assert start["cache_dir"] == str(out)
    (out / VIDEO).unlink()
    assert layout.run(out, script=STOCK, args=args).returncode == 0
    assert layout.phases()["pti"] == "loaded"
    assert layout.phases()["fitting"] == "loaded"


def test_start_record_describes_the_launch(layout: Layout) -> None:
    env = layout.env(CUDA_VISIBLE_DEVICES="1")
    result = layout.run(layout.root / "out", cache_dir=layout.root / "c", env=env)
    assert result.returncode == 0
    start = layout.events("start")[0]
    assert start["variant"] == "cache"
    assert start["cwd"] == str(layout.code)
    assert start["pythonpath"] == str(layout.code)
    assert start["cuda_visible_devices"] == "1"
    assert start["cache_dir"] == str(layout.root / "c")
    assert start["child_pid"] is None
    assert "--trunc=0.7" in start["argv"]  # type: ignore[operator]
    assert layout.events("exit")[0]["video"] is True


def test_stock_variant_rejects_cache_dir(layout: Layout) -> None:
    result = layout.run(layout.root / "out", cache_dir=layout.root / "c", script=STOCK)
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        f"Usage: {STOCK} [OPTIONS]",
        f"Try '{STOCK} --help' for help.",
        "",
        "Error: No such option: --cache_dir",
    ]
    assert not (layout.root / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--outdir=o"], "Error: Missing option '--network'."),
        (["--network=n"], "Error: Missing option '--outdir'."),
        (["--trunc=abc", "--network=n", "--outdir=o"], "Error: Invalid value for '--trunc'"),
        (["--noise-mode=loud", "--network=n", "--outdir=o"], "is not one of 'const'"),
        (["--network=n", "--outdir"], "Error: Option '--outdir' requires an argument."),
    ],
)
def test_usage_errors_exit_2(layout: Layout, args: list[str], message: str) -> None:
    result = layout.run(layout.root / "out", args=args)
    assert result.returncode == 2
    assert message in result.stderr.decode()


def test_help_exits_0(layout: Layout) -> None:
    result = layout.run(layout.root / "out", args=["--help"])
    assert result.returncode == 0
    assert "--cache_dir" in result.stdout.decode()


def test_existing_video_is_skipped(layout: Layout) -> None:
    out = layout.root / "out"
    out.mkdir()
    (out / VIDEO).write_bytes(b"old video")
    result = layout.run(out, cache_dir=layout.root / "c")
    assert result.returncode == 0
    assert "The video already exist. Please check that." in result.stdout.decode()
    assert len(layout.events("skip")) == 1
    assert not (layout.root / "c").exists()
    assert (out / VIDEO).read_bytes() == b"old video"


def test_wrong_cwd_crashes_on_seg_pth(layout: Layout) -> None:
    result = layout.run(layout.root / "out", cwd=layout.root)
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert "Traceback (most recent call last):" in stderr
    assert stderr.rstrip().endswith(
        "FileNotFoundError: [Errno 2] No such file or directory: 'pretrained_networks/seg.pth'"
    )
    assert layout.events("start")[0]["cwd"] == str(layout.root)
    assert layout.events("exit")[0]["code"] == 1


def test_missing_pythonpath_crashes_on_import(layout: Layout) -> None:
    env = layout.env()
    del env["PYTHONPATH"]
    result = layout.run(layout.root / "out", env=env)
    assert result.returncode == 1
    assert result.stderr.decode().rstrip().endswith("ModuleNotFoundError: No module named 'PTI'")


def test_missing_input_file_crashes(layout: Layout) -> None:
    result = layout.run(layout.root / "out", audio=layout.root / "nope.wav")
    assert result.returncode == 1
    assert "FileNotFoundError: [Errno 2] No such file or directory:" in result.stderr.decode()


@pytest.mark.parametrize("victim", ["w_PTI.pt", "fitted_coeffs.pt"])
def test_kill_during_save_leaves_truncated_file(layout: Layout, victim: str) -> None:
    cache = layout.root / "cache"
    env = layout.env(FAKE_NERF_KILL_DURING_SAVE=victim)
    killed = layout.run(layout.root / "out", cache_dir=cache, env=env)
    assert killed.returncode == -signal.SIGKILL
    assert not layout.events("exit")
    assert _is_pt(cache / "G_PTI.pt")
    assert (cache / victim).stat().st_size > 0
    assert not zipfile.is_zipfile(cache / victim)

    again = layout.run(layout.root / "out", cache_dir=cache)
    assert again.returncode == 1
    assert again.stderr.decode().rstrip().endswith(PTI_READER_ERROR)
    assert layout.events("exit")[-1]["code"] == 1


def test_fail_at_mux_keeps_complete_cache_files(layout: Layout) -> None:
    cache = layout.root / "cache"
    env = layout.env(FAKE_NERF_FAIL_AT="mux", FAKE_NERF_FAIL_CODE="3")
    result = layout.run(layout.root / "out", cache_dir=cache, env=env)
    assert result.returncode == 3
    assert result.stderr.decode().rstrip().endswith("RuntimeError: simulated failure in mux")
    assert all(_is_pt(cache / name) for name in PT_FILES)
    assert not (layout.root / "out" / VIDEO).exists()
    last_exit = layout.events("exit")[-1]
    assert (last_exit["code"], last_exit["video"]) == (3, False)


def test_fail_at_pti_only_when_computing(layout: Layout) -> None:
    cache = layout.root / "cache"
    env = layout.env(FAKE_NERF_FAIL_AT="pti")
    assert layout.run(layout.root / "out1", cache_dir=cache, env=env).returncode == 1
    assert not (cache / "G_PTI.pt").exists()
    assert layout.run(layout.root / "out1", cache_dir=cache).returncode == 0
    assert layout.run(layout.root / "out2", cache_dir=cache, env=env).returncode == 0


def test_no_video_still_exits_0(layout: Layout) -> None:
    env = layout.env(FAKE_NERF_NO_VIDEO="1")
    result = layout.run(layout.root / "out", cache_dir=layout.root / "c", env=env)
    assert result.returncode == 0
    assert not (layout.root / "out" / VIDEO).exists()
    assert layout.events("exit")[0]["video"] is False


def test_audio_path_with_space_gives_no_video(layout: Layout) -> None:
    audio = _wav(layout.root / "my speech.wav")
    result = layout.run(layout.root / "out", cache_dir=layout.root / "c", audio=audio)
    assert result.returncode == 0
    assert not (layout.root / "out" / VIDEO).exists()


def test_shell_metacharacters_in_audio_name_run_code(layout: Layout) -> None:
    audio = _wav(layout.root / "a;touch PWNED;.wav")
    result = layout.run(layout.root / "out", cache_dir=layout.root / "c", audio=audio)
    assert result.returncode == 0
    assert (layout.code / "PWNED").exists()  # as unsafe as the real script's shell command


def test_progress_and_markers(layout: Layout) -> None:
    result = layout.run(layout.root / "out", cache_dir=layout.root / "c")
    assert f'Loading networks from "{layout.network}"...' in result.stdout.decode()
    assert "video processing .. " in result.stdout.decode()
    assert b"\rProcessing frames: 100%|##########| 100/100" in result.stderr
    assert b"\r 50%|#####     | 1000/2000" in result.stderr


def test_bad_bytes_are_not_utf8(layout: Layout) -> None:
    env = layout.env(FAKE_NERF_BAD_BYTES="1")
    result = layout.run(layout.root / "out", cache_dir=layout.root / "c", env=env)
    assert result.returncode == 0
    for stream in (result.stdout, result.stderr):
        with pytest.raises(UnicodeDecodeError):
            stream.decode("utf-8")


def test_spam_floods_both_streams(layout: Layout) -> None:
    env = layout.env(FAKE_NERF_SPAM_MB="2")
    result = layout.run(layout.root / "out", cache_dir=layout.root / "c", env=env)
    assert result.returncode == 0
    assert len(result.stdout) + len(result.stderr) >= 2 * 1024 * 1024
    lines = result.stdout.splitlines() + result.stderr.splitlines()
    assert max(len(line) for line in lines) >= 512 * 1024
    assert sum(1 for line in lines if len(line) < 100) > 1000


def test_spawned_child_shares_the_process_group(layout: Layout) -> None:
    env = layout.env(FAKE_NERF_SPAWN_CHILD="1")
    subprocess.run(
        [
            sys.executable,
            str(layout.code / "StyleNeRF" / CACHE),
            "--network",
            str(layout.network),
            "--outdir",
            str(layout.root / "out"),
            "--test_data",
            str(layout.audio),
            "--test_img",
            str(layout.image),
            "--motion_guide_img_folder",
            "frames",
        ],
        cwd=layout.code,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
        timeout=30,
    )
    child_pid = layout.events("start")[0]["child_pid"]
    assert isinstance(child_pid, int)
    try:
        assert os.getpgid(child_pid) == os.getpgrp()
    finally:
        os.kill(child_pid, signal.SIGKILL)


def test_ffmpeg_mode_makes_a_real_mp4(layout: Layout) -> None:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    env = layout.env(FAKE_NERF_FFMPEG=imageio_ffmpeg.get_ffmpeg_exe())
    result = layout.run(layout.root / "out", cache_dir=layout.root / "c", env=env)
    assert result.returncode == 0, result.stderr
    video = (layout.root / "out" / VIDEO).read_bytes()
    assert video[4:8] == b"ftyp"
