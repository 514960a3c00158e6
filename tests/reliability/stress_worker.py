"""One process of the stress test: generate_video calls in a given order, some of them cancelled.

Run as ``python stress_worker.py SPEC_JSON``; prints one JSON record per call. A call is
cancelled (through the sync cancel token) when the script prints ``cancel_on``, or
``cancel_after`` seconds after it began, wherever the run is by then.
"""

from __future__ import annotations

import json
import sys
import threading

import nerfcache
from nerfcache import GenerationError, Settings, generate_video

# Cancelling raises GenerationCancelled where it exists, else a failed result (or GenerationError).
Cancelled: type[Exception] = getattr(nerfcache, "GenerationCancelled", GenerationError)


def run(spec: dict[str, object], job: dict[str, object], settings: Settings) -> dict[str, object]:
    cancel = threading.Event()
    marker = job.get("cancel_on")

    def on_line(line: str) -> None:
        if isinstance(marker, str) and marker in line:
            cancel.set()

    delay = job.get("cancel_after")
    timer = threading.Timer(float(delay), cancel.set) if isinstance(delay, float) else None
    record: dict[str, object] = {**job, "ok": False, "video": None, "cancelled": False}
    if timer is not None:
        timer.start()
    try:
        result = generate_video(
            str(spec["audio"]),
            str(job["character"]),
            str(job["out"]),
            str(job["model"]),
            settings=settings,
            cancel=cancel,
            on_line=on_line,
        )
    except Cancelled:
        record["cancelled"] = True
    else:
        record["ok"] = result.ok
        record["video"] = str(result.video_path) if result.video_path else None
        record["returncode"] = result.returncode
        record["cancelled"] = cancel.is_set() and not result.ok
        record["tail"] = list(result.log_tail[-5:])
    finally:
        if timer is not None:
            timer.cancel()
    record["cancel_set"] = cancel.is_set()
    return record


def main() -> int:
    spec = json.loads(sys.argv[1])
    settings = Settings(project_root=spec["root"], extra_env=spec["extra_env"], gpus=spec["gpus"])
    print(json.dumps([run(spec, job, settings) for job in spec["jobs"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
