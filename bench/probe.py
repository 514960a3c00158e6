"""Measurements that need a fresh interpreter; run by the benchmarks, print one JSON object.

``probe.py fingerprint IMAGE NETWORK MEMO``: the cost of ``Fingerprint.of`` in a new process
that only has the memo file (the in-process memo is empty), in seconds and bytes read.

``probe.py stream ROOT EXTRA_ENV_JSON MODE MEGABYTES``: the launcher's peak RSS growth while the
child prints MEGABYTES of output, and how long it took. MODE is ``nerfcache`` (generate_video),
``naive`` (``subprocess.run(capture_output=True)``, as in bench/naive.py) or ``devnull`` (the
bare child writing into /dev/null: how fast the child itself prints).

``probe.py hash FILE MEMO THREADS``: THREADS first requests for FILE's hash at once, in threads;
the wall time and the bytes this process read meanwhile. ``probe.py hash-on-cue FILE MEMO``:
one request, started by a line on stdin (``ready`` is printed first); when it ended, and what
it read. ``probe.py first-call FILE MEMO``: the first ``file_sha256`` of a new process, and how
many times it opened the memo.

``probe.py wait ROOT MODE``: wait for the cold build of ``rei`` that holds its build lock
(``waiting`` is printed first); when the wait ended, and the CPU time it took. MODE is
``kernel`` (a blocking shared ``flock``: the machine's floor), ``lock`` (``_locks.acquire``, with
a cancel event) or ``stage`` (``CharacterCache.stage``, until the run can start, warm).
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import naive
from measure import BareRun, call, read_io_bytes, rss_kib

from nerfcache import CharacterCache, Settings
from nerfcache.cache import CacheStatus, Fingerprint, file_sha256
from nerfcache.testing import FakeProject

FP = Fingerprint(image_sha256="i" * 64, network_sha256="n" * 64, trunc=0.7)


def fingerprint(image: Path, network: Path, memo: Path) -> dict[str, float]:
    """Time one ``Fingerprint.of`` in this fresh process."""
    before = read_io_bytes()
    start = time.perf_counter()
    Fingerprint.of(image, network, 0.7, memo=memo)
    return {"seconds": time.perf_counter() - start, "bytes_read": read_io_bytes() - before}


def stream(root: Path, extra_env: dict[str, str], mode: str, megabytes: float) -> dict[str, float]:
    """Warm up, then measure one run whose child prints ``megabytes`` MiB."""
    fake = FakeProject(
        root=root,
        settings=Settings(project_root=root, extra_env=extra_env),
        character="ayanami",
        model_name="ffhq.pkl",
        audio=root / "inputs" / "speech.wav",
        log=root / "fake_nerf.log",
    )
    scratch = Path(tempfile.mkdtemp(prefix="probe-", dir=root))
    loud = fake.with_env(FAKE_NERF_SPAM_MB=megabytes)
    # One quiet run of the same kind first, so that imports and allocations are done before the
    # peak is reset: the growth measured is the loud run's own.
    warm = call(fake, scratch / "warm")
    run: Callable[[], object]
    if mode == "nerfcache":
        run = functools.partial(call, fake, scratch / "out", settings=loud)
    elif mode == "naive":
        naive_run(fake, fake.settings, scratch / "naive-warm")
        run = functools.partial(naive_run, fake, loud, scratch / "naive-out")
    elif mode == "devnull":
        bare = BareRun(warm, loud, scratch)
        argv = bare.prepare(fake.audio, fake.character_dir() / "images" / "portrait.png")
        run = functools.partial(bare.run, argv, capture=False)
    else:
        raise SystemExit(f"unknown mode {mode!r}")

    before = rss_kib("VmRSS")
    reset = _reset_peak()
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    peak = rss_kib("VmHWM")
    return {
        "seconds": seconds,
        "rss_before_kib": before,
        "peak_kib": peak,
        "growth_kib": peak - before,
        "peak_reset": float(reset),
    }


def naive_run(fake: FakeProject, settings: Settings, out: Path) -> None:
    """One run of the seed-style launcher, which collects all output in memory."""
    if not naive.generate_video(
        fake.audio, fake.character, out, fake.model_name, settings=settings
    ):
        raise RuntimeError("the naive launcher made no video")


def hash_at_once(path: Path, memo: Path, threads: int) -> dict[str, float]:
    """``threads`` first requests for ``path``'s hash at once."""
    start = threading.Barrier(threads)

    def request(_: int) -> str:
        start.wait()
        return file_sha256(path, memo=memo)

    before = read_io_bytes()
    began = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(request, range(threads)))
    return {"seconds": time.perf_counter() - began, "bytes_read": read_io_bytes() - before}


def hash_on_cue(path: Path, memo: Path) -> dict[str, float]:
    """One request for ``path``'s hash, started by a line on stdin."""
    print("ready", flush=True)
    sys.stdin.readline()
    before = read_io_bytes()
    file_sha256(path, memo=memo)
    return {"end": time.time(), "bytes_read": read_io_bytes() - before}


def first_call(path: Path, memo: Path) -> dict[str, float]:
    """The first ``file_sha256`` of this process: its time, and how often it opened the memo."""
    opened: list[str] = []

    def watch(event: str, args: tuple[object, ...]) -> None:
        if event == "open" and isinstance(args[0], (str, os.PathLike)):
            opened.append(os.fspath(args[0]))

    sys.addaudithook(watch)
    start = time.perf_counter()
    file_sha256(path, memo=memo)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "memo_opens": opened.count(str(memo))}


def wait(root: Path, mode: str) -> dict[str, float]:
    """Wait for the cold build of ``rei`` under ``root`` to end (see the module).

    Returns when the wait ended, and the CPU it took while it waited, as a share of one core.
    """
    cache = CharacterCache(Settings(project_root=root), "rei")
    began: list[float] = []

    def waiting() -> None:
        began.extend((time.process_time(), time.perf_counter()))
        print("waiting", flush=True)

    if mode == "kernel":
        with (cache.meta / "build.lock").open("rb") as file:
            waiting()
            fcntl.flock(file.fileno(), fcntl.LOCK_SH)
            noticed = time.time()
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)  # takes nothing from the others
    elif mode == "lock":
        from nerfcache._locks import acquire  # noqa: PLC0415 - its private wait, measured

        if acquire(
            cache.build_lock(),
            what="the build",
            cancel=threading.Event(),  # the cancellable wait: a thread waits, this one looks
            on_wait=waiting,
            unless=lambda: cache.status(FP) is CacheStatus.WARM,
        ):
            raise SystemExit("the lock wait took the lock: the build was not done")
        noticed = time.time()
    else:
        with cache.stage(FP, image=Path("img"), network=Path("net"), on_wait=waiting) as staging:
            noticed = time.time()
            if staging.status is not CacheStatus.WARM:
                raise SystemExit("a waiter of the build did not run warm")
    cpu = (time.process_time() - began[0]) / (time.perf_counter() - began[1])
    return {"noticed": noticed, "cpu": cpu}


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        return False
    return True


def main(argv: list[str]) -> int:
    """Run the probe named by ``argv[0]``; print its JSON result."""
    kind, *args = argv
    if kind == "fingerprint":
        image, network, memo = map(Path, args)
        result = fingerprint(image, network, memo)
    elif kind == "stream":
        root, extra, mode, megabytes = args
        result = stream(Path(root), json.loads(extra), mode, float(megabytes))
    elif kind == "hash":
        result = hash_at_once(Path(args[0]), Path(args[1]), int(args[2]))
    elif kind == "hash-on-cue":
        result = hash_on_cue(Path(args[0]), Path(args[1]))
    elif kind == "first-call":
        result = first_call(Path(args[0]), Path(args[1]))
    elif kind == "wait":
        result = wait(Path(args[0]), args[1])
    else:
        raise SystemExit(f"unknown probe {kind!r}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
