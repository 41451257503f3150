"""SIGTERM to `tutord run` in the middle of a training step: the stage checkpoints and stops,
the service exits 0 within its stop timeout, and the next start finishes that cycle."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from daemon.models import Cycle
from replay.db import make_engine, session_scope
from tests.cli_support import run_tutord, start_run
from tests.cycle_support import FAST
from world.logs import generate_logs, write_jsonl
from world.pretrain import bootstrap

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("graceful")]

ENV = {
    **FAST,
    "TUTORD_CURRICULUM__MIN_SFT_EXAMPLES": "3",
    "TUTORD_TRAIN__SFT__MAX_STEPS": "400",
    "TUTORD_TRAIN__SFT__SAVE_STEPS": "1000",
    "TUTORD_SERVICE__CYCLE_MIN_FRESH": "1",
    "TUTORD_SERVICE__CYCLE_CHECK_INTERVAL_S": "1",
    "TUTORD_SERVICE__STOP_TIMEOUT_S": "30",
}


def cycles(home: Path) -> list[tuple[int, str]]:
    engine = make_engine(f"sqlite:///{home / 'tutord.db'}")
    with session_scope(engine) as s:
        rows = [(c.id, c.state) for c in s.execute(select(Cycle).order_by(Cycle.id)).scalars()]
    engine.dispose()
    return rows


def test_sigterm_mid_training_exits_0_and_the_next_start_finishes_the_cycle(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    assert run_tutord(home, "init").returncode == 0
    bootstrap(home / "world" / "arith-base", max_steps=3, seed=0, threads=1)
    logs = tmp_path / "logs.jsonl"
    with logs.open("w") as fh:
        write_jsonl(generate_logs("add", 30, seed=1), fh)
    assert run_tutord(home, "ingest", str(logs)).returncode == 0

    proc = start_run(home, ENV)
    train_log = home / "cycles" / "00001" / "train" / "logs.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (
        train_log.exists() and len(train_log.read_text().splitlines()) >= 1
    ):
        assert proc.poll() is None, proc.output()
        time.sleep(0.2)
    assert train_log.exists(), f"the stage never logged a step; {proc.output()}"
    asked = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, proc.output()
    assert time.monotonic() - asked < 45
    assert cycles(home) == [(1, "train")]  # resumable, nothing half-promoted
    checkpoints = home / "cycles" / "00001" / "train" / "checkpoints"
    assert any(checkpoints.glob("checkpoint-*")), "no checkpoint saved on SIGTERM"
    assert not (home / "cycles" / "00001" / "train" / "result.json").exists()

    again = start_run(home, ENV)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and cycles(home)[0][1] not in ("done", "failed"):
            assert again.poll() is None, again.output()
            time.sleep(0.5)
        assert cycles(home)[0][1] == "done", again.output()
        result = json.loads((home / "cycles" / "00001" / "train" / "result.json").read_text())
        assert result["resumed_from"] and result["steps"] == 400
    finally:
        again.send_signal(signal.SIGTERM)
        assert again.wait(60) == 0, again.output()
