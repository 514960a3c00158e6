from __future__ import annotations

import hashlib
import os
from pathlib import Path

from nerfcache.cache import (
    file_sha256,
)
from tests.conftest import run_python


def test_file_hash_is_computed_once_per_file_version(tmp_path: Path) -> None:
    network = tmp_path / "net.pkl"
    network.write_bytes(b"weights" * 1000)
    memo = tmp_path / "digests.json"
    first = file_sha256(network, memo=memo)
    assert first == hashlib.sha256(network.read_bytes()).hexdigest()

    # New bytes, but the same size, mtime and inode: to nerfcache, the same version, not read.
    version = network.stat()
    with network.open("r+b") as file:
        file.write(b"W")
    os.utime(network, ns=(version.st_atime_ns, version.st_mtime_ns))
    assert file_sha256(network, memo=memo) == first
    in_a_new_process = (
        "from pathlib import Path\n"
        "from nerfcache.cache import file_sha256\n"
        "memo = Path(sys.argv[2]) if len(sys.argv) > 2 else None\n"
        "print(file_sha256(Path(sys.argv[1]), memo=memo))\n"
    )
    assert run_python(in_a_new_process, str(network), str(memo)) == first  # the memo file
    assert run_python(in_a_new_process, str(network)) != first  # nothing remembered: read

    network.write_bytes(b"other weights")  # another size: another version
    assert file_sha256(network, memo=memo) == hashlib.sha256(b"other weights").hexdigest()
