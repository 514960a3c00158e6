"""Hostile character, model and audio file names: a clear nerfcache error, or a run that works.

Either way nothing is written outside ``cache_root``, ``state_dir`` and the output folder (the
whole test tree is compared before and after every example, the system temp dir included), and
no shell metacharacter ever runs anything.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from nerfcache import InvalidInputError, MissingFileError, generate_video
from nerfcache.testing import FakeProject, make_fake_project, write_png, write_wav
from tests.reliability.helpers import changes, tree

HOSTILE_CHARACTERS = [
    *"/\\.;&|$`()<>*?[]{}~!#'\" -=%:,@^+\t\n\r",
    "\x00",
    "\x1b",
    "\x7f",
    "\x85",
    "\u200b",  # zero width space
    "\u200f",  # right-to-left mark
    "\u202e",  # right-to-left override
    "\u2028",  # line separator
    "\ufeff",  # byte order mark
    "\u2215",  # division slash, looks like /
    "\uff0f",  # fullwidth solidus
    "\u2024",  # one dot leader, looks like .
    "\uff0e",  # fullwidth full stop
    "\u0430",  # Cyrillic a
    "\u03bf",  # Greek omicron
    "\u0301",  # a combining acute accent
    "\u7eeb",  # a CJK character, 3 bytes in UTF-8
    "\U0001f600",  # an emoji, 4 bytes
    "\udcff",  # a lone surrogate (an undecodable byte, as os.fsdecode gives it)
]
PAYLOADS = [
    "",
    ".",
    "..",
    "../x",
    "../../../etc/passwd",
    "/etc/passwd",
    "a/../../b",
    "ayanami/..",
    "~",
    "~root",
    "$HOME",
    "$(touch PWNED)",
    "`touch PWNED`",
    ";touch PWNED;",
    "a b;touch PWNED;",
    "|touch PWNED",
    "&& touch PWNED",
    "-rf",
    "--help",
    "--outdir=/tmp",
    "\u202egnp.exe",
    "\u0430yanami",  # a confusable of the real character
    "ayanami\u200b",
    " ayanami",
    "ayanami ",
    "ayanami\n",
    "CON",
    "a" * 128,
    "a" * 129,
    "a" * 255,
    "\u7eeb" * 85,  # 255 bytes
]

hostile = st.text(st.sampled_from(HOSTILE_CHARACTERS) | st.characters(), max_size=16)
names = st.one_of(
    st.sampled_from(PAYLOADS),
    hostile,
    st.text(st.sampled_from(HOSTILE_CHARACTERS) | st.characters(), min_size=100, max_size=140),
)


examples = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same examples in every CI run
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Sandbox:
    """A fake project, and a check that a call wrote only where it may."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path
        self.project: FakeProject = make_fake_project(tmp_path / "project")
        self.out = tmp_path / "out"
        self.portrait = write_png(tmp_path / "inputs" / "portrait.png", (1, 2, 3))
        self.wav = write_wav(tmp_path / "inputs" / "clip.wav", seconds=0.1).read_bytes()
        self.system_tmp = tmp_path / "system-tmp"
        self.system_tmp.mkdir()

    def allowed(self, path: Path) -> bool:
        """cache_root, state_dir, the output folder, and the fake script's own log."""
        settings = self.project.settings
        return (
            path == self.project.log
            or path.is_relative_to(settings.cache_root)
            or path.is_relative_to(settings.state_dir)
            or path.is_relative_to(self.out)
        )

    def snapshot(self) -> dict[str, str]:
        return tree(self.root, skip=self.allowed)

    def call(self, **kwargs: object) -> None:
        """generate_video with one hostile input; check what it did."""
        before = self.snapshot()
        arguments: dict[str, object] = {
            "audio_path": self.project.audio,
            "character": self.project.character,
            "output_path": self.out,
            "model_name": self.project.model_name,
            "settings": self.project.settings,
            "test_image": self.portrait,
            **kwargs,
        }
        try:
            result = generate_video(**arguments)  # type: ignore[arg-type]
        except (InvalidInputError, MissingFileError) as error:
            event(f"refused: {type(error).__name__}")  # clearly
        else:
            event("works")
            assert result, result.log_tail[-5:]
            cache_root = self.project.settings.cache_root.resolve()
            assert result.cache_dir.resolve().parent == cache_root
            assert result.video_path == self.out / "output_NeRFFaceSpeech.mp4"
        assert changes(before, self.snapshot()) == set()
        assert list(self.root.rglob("PWNED")) == []


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    box = Sandbox(tmp_path)
    # nerfcache's shell-safe symlink dirs go to the system temp dir: watch that one too.
    monkeypatch.setattr(tempfile, "tempdir", str(box.system_tmp))
    return box


@examples
@given(name=names)
@example(name="$(touch PWNED)")
@example(name="..")
def test_hostile_character_names(sandbox: Sandbox, name: str) -> None:
    sandbox.call(character=name)


@examples
@given(name=st.one_of(names, names.map(lambda n: n + ".pkl")))
@example(name="../pretrained_networks/ffhq.pkl")
@example(name="$(touch PWNED).pkl")
def test_hostile_model_names(sandbox: Sandbox, name: str) -> None:
    model_dir = sandbox.project.settings.model_dir
    if "/" not in name and "\x00" not in name and name not in (".", ".."):
        # The model exists, so that a name the rules let through really runs.
        with contextlib.suppress(OSError, UnicodeEncodeError):
            (model_dir / name).write_bytes(b"a fake network")
    sandbox.call(model_name=name)


@examples
@given(name=st.one_of(names, names.map(lambda n: n + ".wav")))
@example(name="a b;touch PWNED;.wav")
@example(name="$(touch PWNED).wav")
@example(name="`touch PWNED`")
def test_hostile_audio_file_names(sandbox: Sandbox, name: str) -> None:
    uploads = sandbox.root / "uploads"
    audio = uploads / name
    uploaded = False
    try:
        if audio.parent == uploads:
            uploads.mkdir(exist_ok=True)
            audio.write_bytes(sandbox.wav)
            uploaded = True
    except (OSError, UnicodeEncodeError, ValueError):
        pass  # not a name the filesystem takes: nerfcache must still refuse it cleanly
    sandbox.call(audio_path=str(audio))
    if uploaded:  # the upload is the user's: never moved or changed
        assert audio.read_bytes() == sandbox.wav
