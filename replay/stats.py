"""Counts of what the database holds, for `tutord status`.

Read-only aggregate queries over interactions, preference pairs, samples, judgments
and the replay buffer. It does not format anything for people (see `daemon/cli/`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Engine, func, select

from replay.models import (
    Interaction,
    Judgment,
    PreferencePair,
    ReplayCount,
    Sample,
    SFTExample,
    SynthRun,
)


@dataclass(frozen=True)
class DataCounts:
    """How much of each kind of data is stored, with breakdowns."""

    interactions: int
    interactions_by_task: dict[str, int] = field(default_factory=dict)
    interactions_by_source: dict[str, int] = field(default_factory=dict)
    interactions_with_feedback: int = 0
    pairs: int = 0
    pairs_by_origin: dict[str, int] = field(default_factory=dict)
    sft_examples: int = 0
    sft_by_origin: dict[str, int] = field(default_factory=dict)
    synth_runs: int = 0
    samples: int = 0
    judgments: int = 0
    replay_items: int = 0
    replay_by_kind_task: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _grouped(conn: Any, column: Any) -> dict[str, int]:
    rows = conn.execute(select(column, func.count()).group_by(column).order_by(column)).all()
    return {("(none)" if key is None else str(key)): int(n) for key, n in rows}


def data_counts(engine: Engine) -> DataCounts:
    """Count everything; grouped counts use the indexes on task, source and origin."""
    with engine.connect() as conn:
        by_task = _grouped(conn, Interaction.task)
        with_feedback = conn.execute(
            select(func.count()).where(
                Interaction.feedback_rating.is_not(None)
                | Interaction.feedback_correction.is_not(None)
            )
        ).scalar_one()
        by_origin = _grouped(conn, PreferencePair.origin)
        sft_by_origin = _grouped(conn, SFTExample.origin)
        replay: dict[str, dict[str, int]] = {}
        for kind, task, n in conn.execute(
            select(ReplayCount.kind, ReplayCount.task, ReplayCount.n).order_by(
                ReplayCount.kind, ReplayCount.task
            )
        ):
            if n:
                replay.setdefault(kind, {})[task] = int(n)
        return DataCounts(
            interactions=sum(by_task.values()),
            interactions_by_task=by_task,
            interactions_by_source=_grouped(conn, Interaction.source),
            interactions_with_feedback=int(with_feedback),
            pairs=sum(by_origin.values()),
            pairs_by_origin=by_origin,
            sft_examples=sum(sft_by_origin.values()),
            sft_by_origin=sft_by_origin,
            synth_runs=int(conn.execute(select(func.count()).select_from(SynthRun)).scalar_one()),
            samples=int(conn.execute(select(func.count()).select_from(Sample)).scalar_one()),
            judgments=int(conn.execute(select(func.count()).select_from(Judgment)).scalar_one()),
            replay_items=sum(sum(t.values()) for t in replay.values()),
            replay_by_kind_task=replay,
        )
