"""The real scripts' output, as lines reach ProgressTracker (DESIGN.md section 2).

run.py splits the stream at every ``\\r`` and ``\\n``, so each tqdm redraw is a line of its own.
A replay is a list of printed lines and ``Bar``s in the order the cache-capable script prints
them; ``lines()`` flattens it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Bar:
    """A tqdm bar's redraws: ``desc`` ("" untitled), ``total`` steps, ending at ``stop``.

    ``stop`` below ``total`` is a loop that breaks early (PTI's tuning stops once its loss is
    low enough): the bar ends there and a newline follows.
    """

    desc: str
    total: int
    stop: int | None = None
    redraws: int = 8
    rate: float = 10.0  # steps a second: sets the [elapsed<left, rate] part
    between: tuple[str, ...] = ()  # what the loop prints on lines of their own meanwhile
    glued: str = ""  # what a print writes right after the first draw, before any newline

    def lines(self) -> list[str]:
        end = self.total if self.stop is None else self.stop
        counts = sorted({end * i // self.redraws for i in range(self.redraws + 1)})
        redraws = [self._draw(n) for n in counts]
        redraws[0] += self.glued
        return [*redraws[:2], *self.between, *redraws[2:]]

    def _draw(self, n: int) -> str:
        percent = n * 100 // self.total
        full, partial = divmod(percent, 10)
        bar = ("#" * full + (str(partial) if partial else "")).ljust(10)
        prefix = f"{self.desc}: " if self.desc else ""
        if n == 0:
            return f"{prefix}{percent:3d}%|{bar}| {n}/{self.total} [00:00<?, ?it/s]"
        elapsed, left = n / self.rate, (self.total - n) / self.rate
        return (
            f"{prefix}{percent:3d}%|{bar}| {n}/{self.total} "
            f"[{_mmss(elapsed)}<{_mmss(left)}, {self.rate:5.2f}it/s]"
        )


def _mmss(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


Replay = list[str | Bar]

# The web app's cache dir is the character's folder: its name is the user's, and so is the path.
START: Replay = [
    "Using custom cache directory: /data/fitting stuff/Processing frames/",
    'Loading networks from "/models/video processing/ffhq_start rigid fitting.pkl"...',
    'Downloading: "https://download.pytorch.org/models/resnet18-5c106cde.pth" to'
    " /root/.cache/torch/hub/checkpoints/resnet18-5c106cde.pth",
    "  0%|          | 0.00/44.7M [00:00<?, ?B/s]",  # torch hub's bar counts bytes, not steps
    "100%|##########| 44.7M/44.7M [00:00<00:00, 103MB/s]",
    "model [FaceReconModel] was created",
    "loading the model from pretrained_networks/Deep3DFaceRecon_pytorch/face_recon/epoch_20.pth",
    "create cuda ctx on device cuda:0",
]
# A first synthesis builds a plugin: its print lands right after the bar's first draw.
PTI_PROJECTION = Bar(
    "", 1000, rate=25.0, glued='Setting up PyTorch plugin "upfirdn2d_plugin"... Done.'
)
PTI_TUNING = Bar("", 2000, stop=1234, rate=6.0)  # SingleIDCoach: stops early on a low LPIPS
PTI: Replay = [
    "Setting up [LPIPS] perceptual loss: trunk [alex], v[0.1], spatial [off]",
    "Loading model from: /opt/conda/lib/python3.8/site-packages/lpips/weights/v0.1/alex.pth",
    "/opt/conda/lib/python3.8/site-packages/torchvision/models/_utils.py:208: UserWarning: The"
    " parameter 'pretrained' is deprecated since 0.13",
    'Setting up PyTorch plugin "bias_act_plugin"... Done.',
    PTI_PROJECTION,
    PTI_TUNING,
    "Deleted folder: embeddings",  # PTI cleans up after itself: not the mux's "Deleted" lines
    "Deleted folder: checkpoints",
]
AUDIO2EXP: Replay = [
    "########################### audio2exp_model Loading Done #################################",
]
RIGID = Bar("", 1000, rate=120.0)
NON_RIGID = Bar("", 500, rate=15.0)
FITTING: Replay = [
    "loading models",
    "loading images",
    "image is loaded. width: 224, height: 224",
    "A face is detected. l: 0, t: 0, r: 224, b: 224",
    "landmarks detected.",
    "start rigid fitting",
    RIGID,
    "done rigid fitting. lm_loss: 0.012345",
    "start non-rigid fitting",
    NON_RIGID,
    "done non rigid fitting. lm_loss: 0.010000\tphoto_loss: 0.050000\t",
]
MEL = Bar("mel:", 100, rate=999.0)  # one step per video frame
# The audio's frames at 25 fps; a frame whose pose is not found is reported and rendered anyway.
FRAMES = Bar("Processing frames", 100, rate=2.9, between=("pose undetected",))
RENDERING: Replay = [MEL, FRAMES]
ENCODING: Replay = [
    "video processing .. ",
    "Using ffmpeg: /usr/bin/ffmpeg",
    "Deleted folder: /data/out/fitting/epoch_0_final",
    "Deleted file: /data/out/fitting/out_refine.mp4",
]

COLD: Replay = [*START, *PTI, *AUDIO2EXP, *FITTING, *RENDERING, *ENCODING]
PTI_ONLY: Replay = [*START, *AUDIO2EXP, *FITTING, *RENDERING, *ENCODING]  # PTI cached, no fit
WARM: Replay = [*START, *AUDIO2EXP, *RENDERING, *ENCODING]

# (name, replay, plan, the stages in order with skipped=True for those reported as skipped)
REPLAYS = [
    (
        "cold",
        COLD,
        {"pti": True, "fitting": True},
        [("loading", False), ("pti", False), ("fitting", False), ("rendering", False)],
    ),
    (
        "pti_only",
        PTI_ONLY,
        {"pti": False, "fitting": True},
        [("loading", False), ("pti", True), ("fitting", False), ("rendering", False)],
    ),
    (
        "warm",
        WARM,
        {"pti": False, "fitting": False},
        [("loading", False), ("pti", True), ("fitting", True), ("rendering", False)],
    ),
]


def lines(replay: Sequence[str | Bar]) -> list[str]:
    """The replay as the tracker reads it: one line per print and per redraw."""
    out: list[str] = []
    for item in replay:
        out.extend(item.lines() if isinstance(item, Bar) else [item])
    return out
