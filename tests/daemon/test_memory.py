"""The daemon's writes into the replay buffer respect the configured capacity."""

from __future__ import annotations

from sqlalchemy import Engine

from daemon.memory import remember
from daemon.settings import Settings
from replay.buffer import NewReplayItem, counts


def test_remember_evicts_to_capacity_and_keeps_every_task(db_engine: Engine) -> None:
    settings = Settings.model_validate({"replay": {"capacity": 50}})
    old = [NewReplayItem("sft", "add", {"i": i}) for i in range(10)]
    new = [NewReplayItem("sft", "mul", {"i": i}) for i in range(80)]
    pairs = [NewReplayItem("pair", "add", {"i": i}) for i in range(5)]
    assert remember(db_engine, settings, old) == (10, 0)
    added, evicted = remember(db_engine, settings, new + pairs)
    assert (added, evicted) == (85, 40)
    assert counts(db_engine) == {"sft": {"add": 10, "mul": 40}, "pair": {"add": 5}}
