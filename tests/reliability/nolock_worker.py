"""One process of the no-lock test: one generate_video call on a mount where flock does not exclude.

Run as ``python nolock_worker.py SPEC_JSON``; prints one JSON record. ``fcntl.flock`` is made a
no-op before nerfcache (or filelock) is imported, as on some NFS and Lustre mounts: every lock
"succeeds" and excludes nobody, in this process and across processes alike.
"""

from __future__ import annotations

import fcntl
import json
import socket
import sys


def _no_flock(_fd: object, _operation: int) -> None:
    """What flock does on a mount that does not lock: report success, exclude nobody."""


fcntl.flock = _no_flock  # before filelock is imported: it looks flock up on every call

from nerfcache import Settings, generate_video  # noqa: E402 - after the patch above


def main() -> int:
    spec = json.loads(sys.argv[1])
    settings = Settings(project_root=spec["root"], extra_env=spec["extra_env"])
    record: dict[str, object] = {"out": spec["out"], "host": socket.gethostname()}
    try:
        result = generate_video(
            spec["audio"], spec["character"], spec["out"], spec["model"], settings=settings
        )
    except Exception as error:  # noqa: BLE001 - the test reports what went wrong
        record.update(ok=False, error=f"{type(error).__name__}: {error}")
    else:
        record.update(ok=result.ok, error=result.error, tail=list(result.log_tail[-5:]))
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
