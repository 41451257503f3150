"""`bench/demo_seeds.py`: the real-model demo's figures over seeds, as median and range per
cycle, from the demos' `reports/demo.json` (here written by the test, not by a demo)."""

from __future__ import annotations

import doctest
import importlib.util
import json
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "demo_seeds.py"


@pytest.fixture(scope="module")
def seeds() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo_seeds", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cycle(sum2: tuple[float, float], retention: float, agreement: float | None, outcome: str):
    return {
        "production_before": {"sum2": sum2[0], "retention": 1.0},
        "candidate_scores": {"sum2": sum2[1], "retention": retention},
        "judge_agreement": agreement,
        "judge_balanced": agreement,
        "seconds": 600.0,
        "outcome": outcome,
    }


RUNS: list[dict[str, Any]] = [
    {"seconds": 1200.0, "cycles": [cycle((0.0, 0.61), 0.95, None, "promoted")]},
    {"seconds": 1500.0, "cycles": [cycle((0.0, 0.57), 0.93, 0.5, "rejected")]},
    {
        "seconds": 1800.0,
        "cycles": [
            cycle((0.0, 0.69), 0.96, 0.75, "promoted"),
            cycle((0.69, 0.80), 0.90, 0.6, "rejected"),
        ],
    },
]


def test_each_cycle_gets_the_median_and_range_of_every_figure(seeds: ModuleType) -> None:
    first, second = seeds.summary_rows(RUNS)
    assert first["sum2"] == "0.00 (0.00-0.00, n=3) -> 0.61 (0.57-0.69, n=3)"
    assert first["retention"] == "1.00 (1.00-1.00, n=3) -> 0.95 (0.93-0.96, n=3)"
    assert first["judge agreement"] == "0.62 (0.50-0.75, n=2)"  # the run without one left out
    assert first["decisions"] == "2 promoted, 1 rejected"
    assert second["sum2"] == "0.69 (0.69-0.69, n=1) -> 0.80 (0.80-0.80, n=1)"
    assert second["decisions"] == "1 rejected"


def test_the_helpers_examples_hold(seeds: ModuleType) -> None:
    assert doctest.testmod(seeds).failed == 0


def test_a_finished_demo_is_read_and_a_failed_one_reported(
    seeds: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = tmp_path / "seed-0" / "reports"
    done.mkdir(parents=True)
    (done / "demo.json").write_text(json.dumps(RUNS[0]))
    (tmp_path / "seed-1").mkdir()  # an unfinished run's home
    (tmp_path / "seed-1" / "leftover").write_text("x")
    commands: list[list[str]] = []

    def failing(command: list[str], **_: Any) -> subprocess.CompletedProcess:
        commands.append(command)
        assert not (tmp_path / "seed-1").exists()  # cleared for a fresh demo
        return subprocess.CompletedProcess(command, 1)

    monkeypatch.setattr(seeds.subprocess, "run", failing)
    assert seeds.run_seed(tmp_path, "m", 0, rehearsal=True) == RUNS[0]
    assert commands == []
    assert seeds.run_seed(tmp_path, "m", 1, rehearsal=False) is None
    [command] = commands
    assert command[1:] == [
        "--home", str(tmp_path / "seed-1"), "demo", "--model", "m", "--seed", "1",
        "--no-rehearsal",
    ]  # fmt: skip
    assert seeds.run_seeds(tmp_path, "m", [0, 1], rehearsal=False) is False
