"""The hot paths of issue 9, each measured side by side with its comparator.

8. first requests for a new network: N at once (threads, processes) against one hash;
9. ``cache verify --fix`` hashing a network while warm runs of the character arrive, against
   warm runs alone;
10. the waiters of a cold build: how soon they notice its end, against a waiter blocked in the
    kernel (the machine's floor), and what waiting costs;
11. the digest memo, at 10,000 characters: a new process's first call against a small memo.

The listing of 10,000 characters (7) and the memo rows (11) share one project: see ``cases``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

from measure import Row, Stats, call, project, sparse_file, timed

from nerfcache import CharacterCache, Fingerprint, Settings
from nerfcache.cache import CACHE_FILES

__all__ = ["first_hashes", "memo_rows", "verify_warm", "waiters"]

MIB = 1 << 20
GIB = 1 << 30
PROBE = Path(__file__).with_name("probe.py")
REQUESTS = 8


def _network_size(quick: bool) -> int:
    return 256 * MIB if quick else GIB


def _probe(*args: str, stdin: str | None = None) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, str(PROBE), *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"probe {args[0]} failed: {done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return result


# -- 8. first requests for a new network --


def first_hashes(quick: bool, reps: int) -> list[Row]:
    """N first requests for one new network at once, in threads and in processes, and one."""
    size = _network_size(quick)
    one: list[dict[str, float]] = []
    threads: list[dict[str, float]] = []
    processes: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="nerfcache-bench-hash-") as tmp:
        folder = Path(tmp)
        memo = folder / "state" / "digests.jsonl"
        for rep in range(reps):
            # A new file each time: a version nobody has hashed.
            network = sparse_file(folder / f"one-{rep}.pkl", size)
            one.append(_probe("hash", str(network), str(memo), "1"))
            network = sparse_file(folder / f"threads-{rep}.pkl", size)
            threads.append(_probe("hash", str(network), str(memo), str(REQUESTS)))
            network = sparse_file(folder / f"processes-{rep}.pkl", size)
            processes.append(_hash_in_processes(network, memo))
    alone = Stats.of([r["seconds"] for r in one])
    bench = "8 first requests"
    label = f"{size // MIB} MiB" if size < GIB else f"{size // GIB} GiB"
    rows = [
        Row(bench, f"a new {label} network (sparse), {REQUESTS} requests at once", ""),
        Row(
            bench,
            "one request: hash",
            *alone.fmt("s", 1, 2),
            f"{_gib(max(r['bytes_read'] for r in one))} read",
        ),
    ]
    for kind, results in (("threads", threads), ("processes", processes)):
        wall = Stats.of([r["seconds"] for r in results])
        worst = max(r["bytes_read"] for r in results)
        rows += [
            Row(bench, f"{REQUESTS} {kind}: wall time", *wall.fmt("s", 1, 2)),
            Row(
                bench,
                f"{REQUESTS} {kind}: bytes read (all of them)",
                _gib(worst),
                f"{worst / size:.2f}x the file",
                "read once",
                worst < 1.1 * size,
            ),
            Row(bench, f"{REQUESTS} {kind}: wall / one hash", f"{wall.median / alone.median:.2f}x"),
        ]
    return rows


def _hash_in_processes(network: Path, memo: Path) -> dict[str, float]:
    """REQUESTS processes hash ``network`` at once: the wall time and what they read in all."""
    workers = [
        subprocess.Popen(
            [sys.executable, str(PROBE), "hash-on-cue", str(network), str(memo)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(REQUESTS)
    ]
    for worker in workers:
        assert worker.stdout is not None
        if worker.stdout.readline().strip() != "ready":
            raise RuntimeError("a hashing probe did not start")
    start = time.time()
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    reports = []
    for worker in workers:
        out, _ = worker.communicate(timeout=600)
        if worker.returncode != 0:
            raise RuntimeError("a hashing probe failed")
        reports.append(json.loads(out))
    return {
        "seconds": max(r["end"] for r in reports) - start,
        "bytes_read": sum(r["bytes_read"] for r in reports),
    }


def _gib(count: float) -> str:
    return f"{count / GIB:.2f} GiB"


# -- 9. verify --fix while warm runs arrive --


def verify_warm(quick: bool, reps: int) -> list[Row]:
    """Warm runs of a character while ``nerfcache cache verify --fix`` hashes its network."""
    size = _network_size(quick)
    with project("verify") as fake:
        sparse_file(fake.settings.model_dir / "big.pkl", size)
        fake.add_character("big", color=(20, 80, 120))
        out = fake.root / "out"
        call(fake, out, character="big", model="big.pkl")  # the cold build, not measured
        copy = sparse_file(fake.settings.model_dir / "big-copy.pkl", size)  # the same bytes

        def warm() -> None:
            if not call(fake, out, character="big", model="big.pkl").cache_hit:
                raise RuntimeError("the verify benchmark's runs must be warm")

        for _ in range(3):
            warm()
        alone = Stats.of([timed(warm) for _ in range(max(reps * 4, 8))])
        during: list[float] = []
        verifies: list[float] = []
        for rep in range(reps):
            os.utime(copy, ns=(rep, rep + 1))  # a new version of it: verify must read it
            command = [
                str(Path(sys.executable).with_name("nerfcache")),
                "cache",
                "verify",
                "--fix",
                "--model",
                copy.name,
                "big",
            ]
            env = {**os.environ, "NERFCACHE_PROJECT_ROOT": str(fake.root)}
            began = time.perf_counter()
            with subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL) as verify:
                while verify.poll() is None:
                    during.append(timed(warm))
            verifies.append(time.perf_counter() - began)
            if verify.returncode != 0:
                raise RuntimeError(f"cache verify --fix failed ({verify.returncode})")
    seen = Stats.of(during)
    took = Stats.of(verifies)
    bench = "9 verify + warm runs"
    return [
        Row(bench, f"`cache verify --fix` hashing a {size // MIB} MiB network, warm runs", ""),
        Row(bench, "warm run alone", *alone.fmt("ms", 1e3, 0)),
        Row(bench, "`cache verify --fix` (a new process), wall time", *took.fmt("s", 1, 2)),
        Row(bench, "warm runs during the verify", *seen.fmt("ms", 1e3, 0)),
        Row(
            bench,
            "slowest warm run during the verify / verify's wall time",
            f"{max(seen.samples) / took.median:.0%}",
            f"median during / alone: {seen.median / alone.median:.2f}x",
            "no run waits for the hash",
            max(seen.samples) < 0.5 * took.median,
        ),
    ]


# -- 10. waiters of a cold build --

FP = Fingerprint(image_sha256="i" * 64, network_sha256="n" * 64, trunc=0.7)


def waiters(reps: int) -> list[Row]:
    """How soon the waiters of a cold build notice its end; what waiting costs them.

    Each build has, besides its REQUESTS waiters, one process blocked in ``flock()`` on the
    build lock: the kernel wakes it the moment the lock is let go, so its waking is the clock
    (the builder, descheduled on a loaded machine, cannot time its own release).
    """
    results: dict[str, list[list[float]]] = {"lock": [], "stage": []}
    cpu: list[float] = []
    with tempfile.TemporaryDirectory(prefix="nerfcache-bench-wait-") as tmp:
        for rep in range(reps):
            for mode, runs in results.items():
                notices, shares = _one_build(Path(tmp) / f"{mode}-{rep}", mode)
                runs.append(notices)
                if mode == "lock":
                    cpu += shares
    bench = "10 waiters"
    rows = [
        Row(
            bench,
            f"{REQUESTS} processes wait for a cold build; after the build lock is let go",
            "",
            "from a process blocked in flock() waking: the floor",
        )
    ]
    labels = {
        "lock": "the wait ends (_locks.acquire, cancellable)",
        "stage": "each runs, warm (CharacterCache.stage, a check-out each)",
    }
    for mode, runs in results.items():
        first = Stats.of([min(r) for r in runs])
        middle = Stats.of([sorted(r)[len(r) // 2] for r in runs])
        last = Stats.of([max(r) for r in runs])
        rows += [
            Row(bench, f"{labels[mode]}: first", *first.fmt("ms", 1e3, 1)),
            Row(bench, f"{labels[mode]}: median", *middle.fmt("ms", 1e3, 1)),
            Row(
                bench,
                f"{labels[mode]}: last",
                *last.fmt("ms", 1e3, 1),
                "< 50 ms" if mode == "lock" else "",
                last.median < 0.05 if mode == "lock" else None,
            ),
        ]
    share = Stats.of(cpu)
    rows.append(
        Row(bench, "CPU while waiting, per waiter (share of one core)", *share.fmt("%", 100, 2))
    )
    return rows


def _one_build(root: Path, mode: str) -> tuple[list[float], list[float]]:
    """A cold build holding the build lock while REQUESTS ``mode`` waiters wait; it ends.

    Returns when each waiter noticed, in seconds after the process blocked in ``flock()``
    woke, and the CPU each used while it waited, as a share of one core.
    """
    settings = Settings(project_root=root)
    cache = CharacterCache(settings, "rei")
    with cache.stage(FP, image=Path("img"), network=Path("net")) as staging:
        procs = [
            subprocess.Popen(
                [sys.executable, str(PROBE), "wait", str(root), kind],
                stdout=subprocess.PIPE,
                text=True,
            )
            for kind in ["kernel"] + [mode] * REQUESTS
        ]
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "waiting":
                raise RuntimeError("a waiter probe did not wait")
        time.sleep(0.5)  # waiting, measured for its CPU cost
        for name in CACHE_FILES:
            with zipfile.ZipFile(staging.path / name, "w") as archive:
                archive.writestr("archive/data.pkl", b"weights")
        cache.publish(staging, image=Path("img"), network=Path("net"))
    reports = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"a waiter probe failed in mode {mode}")
        reports.append(json.loads(out))
    woke = reports[0]["noticed"]
    return [r["noticed"] - woke for r in reports[1:]], [r["cpu"] for r in reports[1:]]


# -- 11. the digest memo --


def memo_rows(settings: Settings, portraits: list[Path], reps: int) -> list[Row]:
    """The memo after a listing of every character: its size, and a new process's first call."""
    from nerfcache.cache import digest_memo  # noqa: PLC0415 - the module is bench-wide

    memo = digest_memo(settings)
    lines = len(memo.read_bytes().splitlines())
    with tempfile.TemporaryDirectory(prefix="nerfcache-bench-memo-") as tmp:
        small = Path(tmp) / "digests.jsonl"
        _probe("hash", str(portraits[0]), str(small), "1")  # a memo of one line
        big = [_probe("first-call", str(portraits[-1]), str(memo)) for _ in range(reps + 2)]
        one = [_probe("first-call", str(portraits[0]), str(small)) for _ in range(reps + 2)]
    big_s = Stats.of([r["seconds"] for r in big])
    one_s = Stats.of([r["seconds"] for r in one])
    bench = "11 digest memo"
    return [
        Row(
            bench,
            f"memo after listing {len(portraits):,} characters",
            f"{memo.stat().st_size / MIB:.1f} MiB",
            f"{lines:,} lines",
        ),
        Row(bench, "new process, first call: memo of one line", *one_s.fmt("ms", 1e3, 2)),
        Row(
            bench,
            f"new process, first call: memo of {lines:,} lines",
            *big_s.fmt("ms", 1e3, 2),
            f"memo read {max(r['memo_opens'] for r in big):.0f} time(s)",
            max(r["memo_opens"] for r in big) == 1,
        ),
        Row(bench, "first call: big memo / one line", f"{big_s.median / one_s.median:.1f}x"),
    ]


def changed_portraits(portraits: list[Path]) -> Iterator[Path]:
    """Give every portrait a new version (a new mtime), as an edit would."""
    for path in portraits:
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
        yield path
