"""How much the demo's loop teaches, over several seeds: the numbers behind the README's tables.

Runs `tutord demo`'s settings (daemon/demo.py: same plan, same configuration) for each seed
in a fresh home, with the no-replay ablation, and once more per seed with the judge
disabled. All runs share the shipped base model (the loop's traffic and cycles vary with
the seed, the base does not); `--jobs` runs go at once, one thread each. Prints, per cycle
and family, the median and range over seeds of production before the cycle and of the
candidate; the stages the curriculum chose; the judge's agreement with the verifiers per
cycle; the pairs only the judge ordered, made and trained on; final production per family
with the judge on and off; and forgetting with and without replay, of production (best
score of a family minus its final score) and of the candidates (the largest drop a
candidate showed from the family's best: what training cost before the gate refused it).

    .venv/bin/python bench/efficacy.py --seeds 3 --out efficacy.json

It takes about three demo runs per seed (demo, ablation, judge off), two at a time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from daemon.demo import PLAN, run_demo
from world.pretrain import bootstrap

FAMILIES = ("add", "sub", "mul")


def spread(values: Sequence[float]) -> str:
    """Median and range of `values`, or '-' when there are none.

    >>> spread([0.5, 0.9, 0.7])
    '0.70 [0.50-0.90]'
    """
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def production_after(cycle: dict[str, Any]) -> dict[str, float]:
    """Production's scores after a cycle: the candidate's when promoted, else before."""
    if cycle["outcome"] == "promoted":
        return dict(cycle["candidate_scores"])
    return dict(cycle["production_before"])


def final_scores(cycles: list[dict[str, Any]]) -> dict[str, float]:
    """Each family's production score after the last cycle that measured it."""
    out: dict[str, float] = {}
    for cycle in cycles:
        out.update(production_after(cycle))
    return out


def forgetting(cycles: list[dict[str, Any]]) -> dict[str, float]:
    """Per family: its best production score minus its final one (0 when never worse)."""
    best: dict[str, float] = {}
    for cycle in cycles:
        for family, score in production_after(cycle).items():
            best[family] = max(best.get(family, 0.0), score)
    final = final_scores(cycles)
    return {f: round(best[f] - final[f], 4) for f in best}


def candidate_forgetting(cycles: list[dict[str, Any]]) -> dict[str, float]:
    """Per family: the largest drop a later cycle's CANDIDATE showed from the family's best
    production score so far (0 when none dropped). The gate keeps such candidates out of
    production, so this is what training cost the family, before the gate's refusal."""
    best: dict[str, float] = {}
    worst: dict[str, float] = {}
    for cycle in cycles:
        for family, score in cycle["candidate_scores"].items():
            if family in best:
                worst[family] = max(worst.get(family, 0.0), best[family] - score)
        for family, score in production_after(cycle).items():
            best[family] = max(best.get(family, 0.0), score)
    return {f: round(max(worst.get(f, 0.0), 0.0), 4) for f in best}


def report(runs: list[dict[str, Any]], judge_off: list[dict[str, Any]]) -> str:
    lines = [f"{len(runs)} seeds; median [range] over seeds", ""]
    n_cycles = max(len(r["cycles"]) for r in runs)
    lines.append(
        "cycle  stages chosen        judge agreement   balanced agreement   judge-only pairs  "
        + "   ".join(f"{f}: production -> candidate" for f in FAMILIES)
    )
    for i in range(n_cycles):
        cycles = [r["cycles"][i] for r in runs if i < len(r["cycles"])]
        stages = Counter(c["stage"] or "none" for c in cycles)
        agreement = [c["judge_agreement"] for c in cycles if c["judge_agreement"] is not None]
        balanced = [c["judge_balanced"] for c in cycles if c.get("judge_balanced") is not None]
        decided = [float(c.get("judge_decided_pairs", 0)) for c in cycles]
        cells = []
        for f in FAMILIES:
            before = [c["production_before"][f] for c in cycles if f in c["production_before"]]
            after = [c["candidate_scores"][f] for c in cycles if f in c["candidate_scores"]]
            cells.append(f"{spread(before)} -> {spread(after)}")
        outcomes = Counter(c["outcome"] or "skipped" for c in cycles)
        lines.append(
            f"{i:>5}  {', '.join(f'{k} x{v}' for k, v in sorted(stages.items())):<20} "
            f"{spread(agreement):<17} {spread(balanced):<20} {spread(decided):<17} "
            + "   ".join(cells)
            + f"   ({', '.join(f'{k} x{v}' for k, v in sorted(outcomes.items()))})"
        )
    made = [sum(c.get("judge_decided_pairs", 0) for c in r["cycles"]) for r in runs]
    trained = [sum(c.get("judge_decided_trained", 0) for c in r["cycles"]) for r in runs]
    lines.append("")
    lines.append(
        f"judge-only pairs per run: made {spread(made)}, "
        f"trained on (DPO datasets) {spread(trained)}"
    )
    lines.append("")
    lines.append("final production per family: judge on | judge off")
    for f in FAMILIES:
        on = [final_scores(r["cycles"]).get(f) for r in runs]
        off = [final_scores(r["cycles"]).get(f) for r in judge_off]
        lines.append(
            f"  {f}: {spread([v for v in on if v is not None])} | "
            f"{spread([v for v in off if v is not None])}"
        )
    lines.append("")
    for title, measure in (
        ("production forgetting of earlier families (best - final)", forgetting),
        (
            "candidate forgetting (largest drop a candidate showed from the best)",
            candidate_forgetting,
        ),
    ):
        lines.append(f"{title}: with replay | without")
        with_replay = [measure(r["cycles"]) for r in runs]
        without = [measure(r["ablation_cycles"]) for r in runs if r.get("ablation_cycles")]
        earlier = FAMILIES[:-1]
        for f in earlier:
            on = [m.get(f, 0.0) for m in with_replay]
            off = [m.get(f, 0.0) for m in without]
            lines.append(f"  {f}: {spread(on)} | {spread(off)}")
        on = [sum(m.get(f, 0.0) for f in earlier) for m in with_replay]
        off = [sum(m.get(f, 0.0) for f in earlier) for m in without]
        lines.append(f"  {' + '.join(earlier)}: {spread(on)} | {spread(off)}")
    return "\n".join(lines)


def quiet(text: str) -> None:
    """The runs' `say`: silent (a module-level function, so a worker process can take it)."""


def one_run(
    root: Path, seed: int, judge: bool, ablation: bool, plan: tuple[str | None, ...], base: Path
) -> dict[str, Any]:
    """One demo run in its own home (called in a worker process)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    name = f"seed-{seed}" + ("" if judge else "-judge-off")
    result = run_demo(
        root / name, ablation=ablation, seed=seed, judge=judge, plan=plan, base=base, say=quiet
    )
    print(f"{name}: {result['seconds'] / 60:.1f} min", flush=True)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--no-judge-off", action="store_true", help="Skip the judge-off runs.")
    parser.add_argument("--no-ablation", action="store_true", help="Skip the no-replay runs.")
    parser.add_argument("--cycles", type=int, default=len(PLAN), help="Cycles per run.")
    parser.add_argument("--out", type=Path, help="Write every run's results as JSON here.")
    parser.add_argument(
        "--jobs", type=int, default=2, help="Runs at once, one thread each (default 2: 2 cores)."
    )
    args = parser.parse_args(argv)
    plan = tuple(PLAN[: args.cycles]) + (None,) * max(0, args.cycles - len(PLAN))
    with tempfile.TemporaryDirectory(prefix="tutord-efficacy-") as tmp:
        root = Path(tmp)
        base = root / "base"
        bootstrap(base, threads=1)  # the shipped base model, checked by its hash
        jobs = [(seed, True, not args.no_ablation) for seed in range(args.seeds)]
        if not args.no_judge_off:
            jobs += [(seed, False, False) for seed in range(args.seeds)]
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
            futures = {
                job: pool.submit(one_run, root, job[0], job[1], job[2], plan, base) for job in jobs
            }
            results = {job: future.result() for job, future in futures.items()}
        runs = [results[job] for job in jobs if job[1]]
        judge_off = [results[job] for job in jobs if not job[1]]
        print(report(runs, judge_off))
        if args.out:
            args.out.write_text(json.dumps({"runs": runs, "judge_off": judge_off}, indent=1))


if __name__ == "__main__":
    main()
