"""The cache commands: list, show, verify, clear, prune, export, import."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock
from pydantic import TypeAdapter

from nerfcache.cache import CACHE_FILES
from nerfcache.cli import output
from nerfcache.cli.options import parse_size
from nerfcache.testing import FakeProject, make_fake_project
from tests.cli.helpers import build, cli


@pytest.mark.parametrize(
    "command",
    [["cache", "list"], ["cache", "prune", "--keep", "1", "--yes"]],
    ids=["list", "prune"],
)
def test_a_missing_cache_root_is_a_wrong_setting_not_zero_caches(
    nerf_project: FakeProject, command: list[str]
) -> None:
    root = nerf_project.settings.cache_root
    shutil.rmtree(root)
    result = cli(nerf_project, *command)
    assert result.exit_code == 2
    assert f"cache_root {root} does not exist" in result.stderr
    assert not root.exists()


def test_cache_list_json_and_plain(nerf_project: FakeProject) -> None:
    build(nerf_project)
    nerf_project.add_character("rei")
    result = cli(nerf_project, "cache", "list", "--json")
    assert result.exit_code == 0, result.output
    listed = {entry["character"]: entry for entry in json.loads(result.stdout)}
    assert sorted(listed) == ["ayanami", "rei"]
    ayanami = listed["ayanami"]
    assert ayanami["status"] == "warm"
    assert ayanami["in_use"] is False
    assert sorted(ayanami["files"]) == sorted(CACHE_FILES)
    assert ayanami["size_bytes"] == sum(ayanami["files"].values())
    assert len(ayanami["fingerprint"]["image_sha256"]) == 64
    assert listed["rei"]["status"] == "cold"

    plain = cli(nerf_project, "cache", "list")
    lines = plain.stdout.splitlines()
    assert lines[0].split() == [
        "character", "status", "cache", "on", "disk", "last", "used", "set", "aside", "in", "use"
    ]  # fmt: skip
    assert lines[1].split()[:2] == ["ayanami", "warm"]
    assert "│" not in plain.stdout  # no table borders when not a terminal


def test_cache_show(nerf_project: FakeProject) -> None:
    build(nerf_project)
    result = cli(nerf_project, "cache", "show", "ayanami", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["path"] == str(nerf_project.character_dir())
    assert shown["network"].endswith("ffhq.pkl")

    missing = cli(nerf_project, "cache", "show", "ayanmi")
    assert missing.exit_code == 2
    assert "error: no character 'ayanmi' in cache_root" in missing.stderr
    assert "known: ayanami" in missing.stderr


def test_cache_verify_then_fix(nerf_project: FakeProject) -> None:
    build(nerf_project)
    path = nerf_project.character_dir() / "w_PTI.pt"
    path.write_bytes(b"\0" * path.stat().st_size)  # same size: only reading tells

    found = cli(nerf_project, "cache", "verify", "--json")
    assert found.exit_code == 1
    (report,) = json.loads(found.stdout)
    assert report["ok"] is False
    assert report["status"] == "partial"
    assert [f["subject"] for f in report["findings"] if f["level"] == "error"] == ["w_PTI.pt"]

    fixed = cli(nerf_project, "cache", "verify", "ayanami", "--fix", "--json")
    assert fixed.exit_code == 0, fixed.output
    assert json.loads(fixed.stdout)[0]["action"] == "quarantined"
    assert cli(nerf_project, "cache", "verify").exit_code == 0  # now cold: nothing to check


def test_cache_clear_is_a_dry_run_without_yes(nerf_project: FakeProject) -> None:
    build(nerf_project)
    folder = nerf_project.character_dir()
    dry = cli(nerf_project, "cache", "clear", "ayanami")
    assert dry.exit_code == 0
    assert "would free" in dry.stdout
    assert "nothing deleted" in dry.stdout
    assert (folder / "G_PTI.pt").is_file()

    done = cli(nerf_project, "cache", "clear", "ayanami", "--yes")
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith("freed ")
    assert not (folder / "G_PTI.pt").exists()
    assert (folder / "audio.wav").is_file()
    assert (folder / "images" / "portrait.png").is_file()


def test_cache_clear_of_a_cache_in_use(nerf_project: FakeProject) -> None:
    build(nerf_project)
    with FileLock(nerf_project.character_dir() / ".nerfcache" / "build.lock"):
        dry = cli(nerf_project, "cache", "clear", "ayanami")
        assert "in use now" in dry.stdout
        result = cli(nerf_project, "cache", "clear", "ayanami", "--yes")
    assert result.exit_code == 1
    assert "is in use" in result.stderr
    assert (nerf_project.character_dir() / "G_PTI.pt").is_file()


def test_cache_prune_summary_and_locks(nerf_project: FakeProject) -> None:
    build(nerf_project, "busy")
    build(nerf_project, "idle")
    lock = FileLock(nerf_project.character_dir("busy") / ".nerfcache" / "runs" / "x-1-a.lock")
    with lock:
        dry = cli(nerf_project, "cache", "prune", "--max-size", "0", "--json")
        assert dry.exit_code == 0, dry.output
        summary = json.loads(dry.stdout)
        assert summary["dry_run"] is True
        assert [c["character"] for c in summary["removed"]] == ["idle"]
        assert [c["character"] for c in summary["skipped"]] == ["busy"]
        assert summary["freed_bytes"] == summary["removed"][0]["total_bytes"]
        assert (nerf_project.character_dir("idle") / "G_PTI.pt").is_file()

        done = cli(nerf_project, "cache", "prune", "--max-size", "0", "--yes")
        assert done.exit_code == 0, done.output
        assert "in use: kept" in done.stdout
    assert not (nerf_project.character_dir("idle") / "G_PTI.pt").exists()
    assert (nerf_project.character_dir("busy") / "G_PTI.pt").is_file()


def test_cache_prune_older_than(nerf_project: FakeProject) -> None:
    build(nerf_project)
    kept = cli(nerf_project, "cache", "prune", "--older-than", "1d", "--yes", "--json")
    assert kept.exit_code == 0, kept.output
    assert json.loads(kept.stdout)["removed"] == []
    gone = cli(nerf_project, "cache", "prune", "--older-than", "0s", "--yes", "--json")
    assert [c["character"] for c in json.loads(gone.stdout)["removed"]] == ["ayanami"]


@pytest.mark.parametrize(
    "args",
    [(), ("--max-size", "12X"), ("--older-than", "soon"), ("--keep", "-1")],
)
def test_cache_prune_bad_input(nerf_project: FakeProject, args) -> None:
    result = cli(nerf_project, "cache", "prune", *args)
    assert result.exit_code == 2


@pytest.mark.parametrize(
    ("text", "size"), [("0", 0), ("800M", 800 << 20), ("1.5g", 3 << 29), ("2TiB", 2 << 40)]
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_export_and_import(nerf_project: FakeProject, tmp_path: Path) -> None:
    build(nerf_project)
    archive = tmp_path / "ayanami.tar.gz"
    exported = cli(nerf_project, "cache", "export", "ayanami", str(archive), "--gzip")
    assert exported.exit_code == 0, exported.output
    assert "exported ayanami: 4 files" in exported.stderr

    untrusted = cli(nerf_project, "cache", "import", str(archive), "--as", "rei")
    assert untrusted.exit_code == 2
    assert "torch.load" in untrusted.stderr
    assert "--trust" in untrusted.stderr
    assert not nerf_project.character_dir("rei").exists()

    imported = cli(nerf_project, "cache", "import", str(archive), "--as", "rei", "--trust")
    assert imported.exit_code == 0, imported.output
    assert imported.stdout.startswith("imported rei: 4 files")
    assert "no portrait for rei here" in imported.stderr


def test_commands_run_as_real_processes_through_a_pipe(tmp_path: Path) -> None:
    source = make_fake_project(tmp_path / "source")
    build(source)
    target = make_fake_project(tmp_path / "target", character="rei")
    command = [sys.executable, "-m", "nerfcache", "--project-root"]
    with subprocess.Popen(
        [*command, str(source.root), "cache", "export", "ayanami", "-"], stdout=subprocess.PIPE
    ) as export:
        done = subprocess.run(
            [*command, str(target.root), "cache", "import", "-", "--trust"],
            stdin=export.stdout,
            capture_output=True,
            text=True,
            check=False,
        )
    assert export.returncode == 0
    assert done.returncode == 0, done.stderr
    listing = subprocess.run(
        [*command, str(target.root), "cache", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    statuses = {c["character"]: c["status"] for c in json.loads(listing.stdout)}
    assert statuses == {"ayanami": "warm", "rei": "cold"}
    error = subprocess.run(
        [*command, str(target.root), "cache", "show", "ghost"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert error.returncode == 2
    assert error.stderr.startswith("error: no character 'ghost'")
    assert "Traceback" not in error.stderr


def test_export_of_a_missing_character_creates_nothing(
    nerf_project: FakeProject, tmp_path: Path
) -> None:
    archive = tmp_path / "typo.tar"
    done = cli(nerf_project, "cache", "export", "ayanamii", str(archive))
    assert done.exit_code == 2, done.output
    assert "nothing is cached for 'ayanamii'" in done.stderr
    assert not nerf_project.character_dir("ayanamii").exists()
    assert not archive.exists()


@pytest.mark.parametrize("existing", ["file", "dangling link"])
def test_export_does_not_replace_a_file_unless_forced(
    nerf_project: FakeProject, tmp_path: Path, existing: str
) -> None:
    build(nerf_project)
    archive = tmp_path / "ayanami.tar"
    if existing == "file":
        archive.write_bytes(b"an archive of yesterday's cache")
    else:
        archive.symlink_to(tmp_path / "nowhere")

    refused = cli(nerf_project, "cache", "export", "ayanami", str(archive))
    assert refused.exit_code == 2
    assert refused.stderr == (
        f"error: {archive} already exists: give another name, or --force to replace it\n"
    )
    assert archive.is_symlink() if existing != "file" else archive.read_bytes().startswith(b"an")

    forced = cli(nerf_project, "cache", "export", "ayanami", str(archive), "--force")
    assert forced.exit_code == 0, forced.output
    assert not archive.is_symlink()
    with tarfile.open(archive) as tar:
        assert tar.getnames()[0] == "manifest.json"


def test_listing_as_json_builds_its_converter_once_not_per_row(
    nerf_project: FakeProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It once built a pydantic adapter per row: 19 s for 10,000 characters (bench/ measures the
    # time; this counts the work, which does not depend on how busy the machine is).
    build(nerf_project)
    warm = nerf_project.character_dir()
    for i in range(20):
        shutil.copytree(warm, nerf_project.character_dir(f"c{i:03d}"), symlinks=True)
    built: list[Any] = []

    def counting(kind: Any) -> TypeAdapter[Any]:
        built.append(kind)
        return TypeAdapter(kind)

    monkeypatch.setattr(output, "TypeAdapter", counting)
    result = cli(nerf_project, "cache", "list", "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 21
    assert len(built) <= 2  # one per type (CacheInfo, and what it holds), whatever the rows
