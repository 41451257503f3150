"""Which stage the next cycle trains, from the database: the curriculum's inputs and choice.

`curriculum_state` measures what the curriculum's entry criteria read (fresh SFT examples,
fresh pairs and RL prompts above each stage's last watermarks, SFT runs on the production
line, the policy's format competence); `choose_stage` applies `daemon.curriculum.decide`
(or honours an explicitly requested stage). It trains nothing and writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine, func, select

from daemon import adapters
from daemon.assemble import Watermarks, fresh_rows
from daemon.curriculum import CurriculumState, Decision, Stage, decide
from daemon.models import AdapterVersion, Cycle
from daemon.settings import Settings
from replay.db import session_scope
from replay.models import Judgment, Sample, SynthRun


def format_competence(engine: Engine) -> float | None:
    """Mean verifier score of the latest synthesis run's verifiable candidates (None: none)."""
    with session_scope(engine) as s:
        latest = s.execute(select(func.max(SynthRun.id))).scalar_one()
        if latest is None:
            return None
        mean = s.execute(
            select(func.avg(Judgment.score))
            .join(Sample, Judgment.sample_id == Sample.id)
            .where(Sample.synth_run_id == latest, Judgment.scorer == "verifier")
            .where(Judgment.score.is_not(None))
        ).scalar_one()
        return None if mean is None else float(mean)


def curriculum_state(
    engine: Engine, marks_for: Callable[[Stage], Watermarks], sft_runs: int
) -> CurriculumState:
    """The curriculum's inputs now; each stage's fresh rows count above `marks_for(stage)`."""
    return CurriculumState(
        fresh_sft=len(fresh_rows(engine, "sft", marks_for("sft"))),
        fresh_pairs=len(fresh_rows(engine, "dpo", marks_for("dpo"))),
        rl_prompts=len(fresh_rows(engine, "rl", marks_for("rl"))),
        sft_runs=sft_runs,
        format_competence=format_competence(engine),
    )


def last_marks(engine: Engine, stage: str) -> Watermarks:
    """Watermarks of the newest finished cycle that trained `stage`: rows above are fresh."""
    with session_scope(engine) as s:
        row = s.execute(
            select(Cycle.watermarks)
            .where(Cycle.stage == stage, Cycle.state == "done")
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


def choose_stage(engine: Engine, settings: Settings, requested: str = "auto") -> Decision:
    """The stage the next cycle trains: the requested one if it has fresh data, else the
    curriculum's choice from the data as it stands."""
    if requested != "auto":
        marks = last_marks(engine, requested)
        n = len(fresh_rows(engine, requested, marks))  # type: ignore[arg-type]
        if n == 0:
            return Decision(None, f"{requested.upper()} was asked for but has no fresh data.")
        return Decision(requested, f"{requested.upper()} was asked for ({n} fresh rows).")  # type: ignore[arg-type]
    # Freshness differs per stage: each counts above its own last cycle's watermarks.
    state = curriculum_state(engine, lambda stage: last_marks(engine, stage), sft_runs(engine))
    return decide(state, settings.curriculum)

