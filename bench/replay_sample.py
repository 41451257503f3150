"""Benchmark of `replay.sampling.sample`: its time should grow with k, not with the table.

Fills a migrated SQLite database with synthetic SFT items over ten tasks of very
different sizes (from about half the rows down to a fraction of a percent), in chunks
through `add_items`, and prints the median wall time of `sample()` for k in
(100, 1000, 10000) and each policy, first at 100k rows (when --rows is larger) and then
at --rows. It checks only that each sample has k rows.

    .venv/bin/python bench/replay_sample.py [--rows 1000000] [--db PATH] [--repeat 7]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event

from daemon.migrate import upgrade
from replay.buffer import NewReplayItem, add_items, counts
from replay.db import make_engine
from replay.sampling import POLICIES, sample

TASK_WEIGHTS = [512, 256, 128, 64, 32, 16, 8, 4, 2, 1]  # ten tasks, sizes 2:1 apart
KS = (100, 1_000, 10_000)
CHUNK = 20_000
WORDS = ["the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with"]


def task_of(i: int) -> str:
    """Task of the i-th row: deterministic, sizes in proportion to TASK_WEIGHTS."""
    cycle = sum(TASK_WEIGHTS)
    r = (i * 7919) % cycle
    for t, w in enumerate(TASK_WEIGHTS):
        if r < w:
            return f"task{t}"
        r -= w
    raise AssertionError("unreachable")


def make_item(i: int, start: datetime) -> NewReplayItem:
    text = " ".join(WORDS[(i * 31 + j * 7) % len(WORDS)] for j in range(40))
    payload = {
        "messages": [
            {"role": "user", "content": f"Question {i}: {text[:120]}?"},
            {"role": "assistant", "content": f"Answer {i}: {text}"},
        ]
    }
    return NewReplayItem(
        kind="sft",
        task=task_of(i),
        payload=payload,
        priority=1.0 + (i % 13) / 4,
        added_at=start + timedelta(seconds=i),
    )


def fill(engine: Engine, start_row: int, end_row: int, start: datetime) -> float:
    t0 = time.perf_counter()
    for lo in range(start_row, end_row, CHUNK):
        hi = min(end_row, lo + CHUNK)
        add_items(engine, [make_item(i, start) for i in range(lo, hi)])
    return time.perf_counter() - t0


def measure(engine: Engine, repeat: int, now: datetime) -> dict[tuple[str, int], float]:
    out = {}
    for policy in POLICIES:
        for k in KS:
            sample(engine, "sft", k, policy=policy, seed=10_000, now=now)  # type: ignore[arg-type]
            times = []
            for seed in range(repeat):
                t0 = time.perf_counter()
                rows = sample(engine, "sft", k, policy=policy, seed=seed, now=now)  # type: ignore[arg-type]
                times.append(time.perf_counter() - t0)
                if len(rows) != k:
                    raise RuntimeError(f"{policy} k={k} returned {len(rows)} rows")
            out[(policy, k)] = statistics.median(times) * 1000
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, default=None, help="SQLite file (default: a temp one)")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per cell")
    parser.add_argument(
        "--pragma",
        action="append",
        default=[],
        help="extra SQLite PRAGMA for each connection, e.g. 'mmap_size=1073741824' (repeatable)",
    )
    args = parser.parse_args(argv)

    tmp = None
    db = args.db
    if db is None:
        tmp = tempfile.TemporaryDirectory(prefix="tutord-bench-")
        db = Path(tmp.name) / "replay.db"
    engine = make_engine(f"sqlite:///{db}")
    if args.pragma:

        @event.listens_for(engine, "connect")
        def _extra_pragmas(dbapi_connection: Any, _record: Any) -> None:
            for pragma in args.pragma:
                dbapi_connection.execute(f"PRAGMA {pragma}")

    upgrade(engine)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    now = start + timedelta(seconds=args.rows)
    have = sum(counts(engine, "sft").get("sft", {}).values())
    sizes = [s for s in (100_000, args.rows) if s <= args.rows]
    sizes = sorted(set(sizes))
    results = {}
    for size in sizes:
        if have < size:
            took = fill(engine, have, size, start)
            print(f"filled {size - have:,} rows in {took:.1f} s ({(size - have) / took:,.0f}/s)")
            have = size
        elif have > size:
            print(f"skipping {size:,}: the database already holds {have:,}")
            continue
        results[size] = measure(engine, args.repeat, now)
    per_task = counts(engine, "sft")["sft"]
    print("tasks:", ", ".join(f"{t}={n:,}" for t, n in per_task.items()))
    pragmas = "".join(f", PRAGMA {p}" for p in args.pragma)
    print(f"median of {args.repeat} runs, ms (SQLite {sqlite3.sqlite_version}{pragmas})")
    header = f"{'rows':>10} {'policy':<11}" + "".join(f"{'k=' + format(k, ','):>10}" for k in KS)
    print(header)
    for size, table in results.items():
        for policy in POLICIES:
            cells = "".join(f"{table[(policy, k)]:>10.1f}" for k in KS)
            print(f"{size:>10,} {policy:<11}{cells}")
    engine.dispose()
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
