"""One improvement cycle, step by step: synthesize, assemble, train, gate, decide, report.

A cycle is a row in `cycles` whose `state` names the next step. Each step writes its
outputs (into the database, or into the cycle's folder `cycles/<id>/`, atomically)
before the row moves on in its own transaction, and each step first looks for what an
interrupted earlier attempt already did, so a cycle killed at any point (even SIGKILL)
resumes from its last finished step on the next `tutord cycle`, and a half-written
artifact is never used. An adapter the registry refuses (tampered, a link, pickle-based)
fails the cycle instead, with the reason and, for production, what to run
(`daemon/production_check.py`). Only one cycle runs at a time per database (the `cycle`
lease).

The work of each step lives elsewhere (`daemon/synth_run.py`, `daemon/assemble.py`,
`stages.launch`, `evals/`, `daemon/adapters.py`, `daemon/adapter_serving.py`); this module
sequences and records.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from daemon import adapters, lease
from daemon.adapter_serving import serve_adapter
from daemon.assemble import assemble, fresh_rows, newest
from daemon.gatekeeper import evaluate_and_gate
from daemon.home import Home
from daemon.memory import remember
from daemon.models import AdapterVersion, Cycle, GateDecision
from daemon.policy import base_model, policy_backend, production_adapter
from daemon.production_check import lora_shape_problem, refused_reason
from daemon.rehearsal import ensure_rehearsal
from daemon.report import record_snapshot
from daemon.settings import Settings
from daemon.stage_choice import choose_stage, last_marks
from daemon.synth_run import run_synth
from daemon.tasks import grader_spec, live_tasks
from judges.tasks import heldout_keys
from replay.buffer import NewReplayItem
from replay.db import session_scope
from replay.models import ReplayItem, SynthRun, utcnow
from stages import registry
from stages.configs import STAGE_CONFIGS, StageConfig
from stages.launch import LaunchConfig, run_stage
from stages.stage_io import write_config

log = logging.getLogger(__name__)

STEPS = ("synthesize", "assemble", "train", "gate", "decide", "report")
FINISHED = ("done", "skipped", "failed")
LEASE = "cycle"
LEASE_TTL = timedelta(minutes=30)
FAULT_ENV = "TUTORD_FAULT"


class CycleError(Exception):
    """A cycle could not go on; the cycle row records why."""


def fault_point(name: str) -> None:
    """Test hook for crash tests: `TUTORD_FAULT=<name>` kills this process (SIGKILL) here.

    Placed after a step's side effects and before the cycle row moves on, the worst
    moment to die; the crash tests use it to prove every step resumes.
    """
    if os.environ.get(FAULT_ENV) == name:
        log.warning("fault injection: SIGKILL at %s", name)
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class CycleSummary:
    cycle_id: int
    state: str
    stage: str | None
    decision_reason: str | None
    candidate: str | None
    outcome: str | None
    outcome_reason: str | None
    resumed: bool
    step_seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Ctx:
    engine: Engine
    home: Home
    settings: Settings
    holder: str
    say: Callable[[str], None]

    def folder(self, cycle: Cycle) -> Path:
        return self.home.cycles / f"{cycle.id:05d}"


@dataclass(frozen=True)
class StepOutcome:
    """What one step writes on its cycle row; fields left None are not changed. `state`
    None moves the cycle on to the next step."""

    state: str | None = None
    stage: str | None = None
    decision_reason: str | None = None
    synth_run_id: int | None = None
    watermarks: dict[str, Any] | None = None
    dataset: dict[str, Any] | None = None
    train_result: dict[str, Any] | None = None
    outcome: str | None = None
    outcome_reason: str | None = None
    finished_at: datetime | None = None

    def columns(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


_COLUMNS = frozenset(Cycle.__table__.columns.keys())


def _update(engine: Engine, cycle_id: int, **values: Any) -> Cycle:
    """Write `values` on the cycle row; a key that is not one of its columns is an error."""
    unknown = sorted(set(values) - _COLUMNS)
    if unknown:
        raise KeyError(f"cycles has no column {', '.join(unknown)}")
    with session_scope(engine) as s:
        lease.check_fence(s)
        cycle = s.get(Cycle, cycle_id)
        assert cycle is not None
        for key, value in values.items():
            setattr(cycle, key, value)
        return cycle


# --------------------------------------------------------------------------- steps


def _synthesize(ctx: _Ctx, cycle: Cycle) -> StepOutcome:
    with session_scope(ctx.engine) as s:
        done = s.execute(select(SynthRun.id).where(SynthRun.cycle_id == cycle.id)).scalar()
    if done is None:
        summary = run_synth(ctx.engine, ctx.home, ctx.settings, seed=cycle.seed, cycle_id=cycle.id)
        done = summary.run_id
        ctx.say(
            f"  synthesized: {summary.candidates} candidates, {summary.sft_new} SFT examples, "
            f"{summary.pairs_new} pairs (+{summary.feedback_sft_new}/{summary.feedback_pairs_new} "
            f"from feedback); judge: {summary.health['message']}"
        )
    else:
        ctx.say(f"  synthesis run {done} was already stored; not repeated")
    tasks = live_tasks(ctx.engine, ctx.home, ctx.settings)
    ensure_rehearsal(
        ctx.engine,
        ctx.home,
        ctx.settings,
        lambda: policy_backend(ctx.home, ctx.settings),
        heldout_keys(tasks.values()),
        ctx.say,
    )
    fault_point("synthesize")
    return StepOutcome(synth_run_id=done)


def _assemble(ctx: _Ctx, cycle: Cycle) -> StepOutcome:
    decision = choose_stage(ctx.engine, ctx.home, ctx.settings, cycle.requested_stage)
    ctx.say(f"  curriculum: {decision.reason}")
    log.info("cycle %d curriculum: %s", cycle.id, decision.reason)
    if decision.stage is None:
        return StepOutcome(
            state="skipped",
            decision_reason=decision.reason,
            outcome="skipped",
            outcome_reason=decision.reason,
        )
    marks_now = newest(ctx.engine)
    tasks = live_tasks(ctx.engine, ctx.home, ctx.settings)
    rows = fresh_rows(ctx.engine, decision.stage, last_marks(ctx.engine, decision.stage))
    dataset = assemble(
        ctx.engine,
        decision.stage,
        ctx.folder(cycle) / "data",
        rows,
        ratio=ctx.settings.replay.ratio,
        rehearsal_share=ctx.settings.replay.rehearsal_share,
        seed=cycle.seed,
        marks=marks_now,
        heldout=heldout_keys(tasks.values()),
        grader_of=lambda task: grader_spec(ctx.settings, tasks, task),
    )
    ctx.say(
        f"  dataset: {dataset.fresh} fresh + {dataset.replay} replay rows "
        f"({dataset.ratio_actual:.0%} replay; {dataset.heldout_excluded} held-out rows left out"
        + (
            f"; {dataset.judge_decided} pairs only the judge ordered"
            if dataset.judge_decided
            else ""
        )
        + f") -> {dataset.path}"
    )
    fault_point("assemble")
    return StepOutcome(
        stage=decision.stage,
        decision_reason=decision.reason,
        watermarks=asdict(marks_now),
        dataset={
            "path": str(dataset.path),
            "manifest": str(dataset.manifest_path),
            "fresh": dataset.fresh,
            "replay": dataset.replay,
            "by_task": dataset.by_task,
            "heldout_excluded": dataset.heldout_excluded,
            "judge_decided": dataset.judge_decided,
        },
    )


def _next_version(engine: Engine) -> int:
    with session_scope(engine) as s:
        registered = adapters.next_version(s)
        reserved = s.execute(select(func.max(Cycle.candidate_version))).scalar()
    return max(registered, (reserved or 0) + 1)


def stage_config(ctx: _Ctx, cycle: Cycle, version: int) -> StageConfig:
    """The config the cycle's stage runs with: `[train.<stage>]` of the settings with the
    fields tutord sets for each run filled in."""
    stage = cycle.stage
    assert stage in STAGE_CONFIGS, stage
    parent = production_adapter(ctx.engine, ctx.home)
    configured: StageConfig = getattr(ctx.settings.train, stage)
    return dataclasses.replace(
        configured,
        base_model=base_model(ctx.home, ctx.settings),
        parent_adapter=str(parent.path) if parent else None,
        parent_version=cycle.parent_version,
        train_file=cycle.dataset["path"],
        output_dir=str(ctx.folder(cycle) / "train"),
        adapters_dir=str(ctx.home.adapters),
        version=version,
        seed=cycle.seed,
        threads=ctx.settings.train.threads,
    )


def _stage_config(ctx: _Ctx, cycle: Cycle, version: int) -> Path:
    """Write the stage's config (`stage_config`) into the cycle's train folder, atomically."""
    return write_config(
        stage_config(ctx, cycle, version), ctx.folder(cycle) / "train" / "config.json"
    )


def _train(ctx: _Ctx, cycle: Cycle) -> StepOutcome:
    version = cycle.candidate_version
    if version is None:
        problem = lora_shape_problem(ctx.engine, ctx.home, ctx.settings, cycle.stage)
        if problem is not None:  # refused before a version is reserved: nothing to resume
            return StepOutcome(state="failed", outcome="failed", outcome_reason=problem)
        version = _next_version(ctx.engine)
        cycle = _update(ctx.engine, cycle.id, candidate_version=version)  # reserved first
    path = registry.adapter_path(ctx.home.adapters, version)
    result_file = ctx.folder(cycle) / "train" / "result.json"
    if version in registry.list_versions(ctx.home.adapters) and result_file.is_file():
        registry.verify(path)
        result = json.loads(result_file.read_text())
        ctx.say(f"  {registry.version_name(version)} was already trained; not repeated")
    else:
        config = _stage_config(ctx, cycle, version)
        t = ctx.settings.train
        launch = LaunchConfig(
            nproc=t.nproc,
            launcher=t.launcher,
            accelerate_config=t.accelerate_config,
            timeout_s=t.timeout_s,
            threads=t.threads,
        )
        ctx.say(f"  training {cycle.stage} -> {registry.version_name(version)} ...")
        stage_result = run_stage(cycle.stage, config, launch)  # type: ignore[arg-type]
        result = stage_result.to_dict()
        if result.get("status") != "completed":
            return StepOutcome(
                state="failed",
                outcome="failed",
                train_result=result,
                outcome_reason=f"training failed: {result.get('reason')}",
            )
        ctx.say(
            f"  trained {result.get('steps')} steps in {result.get('seconds', 0):.0f} s, "
            f"final loss {result['loss_curve'][-1][1] if result.get('loss_curve') else 'n/a'}"
        )
    manifest = registry.verify(path)
    with session_scope(ctx.engine) as s:
        if s.get(AdapterVersion, version) is None:
            adapters.register(s, manifest)
    fault_point("train")
    return StepOutcome(train_result=result)


def _gate(ctx: _Ctx, cycle: Cycle) -> StepOutcome:
    with session_scope(ctx.engine) as s:
        existing = s.execute(select(GateDecision).where(GateDecision.cycle_id == cycle.id)).scalar()
    if existing is None:
        decision = evaluate_and_gate(ctx.engine, ctx.home, ctx.settings, cycle)
        ctx.say(f"  gate: {'PASSED' if decision.passed else 'REJECTED'}: {decision.reason}")
    else:
        ctx.say(f"  gate decision was already recorded: {existing.reason}")
    fault_point("gate")
    return StepOutcome()


def _decide(ctx: _Ctx, cycle: Cycle) -> StepOutcome:
    assert cycle.candidate_version is not None
    with session_scope(ctx.engine) as s:
        gate = s.execute(select(GateDecision).where(GateDecision.cycle_id == cycle.id)).scalar_one()
        current = adapters.production(s)
        candidate = s.get(AdapterVersion, cycle.candidate_version)
        assert candidate is not None
        status = candidate.status
    name = registry.version_name(cycle.candidate_version)
    if not gate.passed:
        if status != "rejected":
            adapters.mark(ctx.engine, cycle.candidate_version, "rejected", gate.reason)
        ctx.say(f"  {name} rejected and kept in the registry, marked rejected")
        fault_point("decide")
        return StepOutcome(outcome="rejected", outcome_reason=gate.reason)
    if current != cycle.candidate_version:
        # The server loads and answers with the adapter before production (and the
        # proxy's alias) moves to it, so no request is sent to a name it does not know.
        serve_adapter(ctx.home, ctx.settings, cycle.candidate_version)
        adapters.move_production(
            ctx.engine,
            cycle.candidate_version,
            kind="promote",
            actor=f"cycle {cycle.id}",
            reason=gate.reason,
            adapters_dir=ctx.home.adapters,
            expect_from=cycle.parent_version,
        )
    else:  # resumed after the move: make sure the server has it
        serve_adapter(ctx.home, ctx.settings, cycle.candidate_version)
    _join_replay(ctx, cycle)
    ctx.say(f"  {name} promoted to production")
    fault_point("decide")
    return StepOutcome(outcome="promoted", outcome_reason=gate.reason)


def _join_replay(ctx: _Ctx, cycle: Cycle) -> None:
    """The fresh rows this cycle trained on join the replay buffer (once)."""
    source = f"cycle:{cycle.id}"
    with session_scope(ctx.engine) as s:
        already = s.execute(
            select(ReplayItem.id).where(ReplayItem.source == source).limit(1)
        ).scalar()
    if already is not None:
        return
    data = Path(cycle.dataset["path"])
    manifest = json.loads(Path(cycle.dataset["manifest"]).read_text())
    rows = data.read_text(encoding="utf-8").splitlines()
    kind = manifest["kind"]
    items = []
    for line, src in zip(rows, manifest["sources"], strict=True):
        if src["origin"] == "fresh":
            items.append(NewReplayItem(kind, src["task"], json.loads(line), source=source))
    added, evicted = remember(ctx.engine, ctx.settings, items)
    ctx.say(f"  replay buffer: +{added} rows, {evicted} evicted")


def _report(ctx: _Ctx, cycle: Cycle) -> StepOutcome:
    record_snapshot(ctx.engine, ctx.home, ctx.settings, cycle)
    fault_point("report")
    return StepOutcome(state="done", finished_at=utcnow())


def _run_step(ctx: _Ctx, cycle: Cycle, step: str) -> StepOutcome:
    match step:
        case "synthesize":
            return _synthesize(ctx, cycle)
        case "assemble":
            return _assemble(ctx, cycle)
        case "train":
            return _train(ctx, cycle)
        case "gate":
            return _gate(ctx, cycle)
        case "decide":
            return _decide(ctx, cycle)
        case "report":
            return _report(ctx, cycle)
    raise ValueError(f"unknown cycle step {step!r}")


def _refused(ctx: _Ctx, step: str, exc: registry.RegistryError) -> StepOutcome:
    """A step met an adapter the registry refuses (tampered, linked, pickle-based): the
    cycle fails with the reason, and when it is production's, with what to run."""
    reason = refused_reason(ctx.engine, ctx.home.adapters, step, exc)
    ctx.say(f"  {reason}")
    return StepOutcome(state="failed", outcome="failed", outcome_reason=reason)


# --------------------------------------------------------------------------- driver


def _open_cycle(ctx: _Ctx, stage: str, seed: int | None) -> tuple[Cycle, bool]:
    with session_scope(ctx.engine) as s:
        unfinished = s.execute(
            select(Cycle).where(Cycle.state.not_in(FINISHED)).order_by(Cycle.id).limit(1)
        ).scalar()
        if unfinished is not None:
            return unfinished, True
        count = s.execute(select(func.count()).select_from(Cycle)).scalar_one()
        cycle = Cycle(
            state="synthesize",
            requested_stage=stage,
            seed=int(count) if seed is None else seed,
            parent_version=adapters.production(s),
        )
        s.add(cycle)
        s.flush()
        return cycle, False


def run_cycle(
    engine: Engine,
    home: Home,
    settings: Settings,
    *,
    stage: str = "auto",
    seed: int | None = None,
    say: Callable[[str], None] = lambda text: None,
) -> CycleSummary:
    """Run (or resume) one cycle to its end and return what happened."""
    ctx = _Ctx(engine, home, settings, lease.holder_id(), say)
    lease.acquire(engine, LEASE, ctx.holder, LEASE_TTL)
    try:
        registry.remove_partials(home.adapters)
        cycle, resumed = _open_cycle(ctx, stage, seed)
        verb = "resuming" if resumed else "starting"
        say(f"cycle {cycle.id}: {verb} at step {cycle.state}")
        while cycle.state in STEPS:
            step = cycle.state
            started = time.monotonic()
            error = None
            try:
                updates = _run_step(ctx, cycle, step).columns()
            except registry.RegistryError as exc:  # a refused adapter: resuming cannot help
                error = f"{step}: {type(exc).__name__}: {exc}"
                updates = _refused(ctx, step, exc).columns()
            except Exception as exc:
                _update(engine, cycle.id, error=f"{step}: {type(exc).__name__}: {exc}")
                raise
            timings = dict(cycle.step_timings or {})
            timings[step] = round(time.monotonic() - started, 3)
            following = STEPS[STEPS.index(step) + 1] if step != STEPS[-1] else "done"
            updates.setdefault("state", following)
            if updates["state"] in FINISHED and updates["state"] != "done":
                updates.setdefault("finished_at", utcnow())
            cycle = _update(engine, cycle.id, step_timings=timings, error=error, **updates)
            lease.renew(engine, LEASE, ctx.holder, LEASE_TTL)
        name = (
            None
            if cycle.candidate_version is None
            else registry.version_name(cycle.candidate_version)
        )
        return CycleSummary(
            cycle.id,
            cycle.state,
            cycle.stage,
            cycle.decision_reason,
            name,
            cycle.outcome,
            cycle.outcome_reason,
            resumed,
            dict(cycle.step_timings or {}),
        )
    finally:
        lease.release(engine, LEASE, ctx.holder)
