"""Run nerfcache's benchmarks, print the results table, and record it in docs/benchmarks.md.

    .venv/bin/python bench/run.py            # everything, a few minutes; updates the docs
    .venv/bin/python bench/run.py --quick    # a smoke run, well under a minute; docs untouched
    .venv/bin/python bench/run.py --only overhead,streaming --no-write

The table in docs/benchmarks.md sits between two marker comments; everything else on that page
is prose and is left as it is.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from cases import BENCHMARKS, Config, pending
from measure import Row, load, machine

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
START = "<!-- bench/run.py results: start -->"
END = "<!-- bench/run.py results: end -->"


def text_table(rows: Sequence[Row]) -> str:
    """The rows as an aligned plain-text table."""
    header = ("benchmark", "measure", "median", "spread", "target", "")
    cells = [header] + [(r.bench, r.measure, r.value, r.spread, r.target, r.verdict) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(rows: Sequence[Row], info: dict[str, str], notes: list[str], header: str) -> str:
    """The results block of docs/benchmarks.md."""
    out = [START, "", header, ""]
    out += ["| machine | |", "|---|---|"]
    out += [f"| {key} | {value} |" for key, value in info.items()]
    out += ["", "| benchmark | measure | median | spread | target | |", "|---|---|---|---|---|---|"]
    out += [
        f"| {r.bench} | {r.measure} | {r.value} | {r.spread} | {r.target} | {r.verdict} |"
        for r in rows
    ]
    if notes:
        out += ["", *[f"- {note}" for note in notes]]
    out += ["", END]
    return "\n".join(out)


def write_doc(block: str, doc: Path = DOC) -> None:
    """Replace the results block in ``doc`` (or append one)."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks named on the command line (all by default)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few repetitions")
    parser.add_argument("--only", default="", help=f"comma-separated: {', '.join(BENCHMARKS)}")
    write = parser.add_mutually_exclusive_group()
    write.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    write.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    waiting = pending()
    names = [n for n in names if n not in waiting]
    notes = list(waiting.values())
    config = Config(quick=args.quick)

    info = machine()
    print("\n".join(f"{key}: {value}" for key, value in info.items()), flush=True)
    rows: list[Row] = []
    started = time.perf_counter()
    for name in names:
        print(f"\n== {name} ...", flush=True)
        began = time.perf_counter()
        new = BENCHMARKS[name](config)
        print(text_table(new), flush=True)
        print(f"({time.perf_counter() - began:.1f} s)", flush=True)
        rows += new
    total = time.perf_counter() - started
    info["load at end"] = load()
    print(f"\n== all ({total:.0f} s)\n{text_table(rows)}")
    for note in notes:
        print(f"- {note}")
    missed = [r for r in rows if r.met is False]
    if missed:
        print(f"\n{len(missed)} target(s) not met: see docs/benchmarks.md for what that means")

    everything = not args.only
    if args.write or (everything and not args.quick and not args.no_write):
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        command = "bench/run.py --quick" if args.quick else "bench/run.py"
        header = f"Measured {when} with `.venv/bin/python {command}` ({total / 60:.1f} min in all)."
        write_doc(markdown(rows, info, notes, header))
        print(f"\nwrote the results to {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
