"""What the cache tests share: files shaped like torch.save output, caches published as runs do."""

from __future__ import annotations

import zipfile
from datetime import datetime
from pathlib import Path

from nerfcache import CharacterCache, Fingerprint
from nerfcache.cache import CACHE_FILES
from nerfcache.characters import find_test_image
from nerfcache.testing import FakeProject

FP = Fingerprint(image_sha256="i" * 64, network_sha256="n" * 64, trunc=0.7)
OTHER = Fingerprint(image_sha256="j" * 64, network_sha256="n" * 64, trunc=0.7)


def write_pt(path: Path, payload: bytes = b"tensor-bytes") -> Path:
    """A file shaped like torch.save's output: a zip archive (stored, not compressed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
    return path


def build(
    cache: CharacterCache, fingerprint: Fingerprint = FP, names=CACHE_FILES
) -> tuple[str, ...]:
    """Publish ``names`` the way a run does: written in a staging dir, then published."""
    with cache.stage(fingerprint, image=Path("img"), network=Path("net")) as staging:
        for name in names:
            write_pt(staging.path / name, fingerprint.key.encode())
        return cache.publish(staging, image=Path("img"), network=Path("net"))


def fingerprint(project: FakeProject, character: str) -> Fingerprint:
    image = find_test_image(project.settings, character)
    return Fingerprint.of(image, project.settings.model_dir / project.model_name, 0.7)


def publish(
    project: FakeProject,
    character: str,
    *,
    names: tuple[str, ...] = CACHE_FILES,
    last_used: datetime | None = None,
    payload: bytes = b"tensor-bytes",
) -> CharacterCache:
    """Publish a cache the way a run does: written in a staging dir, then published."""
    if not project.character_dir(character).exists():
        project.add_character(character)
    cache = CharacterCache(project.settings, character)
    image = find_test_image(project.settings, character)
    network = project.settings.model_dir / project.model_name
    with cache.stage(fingerprint(project, character), image=image, network=network) as staging:
        for name in names:
            write_pt(staging.path / name, payload)
        cache.publish(staging, image=image, network=network)
    if last_used is not None:
        manifest = cache.manifest()
        assert manifest is not None
        changed = manifest.model_copy(update={"last_used_at": last_used})
        cache.manifest_path.write_text(changed.model_dump_json())
    return cache


def user_files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and ".nerfcache" not in p.parts and p.name not in CACHE_FILES
    }


def corrupt_a_member(path: Path) -> None:
    """Flip a byte inside the stored data: same size, complete archive, a wrong CRC."""
    data = bytearray(path.read_bytes())
    at = data.index(b"tensor-bytes")
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
