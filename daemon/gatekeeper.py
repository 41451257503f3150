"""The gate step of a cycle: evaluate production and candidate with lm-eval, decide, record.

It builds the regression suite (held-out items of every live task plus the user's own
lm-eval tasks), evaluates production (each task from the cache when nothing that defines
its results changed) and the candidate through `evals.run.evaluate`, applies
`evals.gate.gate`, and stores both evaluations and the decision in one transaction. The
statistics are in `evals/`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Engine

from daemon.home import Home
from daemon.models import Cycle, EvalRun, GateDecision
from daemon.policy import adapter_ref, apply_threads, base_model
from daemon.settings import Settings
from daemon.tasks import live_tasks
from evals.cache import EvalCache
from evals.evaluation import EvalSettings, Evaluation
from evals.gate import GateResult, GateRules, anchored, gate
from evals.run import evaluate
from evals.tasks import SuiteSpec, write_suite
from replay.db import session_scope
from stages import registry


def suite(
    engine: Engine, home: Home, settings: Settings, only: Sequence[str] | None = None
) -> SuiteSpec:
    """The regression suite: held-out items of every live task, and the user's own lm-eval
    tasks (`gate.include_paths` / `gate.extra_tasks`, and each task's `lm_eval` folder); or,
    with `only`, the held-out items of those live tasks alone (the same items)."""
    tasks = list(live_tasks(engine, home, settings).values())
    if only is not None:
        tasks = [t for t in tasks if t.name in only and t.heldout()]
        name = "-".join(t.name for t in tasks)
        return write_suite(home.root / "evals" / "suites" / name, tasks, settings.gate.max_items)
    include = [Path(p) for p in settings.gate.include_paths]
    extra = list(settings.gate.extra_tasks)
    for task in tasks:
        if task.lm_eval_include:
            include.append(Path(task.lm_eval_include))
            extra.extend(task.lm_eval_tasks)
    with_items = [t for t in tasks if t.heldout()]
    name = "-".join(t.name for t in with_items) or "user"
    return write_suite(
        home.root / "evals" / "suites" / name,
        with_items,
        settings.gate.max_items,
        seed=0,
        include_paths=include,
        user_tasks=extra,
    )


def evaluate_policy(
    engine: Engine, home: Home, settings: Settings, version: int | None, spec: SuiteSpec
) -> Evaluation:
    apply_threads(settings)
    return evaluate(
        base_model(home, settings),
        adapter_ref(home, version),
        spec,
        backend=settings.gate.backend,
        settings=EvalSettings(),
        cache=EvalCache(home.root / "evals" / "cache"),
    )


def evaluate_and_gate(engine: Engine, home: Home, settings: Settings, cycle: Cycle) -> GateResult:
    """Evaluate, decide and record the gate of `cycle`'s candidate."""
    assert cycle.candidate_version is not None
    spec = suite(engine, home, settings)
    production = evaluate_policy(engine, home, settings, cycle.parent_version, spec)
    candidate = evaluate_policy(engine, home, settings, cycle.candidate_version, spec)
    g = settings.gate
    rules = GateRules(
        tolerance=g.tolerance,
        alpha=g.alpha,
        target_tasks=tuple(g.target_tasks),
        require_gain=g.require_gain,
        seed=cycle.seed,
        block_unseen=g.block_unseen,
    )
    result = gate(production, candidate, rules)
    runs = [
        ("production", production, cycle.parent_version),
        ("candidate", candidate, cycle.candidate_version),
    ]
    if g.anchor_tasks:
        in_suite = {t.task: t.name for t in spec.tasks if t.task}
        found = [a for a in g.anchor_tasks if a in in_suite]
        base = production
        if cycle.parent_version is not None and found:
            base = evaluate_policy(
                engine, home, settings, None, suite(engine, home, settings, found)
            )
            runs.append(("base", base, None))
        anchors = [in_suite.get(a, a) for a in g.anchor_tasks]  # one not found fails the gate
        result = anchored(result, base, candidate, anchors)
    with session_scope(engine) as s:
        for role, run, version in runs:
            s.add(
                EvalRun(
                    cycle_id=cycle.id,
                    role=role,
                    adapter="base" if version is None else registry.version_name(version),
                    suite_hash=run.suite_hash,
                    cached=run.from_cache,
                    results=run.to_dict(),
                )
            )
        s.add(
            GateDecision(
                cycle_id=cycle.id,
                candidate_version=cycle.candidate_version,
                production_version=cycle.parent_version,
                passed=result.passed,
                reason=result.reason,
                tasks=result.to_dict()["tasks"],
            )
        )
    return result
