"""6 processes x 5 calls over 3 characters and 2 models, in a seeded random order, some cancelled.

The runs share 3 GPU slots. Afterwards: every call either made a real video or was cancelled,
PTI ran exactly once per (character, image, model), every fit used the PTI group it was made
on, never more runs at once than slots, no process is left, no staging dir or lock is left,
and the users' files are as they were.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

from nerfcache.testing import FakeCall, make_fake_project
from tests.conftest import lock_is_free, staging_left
from tests.reliability.helpers import all_gone, assert_sound, user_files

SEED = 20251220
PROCESSES = 6
CALLS = 5
CHARACTERS = ("ayanami", "rei", "asuka")
MODELS = ("ffhq.pkl", "celeba.pkl")
GPUS = ("0", "1", "2")  # fewer slots than processes: runs queue for them, and are cancelled there
WORKER = Path(__file__).with_name("stress_worker.py")
PHASES = {"FAKE_NERF_PTI_S": "0.3", "FAKE_NERF_FIT_S": "0.05", "FAKE_NERF_RENDER_S": "0.1"}


def plan(rng: random.Random, out: Path) -> list[list[dict[str, object]]]:
    """30 calls: every (character, model) once uncancelled, the rest drawn at random."""
    jobs: list[dict[str, object]] = [
        {"character": c, "model": m} for c in CHARACTERS for m in MODELS
    ]
    while len(jobs) < PROCESSES * CALLS:
        job: dict[str, object] = {"character": rng.choice(CHARACTERS), "model": rng.choice(MODELS)}
        how = rng.choice(["none", "none", "during-pti", "during-render", "anywhere"])
        if how == "during-pti":  # only a cold run prints this: a cancelled build
            job["cancel_on"] = "| 0/2000"
        elif how == "during-render":
            job["cancel_on"] = "Processing frames:   0%"
        elif how == "anywhere":  # waiting for the lock, staging, running, publishing ...
            job["cancel_after"] = round(rng.uniform(0.0, 0.6), 3)
        jobs.append(job)
    rng.shuffle(jobs)
    for i, job in enumerate(jobs):
        job["out"] = str(out / f"video-{i:02d}")
    return [jobs[p * CALLS : (p + 1) * CALLS] for p in range(PROCESSES)]


def last_seen(call: FakeCall) -> float:
    """When the run was last known alive: its exit, or (killed by a cancel) its last record."""
    records = [call.start, *call.phases.values(), *([call.exit] if call.exit else [])]
    return max(float(str(record["t"])) for record in records)


def test_six_processes_five_calls_each_some_cancelled(tmp_path: Path) -> None:
    project = make_fake_project(tmp_path / "project")
    for i, character in enumerate(CHARACTERS[1:], start=1):
        project.add_character(character, color=(60 * i, 20 * i, 200 - 50 * i))
    (project.settings.model_dir / "celeba.pkl").write_bytes(b"another fake network")
    mine = {c: user_files(project.character_dir(c)) for c in CHARACTERS}
    chunks = plan(random.Random(SEED), tmp_path / "videos")  # noqa: S311 - a test plan
    extra_env = {**project.settings.extra_env, **PHASES, "FAKE_NERF_SPAWN_CHILD": "1"}

    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                json.dumps(
                    {
                        "root": str(project.root),
                        "extra_env": extra_env,
                        "audio": str(project.audio),
                        "gpus": ",".join(GPUS),
                        "jobs": jobs,
                    }
                ),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for jobs in chunks
    ]
    records = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=50)
        assert worker.returncode == 0, stderr[-3000:]
        records += json.loads(stdout)

    assert len(records) == PROCESSES * CALLS
    # Every call made a real video, or was cancelled and delivered nothing.
    for record in records:
        out = Path(str(record["out"])) / "output_NeRFFaceSpeech.mp4"
        if record["ok"]:
            assert record["video"] == str(out)
            assert out.read_bytes().startswith(b"NERFCACHE FAKE VIDEO"), record
        else:
            assert record["cancelled"], record
            assert not out.exists()
    assert all(r["ok"] for r in records if not r["cancel_set"])
    assert any(r["cancelled"] for r in records), "the plan is meant to cancel some calls"

    calls = project.calls()
    # PTI ran exactly once per (character, image, model).
    images = {
        hashlib.sha256(
            (project.character_dir(c) / "images" / "portrait.png").read_bytes()
        ).hexdigest(): c
        for c in CHARACTERS
    }
    networks = {
        hashlib.sha256((project.settings.model_dir / m).read_bytes()).hexdigest(): m for m in MODELS
    }
    built = Counter(
        (
            images[str(c.phases["pti"]["image_sha256"])],
            networks[str(c.phases["pti"]["network_sha256"])],
        )
        for c in calls
        if c.computed("pti")
    )
    assert built == {(c, m): 1 for c in CHARACTERS for m in MODELS}
    # Every fit, computed or loaded, belongs to the PTI group the same run used.
    for call in calls:
        if "fitting" in call.phases:
            assert call.phases["fitting"]["pti_token"] == call.phases["pti"]["token"]

    # Never more runs at once than GPU slots, each run on its own card.
    assert {c.start["cuda_visible_devices"] for c in calls} <= set(GPUS)
    events = sorted(
        [(float(str(c.start["t"])), 1) for c in calls] + [(last_seen(c), -1) for c in calls]
    )
    alive = [0]
    for _, change in events:
        alive.append(alive[-1] + change)
    assert max(alive) <= len(GPUS)

    # No process left: neither the scripts nor the children they started.
    pids = [c.pid for c in calls] + [int(str(c.start["child_pid"])) for c in calls]
    assert all_gone(pids)
    for character in CHARACTERS:
        folder = project.character_dir(character)
        assert_sound(project, character)  # no staging dir, no lock held, nothing truncated
        assert staging_left(project, character) == []
        assert user_files(folder) == mine[character]
    slots = project.settings.state_dir / "gpu-slots"
    assert all(lock_is_free(lock) for lock in slots.glob("*.lock"))
