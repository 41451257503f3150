"""The cycle row's seams: a step's typed outcome becomes column updates, and an update that
names no column of `cycles` is refused instead of silently setting a Python attribute."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from daemon.cycle import StepOutcome, _update
from daemon.models import Cycle
from replay.db import session_scope


def test_outcome_columns_leave_none_fields_alone() -> None:
    outcome = StepOutcome(outcome="rejected", outcome_reason="worse on tutord_add")
    assert outcome.columns() == {"outcome": "rejected", "outcome_reason": "worse on tutord_add"}
    assert StepOutcome().columns() == {}


def test_update_refuses_an_unknown_column(sqlite_engine: Engine) -> None:
    with session_scope(sqlite_engine) as s:
        row = Cycle(state="synthesize")
        s.add(row)
        s.flush()
        cycle_id = row.id
    updated = _update(
        sqlite_engine, cycle_id, **StepOutcome(synth_run_id=None, stage="sft").columns()
    )
    assert updated.stage == "sft"
    with pytest.raises(KeyError, match="outcom"):
        _update(sqlite_engine, cycle_id, outcom="promoted")
    with session_scope(sqlite_engine) as s:
        assert s.get(Cycle, cycle_id).outcome is None
