"""Whole cycles on the arith world, with the gate's default rules: a killed `tutord cycle`
(SIGKILL at the worst moment of each step) resumes and finishes with consistent database
rows and registry, whatever the gate decides; `--dry-run` says what the curriculum would
pick and writes nothing; `--stage` is honoured, and skips the cycle when that stage has no
fresh data; rollback after a direct promotion restores the previous adapter and the report
marks it; a LoRA shape that differs from production's fails the cycle naming the key, and
rolling back to the base starts a fresh adapter with it. (The reject branch with a real
regression is tests/daemon/test_cycle_reject.py.)"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from daemon import adapters
from daemon.cycle import STEPS
from daemon.models import AdapterVersion, Cycle, DriftSnapshot, EvalRun, GateDecision
from replay.db import make_engine, session_scope
from replay.models import ReplayItem, SynthRun
from stages import registry
from tests.cli_support import run_tutord
from tests.cycle_support import FAST, promote
from tests.lora_support import random_lora_adapter
from world.logs import generate_logs, write_jsonl
from world.pretrain import bootstrap

# One home, cycles in order: keep the whole module on one xdist worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cycle")]

ENV = {
    **FAST,
    "TUTORD_CURRICULUM__MIN_SFT_EXAMPLES": "3",
    "TUTORD_TRAIN__DPO__MAX_STEPS": "2",
    "TUTORD_TRAIN__DPO__PER_DEVICE_BATCH_SIZE": "4",
    "TUTORD_TRAIN__RL__MAX_STEPS": "2",
    "TUTORD_TRAIN__RL__PER_DEVICE_BATCH_SIZE": "4",
    "TUTORD_TRAIN__RL__NUM_GENERATIONS": "2",
    "TUTORD_GATE__TOLERANCE": "",  # the default rules: cycles here pass or fail on their merits
}


def tutord(
    home: Path, *args: str, fault: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return run_tutord(home, *args, env={**ENV, "TUTORD_FAULT": fault or "", **env})


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


def database(home: Path) -> Engine:
    return make_engine(f"sqlite:///{home / 'tutord.db'}")


def production(home: Path) -> str:
    status = tutord(home, "status", "--json")
    assert status.returncode == 0, status.stderr
    return str(json.loads(status.stdout)["production"])


def dump(home: Path) -> list[str]:
    """Every row of the database, as SQL."""
    with sqlite3.connect(home / "tutord.db") as conn:
        return list(conn.iterdump())


def promote_directly(home: Path) -> int:
    """Publish a random LoRA adapter of the settings' default shape (r 16 on every projection)
    as the next version, register it and promote it through the API: no cycle, no gate."""
    engine = database(home)
    with session_scope(engine) as s:
        reserved = s.execute(select(func.max(Cycle.candidate_version))).scalar() or 0
        version = max(adapters.next_version(s), reserved + 1)
        parent = adapters.production(s)
    engine.dispose()
    base = home / "world" / "arith-base"
    source = random_lora_adapter(base, home.parent / f"direct-v{version}", seed=version, rank=16)
    manifest = registry.publish(
        source,
        home / "adapters",
        version=version,
        parent=parent,
        base=registry.base_identity(base),
        stage="sft",
    )
    promote(home, manifest, "promoted directly by the test")
    return version


def test_dry_run_says_what_the_curriculum_would_pick_and_writes_nothing(home: Path) -> None:
    ingest_fresh(home, seed=200)
    before = dump(home)
    files = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    for args in ((), ("--stage", "dpo"), ("--stage", "rl")):
        result = tutord(home, "cycle", "--dry-run", *args)
        assert result.returncode == 0, result.stdout + result.stderr
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 1 and re.fullmatch(r"next stage: (sft|dpo|rl|none): .+", lines[0])
        if args:
            asked = args[1]
            assert lines[0].startswith((f"next stage: {asked}: ", "next stage: none: "))
            assert f"{asked.upper()} was asked for" in lines[0]
    assert dump(home) == before
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == files


def test_an_asked_stage_is_honoured_and_skipped_without_fresh_data(home: Path) -> None:
    # The logs ingested above carry corrections, which synthesis turns into pairs; every cycle
    # so far trained SFT, so every pair is fresh for DPO.
    # A tolerance of 1: the gate promotes, so the DPO line has trained on these pairs (a
    # rejected candidate would leave them fresh).
    first = tutord(
        home, "cycle", "--stage", "dpo", "--seed", "40", "--json", TUTORD_GATE__TOLERANCE="1.0"
    )
    assert first.returncode == 0, first.stdout + first.stderr
    done = json.loads(first.stdout)
    assert (done["state"], done["stage"]) == ("done", "dpo"), done
    assert done["decision_reason"].startswith("DPO was asked for ("), done
    assert done["outcome"] == "promoted", done
    manifest = registry.verify(registry.adapter_path(home / "adapters", int(done["candidate"][1:])))
    assert manifest.stage == "dpo"

    # No new logs, candidates that cannot differ (a nucleus of one token) and no judge
    # training (whose pairs any graded candidate makes): this cycle's synthesis can make no
    # pair, and the feedback pairs are all made already.
    again = tutord(
        home,
        "cycle",
        "--stage",
        "dpo",
        "--seed",
        "41",
        "--json",
        TUTORD_SYNTH__TOP_P="1e-9",
        TUTORD_SYNTH__JUDGE_SHARE="0",
    )
    assert again.returncode == 0, again.stdout + again.stderr
    skipped = json.loads(again.stdout)
    assert (skipped["state"], skipped["outcome"], skipped["candidate"]) == (
        "skipped",
        "skipped",
        None,
    ), skipped
    assert skipped["outcome_reason"] == "DPO was asked for but has no fresh data.", skipped
    engine = database(home)
    with session_scope(engine) as s:
        rows = {c.id: c for c in s.execute(select(Cycle)).scalars()}
        assert rows[done["cycle_id"]].requested_stage == "dpo"
        assert rows[skipped["cycle_id"]].requested_stage == "dpo"
        assert rows[skipped["cycle_id"]].stage is None
    engine.dispose()
    check_consistent(home)


def test_rollback_after_a_direct_promotion_and_the_report_marks_it(home: Path) -> None:
    before = production(home)
    version = promote_directly(home)
    assert production(home) == f"v{version}"
    result = tutord(home, "rollback", "--reason", "test rollback")
    assert result.returncode == 0, result.stderr
    assert f"production: v{version} -> {before}" in result.stdout
    assert production(home) == before
    engine = database(home)
    with session_scope(engine) as s:
        last = adapters.history(s)[-1]
        assert (last.kind, last.from_version, last.reason) == ("rollback", version, "test rollback")
    engine.dispose()
    report = tutord(home, "report", "--out", str(home / "r"))
    assert report.returncode == 0, report.stderr
    data = json.loads((home / "r" / "report.json").read_text())
    kinds = [e["kind"] for e in data["events"]]
    assert "rollback" in kinds and "promotion" in kinds
    assert data["versions"][0] == "base"  # the first cycle started from the bare base
    assert (home / "r" / "report.html").read_text().count("data:image/png;base64") >= 2


def test_a_lora_shape_other_than_productions_fails_the_cycle_and_base_starts_fresh(
    home: Path,
) -> None:
    version = promote_directly(home)  # r 16, alpha 32, every projection
    ingest_fresh(home, seed=300)
    on_disk = registry.list_versions(home / "adapters")
    refused = tutord(home, "cycle", "--stage", "sft", TUTORD_TRAIN__SFT__LORA_R="8")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    message = refused.stderr.replace("\n", " ")
    assert f"train.sft.lora_r = 8 but the parent adapter v{version} (" in message, message
    assert "has r=16" in message and "train.sft.lora_r = 16 to continue it" in message
    assert "tutord rollback --to base" in message
    engine = database(home)
    with session_scope(engine) as s:
        failed = s.execute(select(Cycle).order_by(Cycle.id.desc()).limit(1)).scalar_one()
        assert (failed.state, failed.outcome, failed.candidate_version) == (
            "failed",
            "failed",
            None,
        )
        assert "train.sft.lora_r = 8" in (failed.outcome_reason or "")
    assert registry.list_versions(home / "adapters") == on_disk  # nothing trained

    assert tutord(home, "rollback", "--to", "base").returncode == 0
    fresh = tutord(home, "cycle", "--stage", "sft", "--json", TUTORD_TRAIN__SFT__LORA_R="8")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    summary = json.loads(fresh.stdout)
    assert (summary["state"], summary["stage"]) == ("done", "sft"), summary
    folder = registry.adapter_path(home / "adapters", int(summary["candidate"][1:]))
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == 8
    assert registry.verify(folder).parent is None
    with session_scope(engine) as s:
        assert s.get(Cycle, summary["cycle_id"]).parent_version is None  # type: ignore[union-attr]
    engine.dispose()
