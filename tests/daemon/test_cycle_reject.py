"""The reject branch of a real cycle, with the gate's default tolerance: production is an
adapter that answers some addition right; users then send corrections that are all wrong
(no reference, so no grader can contradict them); the cycle's SFT candidate learns them,
gets worse at held-out addition, and is rejected for a regression on tutord_add. Production
does not move, nothing of the cycle joins the replay buffer, and the candidate stays in the
registry marked rejected with the gate's reason."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import func, select

from daemon import adapters
from daemon.models import AdapterVersion, Cycle, EvalRun, GateDecision
from replay.db import make_engine, session_scope
from replay.models import ReplayItem
from stages import registry
from stages.launch import LaunchConfig, run_stage
from tests.cli_support import run_tutord
from tests.cycle_support import FAST, promote
from world.pretrain import bootstrap
from world.tasks import families

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cycle-reject")]

ENV = {
    **FAST,
    "TUTORD_GATE__TOLERANCE": "",  # the default: never loosened here
    "TUTORD_GATE__MAX_ITEMS": "100",  # enough held-out items for a real drop to be significant
    "TUTORD_TRAIN__SFT__MAX_STEPS": "60",
    "TUTORD_TRAIN__SFT__PER_DEVICE_BATCH_SIZE": "16",
}


def tutord(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_tutord(home, *args, env=ENV)


def equation(a: int, b: int, value: int) -> str:
    return f"{a}+{b}={value}"


def promote_a_good_production(home: Path) -> None:
    """SFT on right answers (train side of the split) from the bootstrapped base, published
    as v1 and promoted directly: a production that scores well above zero on add."""
    work = home.parent / "good"
    work.mkdir()
    rows = [
        {
            "messages": [
                *p.messages(),
                {"role": "assistant", "content": equation(p.a, p.b, int(p.answer))},
            ]
        }
        for p in families()["add"].sample_problems(400, seed=3, split="train")
    ]
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "base_model": str(home / "world" / "arith-base"),
        "train_file": str(work / "train.jsonl"),
        "output_dir": str(work / "run"),
        "adapters_dir": str(home / "adapters"),
        "version": 1,
        "max_steps": 200,
        "learning_rate": 0.003,
        "per_device_batch_size": 16,
        "threads": 1,
    }
    (work / "config.json").write_text(json.dumps(config))
    result = run_stage("sft", work / "config.json", LaunchConfig(threads=1, timeout_s=900))
    assert result.status == "completed", result.reason
    promote(
        home, registry.verify(registry.adapter_path(home / "adapters", 1)), "trained by the test"
    )


def wrong_corrections(path: Path, n: int) -> Path:
    """`n` answered add questions, each thumbed down with a correction that is wrong by 10."""
    with path.open("w") as fh:
        for i, p in enumerate(families()["add"].sample_problems(n, seed=11, split="train")):
            right = int(p.answer)
            record = {
                "id": f"wrong-{i}",
                "messages": [
                    *p.messages(),
                    {"role": "assistant", "content": equation(p.a, p.b, right)},
                ],
                "feedback": {"rating": -1, "correction": equation(p.a, p.b, right + 10)},
                "task": "add",
            }
            fh.write(json.dumps(record) + "\n")
    return path


@pytest.mark.parametrize("base_steps", [None, 200], ids=["shipped-base", "200-step-base"])
def test_a_regressing_candidate_is_rejected_and_changes_nothing(
    tmp_path: Path, base_steps: int | None
) -> None:
    """With the shipped base (it knows every sum when asked 'a+b=') and with a base
    pretrained 200 steps (it knows few)."""
    home = tmp_path / "home"
    assert tutord(home, "init").returncode == 0
    if base_steps is None:
        bootstrap(home / "world" / "arith-base", threads=1)
    else:
        bootstrap(home / "world" / "arith-base", max_steps=base_steps, seed=0, threads=1)
    promote_a_good_production(home)
    assert json.loads(tutord(home, "status", "--json").stdout)["production"] == "v1"
    ingested = tutord(home, "ingest", str(wrong_corrections(tmp_path / "wrong.jsonl", 200)))
    assert ingested.returncode == 0, ingested.stderr

    run = tutord(home, "cycle", "--stage", "sft", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(run.stdout)
    assert (summary["stage"], summary["candidate"], summary["outcome"]) == (
        "sft",
        "v2",
        "rejected",
    ), summary
    assert "regression on tutord_add" in summary["outcome_reason"], summary

    status = json.loads(tutord(home, "status", "--json").stdout)
    assert status["production"] == "v1"
    assert status["cycles"][0]["outcome"] == "rejected"
    engine = make_engine(f"sqlite:///{home / 'tutord.db'}")
    with session_scope(engine) as s:
        cycle = s.execute(select(Cycle)).scalar_one()
        assert cycle.state == "done" and cycle.parent_version == 1
        assert cycle.dataset["fresh"] >= 200  # the wrong corrections were trained on
        gate = s.execute(select(GateDecision)).scalar_one()
        assert not gate.passed
        assert "regression on tutord_add" in gate.reason
        add = gate.tasks["tutord_add"]
        assert add["regression"] and add["delta"] < -0.02 and add["p_value"] < 0.05, add
        scores = {
            r.role: r.results["tasks"]["tutord_add"]["score"]
            for r in s.execute(select(EvalRun).where(EvalRun.cycle_id == cycle.id)).scalars()
        }
        assert scores["production"] > 0.1 and scores["candidate"] < scores["production"], scores
        replayed = s.execute(
            select(func.count())
            .select_from(ReplayItem)
            .where(ReplayItem.source == f"cycle:{cycle.id}")
        ).scalar_one()
        assert replayed == 0
        candidate = s.get(AdapterVersion, 2)
        assert candidate is not None
        assert (candidate.status, candidate.status_reason) == ("rejected", gate.reason)
        moves = adapters.history(s)
        assert [(m.kind, m.to_version) for m in moves] == [("promote", 1)]
        assert adapters.production(s) == 1
    engine.dispose()
    registry.verify(registry.adapter_path(home / "adapters", 2))  # kept, intact
