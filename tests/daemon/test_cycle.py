"""Whole cycles on the arith world: a killed `tutord cycle` (SIGKILL at the worst moment of
each step) resumes and finishes with consistent database rows and registry; rollback after
a promotion restores the previous adapter and the report marks it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import func, select

from daemon.cycle import STEPS
from daemon.models import AdapterVersion, Cycle, DriftSnapshot, EvalRun, GateDecision
from replay.db import make_engine, session_scope
from replay.models import ReplayItem, SynthRun
from stages import registry
from tests.cli_support import run_tutord
from world.logs import generate_logs, write_jsonl
from world.pretrain import bootstrap

# One home, cycles in order: keep the whole module on one xdist worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cycle")]

FAST = {
    "TUTORD_SYNTH__PROMPTS": "6",
    "TUTORD_SYNTH__N": "2",
    "TUTORD_SYNTH__MAX_NEW_TOKENS": "8",
    "TUTORD_JUDGE__MAX_NEW_TOKENS": "6",
    "TUTORD_CURRICULUM__MIN_SFT_EXAMPLES": "3",
    "TUTORD_TRAIN__SFT__MAX_STEPS": "2",
    "TUTORD_TRAIN__SFT__PER_DEVICE_BATCH_SIZE": "4",
    "TUTORD_GATE__MAX_ITEMS": "8",
    "TUTORD_GATE__TOLERANCE": "1.0",  # tiny models: promote unless catastrophically worse
    "OMP_NUM_THREADS": "1",
}


def tutord(home: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_tutord(home, *args, env={**FAST, "TUTORD_FAULT": fault or ""})


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cycle")
    h = root / "home"
    assert tutord(h, "init").returncode == 0
    bootstrap(h / "world" / "arith-base", max_steps=3, seed=0, threads=1)
    return h


def ingest_fresh(home: Path, seed: int) -> None:
    logs = home.parent / f"logs-{seed}.jsonl"
    with logs.open("w") as fh:
        write_jsonl(generate_logs("add", 30, seed=seed), fh)
    result = tutord(home, "ingest", str(logs))
    assert result.returncode == 0, result.stderr


def check_consistent(home: Path) -> None:
    engine = make_engine(f"sqlite:///{home / 'tutord.db'}")
    with session_scope(engine) as s:
        cycles = s.execute(select(Cycle).order_by(Cycle.id)).scalars().all()
        assert all(c.state in ("done", "skipped") for c in cycles), [
            (c.id, c.state) for c in cycles
        ]
        versions = {v.version: v for v in s.execute(select(AdapterVersion)).scalars()}
        on_disk = set(registry.list_versions(home / "adapters"))
        live = {n for n, v in versions.items() if v.status != "deleted"}
        assert live == on_disk  # every registered version has its folder and vice versa
        for c in cycles:
            if c.state != "done":
                continue
            runs = s.execute(
                select(func.count()).select_from(SynthRun).where(SynthRun.cycle_id == c.id)
            )
            assert runs.scalar_one() == 1
            gates = s.execute(
                select(func.count()).select_from(GateDecision).where(GateDecision.cycle_id == c.id)
            )
            assert gates.scalar_one() == 1
            evals = s.execute(
                select(func.count()).select_from(EvalRun).where(EvalRun.cycle_id == c.id)
            )
            assert evals.scalar_one() == 2
            snaps = s.execute(
                select(func.count())
                .select_from(DriftSnapshot)
                .where(DriftSnapshot.cycle_id == c.id)
            )
            assert snaps.scalar_one() == 1
            replayed = s.execute(
                select(func.count())
                .select_from(ReplayItem)
                .where(ReplayItem.source == f"cycle:{c.id}")
            ).scalar_one()
            assert replayed == (c.dataset["fresh"] if c.outcome == "promoted" else 0)
        assert not list((home / "adapters").glob(".tmp-*"))
    engine.dispose()


@pytest.mark.parametrize("step", STEPS)
def test_a_cycle_killed_in_each_step_resumes_and_finishes(home: Path, step: str) -> None:
    ingest_fresh(home, seed=100 + STEPS.index(step))
    killed = tutord(home, "cycle", fault=step)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    resumed = tutord(home, "cycle")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming at step {step}" in resumed.stdout
    check_consistent(home)


def test_rollback_after_promotion_and_the_report_marks_it(home: Path) -> None:
    engine = make_engine(f"sqlite:///{home / 'tutord.db'}")
    with session_scope(engine) as s:
        promoted = [
            c for c in s.execute(select(Cycle).where(Cycle.outcome == "promoted")).scalars()
        ]
    engine.dispose()
    assert promoted, "no cycle promoted; the crash tests above should have"
    status = json.loads(tutord(home, "status", "--json").stdout)
    before = status["production"]
    result = tutord(home, "rollback", "--reason", "test rollback")
    assert result.returncode == 0, result.stderr
    after = json.loads(tutord(home, "status", "--json").stdout)["production"]
    assert after != before
    report = tutord(home, "report", "--out", str(home / "r"))
    assert report.returncode == 0, report.stderr
    data = json.loads((home / "r" / "report.json").read_text())
    kinds = [e["kind"] for e in data["events"]]
    assert "rollback" in kinds and "promotion" in kinds
    assert (home / "r" / "report.html").read_text().count("data:image/png;base64") >= 2
