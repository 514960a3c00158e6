"""LineSplitter and run_plan: every line read, a bounded tail, timeouts and cancels that kill."""

from __future__ import annotations

import os
import random
import signal
import sys
import textwrap
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from nerfcache.launch import LaunchPlan
from nerfcache.run import MAX_LINE_CHARS, TAIL_LINES, LineSplitter, run_plan
from tests.conftest import process_gone, wait_until

TRUNCATED = " [line truncated]"
BAR = "Processing frames: {pct:3d}%|{bar:<10}| {n}/10 [00:01<00:02,  2.9it/s]"


def _bar(n: int) -> str:
    return BAR.format(pct=n * 10, bar="#" * n, n=n)


def _plan(tmp_path: Path, code: str) -> LaunchPlan:
    return LaunchPlan(
        argv=(sys.executable, "-c", textwrap.dedent(code)),
        cwd=tmp_path,
        env=dict(os.environ),
        script=Path(sys.executable),
        cache_capable=False,
    )


def _split(splitter: LineSplitter, *chunks: bytes) -> list[str]:
    lines = [line for chunk in chunks for line in splitter.feed(chunk)]
    return lines + list(splitter.close())


# --- LineSplitter -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a\nb\n", ["a", "b"]),
        (b"a\rb\r", ["a", "b"]),
        (b"a\r\nb\r\n", ["a", "b"]),
        (b"a\n\n\r\n\r\rb", ["a", "b"]),
        (b"\n\r\n", []),
        (b"", []),
        (b"last line without newline", ["last line without newline"]),
    ],
)
def test_lines_split_on_newline_and_carriage_return_without_empty_lines(data, expected) -> None:
    assert _split(LineSplitter(), data) == expected


def test_a_line_split_across_feeds_is_joined() -> None:
    splitter = LineSplitter()
    assert list(splitter.feed(b"Loading net")) == []
    assert list(splitter.feed(b"works from ")) == []
    assert list(splitter.feed(b'"ffhq.pkl"...\nvideo pro')) == [
        'Loading networks from "ffhq.pkl"...'
    ]
    assert list(splitter.close()) == ["video pro"]


def test_crlf_split_across_feeds_gives_no_empty_line() -> None:
    assert _split(LineSplitter(), b"a\r", b"\nb\r", b"\n") == ["a", "b"]


def test_invalid_utf8_is_decoded_with_replacement_characters() -> None:
    assert _split(LineSplitter(), b"\xff\xfe bad \x80 bytes\n") == ["\ufffd\ufffd bad \ufffd bytes"]


def test_a_character_split_across_feeds_is_decoded_whole() -> None:
    encoded = "绫波丽 é\n".encode()
    assert _split(LineSplitter(), encoded[:2], encoded[2:8], encoded[8:]) == ["绫波丽 é"]


def test_a_long_line_is_truncated_and_the_next_line_is_intact() -> None:
    lines = _split(LineSplitter(max_chars=10), b"x" * 100 + b"\nnext\n")
    assert lines == ["x" * 10 + TRUNCATED, "next"]


def test_a_long_line_fed_in_pieces_is_truncated_once() -> None:
    lines = _split(LineSplitter(max_chars=10), *([b"y" * 7] * 20), b"\nnext")
    assert lines == ["y" * 10 + TRUNCATED, "next"]


def test_a_line_at_the_limit_is_kept_whole_counting_characters_not_bytes() -> None:
    assert _split(LineSplitter(max_chars=10), b"z" * 10 + b"\n") == ["z" * 10]
    assert _split(LineSplitter(max_chars=10), ("é" * 10).encode()) == ["é" * 10]


def _peak_bytes_while(action) -> int:
    """The most memory Python allocated while ``action`` ran, beyond what it held before."""
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_feeding_50_mb_without_a_newline_keeps_memory_bounded() -> None:
    splitter = LineSplitter()
    chunk = b"x" * (1 << 16)

    def feed() -> None:
        for _ in range(50 * 16):  # 50 MB, in the pieces a pipe hands over
            assert list(splitter.feed(chunk)) == []

    assert _peak_bytes_while(feed) < 1 << 20
    assert list(splitter.feed(b"\nafter\n")) == ["x" * MAX_LINE_CHARS + TRUNCATED, "after"]


def test_one_50_mb_feed_without_a_newline_keeps_no_copy_of_it() -> None:
    splitter = LineSplitter()
    data = b"x" * (50 << 20)
    # Decoding the feed is one copy; the line kept until its end is MAX_LINE_CHARS long.
    assert _peak_bytes_while(lambda: list(splitter.feed(data))) < len(data) + (1 << 20)
    assert list(splitter.close()) == ["x" * MAX_LINE_CHARS + TRUNCATED]


@pytest.mark.parametrize("cut", range(1, 12))
def test_a_multibyte_character_split_at_any_byte_is_decoded_whole(cut) -> None:
    encoded = "a\U0001f600绫\né\n".encode()  # 4-, 3- and 2-byte characters
    assert _split(LineSplitter(), encoded[:cut], encoded[cut:]) == ["a\U0001f600绫", "é"]


def test_a_multibyte_character_fed_one_byte_at_a_time_is_decoded_whole() -> None:
    encoded = "绫波丽 \U0001f600\r\n".encode()
    assert _split(LineSplitter(), *(encoded[i : i + 1] for i in range(len(encoded)))) == [
        "绫波丽 \U0001f600"
    ]


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        pytest.param((b"ab\xe7\xbb", b"\ncd\n"), ["ab\ufffd", "cd"], id="cut-off-before-newline"),
        pytest.param((b"ab\xe7", b"\xbbcd\n"), ["ab\ufffdcd"], id="bad-continuation-next-feed"),
        pytest.param((b"ab\xf0\x9f",), ["ab\ufffd"], id="cut-off-at-the-end"),
    ],
)
def test_an_incomplete_character_is_one_replacement_character(chunks, expected) -> None:
    assert _split(LineSplitter(), *chunks) == expected


def test_crlf_and_lone_cr_across_many_feeds_give_every_line_once() -> None:
    data = b"".join(b"line %d\r\n" % i if i % 3 else b"bar %d\r" % i for i in range(1000))
    for size in (1, 2, 7, 4096):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        expected = [f"line {i}" if i % 3 else f"bar {i}" for i in range(1000)]
        assert _split(LineSplitter(), *chunks) == expected


def test_a_long_line_of_multibyte_characters_over_many_feeds_is_cut_at_the_limit() -> None:
    encoded = ("绫" * 50).encode() + b"\nnext\n"
    chunks = [encoded[i : i + 5] for i in range(0, len(encoded), 5)]  # cuts inside characters
    assert _split(LineSplitter(max_chars=10), *chunks) == ["绫" * 10 + TRUNCATED, "next"]


def _lines_of_the_whole(data: bytes, max_chars: int) -> list[str]:
    """The lines of ``data`` read in one piece: what any cutting of it into feeds must give."""
    lines = data.decode("utf-8", errors="replace").replace("\r", "\n").split("\n")
    return [
        line[:max_chars] + TRUNCATED if len(line) > max_chars else line for line in lines if line
    ]


@pytest.mark.parametrize("seed", range(30))
def test_any_cutting_into_feeds_gives_the_lines_of_the_whole_stream(seed) -> None:
    rng = random.Random(seed)  # noqa: S311 - test data, reproducible by its seed
    parts = [
        b"ok",
        b"\n",
        b"\r",
        b"\r\n",
        "绫波".encode(),
        "\U0001f600".encode(),
        b"\xff",
        b"\xe7\xbb",
    ]
    data = b"".join(rng.choice([*parts, b"x" * rng.randint(1, 40)]) for _ in range(400))
    cuts = sorted(rng.sample(range(1, len(data)), k=rng.choice([1, 4, 60])))
    chunks = [data[start:end] for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    assert _split(LineSplitter(max_chars=16), *chunks) == _lines_of_the_whole(data, 16)


def test_long_and_short_lines_in_one_feed_are_each_bounded() -> None:
    data = b"a" * 11 + b"\rb\n" + b"c" * 10 + b"\n" + b"d" * 30
    assert _split(LineSplitter(max_chars=10), data) == [
        "a" * 10 + TRUNCATED,
        "b",
        "c" * 10,
        "d" * 10 + TRUNCATED,
    ]


# --- run_plan: output ---------------------------------------------------------------------------


def test_stdout_and_stderr_are_both_read(tmp_path) -> None:
    seen: list[str] = []
    outcome = run_plan(
        _plan(
            tmp_path,
            """
            import sys
            print("to stdout", flush=True)
            print("to stderr", file=sys.stderr, flush=True)
            """,
        ),
        on_line=seen.append,
    )
    assert outcome.returncode == 0
    assert sorted(seen) == ["to stderr", "to stdout"]
    assert sorted(outcome.log_tail) == ["to stderr", "to stdout"]


def test_a_flood_on_stderr_before_stdout_does_not_deadlock(tmp_path) -> None:
    seen: list[str] = []
    outcome = run_plan(
        _plan(
            tmp_path,
            """
            import sys
            sys.stderr.write(("e" * 99 + "\\n") * 50_000)  # 5 MB: far more than a pipe holds
            sys.stderr.flush()
            print("stdout after the flood", flush=True)
            """,
        ),
        timeout=30,  # a deadlock shows up as timed_out rather than as a hung suite
        on_line=seen.append,
    )
    assert not outcome.timed_out
    assert outcome.returncode == 0
    assert seen.count("e" * 99) == 50_000
    assert "stdout after the flood" in seen


def test_progress_redraws_arrive_as_lines_and_the_tail_keeps_the_latest(tmp_path) -> None:
    seen: list[str] = []
    outcome = run_plan(
        _plan(
            tmp_path,
            f"""
            import sys
            bar = {BAR!r}
            print("Loading networks", file=sys.stderr, flush=True)
            for n in range(11):
                sys.stderr.write("\\r" + bar.format(pct=n * 10, bar="#" * n, n=n))
                sys.stderr.flush()
            sys.stderr.write("\\nvideo processing .. \\n")
            for n in range(4):
                sys.stderr.write("\\r" + bar.format(pct=n * 10, bar="#" * n, n=n))
            sys.stderr.write("\\npose undetected\\n")
            """,
        ),
        on_line=seen.append,
    )
    assert outcome.returncode == 0
    bars = [_bar(n) for n in range(11)]
    assert seen == [
        "Loading networks",
        *bars,
        "video processing .. ",
        *bars[:4],
        "pose undetected",
    ]
    assert outcome.log_tail == (
        "Loading networks",
        _bar(10),
        "video processing .. ",
        _bar(3),
        "pose undetected",
    )


def test_the_tail_keeps_the_last_lines(tmp_path) -> None:
    outcome = run_plan(
        _plan(tmp_path, "for i in range(500): print('line', i)"),
    )
    assert outcome.log_tail == tuple(f"line {i}" for i in range(500 - TAIL_LINES, 500))


def test_each_line_in_the_tail_is_bounded(tmp_path) -> None:
    seen: list[str] = []
    outcome = run_plan(
        _plan(tmp_path, "print('x' * 1_000_000); print('short')"),
        on_line=seen.append,
    )
    assert outcome.log_tail == ("x" * MAX_LINE_CHARS + TRUNCATED, "short")
    assert seen == list(outcome.log_tail)


@pytest.mark.parametrize("code", [0, 1, 3])
def test_the_exit_code_is_passed_through(tmp_path, code) -> None:
    outcome = run_plan(_plan(tmp_path, f"raise SystemExit({code})"))
    assert outcome.returncode == code
    assert not outcome.timed_out
    assert not outcome.cancelled


def test_a_child_killed_by_a_signal_reports_a_negative_code(tmp_path) -> None:
    outcome = run_plan(_plan(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    assert outcome.returncode == -signal.SIGKILL
    assert not outcome.timed_out


def test_lines_are_logged_at_levels_that_match_them(tmp_path, log_messages) -> None:
    outcome = run_plan(
        _plan(
            tmp_path,
            f"""
            import sys
            print("plain line", flush=True)
            print("warning: low GPU memory", flush=True)
            sys.stderr.write({_bar(3)!r} + "\\r" + {_bar(4)!r} + "\\n")
            sys.stderr.flush()
            def fail():
                raise ValueError("x")
            try:
                fail()
            except ValueError:
                import traceback
                traceback.print_exc()
            sys.stderr.flush()
            print("after the traceback", file=sys.stderr, flush=True)
            """,
        ),
    )
    assert outcome.returncode == 0
    levels = {message: level for level, message in reversed(log_messages)}  # the first one wins
    assert levels["plain line"] == "INFO"
    assert levels["warning: low GPU memory"] == "WARNING"
    assert levels[_bar(3)] == "DEBUG"
    assert levels[_bar(4)] == "DEBUG"
    assert levels["after the traceback"] == "INFO"
    start = next(
        i for i, (_, m) in enumerate(log_messages) if m == "Traceback (most recent call last):"
    )
    end = next(i for i, (_, m) in enumerate(log_messages) if m == "ValueError: x")
    block = log_messages[start : end + 1]
    assert any(m.lstrip().startswith('File "<string>"') for _, m in block)
    assert {level for level, _ in block} == {"ERROR"}


def test_on_line_receives_every_line_in_order(tmp_path) -> None:
    seen: list[str] = []
    run_plan(_plan(tmp_path, "for i in range(1000): print(i)"), on_line=seen.append)
    assert seen == [str(i) for i in range(1000)]


def test_stdout_and_stderr_lines_keep_the_order_they_were_written_in(tmp_path) -> None:
    seen: list[str] = []
    run_plan(
        _plan(
            tmp_path,
            """
            import sys
            for i in range(200):
                stream = sys.stderr if i % 3 else sys.stdout
                stream.write(f"line {i}\\n")
                stream.flush()
            """,
        ),
        on_line=seen.append,
    )
    assert seen == [f"line {i}" for i in range(200)]


def test_a_flood_of_short_lines_arrives_whole_and_in_order(tmp_path) -> None:
    seen: list[str] = []
    outcome = run_plan(
        _plan(
            tmp_path,
            """
            import sys
            block = "".join(f"frame {i:07d} ok\\r\\n" for i in range(100_000)).encode()
            sys.stdout.buffer.write(block)  # 2 MB in one write: many reads, lines cut between them
            """,
        ),
        on_line=seen.append,
    )
    assert seen == [f"frame {i:07d} ok" for i in range(100_000)]
    assert outcome.log_tail == tuple(seen[-TAIL_LINES:])


def test_a_bar_redrawn_among_many_lines_keeps_one_entry_in_the_tail(tmp_path) -> None:
    outcome = run_plan(
        _plan(
            tmp_path,
            f"""
            import sys
            bar = {BAR!r}
            lines = [f"before {{i}}" for i in range(1000)]
            lines += [bar.format(pct=n * 10, bar="#" * n, n=n) for n in range(11)] * 50
            lines += [f"after {{i}}" for i in range(10)]
            sys.stdout.write("\\n".join(lines) + "\\n")  # one write: lines arrive in big reads
            """,
        ),
    )
    before = tuple(f"before {i}" for i in range(1000 - (TAIL_LINES - 11), 1000))
    assert outcome.log_tail == (*before, _bar(10), *(f"after {i}" for i in range(10)))


@pytest.fixture
def warnings_and_up() -> Iterator[list[tuple[str, str]]]:
    """What nerfcache logs to a sink at WARNING, as the CLI has without --verbose."""
    messages: list[tuple[str, str]] = []
    logger.enable("nerfcache")
    sink = logger.add(
        lambda m: messages.append((m.record["level"].name, m.record["message"])), level="WARNING"
    )
    yield messages
    logger.remove(sink)
    logger.disable("nerfcache")


def test_a_sink_at_warning_gets_the_warnings_and_errors_among_a_flood(
    tmp_path, warnings_and_up
) -> None:
    seen: list[str] = []
    run_plan(
        _plan(
            tmp_path,
            """
            import sys
            lines = [f"frame {i}" for i in range(20_000)]
            lines[5000] = "Warning: low GPU memory"
            lines[9000] = "CUDA ERROR: out of memory"
            lines[9001] = "Fatal: giving up"
            lines[12000] = "EXCEPT\u0130ON caught"  # re's IGNORECASE matches i to dotted I
            lines[15000] = "UserWarning: deprecated"  # no level word on its own: INFO
            sys.stdout.write("\\n".join(lines) + "\\n")
            """,
        ),
        on_line=seen.append,
    )
    assert len(seen) == 20_000
    assert warnings_and_up == [
        ("WARNING", "Warning: low GPU memory"),
        ("ERROR", "CUDA ERROR: out of memory"),
        ("ERROR", "Fatal: giving up"),
        ("ERROR", "EXCEPT\u0130ON caught"),
    ]


def test_a_traceback_in_a_flood_is_logged_at_error_to_its_last_line(
    tmp_path, warnings_and_up
) -> None:
    run_plan(
        _plan(
            tmp_path,
            """
            import sys
            lines = [f"frame {i}" for i in range(10_000)]
            lines[5000:5000] = [
                "Traceback (most recent call last):",
                '  File "x.py", line 1, in <module>',
                "    render()",
                "RuntimeError: boom",
            ]
            sys.stdout.write("\\n".join(lines) + "\\n")
            """,
        ),
    )
    assert [level for level, _ in warnings_and_up] == ["ERROR"] * 4
    assert warnings_and_up[-1] == ("ERROR", "RuntimeError: boom")


def test_while_the_log_is_disabled_nothing_is_logged_and_every_line_is_passed_on(tmp_path):
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level=0)
    seen: list[str] = []
    try:
        outcome = run_plan(
            _plan(tmp_path, "print('warning: x'); print('error: y'); print('z')"),
            on_line=seen.append,
        )
    finally:
        logger.remove(sink)
    assert outcome.returncode == 0
    assert messages == []
    assert seen == ["warning: x", "error: y", "z"]


def test_every_line_is_logged_once_and_nothing_else(tmp_path, log_messages) -> None:
    run_plan(_plan(tmp_path, "for i in range(5000): print('warning' if i % 7 else 'line', i)"))
    lines = [m for _, m in log_messages if not m.startswith(("started pid", "pid "))]
    assert lines == [f"{'warning' if i % 7 else 'line'} {i}" for i in range(5000)]


# --- run_plan: timeout, cancel, kill ------------------------------------------------------------


def _first_int(lines: list[str]) -> int:
    return int(next(line for line in lines if line.isdigit()))


def test_a_timeout_kills_the_child(tmp_path) -> None:
    seen: list[str] = []
    outcome = run_plan(
        _plan(tmp_path, "import os, time; print(os.getpid(), flush=True); time.sleep(60)"),
        timeout=0.3,
        on_line=seen.append,
    )
    assert outcome.timed_out
    assert not outcome.cancelled
    assert outcome.returncode is None
    assert wait_until(lambda: process_gone(_first_int(seen)))


@pytest.mark.parametrize("stop", ["timeout", "cancel"])
def test_a_child_flooding_its_output_is_stopped(tmp_path, stop) -> None:
    cancel = threading.Event()
    seen: list[str] = []

    def on_line(line: str) -> None:
        if not seen:
            seen.append(line)
            if stop == "cancel":
                cancel.set()

    outcome = run_plan(
        _plan(
            tmp_path,
            """
            import os, sys
            print(os.getpid(), flush=True)
            block = b"flood\\n" * 10_000 + b"x" * 100_000 + b"\\r"
            while True:
                sys.stdout.buffer.write(block)
            """,
        ),
        timeout=0.5 if stop == "timeout" else 30,
        cancel=cancel,
        on_line=on_line,
    )
    assert outcome.timed_out == (stop == "timeout")
    assert outcome.cancelled == (stop == "cancel")
    assert outcome.returncode is None
    assert wait_until(lambda: process_gone(_first_int(seen)))


def test_a_timeout_kills_the_grandchildren_too(tmp_path) -> None:
    seen: list[str] = []
    outcome = run_plan(
        _plan(
            tmp_path,
            """
            import os, subprocess, sys, time
            grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            print(os.getpid(), flush=True)
            print(grandchild.pid, flush=True)
            time.sleep(60)
            """,
        ),
        timeout=0.5,
        on_line=seen.append,
    )
    assert outcome.timed_out
    assert outcome.returncode is None
    child, grandchild = (int(line) for line in seen if line.isdigit())
    assert wait_until(lambda: process_gone(child))
    assert wait_until(lambda: process_gone(grandchild))


def test_a_grandchild_left_holding_the_pipes_is_killed(tmp_path) -> None:
    seen: list[str] = []
    outcome = run_plan(
        _plan(
            tmp_path,
            """
            import subprocess, sys
            grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            print(grandchild.pid, flush=True)
            """,
        ),
        on_line=seen.append,
    )
    assert outcome.returncode == 0
    assert not outcome.timed_out
    assert wait_until(lambda: process_gone(_first_int(seen)))


def test_a_grandchild_outside_the_group_holding_the_pipes_does_not_hang(tmp_path, monkeypatch):
    monkeypatch.setattr("nerfcache.run.DRAIN_S", 0.2)
    seen: list[str] = []
    try:
        outcome = run_plan(
            _plan(
                tmp_path,
                """
                import subprocess, sys
                escaped = subprocess.Popen(
                    [sys.executable, "-c", "import time; time.sleep(600)"],
                    start_new_session=True,
                )
                print(escaped.pid, flush=True)
                """,
            ),
            on_line=seen.append,
        )
        assert outcome.returncode == 0
    finally:
        if seen:
            os.kill(_first_int(seen), signal.SIGKILL)


def test_cancel_stops_the_run(tmp_path) -> None:
    cancel = threading.Event()
    seen: list[str] = []

    def on_line(line: str) -> None:
        seen.append(line)
        if line == "ready":
            cancel.set()

    outcome = run_plan(
        _plan(
            tmp_path,
            "import os, time; print(os.getpid()); print('ready', flush=True); time.sleep(60)",
        ),
        timeout=30,
        cancel=cancel,
        on_line=on_line,
    )
    assert outcome.cancelled
    assert not outcome.timed_out
    assert outcome.returncode is None
    assert wait_until(lambda: process_gone(_first_int(seen)))


def test_a_cancel_set_before_the_start_stops_the_run(tmp_path) -> None:
    cancel = threading.Event()
    cancel.set()
    outcome = run_plan(_plan(tmp_path, "import time; time.sleep(60)"), cancel=cancel)
    assert outcome.cancelled
    assert outcome.returncode is None


def test_a_child_that_ignores_sigterm_is_killed(tmp_path, monkeypatch, log_messages) -> None:
    monkeypatch.setattr("nerfcache.run.KILL_GRACE_S", 0.2)
    cancel = threading.Event()
    seen: list[str] = []

    def on_line(line: str) -> None:
        seen.append(line)
        if line == "ready":
            cancel.set()

    outcome = run_plan(
        _plan(
            tmp_path,
            """
            import os, signal, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print(os.getpid())
            print("ready", flush=True)
            time.sleep(60)
            """,
        ),
        cancel=cancel,
        on_line=on_line,
    )
    assert outcome.cancelled
    assert outcome.returncode is None
    assert wait_until(lambda: process_gone(_first_int(seen)))
    # It took SIGKILL: the log says how the process really ended.
    assert any(f"exited with {-signal.SIGKILL} " in m for _, m in log_messages)


def test_a_timeout_applies_to_a_child_that_closed_its_output(tmp_path) -> None:
    seen: list[str] = []
    outcome = run_plan(
        _plan(
            tmp_path,
            """
            import os, time
            print(os.getpid(), flush=True)
            os.close(1)
            os.close(2)
            time.sleep(1.5)
            """,
        ),
        timeout=0.3,
        on_line=seen.append,
    )
    assert outcome.timed_out
    assert outcome.returncode is None
    assert wait_until(lambda: process_gone(_first_int(seen)))


def test_an_error_in_on_line_propagates_and_the_child_is_killed(tmp_path) -> None:
    seen: list[str] = []

    def on_line(line: str) -> None:
        seen.append(line)
        if line == "ready":
            raise RuntimeError("callback failed")

    plan = _plan(
        tmp_path,
        "import os, time; print(os.getpid()); print('ready', flush=True); time.sleep(60)",
    )
    with pytest.raises(RuntimeError, match="callback failed"):
        run_plan(plan, on_line=on_line)
    assert wait_until(lambda: process_gone(_first_int(seen)))
