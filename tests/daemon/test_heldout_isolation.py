"""Held-out isolation end to end: held-out interaction logs are ingested beside training
logs, synthesis and a whole cycle run, and no held-out prompt appears in any file under
the cycle folders, in the synthesized data or in the replay tables."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from daemon.models import Cycle
from replay.db import make_engine, session_scope
from replay.models import PreferencePair, ReplayItem, Sample, SFTExample, SynthRun
from tests.cli_support import run_tutord
from tests.cycle_support import FAST
from world.logs import generate_logs, write_jsonl
from world.pretrain import bootstrap

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("heldout")]

ENV = {**FAST, "TUTORD_SYNTH__PROMPTS": "24", "TUTORD_SYNTH__INTERACTION_SHARE": "1.0"}


def tutord(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_tutord(home, *args, env=ENV)


def test_heldout_logs_never_reach_training_data(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert tutord(home, "init").returncode == 0
    bootstrap(home / "world" / "arith-base", max_steps=3, seed=0, threads=1)
    heldout = list(generate_logs("add", 80, seed=1, split="heldout"))
    train = list(generate_logs("add", 80, seed=2, split="train"))
    logs = tmp_path / "logs.jsonl"
    with logs.open("w") as fh:
        write_jsonl(heldout + train, fh)
    assert tutord(home, "ingest", str(logs)).returncode == 0
    prompts = {r["messages"][0]["content"] for r in heldout}
    assert len(prompts) > 20

    synth = tutord(home, "synth", "--json")
    assert synth.returncode == 0, synth.stderr
    assert json.loads(synth.stdout)["heldout_excluded"] >= len(heldout)
    cycle = tutord(home, "cycle", "--stage", "sft")
    assert cycle.returncode == 0, cycle.stdout + cycle.stderr

    texts = [p.read_text(errors="replace") for p in (home / "cycles").rglob("*") if p.is_file()]
    assert texts, "the cycle wrote no files"
    engine = make_engine(f"sqlite:///{home / 'tutord.db'}")
    with session_scope(engine) as s:
        (done,) = s.execute(select(Cycle)).scalars().all()
        assert done.state == "done" and done.dataset["fresh"] > 0
        for column in (
            Sample.prompt,
            SFTExample.prompt,
            PreferencePair.prompt,
            ReplayItem.payload,
        ):
            texts += [json.dumps(v) for v in s.execute(select(column)).scalars()]
        runs = s.execute(select(SynthRun.counts)).scalars().all()
        replayed = s.execute(select(ReplayItem.id)).scalars().all()
    engine.dispose()
    assert all(r["heldout_excluded"] >= len(heldout) for r in runs)
    assert bool(replayed) == (done.outcome == "promoted")
    leaked = {p for p in prompts if any(json.dumps(p)[1:-1] in t for t in texts)}
    assert not leaked, sorted(leaked)[:5]
