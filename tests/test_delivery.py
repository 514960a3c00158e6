"""deliver: which runs made a video worth delivering, and where it goes (no subprocess)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nerfcache import Settings
from nerfcache.delivery import VIDEO_NAME, deliver
from nerfcache.run import RunOutcome


def _outcome(returncode: int | None) -> RunOutcome:
    return RunOutcome(returncode=returncode, duration_s=1.0, log_tail=("last line",))


@pytest.fixture
def staged(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "20261201T000000-1-abcdef"
    run.mkdir(parents=True)
    return run / VIDEO_NAME


@pytest.mark.parametrize(
    ("returncode", "delivered"),
    [
        (0, True),
        (1, True),  # the clean-up after the mux failed: the video is whole
        (-9, False),  # killed, maybe inside the mux
        (None, False),  # stopped by a timeout or a cancel
    ],
)
@pytest.mark.parametrize("video", [b"a video", b"", None])
def test_a_video_is_delivered_when_made_by_a_script_that_exited(
    tmp_path: Path, staged: Path, returncode: int | None, delivered: bool, video: bytes | None
) -> None:
    if video is not None:
        staged.write_bytes(video)
    out = tmp_path / "out"
    done = deliver(_outcome(returncode), staged, out, Settings(project_root=tmp_path))
    if delivered and video:
        assert done.video_path == out / VIDEO_NAME
        assert done.video_path.read_bytes() == video
        assert done.error is None
    else:
        assert done.video_path is None
        assert not (out / VIDEO_NAME).exists()
        assert done.error is not None
        assert ("made no video" if not video else "killed") in done.error


def test_a_video_that_cannot_go_to_its_folder_is_kept(tmp_path: Path, staged: Path) -> None:
    staged.write_bytes(b"a video")
    (tmp_path / "out").write_text("a file where the folder was")
    settings = Settings(project_root=tmp_path)
    done = deliver(_outcome(0), staged, tmp_path / "out", settings)
    assert done.video_path is None
    assert done.kept == settings.state_dir / "undelivered" / f"{staged.parent.name}.mp4"
    assert done.kept.read_bytes() == b"a video"
    assert done.error is not None
    assert f"it is kept at {done.kept}" in done.error
