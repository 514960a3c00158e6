"""Whether a run lives: the owner record and its lease decide, never a free lock alone.

The runs here hold no lock, as on a mount where flock silently does not exclude: what keeps a
live run from being reaped is its owner record.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nerfcache import CharacterCache
from nerfcache._procs import process_start
from nerfcache.cache import liveness
from nerfcache.cache.liveness import LEASE_EXPIRY_S, Owner, provably_dead, read_owner, write_owner
from nerfcache.cache.staging import live_runs, reap_dead_runs
from nerfcache.launch import RUN_VARIABLE
from tests.cache.helpers import FP
from tests.conftest import process_gone, wait_until

HERE = Owner(host="gpu1/m1/boot1/pid:[1]", pid=100, start=5)


# -- the rule --


@pytest.mark.parametrize(
    ("owner", "lease_age_s", "alive", "dead"),
    [
        (HERE, 1.0, True, False),  # this host, the process lives
        (HERE, 1e9, True, False),  # ... however long ago its lease was renewed
        (HERE, 1.0, False, True),  # this host, the process is gone (or its pid was reused)
        (dataclasses.replace(HERE, host="gpu1/m1/boot0/pid:[1]"), 1.0, True, False),  # rebooted
        (dataclasses.replace(HERE, host="gpu1/m1/boot0/pid:[1]"), LEASE_EXPIRY_S + 1, True, True),
        (dataclasses.replace(HERE, host="gpu2/m2/boot1/pid:[1]"), 1.0, False, False),  # a pid there
        (dataclasses.replace(HERE, host="gpu2/m2/boot1/pid:[1]"), LEASE_EXPIRY_S - 1, False, False),
        (dataclasses.replace(HERE, host="gpu2/m2/boot1/pid:[1]"), LEASE_EXPIRY_S + 1, True, True),
    ],
    ids=[
        "here-alive",
        "here-alive-stale-lease",
        "here-gone",
        "here-before-a-reboot",
        "here-before-a-reboot-lease-expired",
        "elsewhere-fresh-lease",
        "elsewhere-lease-about-to-expire",
        "elsewhere-lease-expired",
    ],
)
def test_provably_dead(owner: Owner, lease_age_s: float, alive: bool, dead: bool) -> None:
    assert provably_dead(owner, lease_age_s, HERE, alive=lambda _pid, _start: alive) is dead


def test_the_owner_record_round_trips(tmp_path: Path) -> None:
    me = Owner.this_process()
    assert me.pid == os.getpid()
    assert me.start == process_start(os.getpid())
    write_owner(tmp_path / "r.owner", me)
    assert read_owner(tmp_path / "r.owner") == me
    (tmp_path / "bad.owner").write_text('{"host": "h"}')
    assert read_owner(tmp_path / "bad.owner") is None
    assert read_owner(tmp_path / "missing.owner") is None


# -- runs on disk --


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; killed at its end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def sleeper(started: list[subprocess.Popen[bytes]], run_id: str | None = None):
    """A process that sleeps; with ``run_id``, it carries that run's mark, as a run's do."""
    env = {**os.environ, RUN_VARIABLE: run_id} if run_id else None
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    started.append(proc)
    return proc


def lay_out_run(cache: CharacterCache, run_id: str, owner: Owner, *, age_s: float = 0) -> Path:
    """A run's staging dir and owner record, its lease renewed ``age_s`` ago; no lock held."""
    runs = cache.meta / "runs"
    (runs / run_id).mkdir(parents=True)
    (runs / run_id / "G_PTI.pt").write_bytes(b"half")
    (runs / f"{run_id}.lock").touch()
    record = runs / f"{run_id}.owner"
    write_owner(record, owner)
    then = time.time() - age_s
    os.utime(record, (then, then))
    return runs / run_id


def test_a_live_run_with_a_free_lock_is_kept(cache: CharacterCache) -> None:
    staging = lay_out_run(cache, "mine", Owner.this_process())
    reap_dead_runs(staging.parent)
    assert staging.is_dir()
    assert live_runs(staging.parent) == 1
    assert cache.in_use()


def test_a_run_whose_process_ended_is_reaped_with_what_it_left_running(
    cache: CharacterCache, sleepers
) -> None:
    launcher = sleeper(sleepers)
    owner = dataclasses.replace(
        Owner.this_process(), pid=launcher.pid, start=process_start(launcher.pid)
    )
    staging = lay_out_run(cache, "crashed", owner)
    leftover = sleeper(sleepers, "crashed")
    stranger = sleeper(sleepers, "another-run")
    assert live_runs(staging.parent) == 1
    launcher.kill()
    launcher.wait()
    assert live_runs(staging.parent) == 0

    with cache.stage(FP, image=Path("i"), network=Path("n")) as mine:
        assert sorted(p.name for p in staging.parent.iterdir()) == sorted(
            [mine.run_id, f"{mine.run_id}.lock", f"{mine.run_id}.owner"]
        )
    assert wait_until(lambda: process_gone(leftover.pid), timeout=5)
    assert not process_gone(stranger.pid)
    assert list(staging.parent.iterdir()) == []


def test_a_reused_pid_is_not_taken_for_the_owner(cache: CharacterCache) -> None:
    me = Owner.this_process()
    assert me.start is not None
    staging = lay_out_run(cache, "old", dataclasses.replace(me, start=me.start - 1))
    assert live_runs(staging.parent) == 0
    reap_dead_runs(staging.parent)
    assert list(staging.parent.iterdir()) == []


def test_another_hosts_run_lives_while_its_lease_is_renewed(
    cache: CharacterCache, sleepers
) -> None:
    # Its pid is one of this host's (this very process): on another host it names nobody.
    elsewhere = dataclasses.replace(Owner.this_process(), host="gpu2/other/pid:[1]", pid=1)
    staging = lay_out_run(cache, "remote", elsewhere, age_s=LEASE_EXPIRY_S / 2)
    # A process of this host that happens to carry the mark is not that run's to kill.
    marked = sleeper(sleepers, "remote")
    reap_dead_runs(staging.parent)
    assert staging.is_dir()
    assert cache.in_use()

    os.utime(staging.with_suffix(".owner"), (0, time.time() - LEASE_EXPIRY_S - 60))
    assert not cache.in_use()
    reap_dead_runs(staging.parent)
    assert list(staging.parent.iterdir()) == []
    assert not process_gone(marked.pid)  # only the run's own host may kill its processes


def test_a_run_renews_its_lease_and_removes_its_record(
    cache: CharacterCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(liveness, "LEASE_RENEW_S", 0.05)
    with cache.stage(FP, image=Path("i"), network=Path("n")) as staging:
        record = staging.path.with_suffix(".owner")
        assert read_owner(record) == Owner.this_process()
        os.utime(record, (0, 0))
        assert wait_until(lambda: record.stat().st_mtime > time.time() - 60, timeout=5)
    assert not record.exists()
    # The renewing thread ends with the process's last run.
    assert wait_until(
        lambda: all(t.name != "nerfcache-leases" for t in threading.enumerate()), timeout=5
    )


def test_an_older_nerfcaches_run_is_judged_by_its_lock(cache: CharacterCache) -> None:
    runs = cache.meta / "runs"
    (runs / "old").mkdir(parents=True)
    (runs / "old.lock").touch()  # no owner record, and its lock is free: dead
    (runs / "stray").mkdir()  # a staging dir alone
    reap_dead_runs(runs)
    assert list(runs.iterdir()) == []


def test_a_killed_process_is_dead_already_as_a_zombie(sleepers) -> None:
    proc = sleeper(sleepers)
    start = process_start(proc.pid)
    assert start is not None
    owner = dataclasses.replace(Owner.this_process(), pid=proc.pid, start=start)
    here = Owner.this_process()
    assert not provably_dead(owner, 0.0, here)
    os.kill(proc.pid, signal.SIGKILL)
    # Not reaped yet (a launcher whose parent has not waited for it): its pid still exists.
    assert wait_until(lambda: provably_dead(owner, 0.0, here), timeout=5)
    proc.wait()
    assert provably_dead(owner, 0.0, here)
