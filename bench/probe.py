"""Measurements that need a fresh interpreter; run by the benchmarks, print one JSON object.

``probe.py fingerprint IMAGE NETWORK MEMO``: the cost of ``Fingerprint.of`` in a new process
that only has the memo file (the in-process memo is empty), in seconds and bytes read.

``probe.py stream ROOT EXTRA_ENV_JSON MODE MEGABYTES``: the launcher's peak RSS growth while the
child prints MEGABYTES of output, and how long it took. MODE is ``nerfcache`` (generate_video),
``naive`` (``subprocess.run(capture_output=True)``, as in bench/naive.py) or ``devnull`` (the
bare child writing into /dev/null: how fast the child itself prints).
"""

from __future__ import annotations

import functools
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import naive
from measure import BareRun, call, read_io_bytes, rss_kib

from nerfcache import Settings
from nerfcache.cache import Fingerprint
from nerfcache.testing import FakeProject


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
    else:
        raise SystemExit(f"unknown probe {kind!r}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
