"""Drift snapshots after each cycle, and `tutord report`.

`record_snapshot` measures the production version after a cycle's decision: its gate
scores and answer lengths (from the cycle's evaluation), KL divergence from the base and
from the production before the cycle (on a fixed probe of held-out prompts), the
synthesis run's judge figures, and the traffic (task mix of recent interactions against
the cycle's training data, feedback rates). The first cycle that starts from the bare base
also records the base's own snapshot (its scores from that cycle's production
evaluation), so the report begins where the loop began. `write_drift_report` turns every snapshot
and the history of promotions, rollbacks and rejections into `report.html` and
`report.json` (written by `evals.drift_report.write_report`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from daemon import adapters
from daemon.home import Home
from daemon.models import Cycle, DriftSnapshot, EvalRun, GateDecision
from daemon.policy import adapter_ref, apply_threads, base_model
from daemon.settings import Settings
from daemon.tasks import load_tasks
from evals.drift import VersionDrift, divergence, snapshot_from_run
from evals.drift_report import write_report
from evals.evaluation import Evaluation
from replay.db import session_scope
from replay.models import Interaction, Judgment, Sample, SynthRun
from stages import registry

PROBE_PER_TASK = 8
ALL_RELEASED = 10**6
"""A release step past every schedule: the probe covers every task."""
RECENT = 2000


def _probe(home: Home, settings: Settings) -> list[tuple[list[dict[str, str]], None]]:
    """A fixed probe: the first held-out prompts of every task the configuration will ever
    release (so that it is the same for every version and divergences compare)."""
    tasks = load_tasks(home, settings, step=ALL_RELEASED)
    return [
        (item.prompt, None) for task in tasks.values() for item in task.heldout()[:PROBE_PER_TASK]
    ]


def _traffic(engine: Engine, contradicted: int) -> tuple[dict[str, float], dict[str, float]]:
    """Task mix and feedback rates of the recent interactions; `contradicted` (feedback the
    grader contradicted in the cycle's synthesis run) becomes a rate over them too."""
    with session_scope(engine) as s:
        rows = s.execute(
            select(Interaction.task, Interaction.feedback_rating, Interaction.feedback_correction)
            .order_by(Interaction.id.desc())
            .limit(RECENT)
        ).all()
    if not rows:
        return {}, {}
    mix = Counter(task or "(none)" for task, _, _ in rows)
    n = len(rows)
    rates = {
        "thumbs_up": sum(1 for _, r, _ in rows if r == 1) / n,
        "thumbs_down": sum(1 for _, r, _ in rows if r == -1) / n,
        "corrected": sum(1 for _, _, c in rows if c) / n,
        "contradicted": contradicted / n,
    }
    return {k: v / n for k, v in mix.items()}, rates


def _judge_figures(
    engine: Engine, synth_run_id: int | None
) -> tuple[float | None, float | None, float | None, int]:
    """The run's mean judge score, judge-verifier agreement (plain and balanced) and
    contradicted feedback."""
    if synth_run_id is None:
        return None, None, None, 0
    with session_scope(engine) as s:
        run = s.get(SynthRun, synth_run_id)
        mean = s.execute(
            select(func.avg(Judgment.score))
            .join(Sample, Judgment.sample_id == Sample.id)
            .where(Sample.synth_run_id == synth_run_id, Judgment.scorer.like("judge:%"))
        ).scalar_one()
        health = (run.health or {}) if run else {}
        contradicted = int((run.counts or {}).get("feedback_contradictions", 0)) if run else 0
    mean_score = None if mean is None else float(mean)
    return mean_score, health.get("agreement"), health.get("balanced"), contradicted


def record_snapshot(engine: Engine, home: Home, settings: Settings, cycle: Cycle) -> None:
    """Measure and store the production version's drift after `cycle` (once per cycle)."""
    with session_scope(engine) as s:
        if s.execute(select(DriftSnapshot.id).where(DriftSnapshot.cycle_id == cycle.id)).scalar():
            return
        production = adapters.production(s)
        runs = {
            r.role: r
            for r in s.execute(select(EvalRun).where(EvalRun.cycle_id == cycle.id)).scalars()
        }
    if cycle.parent_version is None and "production" in runs:
        _record_base(engine, runs["production"])
    role = "candidate" if production == cycle.candidate_version else "production"
    evaluation = Evaluation.from_dict(runs[role].results)
    apply_threads(settings)
    base = base_model(home, settings)
    probe = _probe(home, settings)
    current = adapter_ref(home, production)
    kl_base = (
        divergence(base, current, None, probe) if probe and current else (0.0 if probe else None)
    )
    kl_prev = (
        divergence(base, current, adapter_ref(home, cycle.parent_version), probe)
        if probe and production != cycle.parent_version
        else (0.0 if probe else None)
    )
    judge_mean, agreement, balanced, contradicted = _judge_figures(engine, cycle.synth_run_id)
    traffic, feedback = _traffic(engine, contradicted)
    with session_scope(engine) as s:
        gate = s.execute(select(GateDecision).where(GateDecision.cycle_id == cycle.id)).scalar()
        detectable = {
            task: float(t["detectable_drop"])
            for task, t in (gate.tasks if gate else {}).items()
            if t.get("detectable_drop") is not None
        }
    trained = Counter()
    for task, counts in (cycle.dataset or {}).get("by_task", {}).items():
        trained[task] += sum(counts.values())
    total = sum(trained.values())
    snapshot = snapshot_from_run(
        adapters.label(production),
        evaluation,
        judge_score_mean=judge_mean,
        judge_verifier_agreement=agreement,
        judge_balanced_agreement=balanced,
        kl_from_base=kl_base,
        kl_from_previous=kl_prev,
        traffic_mix=traffic,
        training_mix={k: v / total for k, v in trained.items()} if total else {},
        feedback_rates=feedback,
        detectable_drop=detectable,
    )
    with session_scope(engine) as s:
        s.add(DriftSnapshot(cycle_id=cycle.id, version=snapshot.version, data=snapshot.to_dict()))


def _record_base(engine: Engine, production: EvalRun) -> None:
    """The bare base's snapshot, once, from the first cycle that started from it (its
    production evaluation): the report's first version is where the loop began."""
    with session_scope(engine) as s:
        if s.execute(select(DriftSnapshot.id).where(DriftSnapshot.version == "base")).first():
            return
        snapshot = snapshot_from_run(
            "base", Evaluation.from_dict(production.results), kl_from_base=0.0
        )
        s.add(DriftSnapshot(cycle_id=None, version="base", data=snapshot.to_dict()))


def events(engine: Engine) -> list[dict[str, Any]]:
    """Promotions, rollbacks and rejections, oldest first, for the report's timeline."""
    out: list[dict[str, Any]] = []
    with session_scope(engine) as s:
        for move in adapters.history(s):
            out.append(
                {
                    "kind": "promotion" if move.kind == "promote" else "rollback",
                    "version": adapters.label(move.to_version),
                    "at": move.moved_at.isoformat(),
                    "detail": f"{adapters.label(move.from_version)} -> "
                    f"{adapters.label(move.to_version)} by {move.actor}: {move.reason or ''}",
                }
            )
        for g in s.execute(select(GateDecision).where(GateDecision.passed.is_(False))).scalars():
            out.append(
                {
                    "kind": "rejection",
                    "version": registry.version_name(g.candidate_version),
                    "at": g.created_at.isoformat(),
                    "detail": g.reason,
                }
            )
    return sorted(out, key=lambda e: e["at"])


def write_drift_report(engine: Engine, home: Home, out_dir: Path) -> tuple[Path, Path]:
    """Write `report.html` and `report.json` into `out_dir`; returns (html, json)."""
    with session_scope(engine) as s:
        rows = s.execute(select(DriftSnapshot).order_by(DriftSnapshot.id)).scalars()
        snapshots = [VersionDrift.from_dict(r.data) for r in rows]
    json_path, html_path = write_report(snapshots, events(engine), out_dir)
    return html_path, json_path
