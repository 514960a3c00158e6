from __future__ import annotations

from pathlib import Path

import pytest

from nerfcache._fs import atomic_write, read_json, write_json


def test_atomic_write_replaces_the_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "video.mp4"
    target.write_bytes(b"old")
    with atomic_write(target) as file:
        file.write(b"new ")
        assert target.read_bytes() == b"old"  # a reader sees the old file until the end
        file.write(b"bytes")
    assert target.read_bytes() == b"new bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["video.mp4"]


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    target.write_bytes(b"old")

    def fail_halfway() -> None:
        with atomic_write(target) as file:
            file.write(b"half")
            raise RuntimeError

    with pytest.raises(RuntimeError):
        fail_halfway()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_json_files_round_trip_and_a_broken_one_reads_as_none(tmp_path: Path) -> None:
    path = tmp_path / "deeper" / "memo.json"
    write_json(path, {"portrait": "ü", "n": [1, 2]})
    assert read_json(path) == {"portrait": "ü", "n": [1, 2]}
    path.write_text("{not json")
    assert read_json(path) is None
    assert read_json(tmp_path / "missing.json") is None
