from __future__ import annotations

import errno
import shutil
import threading
from pathlib import Path

import pytest
from filelock import FileLock

from nerfcache import GenerationCancelled
from nerfcache.testing import FakeProject
from nerfcache.workdir import WRITTEN_DIRS, working_dir
from tests.conftest import lock_is_free, tree, wait_until


def no_symlinks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system without symbolic links (FAT, some SMB mounts)."""

    def refuse(self: Path, *_args: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted", str(self))

    monkeypatch.setattr(Path, "symlink_to", refuse)


def test_the_view_resolves_every_entry_of_the_code_folder(nerf_project: FakeProject) -> None:
    code = nerf_project.settings.nerf_code_dir
    with working_dir(nerf_project.settings, nerf_project.root / "view", builds_pti=True) as cwd:
        assert cwd == nerf_project.root / "view"
        assert sorted(p.name for p in cwd.iterdir()) == sorted(p.name for p in code.iterdir())
        assert (cwd / "pretrained_networks" / "seg.pth").read_bytes() == (
            code / "pretrained_networks" / "seg.pth"
        ).read_bytes()
        assert (cwd / "frames").is_dir()
        assert (cwd / "StyleNeRF").resolve() == (code / "StyleNeRF").resolve()


def test_what_pti_writes_and_deletes_never_reaches_the_code_folder(
    nerf_project: FakeProject,
) -> None:
    code = nerf_project.settings.nerf_code_dir
    # What a crashed stock run leaves behind in the code folder: not linked, never written.
    (code / "checkpoints").mkdir()
    (code / "checkpoints" / "model__p.pt").write_bytes(b"an old run's generator")
    before = tree(code)
    with working_dir(nerf_project.settings, nerf_project.root / "view", builds_pti=True) as cwd:
        # What PTI does (DESIGN.md section 2): write into both folders, then rmtree them
        # (rmtree refuses a symbolic link: they must be real folders).
        for name in WRITTEN_DIRS:
            (cwd / name).mkdir(exist_ok=True)
            (cwd / name / "model__p.pt").write_bytes(b"weights")
            assert (cwd / name / "model__p.pt").read_bytes() == b"weights"
            shutil.rmtree(cwd / name)
    shutil.rmtree(nerf_project.root / "view")
    assert tree(code) == before


def test_two_views_do_not_share_what_pti_writes(nerf_project: FakeProject) -> None:
    settings = nerf_project.settings
    with (
        working_dir(settings, nerf_project.root / "a", builds_pti=True) as a,
        working_dir(settings, nerf_project.root / "b", builds_pti=True) as b,
    ):
        (a / "checkpoints").mkdir()
        (a / "checkpoints" / "model__p.pt").write_bytes(b"a")
        (b / "checkpoints").mkdir()
        (b / "checkpoints" / "model__p.pt").write_bytes(b"b")
        shutil.rmtree(b / "checkpoints")  # b's PTI ends first
        assert (a / "checkpoints" / "model__p.pt").read_bytes() == b"a"


def test_without_symlinks_runs_use_the_code_folder_and_builds_take_turns(
    nerf_project: FakeProject, monkeypatch: pytest.MonkeyPatch, log_messages
) -> None:
    no_symlinks(monkeypatch)
    settings = nerf_project.settings
    lock = settings.state_dir / "pti-in-code-dir.lock"
    with working_dir(settings, nerf_project.root / "a", builds_pti=True) as cwd:
        assert cwd == settings.nerf_code_dir
        assert not lock_is_free(lock)
        waited = threading.Event()
        entered = threading.Event()

        def second_build() -> None:
            with working_dir(
                settings, nerf_project.root / "b", builds_pti=True, on_wait=waited.set
            ):
                entered.set()

        thread = threading.Thread(target=second_build)
        thread.start()
        assert waited.wait(10)
        assert not entered.is_set()
        with working_dir(settings, nerf_project.root / "c", builds_pti=False) as warm:
            assert warm == settings.nerf_code_dir  # a warm run does no PTI: it does not wait
    thread.join(10)
    assert entered.is_set()
    assert lock_is_free(lock)
    warnings = [m for level, m in log_messages if level == "WARNING"]
    assert any("cannot make a private working directory" in m for m in warnings)
    assert any("take turns" in m for m in warnings)


def test_waiting_for_the_code_folder_can_be_cancelled(
    nerf_project: FakeProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_symlinks(monkeypatch)
    settings = nerf_project.settings
    settings.state_dir.mkdir(parents=True)
    held = FileLock(settings.state_dir / "pti-in-code-dir.lock")
    held.acquire()
    cancel = threading.Event()
    errors: list[BaseException] = []

    def build() -> None:
        try:
            with working_dir(
                settings,
                nerf_project.root / "a",
                builds_pti=True,
                cancel=cancel,
                on_wait=cancel.set,
            ):
                pass
        except GenerationCancelled as error:
            errors.append(error)

    thread = threading.Thread(target=build)
    thread.start()
    thread.join(10)
    held.release()
    assert wait_until(lambda: not thread.is_alive())
    assert len(errors) == 1
    assert "waiting for another build's PTI" in str(errors[0])
