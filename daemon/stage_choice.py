"""Which stage the next cycle trains, from the database: the curriculum's inputs and choice.

`curriculum_state` measures what the curriculum's entry criteria read (fresh SFT examples,
fresh pairs and RL prompts above each stage's last watermarks, SFT runs on the production
line, the policy's parse rate: the share of the latest synthesis run's answers that have
their task's `answer_format`, right or wrong); `choose_stage` applies
`daemon.curriculum.decide` (or honours an explicitly requested stage). It trains nothing
and writes nothing.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping

from sqlalchemy import Engine, func, select

from daemon import adapters
from daemon.assemble import Watermarks, fresh_rows
from daemon.curriculum import CurriculumState, Decision, Stage, decide
from daemon.home import Home
from daemon.models import AdapterVersion, Cycle
from daemon.settings import Settings
from daemon.tasks import live_tasks
from judges.graders import resolve_grader
from judges.tasks import Task
from replay.db import session_scope
from replay.models import Sample, SynthRun


def parse_rate(engine: Engine, tasks: Mapping[str, Task]) -> float | None:
    """Share of the latest synthesis run's candidates that have their task's answer format
    (its `answer_format` scores them 1.0), right or wrong. Only candidates whose task is in
    `tasks` and declares a format count; None when there are none (or no run yet)."""
    with session_scope(engine) as s:
        latest = s.execute(select(func.max(SynthRun.id))).scalar_one()
        if latest is None:
            return None
        rows = s.execute(
            select(Sample.task, Sample.prompt, Sample.completion).where(
                Sample.synth_run_id == latest
            )
        ).all()
    by_format: dict[str, tuple[list[object], list[str]]] = defaultdict(lambda: ([], []))
    for task, prompt, completion in rows:
        spec = tasks[task].answer_format if task in tasks else None
        if spec is not None:
            by_format[spec][0].append(prompt)
            by_format[spec][1].append(completion)
    scores = [
        score
        for spec, (prompts, completions) in sorted(by_format.items())
        for score in resolve_grader(spec)(prompts, completions)
        if score is not None  # a format check that abstains does not count
    ]
    return sum(score >= 1.0 for score in scores) / len(scores) if scores else None


def curriculum_state(
    engine: Engine,
    marks_for: Callable[[Stage], Watermarks],
    sft_runs: int,
    tasks: Mapping[str, Task],
) -> CurriculumState:
    """The curriculum's inputs now; each stage's fresh rows count above `marks_for(stage)`;
    the parse rate uses the answer formats of `tasks` (the live tasks by name)."""
    fresh_sft = fresh_rows(engine, "sft", marks_for("sft"))
    by_task = Counter(r.task for r in fresh_sft if r.task in tasks)
    return CurriculumState(
        fresh_sft=len(fresh_sft),
        fresh_pairs=len(fresh_rows(engine, "dpo", marks_for("dpo"))),
        rl_prompts=len(fresh_rows(engine, "rl", marks_for("rl"))),
        sft_runs=sft_runs,
        parse_rate=parse_rate(engine, tasks),
        fresh_sft_by_task=dict(by_task),
        sft_tasks=sft_trained_tasks(engine),
        last_rejected=last_rejected(engine),
        production_stage=production_stage(engine),
    )


def production_stage(engine: Engine) -> str | None:
    """The stage that trained the production adapter (None: the base is production)."""
    with session_scope(engine) as s:
        version = adapters.production(s)
        if version is None:
            return None
        row = s.get(AdapterVersion, version)
        return row.stage if row is not None else None


def last_rejected(engine: Engine) -> str | None:
    """The stage of the newest finished cycle, when the gate rejected its candidate."""
    with session_scope(engine) as s:
        row = s.execute(
            select(Cycle.stage, Cycle.outcome)
            .where(Cycle.state == "done")
            .order_by(Cycle.id.desc())
            .limit(1)
        ).first()
    return row.stage if row is not None and row.outcome == "rejected" else None


def sft_trained_tasks(engine: Engine) -> frozenset[str]:
    """Tasks in the datasets of the SFT stages on the production line."""
    with session_scope(engine) as s:
        line = adapters.protected_versions(s)
        if not line:
            return frozenset()
        datasets = s.execute(
            select(Cycle.dataset).where(
                Cycle.stage == "sft", Cycle.state == "done", Cycle.candidate_version.in_(line)
            )
        ).scalars()
        return frozenset(task for d in datasets for task in (d or {}).get("by_task", {}))


def last_marks(engine: Engine, stage: str) -> Watermarks:
    """Watermarks of the newest finished cycle of `stage` whose candidate is on the
    production line: rows above them are fresh. Rows that only a rejected (or rolled-back)
    candidate trained on stay fresh: production has not learnt them, and the next cycle of
    the stage trains on them again, with what arrived since."""
    with session_scope(engine) as s:
        line = adapters.protected_versions(s)
        if not line:
            return Watermarks()
        row = s.execute(
            select(Cycle.watermarks)
            .where(Cycle.stage == stage, Cycle.state == "done", Cycle.candidate_version.in_(line))
            .order_by(Cycle.id.desc())
            .limit(1)
        ).scalar()
    return Watermarks(**row) if row else Watermarks()


def sft_runs(engine: Engine) -> int:
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


def choose_stage(
    engine: Engine, home: Home, settings: Settings, requested: str = "auto"
) -> Decision:
    """The stage the next cycle trains: the requested one if it has fresh data, else the
    curriculum's choice from the data as it stands (and the live tasks' answer formats)."""
    if requested != "auto":
        marks = last_marks(engine, requested)
        n = len(fresh_rows(engine, requested, marks))  # type: ignore[arg-type]
        if n == 0:
            return Decision(None, f"{requested.upper()} was asked for but has no fresh data.")
        return Decision(requested, f"{requested.upper()} was asked for ({n} fresh rows).")  # type: ignore[arg-type]
    # Freshness differs per stage: each counts above its own last cycle's watermarks.
    state = curriculum_state(
        engine,
        lambda stage: last_marks(engine, stage),
        sft_runs(engine),
        live_tasks(engine, home, settings),
    )
    return decide(state, settings.curriculum)
