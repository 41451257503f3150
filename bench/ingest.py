"""Benchmark: ingest throughput of interaction logs into SQLite.

Writes N synthetic interaction lines (a mix of feedback, corrections and references),
ingests them into a fresh, migrated SQLite database with `replay.ingest.ingest_files`,
then ingests the same file again (every line a duplicate), and prints lines/s for both.
Target on 2 cores: 50k lines/s or more for the first ingest of 200k lines.

    .venv/bin/python bench/ingest.py --lines 200000
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from daemon.migrate import upgrade
from replay.db import make_engine
from replay.ingest import ingest_files


def write_logs(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    ops = {"add": "+", "sub": "-", "mul": "*"}
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            task = rng.choice(list(ops))
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            right = str(eval(f"{a}{ops[task]}{b}"))
            answer = right if rng.random() < 0.6 else str(rng.randint(-100, 200))
            rec: dict[str, object] = {
                "id": f"bench-{i}",
                "timestamp": "2026-11-26T12:00:00Z",
                "messages": [
                    {"role": "system", "content": "You are a careful calculator."},
                    {"role": "user", "content": f"What is {a} {ops[task]} {b}?"},
                    {"role": "assistant", "content": f"The answer is {answer}."},
                ],
                "task": task,
                "reference": right,
            }
            r = rng.random()
            if r < 0.3:
                rec["feedback"] = {"rating": 1 if answer == right else -1}
            elif r < 0.4 and answer != right:
                rec["feedback"] = {"rating": -1, "correction": f"The answer is {right}."}
            fh.write(json.dumps(rec) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=5_000)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        logs = work / "logs.jsonl"
        write_logs(logs, args.lines)
        db = work / "bench.db"
        db.unlink(missing_ok=True)
        engine = make_engine(f"sqlite:///{db}")
        upgrade(engine)
        for label in ("first ingest", "same file again"):
            t0 = time.perf_counter()
            report = ingest_files(
                engine,
                [logs],
                source="bench",
                quarantine_dir=work / "quarantine",
                batch_size=args.batch_size,
            )
            dt = time.perf_counter() - t0
            print(
                f"{label:<16} {args.lines} lines in {dt:6.2f} s = {args.lines / dt:9,.0f} lines/s"
                f"  (ingested {report.ingested}, duplicates {report.duplicates},"
                f" rejected {report.rejected})"
            )
        engine.dispose()


if __name__ == "__main__":
    main()
