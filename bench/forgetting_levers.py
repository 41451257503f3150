"""What a real model forgets when tutord teaches it a task, and which lever moves it.

Three measurements on the real-model demo (`daemon/model_demo.py`), each printing its figures:

- `cycle HOME [--traffic N] [--set KEY=VALUE ...] [--no-rehearsal]`: the demo's first
  cycle alone (sum2 arrives; synthesis, SFT, gate) in a fresh HOME, with settings
  overridden (values as JSON; a bare KEY is a `[train.sft]` key, a dotted one a path:
  `--set learning_rate=0.0003 --set 'replay.rehearsal_prompts="/tmp/p.jsonl"'`) and
  the first cycle's traffic set to N logs (more logs carry more corrected answers, so more distinct
  task rows); `--no-rehearsal` turns replay and rehearsal off (the forgetting run). Prints
  the cycle's table row: sum2 and retention, production -> candidate.
- `robust HOME [--samples K]`: after `cycle`, asks the base each retention question K more
  times at temperature 0.7 and prints, for "right in at least j of K samples" (j = 0..K),
  how many suite items pass that bar and the gate's paired delta on them for the candidate
  the cycle evaluated (from the gate's cached runs). Tells whether the items lost are only
  the ones the base barely knew.
- `scale HOME [--scales 1,0.75,0.5]`: after `cycle`, the candidate adapter with its LoRA
  update scaled by s (`lora_alpha * s`; 0.5 halves the update), greedy on the retention
  suite and on the last 120 sum2 prompts: the trade-off between learning and keeping.

It does not change what the demo does; it only runs it and reads what it wrote.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evals.retention import Question, general_questions

MODEL = "smollm2-135m-instruct"


def cycle(home: Path, traffic: int | None, overrides: list[str], rehearsal: bool) -> None:
    import daemon.model_demo as demo

    if traffic is not None:
        demo.TRAFFIC["first"] = traffic
    for item in overrides:
        key, _, value = item.partition("=")
        *path, last = key.split(".") if "." in key else ["train", "sft", key]
        table = demo.SETTINGS
        for name in path:
            table = table.setdefault(name, {})
        table[last] = json.loads(value)
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[{(time.monotonic() - started) / 60:5.1f} min] {message}", flush=True)

    result = demo.run_model_demo(home, MODEL, plan=("sum2",), rehearsal=rehearsal, say=say)
    row = result["cycles"][0]
    before, after = row["production_before"], row["candidate_scores"]
    print(
        f"sum2 {before['sum2']:.2f} -> {after['sum2']:.2f}; retention "
        f"{before['retention']:.3f} -> {after['retention']:.3f}; {row['outcome']}: "
        f"{row['reason']}"
    )


def _backend(home: Path) -> Any:
    from stages.generate.factory import make_backend

    return make_backend("transformers", str(home / "models" / MODEL))


def _answers(backend: Any, rows: list[Question], params: Any, adapter: Any = None) -> Any:
    out = []
    for start in range(0, len(rows), 32):
        chats = [[{"role": "user", "content": r.prompt}] for r in rows[start : start + 32]]
        out.extend(backend.generate(chats, params, adapter=adapter))
    return out


def _gate_runs(home: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The retention task's results of the gate's two runs, from its per-task cache
    (`evals.cache`): (production, the base; candidate)."""
    entries = [json.loads(p.read_text()) for p in (home / "evals" / "cache").glob("*.json")]
    tasks = [e for e in entries if "retention" in e["result"]["task"]]
    if len(tasks) != 2:
        raise SystemExit(f"expected the retention results of 2 runs in {home}/evals/cache")
    production = next(e for e in tasks if e["about"]["adapter_hash"] == "base")
    candidate = next(e for e in tasks if e is not production)
    return production["result"], candidate["result"]


def robust(home: Path, samples: int) -> None:
    from judges.graders import resolve_grader
    from stages.generate.api import SamplingParams

    suite = general_questions(home / "retention.jsonl")
    backend = _backend(home)
    params = SamplingParams(temperature=0.7, n=samples, max_new_tokens=32, seed=0)
    try:
        sampled = _answers(backend, suite, params)
    finally:
        backend.close()
    grade = resolve_grader("contains")
    right = [
        int(sum(grade([q.prompt] * len(t), t, reference=[q.reference] * len(t))))
        for q, t in zip(suite, sampled, strict=True)
    ]
    print(
        f"base right in j of {samples} samples (j: items):",
        sorted(collections.Counter(right).items()),
    )
    production, candidate = _gate_runs(home)
    ids = list(production["items"])  # lm-eval's document order is the suite file's
    for bar in range(samples + 1):
        kept = [i for i, r in zip(ids, right, strict=True) if r >= bar]
        p = sum(production["items"][i] for i in kept) / len(kept)
        c = sum(candidate["items"][i] for i in kept) / len(kept)
        lost = sum(production["items"][i] > candidate["items"][i] for i in kept)
        won = sum(production["items"][i] < candidate["items"][i] for i in kept)
        print(
            f"right in >= {bar}/{samples}: {len(kept)} items, production {p:.3f}, candidate "
            f"{c:.3f} ({c - p:+.3f}; {lost} lost, {won} won)"
        )


def scale(home: Path, scales: list[float]) -> None:
    from judges.graders import resolve_grader
    from stages.generate.api import AdapterRef, SamplingParams

    adapter = max((home / "adapters").glob("v*"), key=lambda p: int(p.name[1:]))
    retention = general_questions(home / "retention.jsonl")
    sums = general_questions(home / "sum2.jsonl")[-120:]
    backend = _backend(home)
    lengths = {"contains": 32, "exact": 8}  # the two tasks' max_new_tokens in the demo
    try:
        for s in scales:
            scaled = home / f"scaled-{int(s * 100)}"
            shutil.rmtree(scaled, ignore_errors=True)
            shutil.copytree(adapter, scaled)
            config = json.loads((scaled / "adapter_config.json").read_text())
            config["lora_alpha"] = config["lora_alpha"] * s
            (scaled / "adapter_config.json").write_text(json.dumps(config))
            ref = AdapterRef(f"scaled{int(s * 100)}", scaled)
            scores = []
            for rows, grader in ((retention, "contains"), (sums, "exact")):
                greedy = SamplingParams(temperature=0.0, max_new_tokens=lengths[grader])
                texts = [t[0] for t in _answers(backend, rows, greedy, ref)]
                refs = [r.reference for r in rows]
                got = resolve_grader(grader)([r.prompt for r in rows], texts, reference=refs)
                scores.append(sum(got) / len(rows))
            print(f"{adapter.name} scaled by {s}: retention {scores[0]:.3f}, sum2 {scores[1]:.3f}")
    finally:
        backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("cycle")
    run.add_argument("home", type=Path)
    run.add_argument("--traffic", type=int)
    run.add_argument("--set", action="append", default=[], dest="overrides")
    run.add_argument("--no-rehearsal", action="store_false", dest="rehearsal")
    rob = sub.add_parser("robust")
    rob.add_argument("home", type=Path)
    rob.add_argument("--samples", type=int, default=4)
    sca = sub.add_parser("scale")
    sca.add_argument("home", type=Path)
    sca.add_argument("--scales", default="1,0.75,0.5")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    if args.command == "cycle":
        cycle(args.home, args.traffic, args.overrides, args.rehearsal)
    elif args.command == "robust":
        robust(args.home, args.samples)
    else:
        scale(args.home, [float(x) for x in args.scales.split(",")])


if __name__ == "__main__":
    main()
