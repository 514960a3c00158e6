from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from loguru import logger

from nerfcache import log_to_stdlib, stop_log_to_stdlib
from nerfcache.launch import LaunchPlan
from nerfcache.run import run_plan

if TYPE_CHECKING:
    from loguru import Record


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[tuple[str, str, str]]:
        return [(r.name, r.levelname, r.getMessage()) for r in self.records]


@pytest.fixture
def stdlib() -> Iterator[Collect]:
    """A handler on the ``nerfcache`` stdlib logger, at DEBUG; the bridge undone afterwards."""
    handler, target = Collect(), logging.getLogger("nerfcache")
    target.addHandler(handler)
    target.setLevel(logging.DEBUG)
    yield handler
    stop_log_to_stdlib()
    target.removeHandler(handler)
    target.setLevel(logging.NOTSET)


def shell(script: str) -> LaunchPlan:
    return LaunchPlan(
        argv=("sh", "-c", script),
        cwd=Path(),
        env=dict(os.environ),
        script=Path("sh"),
        cache_capable=False,
    )


def named(name: str) -> Callable[[Record], None]:
    """A loguru patcher: records as if logged from module ``name``."""

    def patch(record: Record) -> None:
        record["name"] = name

    return patch


def sinks() -> int:
    return len(logger._core.handlers)  # type: ignore[attr-defined]


def test_nerfcaches_records_reach_stdlib_once_however_often_it_is_called(stdlib: Collect) -> None:
    before = sinks()
    log_to_stdlib()
    log_to_stdlib()
    assert sinks() == before + 1
    run_plan(shell("echo hello; echo 'ERROR: bad thing' >&2"))
    messages = stdlib.messages()
    assert ("nerfcache.run", "INFO", "hello") in messages
    assert ("nerfcache.run", "ERROR", "ERROR: bad thing") in messages
    assert sum(m == "hello" for _, _, m in messages) == 1
    assert any(m.startswith("pid ") and "exited with 0" in m for _, _, m in messages)


def test_levels_map_to_the_nearest_stdlib_level(stdlib: Collect) -> None:
    log_to_stdlib()
    as_nerfcache = logger.patch(named("nerfcache.test"))
    for level in ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"):
        as_nerfcache.log(level, "a {} record", level)
    assert [(r.levelno, r.getMessage()) for r in stdlib.records] == [
        (logging.DEBUG, "a TRACE record"),
        (logging.DEBUG, "a DEBUG record"),
        (logging.INFO, "a INFO record"),
        (logging.INFO, "a SUCCESS record"),
        (logging.WARNING, "a WARNING record"),
        (logging.ERROR, "a ERROR record"),
        (logging.CRITICAL, "a CRITICAL record"),
    ]
    assert {r.name for r in stdlib.records} == {"nerfcache.test"}


def test_stdlib_levels_decide_and_exceptions_travel(stdlib: Collect) -> None:
    log_to_stdlib()
    logging.getLogger("nerfcache").setLevel(logging.WARNING)
    as_nerfcache = logger.patch(named("nerfcache.test"))
    as_nerfcache.info("dropped by the stdlib level")
    try:
        raise KeyError("boom")  # noqa: TRY301
    except KeyError:
        as_nerfcache.exception("it failed")
    (record,) = stdlib.records
    assert record.getMessage() == "it failed"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], KeyError)


@pytest.mark.usefixtures("stdlib")
def test_other_loguru_records_are_not_forwarded() -> None:
    root = Collect()
    logging.getLogger().addHandler(root)
    try:
        log_to_stdlib()
        logger.patch(named("someapp")).warning("not ours")
    finally:
        logging.getLogger().removeHandler(root)
    assert root.records == []


def test_undo_removes_the_sink_and_silences_nerfcache_again(stdlib: Collect) -> None:
    before = sinks()
    log_to_stdlib()
    stop_log_to_stdlib()
    stop_log_to_stdlib()
    assert sinks() == before
    seen: list[str] = []
    sink = logger.add(seen.append)
    try:
        run_plan(shell("echo hello"))
    finally:
        logger.remove(sink)
    assert stdlib.records == []
    assert seen == []  # the namespace is disabled again, as after import


def test_importing_adds_no_sink_and_the_one_liner_adds_one(tmp_path: Path) -> None:
    code = (
        "import logging\n"
        "from loguru import logger\n"
        "before = len(logger._core.handlers)\n"
        "import nerfcache\n"
        "assert len(logger._core.handlers) == before\n"
        "logging.basicConfig(level=logging.INFO, format='%(name)s %(levelname)s %(message)s')\n"
        "logger.remove()  # loguru's own stderr sink: the app only wants stdlib logging\n"
        "nerfcache.log_to_stdlib()\n"
        "assert len(logger._core.handlers) == 1\n"
        "from nerfcache.launch import LaunchPlan\n"
        "from nerfcache.run import run_plan\n"
        "import os, pathlib\n"
        "plan = LaunchPlan(argv=('echo', 'hi'), cwd=pathlib.Path('.'),\n"
        "    env=dict(os.environ), script=pathlib.Path('echo'), cache_capable=False)\n"
        "run_plan(plan)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert "nerfcache.run INFO hi\n" in done.stderr
