"""A task declared in `tutord.toml` only ("successor": what comes after N?) goes through
ingest, synthesis, a cycle, the gate and the report on the world's model, with no code."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from daemon.models import Cycle, GateDecision
from replay.db import make_engine, session_scope
from replay.models import Sample, SFTExample
from tests.cli_support import run_tutord
from world.pretrain import bootstrap

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("user-task")]

CONFIG = """\
task_packs = []

[tasks.successor]
grader = "numeric"
prompts = "successor.jsonl"
heldout_percent = 25
max_new_tokens = 6

[synth]
prompts = 8
n = 2
max_new_tokens = 6

[judge]
max_new_tokens = 6

[curriculum]
min_sft_examples = 1

[train.sft]
max_steps = 2
per_device_batch_size = 4

[gate]
max_items = 10
"""


def tutord(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_tutord(home, *args)


def test_a_task_declared_in_the_config_runs_the_whole_loop(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert tutord(home, "init").returncode == 0
    (home / "tutord.toml").write_text(CONFIG, encoding="utf-8")
    rows = [{"prompt": f"What comes after {i}?", "reference": str(i + 1)} for i in range(60)]
    (home / "successor.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
    )
    logs = tmp_path / "logs.jsonl"
    records = [
        {
            "messages": [
                {"role": "user", "content": f"What comes after {i}?"},
                {"role": "assistant", "content": str(i + 1)},
            ],
            "reference": str(i + 1),
            "task": "successor",
            "feedback": {"rating": 1},
        }
        for i in range(60)
    ]
    logs.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    bootstrap(home / "world" / "arith-base", max_steps=3, seed=0, threads=1)
    ingested = tutord(home, "ingest", str(logs))
    assert ingested.returncode == 0, ingested.stderr

    cycle = tutord(home, "cycle", "--stage", "sft")
    assert cycle.returncode == 0, cycle.stdout + cycle.stderr
    assert "tutord_successor" in cycle.stdout

    engine = make_engine(f"sqlite:///{home / 'tutord.db'}")
    with session_scope(engine) as s:
        (done,) = s.execute(select(Cycle)).scalars().all()
        assert done.state == "done" and done.stage == "sft"
        gate = s.execute(select(GateDecision)).scalar_one()
        assert list(gate.tasks) == ["tutord_successor"]
        samples = s.execute(select(Sample)).scalars().all()
        assert samples and {x.task for x in samples} == {"successor"}
        trained = [e.prompt[-1]["content"] for e in s.execute(select(SFTExample)).scalars()]
    engine.dispose()
    suite = home / "evals" / "suites" / "successor"
    heldout = {
        json.loads(line)["prompt"]
        for line in (suite / "tutord_successor.jsonl").read_text().splitlines()
    }
    assert 5 <= len(heldout) <= 10
    assert not heldout & set(trained)  # held-out prompts never became training data
    dataset = (home / "cycles").glob("*/data/train.jsonl")
    assert not any(prompt in path.read_text() for path in dataset for prompt in heldout)

    report = tutord(home, "report", "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    assert "tutord_successor" in (tmp_path / "report" / "report.json").read_text()
