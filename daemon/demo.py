"""`tutord demo`: the whole pipeline on the embedded arith world, from a fresh home.

It bootstraps the world's base model, then runs real cycles while task families arrive:
each family's logs are ingested and an SFT cycle trains on them (add, then sub, then
mul), then a DPO cycle and an RL cycle. Every cycle synthesizes, trains, is gated by
lm-eval and promoted or rejected. It prints a table of each cycle's scores per family
(production before, candidate, decision) and writes the drift report. A no-replay
ablation then repeats the SFT cycles with the same seeds and `replay.ratio = 0` in a
second home, to measure how much forgetting replay prevents.

Stages are named per cycle (not left to the curriculum) so that one short demo shows
all three; `tutord cycle` without `--stage` lets the curriculum decide.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from daemon import migrate
from daemon.cycle import run_cycle
from daemon.home import Home
from daemon.models import EvalRun, GateDecision
from daemon.policy import WORLD_BASE
from daemon.report import write_drift_report
from daemon.settings import Settings, load_settings
from replay.db import make_engine, session_scope
from replay.ingest import ingest_files
from stages.atomic import write_atomic
from world.logs import generate_logs, write_jsonl
from world.pretrain import bootstrap

PLAN: tuple[tuple[str | None, str], ...] = (
    ("add", "sft"),
    ("sub", "sft"),
    ("mul", "sft"),
    (None, "dpo"),
    (None, "rl"),
)
"""(family whose logs arrive before the cycle, stage of the cycle)."""

DEMO_CONFIG = {
    "model": {"threads": 1},
    "synth": {"prompts": 32, "n": 4, "max_new_tokens": 16},
    "judge": {"max_new_tokens": 8},
    "gate": {"max_items": 100},
    "train": {
        "sft": {"max_steps": 300, "learning_rate": 0.003},
        "dpo": {"max_steps": 40, "learning_rate": 0.0005, "beta": 0.1},
        "rl": {
            "max_steps": 40,
            "learning_rate": 0.0002,
            "beta": 0.04,
            "num_generations": 8,
            "per_device_batch_size": 32,
            "temperature": 0.7,
            "max_completion_length": 16,
        },
    },
}
LOGS_PER_FAMILY = 600
BOOTSTRAP_STEPS = 600


@dataclass(frozen=True)
class CycleRow:
    cycle: int
    arrived: str | None
    stage: str | None
    candidate: str | None
    outcome: str | None
    production_before: dict[str, float]
    candidate_scores: dict[str, float]
    reason: str
    seconds: float


def _settings(home: Home, replay_ratio: float | None) -> Settings:
    config = json.loads(json.dumps(DEMO_CONFIG))
    if replay_ratio is not None:
        config["replay"] = {"ratio": replay_ratio}
    return Settings.model_validate(load_settings(home.root).model_dump() | config)


def _family(task: str) -> str:
    return task.rsplit("_", 1)[-1]


def _scores(results: dict[str, Any]) -> dict[str, float]:
    return {_family(name): float(t["score"]) for name, t in results["tasks"].items()}


def _cycle_row(
    home: Home,
    settings: Settings,
    cycle_id: int,
    arrived: str | None,
    seconds: float,
    summary_reason: str,
    stage: str | None,
    candidate: str | None,
    outcome: str | None,
) -> CycleRow:
    engine = make_engine(home.database_url(settings))
    try:
        with session_scope(engine) as s:
            runs = {
                r.role: r.results
                for r in s.execute(select(EvalRun).where(EvalRun.cycle_id == cycle_id)).scalars()
            }
            gate = s.execute(select(GateDecision).where(GateDecision.cycle_id == cycle_id)).scalar()
    finally:
        engine.dispose()
    return CycleRow(
        cycle_id,
        arrived,
        stage,
        candidate,
        outcome,
        _scores(runs["production"]) if "production" in runs else {},
        _scores(runs["candidate"]) if "candidate" in runs else {},
        gate.reason if gate else summary_reason,
        round(seconds, 1),
    )


def _run_plan(
    home: Home,
    base_dir: Path,
    plan: tuple[tuple[str | None, str], ...],
    replay_ratio: float | None,
    say: Callable[[str], None],
) -> list[CycleRow]:
    home.create()
    settings = _settings(home, replay_ratio)
    engine = make_engine(home.database_url(settings))
    migrate.upgrade(engine)
    target = home.root / WORLD_BASE
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(base_dir, target)
    rows = []
    for i, (family, stage) in enumerate(plan):
        if family is not None:
            logs = home.root / f"{family}-logs.jsonl"
            with logs.open("w", encoding="utf-8") as fh:
                write_jsonl(generate_logs(family, LOGS_PER_FAMILY, seed=10 + i), fh)
            report = ingest_files(engine, [logs], source="demo", quarantine_dir=home.quarantine)
            say(f"ingested {report.ingested} {family} interactions")
        started = time.monotonic()
        summary = run_cycle(engine, home, settings, stage=stage, seed=i, say=say)
        rows.append(
            _cycle_row(
                home,
                settings,
                summary.cycle_id,
                family,
                time.monotonic() - started,
                summary.outcome_reason or summary.decision_reason or "",
                summary.stage,
                summary.candidate,
                summary.outcome,
            )
        )
    engine.dispose()
    return rows


def _fmt(scores: dict[str, float], family: str) -> str:
    return f"{scores[family]:.2f}" if family in scores else "  - "


def table(rows: list[CycleRow]) -> str:
    families = ("add", "sub", "mul")
    head = "cycle  arrived  stage  candidate  " + "  ".join(f"{f}: prod->cand" for f in families)
    lines = [head + "  decision", "-" * (len(head) + 10)]
    for r in rows:
        cells = "  ".join(
            f"{_fmt(r.production_before, f):>5} -> {_fmt(r.candidate_scores, f):<4}"
            for f in families
        )
        lines.append(
            f"{r.cycle:>5}  {r.arrived or '-':<7}  {r.stage or '-':<5}  {r.candidate or '-':<9}  "
            f"{cells}  {r.outcome or 'skipped'} ({r.seconds:.0f} s)"
        )
    return "\n".join(lines)


def run_demo(
    root: Path, *, ablation: bool = True, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the demo in `root` (a fresh home; the ablation's home goes beside it)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.monotonic()
    home = Home(root)
    if home.root.exists() and any(home.root.iterdir()):
        raise FileExistsError(f"{home.root} is not empty; the demo needs a fresh home")
    base_dir = home.root / WORLD_BASE
    say(f"bootstrapping the world's base model ({BOOTSTRAP_STEPS} steps on 1 thread) ...")
    t0 = time.monotonic()
    bootstrap(base_dir, max_steps=BOOTSTRAP_STEPS, seed=0, threads=1)
    boot_seconds = time.monotonic() - t0
    rows = _run_plan(home, base_dir, PLAN, None, say)
    settings = _settings(home, None)
    engine = make_engine(home.database_url(settings))
    html, _json = write_drift_report(engine, home, home.reports)
    engine.dispose()
    say("")
    say(table(rows))
    say(f"drift report: {html}")
    result: dict[str, Any] = {
        "bootstrap_seconds": round(boot_seconds, 1),
        "cycles": [r.__dict__ for r in rows],
        "report": str(html),
    }
    if ablation:
        sft_plan = tuple(step for step in PLAN if step[1] == "sft")
        say("\nablation: the same SFT cycles with replay.ratio = 0 ...")
        ablation_home = Home(home.root.parent / f"{home.root.name}-no-replay")
        if ablation_home.root.exists():
            shutil.rmtree(ablation_home.root)
        no_replay = _run_plan(ablation_home, base_dir, sft_plan, 0.0, lambda text: None)
        say(table(no_replay))
        with_replay = rows[: len(no_replay)]
        comparison = []
        for a, b in zip(with_replay, no_replay, strict=True):
            comparison.append(
                {
                    "cycle": a.cycle,
                    "arrived": a.arrived,
                    "candidate_with_replay": a.candidate_scores,
                    "candidate_without_replay": b.candidate_scores,
                }
            )
        say(
            "\nreplay ablation (candidate scores after each SFT cycle; "
            "forgetting shows on earlier families):"
        )
        for c in comparison:
            fams = sorted(set(c["candidate_with_replay"]) | set(c["candidate_without_replay"]))
            cells = ", ".join(
                f"{f} {c['candidate_with_replay'].get(f, float('nan')):.2f} vs "
                f"{c['candidate_without_replay'].get(f, float('nan')):.2f}"
                for f in fams
            )
            say(f"  after {c['arrived']}: with replay vs without: {cells}")
        result["ablation"] = comparison
    result["seconds"] = round(time.monotonic() - started, 1)
    say(f"\ndemo finished in {result['seconds'] / 60:.1f} minutes")
    out = home.reports / "demo.json"
    write_atomic(out, json.dumps(result, indent=1))
    return result
