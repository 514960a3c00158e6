"""Symlinks planted in the cache pointing outside it: refused or contained, never followed.

"Outside" is a folder of precious files; after every run (cold, stale, partial, cleared) it must
be exactly as it was: nothing written into it, nothing deleted from it.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from nerfcache import CharacterCache, InvalidInputError, NerfCacheError
from nerfcache.cache import CACHE_FILES
from nerfcache.testing import FakeProject, write_png
from tests.reliability.helpers import generate, tree, user_files


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder that is not nerfcache's to touch, laid out like one it might be tempted to."""
    folder = tmp_path / "outside"
    for sub in ("runs/experiment", "generations/old", "quarantine/a", "quarantine/b", "x", "y"):
        (folder / sub).mkdir(parents=True)
        (folder / sub / "important.txt").write_text("keep me")
    for name in ("manifest.json", "state.lock", "build.lock", "notes.txt"):
        (folder / name).write_text(f"precious {name}")
    for name in CACHE_FILES:  # complete archives the fake script can load: a legacy cache
        with zipfile.ZipFile(folder / name, "w") as archive:
            archive.writestr("archive/data.pkl", json.dumps({"kind": name, "token": "outside"}))
    return folder


def run_everything(project: FakeProject) -> list[object]:
    """Cold, warm, stale (a new portrait), partial (a truncated file), restored runs, a clear.

    Returns each outcome: a result, or the error it raised.
    """
    outcomes: list[object] = []

    def attempt(action: Callable[[], object]) -> None:
        try:
            outcomes.append(action())
        except (NerfCacheError, OSError) as error:  # refusing is fine; following is not
            outcomes.append(error)

    attempt(lambda: generate(project, "cold"))
    attempt(lambda: generate(project, "warm"))
    portrait = project.character_dir() / "images" / "portrait.png"
    original = portrait.read_bytes()
    write_png(portrait, (9, 9, 9))
    attempt(lambda: generate(project, "stale"))
    g_pti = project.character_dir() / "G_PTI.pt"
    if g_pti.is_file() and not g_pti.is_symlink():
        g_pti.write_bytes(g_pti.read_bytes()[:40])
    attempt(lambda: generate(project, "partial"))
    portrait.write_bytes(original)
    attempt(lambda: generate(project, "restored"))
    attempt(lambda: CharacterCache(project.settings, project.character).clear())
    return outcomes


@pytest.mark.parametrize("explicit_image", [False, True])
def test_character_folder_linked_outside_is_refused(nerf_project, outside, explicit_image) -> None:
    write_png(outside / "images" / "portrait.png", (1, 1, 1))
    (nerf_project.settings.cache_root / "intruder").symlink_to(outside)
    before = tree(outside)
    image = outside / "images" / "portrait.png" if explicit_image else None

    with pytest.raises(InvalidInputError, match="outside cache_root"):
        generate(nerf_project, character="intruder", test_image=image)
    with pytest.raises(InvalidInputError, match="outside cache_root"):
        CharacterCache(nerf_project.settings, "intruder")
    assert tree(outside) == before
    assert nerf_project.calls() == []


def test_character_folder_linked_inside_cache_root_stays_inside(nerf_project, tmp_path) -> None:
    settings = nerf_project.settings
    (settings.cache_root / "alias").symlink_to(nerf_project.character_dir())

    def nerfcache_s(path: Path) -> bool:
        return path.is_relative_to(settings.cache_root) or path.is_relative_to(settings.state_dir)

    before = tree(tmp_path, skip=nerfcache_s)
    before.pop("project/fake_nerf.log", None)
    assert generate(nerf_project, character="alias")
    after = tree(tmp_path, skip=nerfcache_s)
    after.pop("project/fake_nerf.log")
    after = {k: v for k, v in after.items() if not k.startswith("project/out")}
    assert after == before


@pytest.mark.parametrize(
    "links",
    [
        pytest.param(("G_PTI.pt",), id="one-cache-file"),  # no manifest: partial, quarantined
        pytest.param(CACHE_FILES, id="all-cache-files"),  # looks like a legacy cache
        pytest.param((".nerfcache/manifest.json",), id="manifest"),
        pytest.param((".nerfcache/state.lock", ".nerfcache/build.lock"), id="locks"),
    ],
)
def test_links_to_files_outside_are_never_written_through(nerf_project, outside, links) -> None:
    folder = nerf_project.character_dir()
    for name in links:
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).symlink_to(outside / Path(name).name)
    mine = user_files(folder)
    before = tree(outside)

    run_everything(nerf_project)

    assert tree(outside) == before
    assert user_files(folder) == mine


@pytest.mark.parametrize(
    "link", [".nerfcache", ".nerfcache/runs", ".nerfcache/generations", ".nerfcache/quarantine"]
)
def test_nerfcache_folders_linked_outside_are_refused_or_contained(
    nerf_project, outside, link
) -> None:
    folder = nerf_project.character_dir()
    (folder / link).parent.mkdir(exist_ok=True)
    (folder / link).symlink_to(outside)
    mine = user_files(folder)
    before = tree(outside)

    outcomes = run_everything(nerf_project)

    assert tree(outside) == before
    assert user_files(folder) == mine
    # Refused with nerfcache's own error, which says what to do, not a raw OSError.
    raw = [o for o in outcomes if isinstance(o, OSError) and not isinstance(o, NerfCacheError)]
    assert raw == []
