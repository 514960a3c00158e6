"""The fake NeRF script behaves like the real scripts (DESIGN.md section 2, the real code wins).

Each test runs the fake as a subprocess with a chosen working directory, in a project laid out by
``make_fake_project``, and checks what a launcher or a user would observe: exit codes, output
lines and streams, files written and deleted. docs/testing.md maps each behaviour to its test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import wave
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nerfcache.testing import make_fake_project, write_png, write_wav

STOCK = "main_NeRFFaceSpeech_audio_driven_w_given_poses.py"
CACHE = "main_NeRFFaceSpeech_audio_driven_w_given_poses_cache.py"
PT_FILES = ("G_PTI.pt", "w_PTI.pt", "bg_PTI.pt", "fitted_coeffs.pt")
BYPRODUCTS = ("output_from_w_pivot_w_G_PTI.png", "img_tesnor_224_resize_prc.png")
VIDEO = "output_NeRFFaceSpeech.mp4"
PTI_READER_ERROR = (
    "RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory"
)
BANNER = (
    "########################### audio2exp_model Loading Done #################################"
)
COLD_STDOUT = [
    "model [FaceReconModel] was created",
    "loading the model from pretrained_networks/Deep3DFaceRecon_pytorch/face_recon/epoch_20.pth",
    "Deleted folder: embeddings",
    "Deleted folder: checkpoints",
    BANNER,
    "loading models",
    "loading images",
    "image is loaded. width: 224, height: 224",
    "landmarks detected.",
    "start rigid fitting",
    "start non-rigid fitting",
    "video processing .. ",
]


@dataclass
class Layout:
    """A fake project: its code folder (the real scripts' working directory) and inputs."""

    root: Path
    code: Path
    network: Path
    image: Path
    audio: Path
    log: Path

    def env(self, **extra: str) -> dict[str, str]:
        # No PYTHONPATH: the real scripts do not need it.
        return {"PATH": os.environ["PATH"], "FAKE_NERF_LOG": str(self.log), **extra}

    def args(
        self,
        outdir: Path | str,
        *,
        cache_dir: Path | str | None = None,
        audio: Path | None = None,
        image: Path | None = None,
        guide: str = "frames",
    ) -> list[str]:
        args = [
            f"--outdir={outdir}",
            "--trunc=0.7",
            f"--network={self.network}",
            f"--test_data={audio or self.audio}",
            f"--test_img={image or self.image}",
            f"--motion_guide_img_folder={guide}",
        ]
        return args if cache_dir is None else [*args, f"--cache_dir={cache_dir}"]

    def command(self, args: list[str], script: str = CACHE) -> list[str]:
        return [sys.executable, str(self.code / "StyleNeRF" / script), *args]

    def run(
        self,
        outdir: Path | str,
        *,
        cache_dir: Path | str | None = None,
        script: str = CACHE,
        audio: Path | None = None,
        image: Path | None = None,
        guide: str = "frames",
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        args: list[str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        if args is None:
            args = self.args(outdir, cache_dir=cache_dir, audio=audio, image=image, guide=guide)
        done = subprocess.run(
            self.command(args, script),
            cwd=cwd or self.code,
            env=env if env is not None else self.env(),
            capture_output=True,
            check=False,
            timeout=30,
        )
        # Decoded here, not by subprocess: text mode would turn tqdm's "\r" into newlines.
        return subprocess.CompletedProcess(
            done.args,
            done.returncode,
            done.stdout.decode("utf-8", "replace"),
            done.stderr.decode("utf-8", "replace"),
        )

    def view(self, name: str) -> Path:
        """A private working directory: one symbolic link per entry of the code folder."""
        view = self.root / name
        view.mkdir()
        for entry in self.code.iterdir():
            (view / entry.name).symlink_to(entry)
        return view

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
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
    project = make_fake_project(tmp_path / "project")
    return Layout(
        root=tmp_path,
        code=project.settings.nerf_code_dir,
        network=project.settings.model_dir / project.model_name,
        image=project.character_dir() / "images" / "portrait.png",
        audio=project.audio,
        log=project.log,
    )


def _is_pt(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return {"archive/data.pkl", "archive/version", "archive/data/0"} <= set(archive.namelist())


def _pt_data(path: Path) -> dict[str, object]:
    with zipfile.ZipFile(path) as archive:
        data: dict[str, object] = json.loads(archive.read("archive/data.pkl"))
    return data


BAR = re.compile(r"(?:(?P<desc>.*?): )?\s*\d+%\|.*\| (?P<n>\d+/\d+) \[.*")
COUNTER = re.compile(r"(?:(?P<desc>.*?): )?(?P<n>\d+it) \[.*")  # tqdm without a total


def _bars(stderr: str) -> list[tuple[str, str]]:
    """Each tqdm bar's description and last state (``n/total``, or ``nit``), in order."""
    bars = []
    for line in stderr.split("\n"):
        redraws = [r.rstrip() for r in line.split("\r") if r.strip()]
        if redraws and (match := BAR.fullmatch(redraws[-1]) or COUNTER.fullmatch(redraws[-1])):
            bars.append((match["desc"] or "", match["n"]))
    return bars


def _in_order(lines: list[str], expected: list[str]) -> bool:
    """Whether ``expected`` occurs in ``lines`` as a subsequence."""
    remaining = iter(lines)
    return all(any(line == want for line in remaining) for want in expected)


def _wav(path: Path, seconds: float, rate: int = 16000) -> Path:
    return write_wav(path, seconds=seconds, rate=rate)


# --- options and the start -------------------------------------------------------------------


def test_stock_variant_rejects_cache_dir(layout: Layout) -> None:
    result = layout.run(layout.root / "out", cache_dir=layout.root / "c", script=STOCK)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
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
    assert message in result.stderr


@pytest.mark.parametrize(("script", "listed"), [(CACHE, True), (STOCK, False)])
def test_help_lists_the_options(layout: Layout, script: str, listed: bool) -> None:
    result = layout.run(layout.root / "out", script=script, args=["--help"])
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert "  --trunc FLOAT                   Truncation psi  [default: 1]" in lines
    assert "  --test_data TEXT" in lines  # no help text, no default shown
    assert ("--cache_dir" in result.stdout) is listed


def test_inputs_default_to_the_working_directory(layout: Layout) -> None:
    out = layout.root / "out"
    no_image = layout.run(out, args=[f"--outdir={out}", f"--network={layout.network}"])
    assert no_image.returncode == 1
    assert f'Loading networks from "{layout.network}"...' in no_image.stdout
    assert no_image.stderr.rstrip().endswith("IsADirectoryError: [Errno 21] Is a directory: '.'")
    # With a portrait but no audio, "." fails only when the audio is read, after PTI and 3DMM.
    no_audio = layout.run(
        out, args=[f"--outdir={out}", f"--network={layout.network}", f"--test_img={layout.image}"]
    )
    assert no_audio.returncode == 1
    assert no_audio.stderr.rstrip().endswith("IsADirectoryError: [Errno 21] Is a directory: '.'")
    assert all(_is_pt(out / name) for name in PT_FILES)
    # The motion guide folder "." is listed: its entries are folders, so no pose is found.
    frames = layout.run(
        out,
        args=[
            f"--outdir={out}",
            f"--network={layout.network}",
            f"--test_img={layout.image}",
            f"--test_data={layout.audio}",
        ],
    )
    assert frames.returncode == 0, frames.stderr
    assert frames.stdout.splitlines().count("pose undetected") == 25
    assert (out / VIDEO).is_file()


@pytest.mark.parametrize(
    ("extra", "cache", "message"),
    [
        ([], "out", "Using output directory as cache directory: {out}"),
        (["--character_name=rei"], "character/rei", "Using character-based cache directory: {c}"),
        (
            ["--character_name=rei", "--cache_dir={root}/mine"],
            "{root}/mine",
            "Using custom cache directory: {root}/mine",
        ),
    ],
)
def test_cache_dir_choice(layout: Layout, extra: list[str], cache: str, message: str) -> None:
    view = layout.view("cwd")
    out = layout.root / "out"
    args = [*layout.args(out), *(e.format(root=layout.root) for e in extra)]
    result = layout.run(out, args=args, cwd=view)
    assert result.returncode == 0, result.stderr
    where = cache.format(root=layout.root)
    folder = out if where == "out" else view / where
    assert result.stdout.splitlines()[0] == message.format(out=out, c=where, root=layout.root)
    assert all(_is_pt(folder / name) for name in PT_FILES)
    assert layout.events("start")[0]["cache_dir"] == str(folder)


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
    first = layout.run(out, script=STOCK, args=args)
    assert first.returncode == 0
    assert not first.stdout.startswith("Using")  # no cache-directory line
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
    assert start["pythonpath"] is None  # not needed
    assert start["cuda_visible_devices"] == "1"
    assert start["cache_dir"] == str(layout.root / "c")
    assert start["child_pid"] is None
    assert start["daemon_pid"] is None
    assert {"PTI", "StyleNeRF", "pretrained_networks", "frames"} <= set(start["cwd_entries"])
    assert "--trunc=0.7" in start["argv"]
    assert layout.events("exit")[0]["video"] is True


@pytest.mark.parametrize("script", [CACHE, STOCK])
def test_existing_video_is_checked_first(layout: Layout, script: str) -> None:
    out = layout.root / "out"
    out.mkdir()
    (out / VIDEO).write_bytes(b"old video")
    cache = layout.root / "c"
    args = layout.args(out, cache_dir=cache if script == CACHE else None)
    args[2] = f"--network={layout.root / 'no such network.pkl'}"  # never opened
    result = layout.run(out, args=args, script=script)
    assert result.returncode == 0
    expected = ["The video already exist. Please check that."]
    if script == CACHE:  # the cache directory is made and announced before the check
        expected.insert(0, f"Using custom cache directory: {cache}")
        assert cache.is_dir()
    assert result.stdout.splitlines() == expected
    assert len(layout.events("skip")) == 1
    assert sorted(p.name for p in out.iterdir()) == [VIDEO]
    assert (out / VIDEO).read_bytes() == b"old video"


# --- the working directory -------------------------------------------------------------------


def test_wrong_cwd_crashes_on_seg_pth(layout: Layout) -> None:
    result = layout.run(layout.root / "out", cwd=layout.root)
    assert result.returncode == 1
    assert "Traceback (most recent call last):" in result.stderr
    assert result.stderr.rstrip().endswith(
        "FileNotFoundError: [Errno 2] No such file or directory: 'pretrained_networks/seg.pth'"
    )
    # seg.pth is read after the network and the portrait: input_img.png is already there.
    assert (layout.root / "out" / "input_img.png").is_file()
    assert layout.events("start")[0]["cwd"] == str(layout.root)
    assert layout.events("exit")[0]["code"] == 1


@pytest.mark.parametrize(
    ("folder", "module", "cold_only"),
    [
        ("PTI", "training_pti", True),
        ("3DMM-Fitting-Pytorch", "fit_single_img_custom", False),
        ("Deep3DFaceRecon_pytorch", "Deep3Dmodels", False),
    ],
)
def test_sys_path_folders_are_imported_from_the_cwd(
    layout: Layout, folder: str, module: str, cold_only: bool
) -> None:
    cache = layout.root / "cache"
    assert layout.run(layout.root / "warm-up", cache_dir=cache).returncode == 0
    view = layout.view("cwd")
    (view / folder).unlink()
    cold = layout.run(layout.root / "cold", cache_dir=layout.root / "cold-cache", cwd=view)
    assert cold.returncode == 1
    assert cold.stderr.rstrip().endswith(f"ModuleNotFoundError: No module named '{module}'")
    warm = layout.run(layout.root / "warm", cache_dir=cache, cwd=view)
    assert (warm.returncode == 0) is cold_only  # a warm run never imports PTI


def test_no_pythonpath_and_a_private_view_of_the_code(layout: Layout) -> None:
    view = layout.view("private")
    result = layout.run(layout.root / "out", cache_dir=layout.root / "c", cwd=view)
    assert result.returncode == 0, result.stderr
    assert (layout.root / "out" / VIDEO).is_file()
    # PTI made and removed its folders in the view; the code folder was never written to.
    assert not (view / "embeddings").exists()
    assert not (view / "checkpoints").exists()
    assert sorted(p.name for p in layout.code.iterdir()) == sorted(p.name for p in view.iterdir())
    assert layout.events("start")[0]["cwd_entries"]["PTI"] == "link"


def test_pti_writes_into_the_working_directory(layout: Layout) -> None:
    view = layout.view("cwd")
    env = layout.env(FAKE_NERF_KILL_DURING_SAVE="model__p.pt")
    killed = layout.run(layout.root / "out", cache_dir=layout.root / "c", cwd=view, env=env)
    assert killed.returncode == -signal.SIGKILL
    # A build killed late in PTI leaves them behind, under the real names.
    assert (view / "embeddings" / "barcelona" / "PTI" / "p" / "0.pt").is_file()
    assert (view / "checkpoints" / "model__p.pt").is_file()
    assert not (layout.root / "c" / "G_PTI.pt").exists()
    done = layout.run(layout.root / "out", cache_dir=layout.root / "c", cwd=view)
    assert done.returncode == 0
    assert not (view / "embeddings").exists()
    assert not (view / "checkpoints").exists()


def _cold_builds_at_once(layout: Layout, cwds: list[Path]) -> list[subprocess.Popen[str]]:
    """Start one cold build per working directory, each of its own character, PTI overlapping."""
    barrier = f"{layout.root / 'pti-barrier'}:{len(cwds)}"
    runs = []
    for index, cwd in enumerate(cwds):
        image = write_png(layout.root / f"char{index}" / "portrait.png", (index * 40, 90, 90))
        args = layout.args(
            layout.root / f"out{index}", cache_dir=layout.root / f"cache{index}", image=image
        )
        runs.append(
            subprocess.Popen(
                layout.command(args),
                cwd=cwd,
                env=layout.env(FAKE_NERF_PTI_BARRIER=barrier),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return runs


def test_two_cold_builds_sharing_the_cwd_break_each_other(layout: Layout) -> None:
    runs = _cold_builds_at_once(layout, [layout.code, layout.code])
    errors = [run.communicate(timeout=40)[1] for run in runs]
    results = list(zip([run.returncode for run in runs], errors, strict=True))
    assert sorted(code for code, _ in results) == [0, 1]
    failed = next(stderr for code, stderr in results if code == 1)
    # The first build's rmtree took ./checkpoints away before the second saved its checkpoint.
    assert failed.rstrip().endswith("RuntimeError: Parent directory ./checkpoints does not exist.")
    assert sorted((layout.root / f"cache{i}" / "G_PTI.pt").exists() for i in range(2)) == [
        False,
        True,
    ]


def test_two_cold_builds_in_private_cwds_both_succeed(layout: Layout) -> None:
    runs = _cold_builds_at_once(layout, [layout.view("a"), layout.view("b")])
    for run in runs:
        run.communicate(timeout=40)
    assert [run.returncode for run in runs] == [0, 0]
    assert all((layout.root / f"out{i}" / VIDEO).is_file() for i in range(2))


# --- what is written where -------------------------------------------------------------------


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
    # Exactly the four cache files and two byproducts (no fitted_img_*.png), and in outdir
    # only the portrait and the video: out_refine.mp4 and epoch_0_final/ were deleted.
    assert sorted(p.name for p in cache.iterdir()) == sorted([*PT_FILES, *BYPRODUCTS])
    assert sorted(p.name for p in (layout.root / "out1").iterdir()) == ["input_img.png", VIDEO]
    assert all(_is_pt(cache / name) for name in PT_FILES)
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
    assert sorted(p.name for p in (layout.root / "out2").iterdir()) == ["input_img.png", VIDEO]
    assert [r["code"] for r in layout.events("exit")] == [0, 0]


def test_missing_motion_guide_folder_fails_after_pti_and_fit(layout: Layout) -> None:
    cache, out = layout.root / "cache", layout.root / "out"
    result = layout.run(out, cache_dir=cache, guide="no-frames")
    assert result.returncode == 1
    assert result.stderr.rstrip().endswith(
        "FileNotFoundError: [Errno 2] No such file or directory: 'no-frames'"
    )
    assert "start non-rigid fitting" in result.stdout
    assert [desc for desc, _ in _bars(result.stderr)][-1] == "mel:"
    assert all(_is_pt(cache / name) for name in PT_FILES)
    assert sorted(p.name for p in out.iterdir()) == ["epoch_0_final", "input_img.png"]


def test_kill_during_save_leaves_truncated_file(layout: Layout) -> None:
    cache = layout.root / "cache"
    env = layout.env(FAKE_NERF_KILL_DURING_SAVE="w_PTI.pt")
    killed = layout.run(layout.root / "out", cache_dir=cache, env=env)
    assert killed.returncode == -signal.SIGKILL
    assert not layout.events("exit")
    assert _is_pt(cache / "G_PTI.pt")
    assert (cache / "w_PTI.pt").stat().st_size > 0
    assert not zipfile.is_zipfile(cache / "w_PTI.pt")

    again = layout.run(layout.root / "out", cache_dir=cache)
    assert again.returncode == 1
    assert again.stderr.rstrip().endswith(PTI_READER_ERROR)
    assert layout.events("exit")[-1]["code"] == 1


@pytest.mark.parametrize(
    ("image", "error"),
    [
        ("folder", "IsADirectoryError: [Errno 21] Is a directory: '{path}'"),
        ("text", "PIL.UnidentifiedImageError: cannot identify image file '{path}'"),
        ("missing", "FileNotFoundError: [Errno 2] No such file or directory: '{path}'"),
    ],
)
def test_bad_portrait_fails_like_pil(layout: Layout, image: str, error: str) -> None:
    path = layout.root / image
    if image == "folder":
        path.mkdir()
    elif image == "text":
        path.write_text("not an image")
    result = layout.run(layout.root / "out", cache_dir=layout.root / "c", image=path)
    assert result.returncode == 1
    assert result.stderr.rstrip().endswith(error.format(path=path))


def test_network_folder_fails_on_the_star_imported_glob(layout: Layout) -> None:
    out = layout.root / "out"
    args = [*layout.args(out)]
    args[2] = f"--network={layout.network.parent}"
    result = layout.run(out, args=args)
    assert result.returncode == 1
    assert "Loading networks" not in result.stdout
    assert result.stderr.rstrip().endswith(
        "AttributeError: 'function' object has no attribute 'glob'"
    )


# --- output ----------------------------------------------------------------------------------


def test_cold_then_warm_output(layout: Layout) -> None:
    audio = _wav(layout.root / "clip.wav", 0.4, rate=22050)  # 10 frames at 25 fps
    cache, out = layout.root / "cache", layout.root / "out"
    cold = layout.run(out, cache_dir=cache, audio=audio)
    assert cold.returncode == 0, cold.stderr
    assert _bars(cold.stderr) == [
        ("", "1000/1000"),  # PTI's W projection
        ("", "2000/2000"),  # PTI's tuning
        ("", "1000/1000"),  # rigid fitting
        ("", "500/500"),  # non-rigid fitting
        ("mel:", "10/10"),
        ("Processing frames", "10/10"),
    ]
    assert "mel:: 100%|" in cold.stderr
    lines = cold.stdout.splitlines()
    assert lines[:2] == [
        f"Using custom cache directory: {cache}",
        f'Loading networks from "{layout.network}"...',
    ]
    assert _in_order(lines, COLD_STDOUT)
    assert lines[-3:] == [
        f"Using ffmpeg: {shutil.which('ffmpeg')}",  # the PATH's ffmpeg or None, as the real one
        f"Deleted folder: {out}/epoch_0_final",
        f"Deleted file: {out}/out_refine.mp4",
    ]
    assert "fitted_img" not in cold.stdout + cold.stderr

    (out / VIDEO).unlink()
    warm = layout.run(out, cache_dir=cache, audio=audio)
    assert warm.returncode == 0, warm.stderr
    assert _bars(warm.stderr) == [("mel:", "10/10"), ("Processing frames", "10/10")]
    assert "start rigid fitting" not in warm.stdout
    assert "Deleted folder: embeddings" not in warm.stdout
    assert BANNER in warm.stdout.splitlines()


def test_pti_tuning_can_stop_early(layout: Layout) -> None:
    env = layout.env(FAKE_NERF_PTI_TUNING_STEPS="741")
    result = layout.run(layout.root / "out", cache_dir=layout.root / "c", env=env)
    assert result.returncode == 0
    assert _bars(result.stderr)[:2] == [("", "1000/1000"), ("", "741/2000")]


def test_fewer_guide_images_than_frames(layout: Layout) -> None:
    guide = layout.root / "guide"
    for index in range(3):
        write_png(guide / f"{index}.png", (1, 2, 3))
    (guide / "notes.txt").write_text("not an image")  # listed and sorted last: unreadable
    result = layout.run(layout.root / "out", cache_dir=layout.root / "c", guide=str(guide))
    assert result.returncode == 0
    assert result.stdout.splitlines().count("pose undetected") == 25 - 3


@pytest.mark.parametrize(("encoding", "full"), [("utf-8", "\u2588"), ("ascii", "#")])
def test_bars_follow_the_stream_encoding(layout: Layout, encoding: str, full: str) -> None:
    env = layout.env(PYTHONIOENCODING=encoding)
    result = layout.run(layout.root / "out", cache_dir=layout.root / "c", env=env)
    assert result.returncode == 0
    assert f"\rProcessing frames: 100%|{full * 10}| 25/25 [" in result.stderr


def test_audio_shorter_than_a_frame_fails_at_the_video(layout: Layout) -> None:
    audio = _wav(layout.root / "blip.wav", 0.02)
    result = layout.run(layout.root / "out", cache_dir=layout.root / "c", audio=audio)
    assert result.returncode == 1
    assert _bars(result.stderr)[-2:] == [("mel:", "0it"), ("Processing frames", "0it")]
    assert result.stderr.rstrip().endswith(
        "UnboundLocalError: local variable 'size' referenced before assignment"
    )


# --- the mux and the clean-up ----------------------------------------------------------------


def test_fail_at_mux_keeps_complete_cache_files(layout: Layout) -> None:
    cache = layout.root / "cache"
    env = layout.env(FAKE_NERF_FAIL_AT="mux", FAKE_NERF_FAIL_CODE="3")
    result = layout.run(layout.root / "out", cache_dir=cache, env=env)
    assert result.returncode == 3
    assert result.stderr.rstrip().endswith("RuntimeError: simulated failure in mux")
    assert all(_is_pt(cache / name) for name in PT_FILES)
    assert not (layout.root / "out" / VIDEO).exists()
    last_exit = layout.events("exit")[-1]
    assert (last_exit["code"], last_exit["video"]) == (3, False)


def test_fail_at_cleanup_exits_1_after_the_video_was_made(layout: Layout) -> None:
    out = layout.root / "out"
    result = layout.run(
        out, cache_dir=layout.root / "c", env=layout.env(FAKE_NERF_FAIL_AT="cleanup")
    )
    assert result.returncode == 1
    assert result.stderr.rstrip().endswith("RuntimeError: simulated failure in cleanup")
    assert (out / VIDEO).stat().st_size > 0
    assert (out / "epoch_0_final").is_dir()  # the clean-up never happened


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
    audio = _wav(layout.root / "my speech.wav", 1.0)
    result = layout.run(layout.root / "out", cache_dir=layout.root / "c", audio=audio)
    assert result.returncode == 0
    assert not (layout.root / "out" / VIDEO).exists()
    # The web app's second try, then the clean-up all the same.
    assert "ffmpeg -crf 参数不支持\uff0c尝试使用 -b:v 替代" in result.stdout
    assert sorted(p.name for p in (layout.root / "out").iterdir()) == ["input_img.png"]


def test_shell_metacharacters_in_audio_name_run_code(layout: Layout) -> None:
    audio = _wav(layout.root / "a;touch PWNED;.wav", 1.0)
    result = layout.run(layout.root / "out", cache_dir=layout.root / "c", audio=audio)
    assert result.returncode == 0
    assert (layout.code / "PWNED").exists()  # as unsafe as the real script's shell command


def test_cleanup_failure_exits_1_after_the_video(layout: Layout) -> None:
    out = layout.root / "out"
    out.mkdir()
    (layout.root / "frames-elsewhere").mkdir()
    (out / "epoch_0_final").symlink_to(layout.root / "frames-elsewhere")
    result = layout.run(out, cache_dir=layout.root / "c")
    assert result.returncode == 1
    assert (out / VIDEO).stat().st_size > 0  # made before the clean-up failed
    assert result.stderr.rstrip().endswith("OSError: Cannot call rmtree on a symbolic link")
    exit_record = layout.events("exit")[0]
    assert (exit_record["code"], exit_record["video"]) == (1, True)


# --- knobs for tests -------------------------------------------------------------------------


def test_bad_bytes_are_not_utf8(layout: Layout) -> None:
    env = layout.env(FAKE_NERF_BAD_BYTES="1")
    result = subprocess.run(
        layout.command(layout.args(layout.root / "out", cache_dir=layout.root / "c")),
        cwd=layout.code,
        env=env,
        capture_output=True,
        check=False,
        timeout=30,
    )
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


def _started_quietly(layout: Layout, env: dict[str, str]) -> dict[str, object]:
    """Run the fake to its end with its output discarded; its start record."""
    subprocess.run(
        layout.command(layout.args(layout.root / "out")),
        cwd=layout.code,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
        timeout=30,
    )
    start: dict[str, object] = layout.events("start")[0]
    return start


def test_spawned_child_shares_the_process_group(layout: Layout) -> None:
    child_pid = _started_quietly(layout, layout.env(FAKE_NERF_SPAWN_CHILD="1"))["child_pid"]
    assert isinstance(child_pid, int)
    try:
        assert os.getpgid(child_pid) == os.getpgrp()
    finally:
        os.kill(child_pid, signal.SIGKILL)


def test_overwrite_inputs_saves_over_the_given_files_in_place(layout: Layout) -> None:
    image = shutil.copyfile(layout.image, layout.root / "given.png")
    audio = shutil.copyfile(layout.audio, layout.root / "given.wav")
    alias = layout.root / "alias.png"
    os.link(image, alias)  # what a hard-linked input would be: the user's file itself
    before = {path: (path.stat().st_ino, path.read_bytes()) for path in (image, audio)}
    env = layout.env(FAKE_NERF_OVERWRITE_INPUTS="1")
    result = layout.run(
        layout.root / "out", cache_dir=layout.root / "c", image=image, audio=audio, env=env
    )
    assert result.returncode == 0, result.stderr
    assert (layout.root / "out" / VIDEO).stat().st_size > 0
    for path, (inode, data) in before.items():
        assert path.stat().st_ino == inode  # the same file, written over
        assert path.read_bytes() != data
    assert alias.read_bytes() == image.read_bytes()
    assert [e["option"] for e in layout.events("overwrote")] == ["--test_img", "--test_data"]


def test_spawned_daemon_leaves_the_session_and_outlives_the_script(layout: Layout) -> None:
    env = layout.env(FAKE_NERF_SPAWN_DAEMON="1")
    daemon_pid = _started_quietly(layout, env)["daemon_pid"]
    assert isinstance(daemon_pid, int)
    try:
        # Out of the script's session and process group (a group kill misses it), and alive.
        assert os.getsid(daemon_pid) != os.getsid(0)
        assert os.getpgid(daemon_pid) != os.getpgrp()
        environ = Path(f"/proc/{daemon_pid}/environ").read_bytes().split(b"\0")
        assert f"FAKE_NERF_LOG={env['FAKE_NERF_LOG']}".encode() in environ  # it keeps the env
    finally:
        os.kill(daemon_pid, signal.SIGKILL)


def test_ffmpeg_mode_makes_a_real_mp4(layout: Layout) -> None:
    import imageio_ffmpeg  # type: ignore[import-untyped]  # the [video] extra, in [dev]

    env = layout.env(FAKE_NERF_FFMPEG=imageio_ffmpeg.get_ffmpeg_exe())
    result = layout.run(layout.root / "out", cache_dir=layout.root / "c", env=env)
    assert result.returncode == 0, result.stderr
    video = (layout.root / "out" / VIDEO).read_bytes()
    assert video[4:8] == b"ftyp"
    # H.264 and AAC, as the web app's mux makes them: what a browser's <video> plays.
    assert b"avc1" in video
    assert b"mp4a" in video


def test_wav_length_sets_the_frame_count(layout: Layout) -> None:
    audio = _wav(layout.root / "long.wav", 2.0, rate=8000)
    with wave.open(str(audio)) as clip:
        assert clip.getnframes() == 16000
    result = layout.run(layout.root / "out", cache_dir=layout.root / "c", audio=audio)
    assert result.returncode == 0
    assert ("Processing frames", "50/50") in _bars(result.stderr)
