"""`gate.anchor_tasks` in the gate step: besides production, the candidate is held to the
base model on the anchored tasks, the base's run is recorded as role "base", and a
candidate within the tolerance of production but not of the base is refused, naming it.
The evaluations are synthetic (`evaluate_policy` and the suites are replaced); the pairing
and the decision are the gate's own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from daemon import gatekeeper
from daemon.home import Home
from daemon.models import AdapterVersion, Cycle, EvalRun, GateDecision
from daemon.settings import load_settings
from evals.tasks import SuiteSpec, SuiteTask
from replay.db import session_scope
from tests.evals.test_gate import flip, production_items, runs

N = 400


def spec(tasks: list[str], digest: str) -> SuiteSpec:
    return SuiteSpec(
        root=Path("/nowhere"),
        include_paths=(),
        tasks=tuple(SuiteTask(name=f"tutord_{t}", task=t, n_items=N) for t in tasks),
        hash=digest,
    )


@pytest.mark.parametrize("anchor", [True, False])
def test_a_candidate_is_held_to_the_base_on_anchored_tasks(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anchor: bool
) -> None:
    home = Home(tmp_path / "home")
    home.create()
    if anchor:
        home.config_file.write_text('[gate]\nanchor_tasks = ["retention"]\n', encoding="utf-8")
    settings = load_settings(home.root)
    base_items = production_items("tutord_retention", N, n=N)
    v1 = flip(base_items, lose=12, win=0, seed=1)  # production already lost 0.03
    lost = [k for k, v in v1.items() if v == 1.0][:14]
    v2 = {**v1, **dict.fromkeys(lost, 0.0)}  # 0.035 more: within the tolerance of v1
    by_version: dict[int | None, dict[str, float]] = {None: base_items, 1: v1, 2: v2}
    asked: list[tuple[int | None, tuple[str, ...]]] = []

    def fake_suite(engine: Any, home: Any, settings: Any, only: Any = None) -> SuiteSpec:
        return spec(["retention"], "r" * 64) if only else spec(["retention", "sum2"], "w" * 64)

    def fake_evaluate(engine: Any, home: Any, settings: Any, version: Any, suite: SuiteSpec):
        asked.append((version, tuple(t.task for t in suite.tasks)))
        production, _ = runs({"tutord_retention": by_version[version]}, {}, suite=suite.hash)
        return production

    monkeypatch.setattr(gatekeeper, "suite", fake_suite)
    monkeypatch.setattr(gatekeeper, "evaluate_policy", fake_evaluate)
    with session_scope(sqlite_engine) as s:
        s.add(
            AdapterVersion(
                version=1,
                name="v1",
                base_id="b",
                base_config_sha256="c" * 64,
                stage="sft",
                status="candidate",
                manifest={},
            )
        )
        s.flush()
        s.add(Cycle(id=1, parent_version=1, candidate_version=2, seed=0))
    with session_scope(sqlite_engine) as s:
        cycle = s.get(Cycle, 1)
        s.expunge(cycle)
    result = gatekeeper.evaluate_and_gate(sqlite_engine, home, settings, cycle)
    with session_scope(sqlite_engine) as s:
        roles = sorted(r.role for r in s.execute(select(EvalRun)).scalars())
        decision = s.execute(select(GateDecision)).scalar_one()
        assert decision.passed is result.passed and decision.reason == result.reason
    if anchor:
        assert (None, ("retention",)) in asked  # the base, on the anchored task alone
        assert roles == ["base", "candidate", "production"]
        assert not result.passed
        assert result.reason.startswith("against the base model: regression on tutord_retention")
    else:
        assert roles == ["candidate", "production"] and None not in [v for v, _ in asked]
        assert result.passed, result.reason
