"""Where flock silently does not exclude (some NFS, Lustre mounts), every run makes its video.

Twelve processes generate one cold character at once, each with ``fcntl.flock`` made a no-op
(``nolock_worker.py``): no lock excludes anybody, so single-flight is lost (PTI may run more than
once), but no run may judge another dead, remove its staging dir or kill its script. Two hosts
share the cache folder: half the processes run under another hostname (``unshare -u``, a UTS
namespace of their own, so nerfcache's host id differs), where a process id names nobody; each
host also runs six processes side by side. Where no second hostname can be had, all twelve run
on this one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from nerfcache.testing import make_fake_project
from tests.reliability.helpers import all_gone, assert_sound, user_files

PROCESSES = 12
WORKER = Path(__file__).with_name("nolock_worker.py")
# Long enough for the runs to overlap in every phase, short enough for twelve on two cores.
PHASES = {"FAKE_NERF_PTI_S": "0.5", "FAKE_NERF_FIT_S": "0.2", "FAKE_NERF_RENDER_S": "0.5"}
OTHER_HOST = "nerfcache-other-host"


def _other_host_prefix() -> list[str]:
    """A command prefix that runs a process under another hostname; [] if none works here."""
    unshare = shutil.which("unshare")
    if unshare is None or sys.platform != "linux":
        return []
    # As root a UTS namespace needs nothing more; otherwise a user namespace maps us to root.
    prefix = [unshare, "-u"] if os.geteuid() == 0 else [unshare, "-r", "-u"]
    probe = subprocess.run(
        [*prefix, "sh", "-c", f"hostname {OTHER_HOST} && hostname"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0 or probe.stdout.strip() != OTHER_HOST:
        return []
    return [*prefix, "sh", "-c", f'hostname {OTHER_HOST} && exec "$@"', "sh"]


def test_every_run_makes_its_video_without_working_locks(tmp_path: Path) -> None:
    project = make_fake_project(tmp_path / "project")
    other_host = _other_host_prefix()
    mine = user_files(project.character_dir())
    extra_env = {**project.settings.extra_env, **PHASES, "FAKE_NERF_SPAWN_CHILD": "1"}

    def command(i: int) -> list[str]:
        spec = {
            "root": str(project.root),
            "extra_env": extra_env,
            "audio": str(project.audio),
            "character": project.character,
            "model": project.model_name,
            "out": str(tmp_path / "videos" / f"video-{i:02d}"),
        }
        prefix = other_host if i % 2 else []
        return [*prefix, sys.executable, str(WORKER), json.dumps(spec)]

    workers = [
        subprocess.Popen(command(i), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(PROCESSES)
    ]
    records = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=50)
        assert worker.returncode == 0, stderr[-3000:]
        records.append(json.loads(stdout))

    assert len({r["host"] for r in records}) == (2 if other_host else 1)
    failed = [r for r in records if not r["ok"]]
    assert failed == [], f"{len(failed)} of {PROCESSES} runs failed: {failed}"
    for record in records:
        video = Path(str(record["out"])) / "output_NeRFFaceSpeech.mp4"
        assert video.read_bytes().startswith(b"NERFCACHE FAKE VIDEO"), record
    calls = project.calls()
    assert len(calls) == PROCESSES
    assert all(call.exit is not None and call.exit["code"] == 0 for call in calls)
    # Nothing left running, nothing left in runs/, the cache sound, the user's files as they were.
    assert all_gone([c.pid for c in calls] + [int(str(c.start["child_pid"])) for c in calls])
    assert_sound(project)
    assert user_files(project.character_dir()) == mine
