from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nerfcache.cache import file_sha256
from tests.conftest import files_opened, run_python

MIB = 1 << 20
NETWORK = 256 * MIB  # a sparse file: no disk, but hashing it reads 256 MiB (of zeros)
REQUESTS = 6


def bytes_read() -> int:
    """What this process has read so far, every thread included (``rchar``)."""
    io = Path("/proc/self/io").read_text()
    return int(next(line for line in io.splitlines() if line.startswith("rchar:")).split()[1])


def sparse(path: Path, size: int) -> Path:
    with path.open("wb") as file:
        file.truncate(size)
    return path


def memo_lines(memo: Path) -> list[list[object]]:
    return [json.loads(line) for line in memo.read_text().splitlines()]


def test_file_hash_is_computed_once_per_file_version(tmp_path: Path) -> None:
    network = tmp_path / "net.pkl"
    network.write_bytes(b"weights" * 1000)
    memo = tmp_path / "digests.jsonl"
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


def test_concurrent_first_requests_in_threads_read_the_network_once(tmp_path: Path) -> None:
    network = sparse(tmp_path / "net.pkl", NETWORK)
    start = threading.Barrier(REQUESTS)

    def first_request(_: int) -> str:
        start.wait()
        return file_sha256(network, memo=tmp_path / "digests.jsonl")

    before = bytes_read()
    with ThreadPoolExecutor(REQUESTS) as pool:
        digests = set(pool.map(first_request, range(REQUESTS)))
    read = bytes_read() - before

    assert digests == {hashlib.sha256(bytes(NETWORK)).hexdigest()}
    assert NETWORK <= read < NETWORK + 16 * MIB  # once, not once per request


def test_concurrent_first_requests_in_processes_read_the_network_once(tmp_path: Path) -> None:
    network = sparse(tmp_path / "net.pkl", NETWORK)
    portrait = tmp_path / "portrait.png"
    portrait.write_bytes(b"a portrait")
    # Each worker reports what it read itself (/proc/self/io), from the moment all are started.
    worker = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from nerfcache.cache import Fingerprint\n"
        "def rchar():\n"
        "    io = Path('/proc/self/io').read_text().splitlines()\n"
        "    return int(next(l for l in io if l.startswith('rchar:')).split()[1])\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "before = rchar()\n"
        "fp = Fingerprint.of(Path(sys.argv[1]), Path(sys.argv[2]), 0.7, memo=Path(sys.argv[3]))\n"
        "print(json.dumps({'read': rchar() - before, 'network': fp.network_sha256}))\n"
    )
    args = [str(portrait), str(network), str(tmp_path / "digests.jsonl")]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", worker, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(REQUESTS)
    ]
    for process in workers:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
    for process in workers:  # all at once
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    reports = []
    for process in workers:
        out, _ = process.communicate(timeout=50)
        assert process.returncode == 0
        reports.append(json.loads(out))

    assert {r["network"] for r in reports} == {hashlib.sha256(bytes(NETWORK)).hexdigest()}
    read = sum(r["read"] for r in reports)
    assert NETWORK <= read < NETWORK + 16 * MIB  # read by one of them, found by the others


def test_a_new_process_reads_the_memo_once(tmp_path: Path) -> None:
    files = [tmp_path / f"file{i}" for i in range(3)]
    for i, path in enumerate(files):
        path.write_bytes(b"x" * i)
    memo = tmp_path / "digests.jsonl"
    for path in files:
        file_sha256(path, memo=memo)
    code = (
        "from pathlib import Path\n"
        "from nerfcache.cache import file_sha256\n"
        "for name in sys.argv[2:]:\n"
        "    file_sha256(Path(name), memo=Path(sys.argv[1]))\n"
    )
    opened = files_opened(code, str(memo), *map(str, files))
    assert opened.count(memo) == 1
    assert not set(files) & set(opened)  # all remembered: none read


def test_the_memo_forgets_files_that_are_gone(tmp_path: Path) -> None:
    memo = tmp_path / "digests.jsonl"
    gone, kept = tmp_path / "gone", tmp_path / "kept"
    gone.mkdir()
    kept.mkdir()
    long = "a-long-file-name-" * 12  # long lines: the memo reaches its first rewrite sooner
    for i in range(1500):
        (gone / f"{long}{i}").write_bytes(b"%d" % i)
        file_sha256(gone / f"{long}{i}", memo=memo)
    for path in gone.iterdir():
        path.unlink()
    for i in range(1500):  # enough new lines for the memo to be rewritten on the way
        (kept / f"{long}{i}").write_bytes(b"%d" % i)
        file_sha256(kept / f"{long}{i}", memo=memo)

    names = [Path(str(line[0])) for line in memo_lines(memo)]
    assert not [name for name in names if name.parent == gone]
    assert len(names) < 2 * 1500
    # What it forgot is only hashed again, and what it kept is still found.
    assert file_sha256(kept / f"{long}7", memo=memo) == hashlib.sha256(b"7").hexdigest()


def test_a_damaged_memo_costs_a_hash_not_an_error(tmp_path: Path) -> None:
    network = tmp_path / "net.pkl"
    network.write_bytes(b"weights")
    memo = tmp_path / "digests.jsonl"
    memo.write_text('["half a line", 1, \n{"not": "a line"}\nnot json\n')
    expected = hashlib.sha256(b"weights").hexdigest()
    assert file_sha256(network, memo=memo) == expected
    code = (
        "from pathlib import Path\n"
        "from nerfcache.cache import file_sha256\n"
        "print(file_sha256(Path(sys.argv[1]), memo=Path(sys.argv[2])))\n"
    )
    assert run_python(code, str(network), str(memo)) == expected
    assert json.loads(memo.read_text().splitlines()[-1])[0] == str(network)


def test_the_memo_of_nerfcache_0_1_is_removed(tmp_path: Path) -> None:
    old = tmp_path / "digests.json"
    old.write_text("{}")
    network = tmp_path / "net.pkl"
    network.write_bytes(b"weights")
    file_sha256(network, memo=tmp_path / "digests.jsonl")
    assert not old.exists()
