"""One improvement cycle, step by step: synthesize, assemble, train, gate, decide, report.

A cycle is a row in `cycles` whose `state` names the next step. Each step writes its
outputs (into the database, or into the cycle's folder `cycles/<id>/`, atomically)
before the row moves on in its own transaction, and each step first looks for what an
interrupted earlier attempt already did, so a cycle killed at any point (even SIGKILL)
resumes from its last finished step on the next `tutord cycle`, and a half-written
artifact is never used. Only one cycle runs at a time per database (the `cycle` lease).

The work of each step lives elsewhere (`daemon/synth.py`, `daemon/assemble.py`,
`stages.launch`, `evals/`, `daemon/adapters.py`); this module sequences and records.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from daemon import adapters, lease
from daemon.assemble import Watermarks, assemble, curriculum_state, fresh_rows, newest
from daemon.curriculum import Decision, decide
from daemon.gatekeeper import evaluate_and_gate
from daemon.home import Home
from daemon.memory import remember
from daemon.models import AdapterVersion, Cycle, GateDecision
from daemon.policy import base_model, production_adapter
from daemon.report import record_snapshot
from daemon.settings import Settings
from daemon.synth import run_synth
from replay.buffer import NewReplayItem
from replay.db import session_scope
from replay.models import ReplayItem, SynthRun, utcnow
from stages import registry
from stages.launch import LaunchConfig, run_stage

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


def _update(engine: Engine, cycle_id: int, **values: Any) -> Cycle:
    with session_scope(engine) as s:
        cycle = s.get(Cycle, cycle_id)
        assert cycle is not None
        for key, value in values.items():
            setattr(cycle, key, value)
        return cycle


# --------------------------------------------------------------------------- steps


def _synthesize(ctx: _Ctx, cycle: Cycle) -> dict[str, Any]:
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
    fault_point("synthesize")
    return {"synth_run_id": done}


def _last_marks(engine: Engine, stage: str) -> Watermarks:
    """Watermarks of the newest finished cycle that trained `stage`: rows above are fresh."""
    with session_scope(engine) as s:
        row = s.execute(
            select(Cycle.watermarks)
            .where(Cycle.stage == stage, Cycle.state == "done")
            .order_by(Cycle.id.desc())
            .limit(1)
        ).scalar()
    return Watermarks(**row) if row else Watermarks()


def _sft_runs(engine: Engine) -> int:
    """SFT stages on the production line (production and its ancestors)."""
    with session_scope(engine) as s:
        line = adapters.protected_versions(s)
        if not line:
            return 0
        return int(
            s.execute(
                select(func.count())
                .select_from(AdapterVersion)
                .where(AdapterVersion.version.in_(line), AdapterVersion.stage == "sft")
            ).scalar_one()
        )


def _decide_stage(ctx: _Ctx, cycle: Cycle) -> Decision:
    if cycle.requested_stage != "auto":
        marks = _last_marks(ctx.engine, cycle.requested_stage)
        n = len(fresh_rows(ctx.engine, cycle.requested_stage, marks))  # type: ignore[arg-type]
        if n == 0:
            return Decision(
                None, f"{cycle.requested_stage.upper()} was asked for but has no fresh data."
            )
        return Decision(
            cycle.requested_stage,
            f"{cycle.requested_stage.upper()} was asked for ({n} fresh rows).",
        )  # type: ignore[arg-type]
    # Freshness differs per stage: each counts above its own last cycle's watermarks.
    state = curriculum_state(
        ctx.engine, lambda stage: _last_marks(ctx.engine, stage), _sft_runs(ctx.engine)
    )
    return decide(state, ctx.settings.curriculum)


def _assemble(ctx: _Ctx, cycle: Cycle) -> dict[str, Any]:
    decision = _decide_stage(ctx, cycle)
    ctx.say(f"  curriculum: {decision.reason}")
    log.info("cycle %d curriculum: %s", cycle.id, decision.reason)
    if decision.stage is None:
        return {
            "stage": None,
            "decision_reason": decision.reason,
            "state": "skipped",
            "outcome": "skipped",
            "outcome_reason": decision.reason,
        }
    marks_now = newest(ctx.engine)
    rows = fresh_rows(ctx.engine, decision.stage, _last_marks(ctx.engine, decision.stage))
    dataset = assemble(
        ctx.engine,
        decision.stage,
        ctx.folder(cycle) / "data",
        rows,
        ratio=ctx.settings.replay.ratio,
        seed=cycle.seed,
        marks=marks_now,
    )
    ctx.say(
        f"  dataset: {dataset.fresh} fresh + {dataset.replay} replay rows "
        f"({dataset.ratio_actual:.0%} replay) -> {dataset.path}"
    )
    fault_point("assemble")
    return {
        "stage": decision.stage,
        "decision_reason": decision.reason,
        "watermarks": asdict(marks_now),
        "dataset": {
            "path": str(dataset.path),
            "manifest": str(dataset.manifest_path),
            "fresh": dataset.fresh,
            "replay": dataset.replay,
            "by_task": dataset.by_task,
        },
    }


def _next_version(engine: Engine) -> int:
    with session_scope(engine) as s:
        registered = adapters.next_version(s)
        reserved = s.execute(select(func.max(Cycle.candidate_version))).scalar()
    return max(registered, (reserved or 0) + 1)


def _stage_config(ctx: _Ctx, cycle: Cycle, version: int) -> Path:
    stage = cycle.stage
    assert stage in ("sft", "dpo", "rl")
    st = getattr(ctx.settings.train, stage)
    parent = production_adapter(ctx.engine, ctx.home)
    config: dict[str, Any] = {
        "base_model": base_model(ctx.home, ctx.settings),
        "parent_adapter": str(parent.path) if parent else None,
        "parent_version": cycle.parent_version,
        "train_file": cycle.dataset["path"],
        "output_dir": str(ctx.folder(cycle) / "train"),
        "adapters_dir": str(ctx.home.adapters),
        "version": version,
        "max_steps": st.max_steps,
        "learning_rate": st.learning_rate,
        "per_device_batch_size": st.per_device_batch_size,
        "lora_r": st.lora_r,
        "lora_alpha": st.lora_alpha,
        "max_seconds": st.max_seconds,
        "seed": cycle.seed,
        "threads": ctx.settings.train.threads,
    }
    if st.beta is not None:
        config["beta"] = st.beta
    if stage == "rl" and st.num_generations is not None:
        config["num_generations"] = st.num_generations
    config.update(st.extra)
    path = ctx.folder(cycle) / "train" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".config.json.tmp")
    tmp.write_text(json.dumps(config, indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _train(ctx: _Ctx, cycle: Cycle) -> dict[str, Any]:
    version = cycle.candidate_version
    if version is None:
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
            return {
                "state": "failed",
                "outcome": "failed",
                "train_result": result,
                "outcome_reason": f"training failed: {result.get('reason')}",
            }
        ctx.say(
            f"  trained {result.get('steps')} steps in {result.get('seconds', 0):.0f} s, "
            f"final loss {result['loss_curve'][-1][1] if result.get('loss_curve') else 'n/a'}"
        )
    manifest = registry.verify(path)
    with session_scope(ctx.engine) as s:
        if s.get(AdapterVersion, version) is None:
            adapters.register(s, manifest)
    fault_point("train")
    return {"train_result": result}


def _gate(ctx: _Ctx, cycle: Cycle) -> dict[str, Any]:
    with session_scope(ctx.engine) as s:
        existing = s.execute(select(GateDecision).where(GateDecision.cycle_id == cycle.id)).scalar()
    if existing is None:
        decision = evaluate_and_gate(ctx.engine, ctx.home, ctx.settings, cycle)
        ctx.say(f"  gate: {'PASSED' if decision.passed else 'REJECTED'}: {decision.reason}")
    else:
        ctx.say(f"  gate decision was already recorded: {existing.reason}")
    fault_point("gate")
    return {}


def _decide(ctx: _Ctx, cycle: Cycle) -> dict[str, Any]:
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
        return {"outcome": "rejected", "outcome_reason": gate.reason}
    if current != cycle.candidate_version:
        adapters.move_production(
            ctx.engine,
            cycle.candidate_version,
            kind="promote",
            actor=f"cycle {cycle.id}",
            reason=gate.reason,
            adapters_dir=ctx.home.adapters,
            expect_from=cycle.parent_version,
        )
    _serve(ctx, cycle.candidate_version)
    _join_replay(ctx, cycle)
    ctx.say(f"  {name} promoted to production")
    fault_point("decide")
    return {"outcome": "promoted", "outcome_reason": gate.reason}


def _serve(ctx: _Ctx, version: int) -> None:
    """Load a newly promoted adapter into the configured OpenAI-compatible server."""
    if ctx.settings.model.backend != "openai" or not ctx.settings.model.server_url:
        return
    from stages.generate.openai_http import OpenAIBackend

    client = OpenAIBackend(
        base_model(ctx.home, ctx.settings), base_url=ctx.settings.model.server_url
    )
    try:
        client.load_adapter(
            registry.version_name(version), registry.adapter_path(ctx.home.adapters, version)
        )
    finally:
        client.close()


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


def _report(ctx: _Ctx, cycle: Cycle) -> dict[str, Any]:
    record_snapshot(ctx.engine, ctx.home, ctx.settings, cycle)
    fault_point("report")
    return {"state": "done", "finished_at": utcnow()}


_STEP_FUNCS: dict[str, Callable[[_Ctx, Cycle], dict[str, Any]]] = {
    "synthesize": _synthesize,
    "assemble": _assemble,
    "train": _train,
    "gate": _gate,
    "decide": _decide,
    "report": _report,
}


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
            try:
                updates = _STEP_FUNCS[step](ctx, cycle)
            except Exception as exc:
                _update(engine, cycle.id, error=f"{step}: {type(exc).__name__}: {exc}")
                raise
            timings = dict(cycle.step_timings or {})
            timings[step] = round(time.monotonic() - started, 3)
            following = STEPS[STEPS.index(step) + 1] if step != STEPS[-1] else "done"
            updates.setdefault("state", following)
            if updates["state"] in FINISHED and updates["state"] != "done":
                updates.setdefault("finished_at", utcnow())
            cycle = _update(engine, cycle.id, step_timings=timings, error=None, **updates)
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


def dry_run(engine: Engine, home: Home, settings: Settings, stage: str = "auto") -> Decision:
    """What the next cycle's curriculum would decide now, without running anything."""
    ctx = _Ctx(engine, home, settings, "dry-run", lambda text: None)
    probe = Cycle(id=0, requested_stage=stage, seed=0, state="assemble")
    return _decide_stage(ctx, probe)
