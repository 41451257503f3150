"""The real-model demo over several seeds: per cycle, the median and range of each task's
score, the retention score, the judge's agreement and the time, and how often the gate
promoted.

`python bench/demo_seeds.py --seeds 0,1,2 --root DIR [--model smollm2-135m-instruct]
[--no-rehearsal]` runs `tutord --home DIR/seed-N demo --model MODEL --seed N` for each seed,
one after the other in fresh homes (a home that already holds a finished demo's
`reports/demo.json` is read, not run again), then prints the table. `bench/real_model.py
--demo-seeds 0,1,2` runs it after its speed comparisons.

It only runs the demo and reads what each run wrote; the learning figures move from run to
run, which is why they are reported as a median and a range rather than one run's figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"


def spread(values: Sequence[float | None], digits: int = 2) -> str:
    """`median (min-max, n)` of the values given, or "-" when none is.

    >>> spread([0.61, 0.57, 0.69])
    '0.61 (0.57-0.69, n=3)'
    >>> spread([None, 0.5]), spread([None])
    ('0.50 (0.50-0.50, n=1)', '-')
    """
    kept = [v for v in values if v is not None]
    if not kept:
        return "-"
    return (
        f"{statistics.median(kept):.{digits}f} "
        f"({min(kept):.{digits}f}-{max(kept):.{digits}f}, n={len(kept)})"
    )


def summary_rows(runs: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """One row per cycle of the demos' `reports/demo.json` records: each score the candidate
    got (production's before it, and the candidate's), the judge's agreement, the seconds,
    and the decisions counted."""
    rows: list[dict[str, str]] = []
    cycles = max((len(run["cycles"]) for run in runs), default=0)
    for index in range(cycles):
        these = [run["cycles"][index] for run in runs if len(run["cycles"]) > index]
        row: dict[str, str] = {"cycle": str(index + 1)}
        names = sorted({n for c in these for n in c.get("candidate_scores") or {}})
        for name in names:
            before = [(c.get("production_before") or {}).get(name) for c in these]
            after = [(c.get("candidate_scores") or {}).get(name) for c in these]
            row[name] = f"{spread(before)} -> {spread(after)}"
        row["judge agreement"] = spread([c.get("judge_agreement") for c in these])
        row["judge balanced"] = spread([c.get("judge_balanced") for c in these])
        row["seconds"] = spread([c.get("seconds") for c in these], digits=0)
        outcomes = [str(c.get("outcome")) for c in these]
        row["decisions"] = ", ".join(
            f"{outcomes.count(o)} {o}" for o in sorted(set(outcomes), key=outcomes.index)
        )
        rows.append(row)
    return rows


def print_table(runs: Sequence[dict[str, Any]]) -> None:
    rows = summary_rows(runs)
    minutes = [run["seconds"] / 60 for run in runs if "seconds" in run]
    print(f"\nThe demo over {len(runs)} seeds: median (min-max, n) per cycle")
    for row in rows:
        print(f"cycle {row['cycle']}:")
        for key, value in row.items():
            if key != "cycle":
                print(f"  {key:16} {value}")
    print(f"whole demo, minutes: {spread(minutes, digits=1)}")


def run_seed(root: Path, model: str, seed: int, rehearsal: bool) -> dict[str, Any] | None:
    """The demo in `root/seed-N` (run there unless it already finished); its demo.json, or
    None when it failed."""
    home = root / f"seed-{seed}"
    record = home / "reports" / "demo.json"
    if not record.is_file():
        if home.exists():
            shutil.rmtree(home)  # an unfinished run: the demo needs a fresh home
        tutord = Path(sys.executable).with_name("tutord")
        command = [str(tutord), "--home", str(home), "demo", "--model", model, "--seed", str(seed)]
        command += [] if rehearsal else ["--no-rehearsal"]
        print(f"\n$ {' '.join(command)}", flush=True)
        env = {**os.environ}
        env.setdefault("OMP_NUM_THREADS", "2")
        if subprocess.run(command, cwd=REPO, env=env, check=False).returncode != 0:
            print(f"seed {seed}: the demo failed (see its output above)", flush=True)
            return None
    return json.loads(record.read_text(encoding="utf-8"))


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"--seeds {text!r}: not a comma-separated list of integers") from None
    if not seeds:
        raise SystemExit("--seeds: give at least one seed")
    return seeds


def run_seeds(root: Path, model: str, seeds: list[int], rehearsal: bool) -> bool:
    """Run (or read) every seed's demo and print the table; False when one failed."""
    runs = [run_seed(root, model, seed, rehearsal) for seed in seeds]
    finished = [run for run in runs if run is not None]
    if finished:
        print_table(finished)
    return len(finished) == len(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--root", type=Path, required=True, help="where the homes go")
    parser.add_argument("--model", default=MODEL, help="a named source, GGUF file or folder")
    parser.add_argument("--no-rehearsal", action="store_false", dest="rehearsal")
    args = parser.parse_args()
    ok = run_seeds(args.root, args.model, parse_seeds(args.seeds), args.rehearsal)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
