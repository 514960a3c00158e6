"""Start-up costs (issue 9): what ``import nerfcache`` costs, and what a warm call adds.

Each function has the signature of the ones in ``cases.py`` (``name(cfg) -> list[Row]``), to be
registered in its ``BENCHMARKS``.

- ``import_time``: the CPU time and peak memory of a new Python process that imports nerfcache,
  against ``python -c pass``, alternately. CPU time (user + system, from ``wait4``'s rusage),
  not wall time: it is what the import costs whatever else the machine runs.
- ``warm_call``: a warm ``generate_video`` against a bare ``subprocess.run`` of the same
  command, as benchmark 1 does, with the issue's target of 5 ms, and the launcher's own CPU
  time per call (the parent's ``process_time``: the child's work is not in it), which a busy
  machine does not inflate as it inflates wall times.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from cases import Config, interleaved
from measure import BareRun, Row, Stats, call, project

__all__ = ["import_time", "warm_call"]

IMPORT_TARGET_S = 0.12
WARM_TARGET_S = 0.005
# VmHWM, not getrusage's ru_maxrss: that one keeps the peak of the forked parent from before
# the exec.
_PEAK = (
    "import sys; sys.stdout.write(next(line.split()[1] for line in open('/proc/self/status')"
    " if line.startswith('VmHWM:')))"
)


def _child(code: str) -> tuple[float, int]:
    """Run ``python -c code`` in a new process: its CPU seconds and its peak RSS in KiB."""
    proc = subprocess.Popen(
        [sys.executable, "-c", f"{code}\n{_PEAK}"],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert proc.stdout is not None
    peak = int(proc.stdout.read() or 0)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    if proc.returncode != 0:
        raise RuntimeError(f"python -c {code!r} failed with {proc.returncode}")
    return usage.ru_utime + usage.ru_stime, peak


def import_time(cfg: Config) -> list[Row]:
    """``import nerfcache`` in a new process against ``python -c pass``: CPU time and memory."""
    cases = {
        "python -c pass": "pass",
        "import nerfcache": "import nerfcache",
        "import nerfcache; nerfcache.generate_video": "import nerfcache; nerfcache.generate_video",
    }
    for code in cases.values():  # warm-up: the page cache, the .pyc files
        _child(code)
    cpu: dict[str, list[float]] = {label: [] for label in cases}
    peak: dict[str, list[int]] = {label: [] for label in cases}
    labels = list(cases)
    for i in range(cfg.reps):
        for label in labels if i % 2 == 0 else reversed(labels):
            seconds, kib = _child(cases[label])
            cpu[label].append(seconds)
            peak[label].append(kib)
    base = Stats.of(cpu["python -c pass"])
    rows = []
    for label in labels:
        stats = Stats.of(cpu[label])
        memory = f"{statistics.median(peak[label]) / 1024:.0f} MiB peak"
        target, met = "", None
        if label == "import nerfcache":
            target, met = f"< {IMPORT_TARGET_S * 1e3:.0f} ms", stats.median < IMPORT_TARGET_S
        rows.append(Row("import time", f"{label}: CPU", *stats.fmt("ms", 1e3), target, met))
        rows.append(Row("import time", f"{label}: memory", memory))
        if label != "python -c pass":
            rows.append(
                Row("import time", f"{label}: ratio to python -c pass",
                    f"{stats.median / base.median:.1f}x")
            )  # fmt: skip
    return rows


def warm_call(cfg: Config) -> list[Row]:
    """A warm ``generate_video`` against a bare ``subprocess.run``: wall and launcher CPU."""
    with project("warm-call") as fake:
        out = fake.root / "out"
        call(fake, out)  # the cold build, not measured
        bare = BareRun(call(fake, out), fake.settings, fake.root / "scratch")
        image = fake.character_dir() / "images" / "portrait.png"
        launcher_cpu: list[float] = []

        def launcher() -> None:
            started = time.process_time()
            if not call(fake, out).cache_hit:
                raise RuntimeError("the warm-call benchmark must run warm")
            launcher_cpu.append(time.process_time() - started)

        argvs = [bare.prepare(fake.audio, image) for _ in range(cfg.reps + 3)]

        def bare_run(pending: list[tuple[str, ...]] = argvs) -> None:
            bare.run(pending.pop())

        for _ in range(3):  # warm-up: page cache, imports, the digest memo
            launcher()
            bare_run()
        launcher_cpu.clear()
        gen, raw, diff = interleaved(launcher, bare_run, cfg.reps)
        own = Stats.of(launcher_cpu)
    return [
        Row("warm call", "generate_video, warm", *gen.fmt("ms", 1e3)),
        Row("warm call", "bare subprocess.run, same command", *raw.fmt("ms", 1e3)),
        Row(
            "warm call",
            "overhead per call (paired difference)",
            *diff.fmt("ms", 1e3),
            f"< {WARM_TARGET_S * 1e3:.0f} ms",
            diff.median < WARM_TARGET_S,
        ),
        Row("warm call", "launcher CPU per call (parent process only)", *own.fmt("ms", 1e3)),
    ]


if __name__ == "__main__":
    # Until they are registered in cases.BENCHMARKS: python bench/cases_startup.py [--quick]
    from run import text_table

    config = Config(quick="--quick" in sys.argv)
    print(text_table([*import_time(config), *warm_call(config)]))
