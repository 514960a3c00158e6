from __future__ import annotations

import io
import json
import shutil
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from nerfcache import (
    CacheBusyError,
    CacheStatus,
    CharacterCache,
    Fingerprint,
    InvalidInputError,
    MissingFileError,
    generate_video,
    list_caches,
)
from nerfcache.archive import export_cache, import_cache
from nerfcache.cache import CACHE_FILES, PTI_FILES
from nerfcache.characters import find_test_image
from nerfcache.testing import FakeProject, make_fake_project, write_png

Entry = tuple[tarfile.TarInfo, bytes]


def write_pt(path: Path, payload: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)


def publish(project: FakeProject, names: tuple[str, ...] = CACHE_FILES) -> CharacterCache:
    """Publish a cache for the project's character as a run does, without running a script."""
    cache = CharacterCache(project.settings, project.character)
    image = find_test_image(project.settings, project.character)
    network = project.settings.model_dir / project.model_name
    fingerprint = Fingerprint.of(image, network, project.settings.trunc)
    with cache.stage(fingerprint, image=image, network=network) as staging:
        for name in names:
            write_pt(staging.path / name, name.encode() * 50)
        cache.publish(staging, image=image, network=network)
    return cache


def entries(data: bytes) -> list[Entry]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else b"") for m in tar]  # type: ignore[union-attr]


def pack(items: list[Entry]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for info, data in items:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> Entry:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = link
    return info, data


def with_header(items: list[Entry], change: Callable[[dict[str, Any]], object]) -> list[Entry]:
    header = json.loads(items[0][1])
    change(header)
    return [member("manifest.json", json.dumps(header).encode()), *items[1:]]


def replace(items: list[Entry], name: str, new: Entry) -> list[Entry]:
    return [new if info.name == name else (info, data) for info, data in items]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> bytes:
    """A cache exported from one project, as bytes."""
    source = make_fake_project(tmp_path_factory.mktemp("source") / "project")
    publish(source)
    out = io.BytesIO()
    export_cache(source.character, out, settings=source.settings)
    return out.getvalue()


@pytest.fixture
def target(tmp_path: Path) -> FakeProject:
    return make_fake_project(tmp_path / "target")


def leftovers(cache: CharacterCache) -> list[str]:
    runs = cache.meta / "runs"
    return sorted(p.name for p in runs.iterdir()) if runs.is_dir() else []


# -- the round trip --


def test_export_then_import_gives_a_warm_cache_the_next_run_uses(tmp_path: Path) -> None:
    first = make_fake_project(tmp_path / "first")
    made = generate_video(
        first.audio, "ayanami", tmp_path / "v1", "ffhq.pkl", settings=first.settings
    )
    assert made.cache_status_before is CacheStatus.COLD
    header = export_cache("ayanami", tmp_path / "rei.tar", settings=first.settings)
    assert sorted(header.sha256) == sorted(CACHE_FILES)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

    # Another machine: the same portrait and network bytes, other paths.
    second = make_fake_project(tmp_path / "second")
    shutil.copyfile(first.settings.model_dir / "ffhq.pkl", second.settings.model_dir / "ffhq.pkl")
    done = import_cache(tmp_path / "rei.tar", settings=second.settings, trust=True)
    assert done.replaced is CacheStatus.COLD
    assert done.manifest.files == header.cache.files

    result = generate_video(
        second.audio, "ayanami", tmp_path / "v2", "ffhq.pkl", settings=second.settings
    )
    assert result
    assert result.cache_hit
    (call,) = second.calls()
    assert call.loaded("pti")
    assert call.loaded("fitting")


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_through_a_stream_that_cannot_seek(
    target: FakeProject, tmp_path: Path, compress: bool
) -> None:
    source = make_fake_project(tmp_path / "source")
    cache = publish(source, PTI_FILES)  # a pti-only cache travels too

    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            chunk = self._data.read(len(buffer))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    out = io.BytesIO()
    export_cache("ayanami", out, settings=source.settings, compress=compress)
    assert out.getvalue()[:2] == b"\x1f\x8b" if compress else out.getvalue()[:2] != b"\x1f\x8b"
    pipe = io.BufferedReader(Pipe(out.getvalue()))
    done = import_cache(pipe, settings=target.settings, character="rei", trust=True)
    assert done.character == "rei"
    imported = CharacterCache(target.settings, "rei")
    assert imported.status() is CacheStatus.PTI_ONLY
    for name in PTI_FILES:
        assert (imported.path / name).read_bytes() == (cache.path / name).read_bytes()
    assert leftovers(imported) == []


def test_archive_layout(archive: bytes) -> None:
    items = entries(archive)
    assert [info.name for info, _ in items] == ["manifest.json", *CACHE_FILES]
    assert all(info.isreg() for info, _ in items)
    header = json.loads(items[0][1])
    assert header["archive_format"] == 1
    assert header["character"] == "ayanami"
    assert set(header["sha256"]) == set(CACHE_FILES)


# -- what import refuses --


def test_import_needs_trust(archive: bytes, target: FakeProject) -> None:
    with pytest.raises(InvalidInputError, match=r"torch\.load"):
        import_cache(io.BytesIO(archive), settings=target.settings)
    assert CharacterCache(target.settings, "ayanami").status() is CacheStatus.COLD


TAMPERED: dict[str, Callable[[list[Entry]], list[Entry]]] = {
    "a path with ..": lambda e: [*e, member("../G_PTI.pt", b"x")],
    "an absolute path": lambda e: [*e, member("/tmp/G_PTI.pt", b"x")],
    "a nested path": lambda e: [*e, member("sub/G_PTI.pt", b"x")],
    "an unknown name": lambda e: [*e, member("notes.txt", b"x")],
    "a symlink": lambda e: replace(
        e, "w_PTI.pt", member("w_PTI.pt", kind=tarfile.SYMTYPE, link="/etc/passwd")
    ),
    "a hard link": lambda e: replace(
        e, "w_PTI.pt", member("w_PTI.pt", kind=tarfile.LNKTYPE, link="G_PTI.pt")
    ),
    "a device": lambda e: replace(e, "w_PTI.pt", member("w_PTI.pt", kind=tarfile.CHRTYPE)),
    "a folder": lambda e: replace(e, "w_PTI.pt", member("w_PTI.pt", kind=tarfile.DIRTYPE)),
    "altered bytes": lambda e: [
        (i, d.replace(b"G_PTI", b"EVIL!")) if i.name == "G_PTI.pt" else (i, d) for i, d in e
    ],
    "another size": lambda e: replace(
        e, "bg_PTI.pt", member("bg_PTI.pt", {i.name: d for i, d in e}["bg_PTI.pt"] + b"x")
    ),
    "a missing file": lambda e: e[:-1],
    "a file twice": lambda e: [*e, e[1]],
    "no manifest first": lambda e: [*e[1:], e[0]],
    "a manifest of other files": lambda e: with_header(
        e,
        lambda h: (
            h["cache"]["files"].update({"evil.py": 1}),
            h["sha256"].update({"evil.py": "0" * 64}),
        ),
    ),
    "a manifest without PTI": lambda e: with_header(
        e, lambda h: (h["cache"]["files"].pop("G_PTI.pt"), h["sha256"].pop("G_PTI.pt"))
    ),
    "a manifest without a hash": lambda e: with_header(e, lambda h: h["sha256"].pop("w_PTI.pt")),
    "a character out of cache_root": lambda e: with_header(
        e, lambda h: h.update(character="../../escape")
    ),
    "another archive format": lambda e: with_header(e, lambda h: h.update(archive_format=2)),
    "a manifest that is not JSON": lambda e: [member("manifest.json", b"{not json"), *e[1:]],
}


@pytest.mark.parametrize("tamper", TAMPERED.values(), ids=TAMPERED.keys())
def test_import_refuses_a_tampered_archive(archive: bytes, target: FakeProject, tamper) -> None:
    publish(target)  # what is there must stay exactly as it was
    cache = CharacterCache(target.settings, "ayanami")
    before = {name: (cache.path / name).read_bytes() for name in CACHE_FILES}
    manifest = cache.manifest_path.read_bytes()

    with pytest.raises(InvalidInputError):
        import_cache(
            io.BytesIO(pack(tamper(entries(archive)))), settings=target.settings, trust=True
        )

    assert {name: (cache.path / name).read_bytes() for name in CACHE_FILES} == before
    assert cache.manifest_path.read_bytes() == manifest
    assert leftovers(cache) == []
    assert not (target.root / "escape").exists()
    assert not (target.settings.cache_root.parent / "escape").exists()


@pytest.mark.parametrize(
    "data",
    [b"", b"not a tar archive at all" * 100, "truncated"],
    ids=["empty", "garbage", "truncated"],
)
def test_import_refuses_what_is_not_a_whole_archive(archive, target, data) -> None:
    if data == "truncated":
        data = archive[: len(archive) // 2]
    with pytest.raises(InvalidInputError, match="archive"):
        import_cache(io.BytesIO(data), settings=target.settings, trust=True)
    cache = CharacterCache(target.settings, "ayanami")
    assert cache.status() is CacheStatus.COLD
    assert leftovers(cache) == []


def test_import_of_a_missing_file(target: FakeProject, tmp_path: Path) -> None:
    with pytest.raises(MissingFileError):
        import_cache(tmp_path / "nope.tar", settings=target.settings, trust=True)


# -- what import replaces --


def test_import_sets_a_sound_cache_aside(archive: bytes, target: FakeProject) -> None:
    write_png(target.character_dir() / "images" / "portrait.png", (1, 1, 1))  # another portrait
    cache = publish(target)
    key = cache.manifest().fingerprint.key  # type: ignore[union-attr]
    done = import_cache(io.BytesIO(archive), settings=target.settings, trust=True)
    assert done.replaced is CacheStatus.WARM
    assert (cache.meta / "generations" / key / "manifest.json").is_file()
    assert cache.status() is CacheStatus.WARM
    assert cache.manifest().fingerprint == json_fingerprint(archive)  # type: ignore[union-attr]
    assert (target.character_dir() / "audio.wav").is_file()  # the user's file stays


def json_fingerprint(archive: bytes) -> Fingerprint:
    return Fingerprint(**json.loads(entries(archive)[0][1])["cache"]["fingerprint"])


def test_import_quarantines_a_broken_cache(archive: bytes, target: FakeProject) -> None:
    cache = CharacterCache(target.settings, "ayanami")
    (cache.path / "G_PTI.pt").write_bytes(b"half a file")  # the original launcher crashed
    done = import_cache(io.BytesIO(archive), settings=target.settings, trust=True)
    assert done.replaced is CacheStatus.PARTIAL
    assert any((cache.meta / "quarantine").rglob("G_PTI.pt"))
    assert cache.status() is CacheStatus.WARM


@pytest.mark.parametrize("holder", ["build.lock", "runs/20240101-1-abc.lock"])
def test_import_leaves_a_cache_in_use_alone(archive, target: FakeProject, holder) -> None:
    cache = publish(target)
    manifest = cache.manifest_path.read_bytes()
    lock = cache.meta / holder
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock), pytest.raises(CacheBusyError, match="in use"):
        import_cache(io.BytesIO(archive), settings=target.settings, trust=True)
    assert cache.manifest_path.read_bytes() == manifest
    assert [name for name in leftovers(cache) if name.startswith("import-")] == []


# -- what export refuses --


def test_export_of_a_cold_cache(target: FakeProject, tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="nothing is cached"):
        export_cache("ayanami", tmp_path / "a.tar", settings=target.settings)
    assert not (tmp_path / "a.tar").exists()


def test_export_of_a_missing_character_creates_nothing(target: FakeProject, tmp_path: Path) -> None:
    before = sorted(target.settings.cache_root.iterdir())
    with pytest.raises(MissingFileError, match="nothing is cached for 'ayanamii'"):
        export_cache("ayanamii", tmp_path / "a.tar", settings=target.settings)
    # A typo must not become a new (cold) character in the listing.
    assert sorted(target.settings.cache_root.iterdir()) == before
    assert [info.character for info in list_caches(settings=target.settings)] == ["ayanami"]
    assert list(tmp_path.glob("*.tar*")) == []


@pytest.mark.parametrize("files", [CACHE_FILES, ("G_PTI.pt",)], ids=["legacy", "partial"])
def test_export_of_an_unchecked_cache(target: FakeProject, tmp_path: Path, files) -> None:
    for name in files:
        write_pt(target.character_dir() / name, b"x")
    with pytest.raises(InvalidInputError, match="verify it"):
        export_cache("ayanami", tmp_path / "a.tar", settings=target.settings)
    assert list(tmp_path.glob("*.tar*")) == []


def test_export_of_a_damaged_cache(target: FakeProject, tmp_path: Path) -> None:
    cache = publish(target)
    path = cache.path / "bg_PTI.pt"
    path.write_bytes(b"\0" * path.stat().st_size)  # same size, no longer an archive
    with pytest.raises(InvalidInputError, match="damaged"):
        export_cache("ayanami", tmp_path / "a.tar", settings=target.settings)
