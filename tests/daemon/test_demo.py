"""A shortened demo: the same code path as `tutord demo` with smaller numbers. The
curriculum chooses every stage (nothing is named by the demo), the table, the drift report
and demo.json are written, and the no-replay ablation runs the same plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon import demo

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("demo")]

SMALL = {
    "model": {"threads": 1},
    "synth": {"prompts": 8, "n": 2, "max_new_tokens": 8},
    "judge": {"max_new_tokens": 20},
    "curriculum": {"min_sft_examples": 4, "min_pairs": 4, "min_rl_prompts": 2},
    "gate": {"max_items": 40},
    "train": {
        "sft": {"max_steps": 3, "per_device_batch_size": 4},
        "dpo": {"max_steps": 2, "per_device_batch_size": 4},
        "rl": {"max_steps": 2, "per_device_batch_size": 4, "num_generations": 2},
    },
}


def test_a_short_demo_lets_the_curriculum_choose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "DEMO_CONFIG", SMALL)
    monkeypatch.setattr(demo, "LOGS_PER_FAMILY", 40)
    monkeypatch.setattr(demo, "TRAFFIC_PER_CYCLE", 10)
    said: list[str] = []
    result = demo.run_demo(
        tmp_path / "home", ablation=True, plan=("add", "sub", None), say=said.append
    )
    cycles = result["cycles"]
    assert len(cycles) == 3 and len(result["ablation_cycles"]) == 3
    for cycle in cycles:
        # every stage is the curriculum's: its reason names the criteria it read
        assert "asked for" not in cycle["curriculum"]
        assert "(min_sft_examples)" in cycle["curriculum"], cycle["curriculum"]
        assert cycle["stage"] in ("sft", "dpo", "rl", None)
    assert cycles[0]["stage"] == "sft"  # an untrained policy with fresh SFT data
    assert any(line.startswith("  curriculum: ") for line in said)
    assert "shipped in the package" in said[0]  # the base model is installed, not trained
    assert "sub" in cycles[1]["production_before"] or "sub" in cycles[1]["candidate_scores"]
    saved = json.loads((tmp_path / "home" / "reports" / "demo.json").read_text())
    assert saved["cycles"] == json.loads(json.dumps(cycles))
    assert (tmp_path / "home" / "reports" / "report.html").is_file()
    assert (tmp_path / "home-no-replay").is_dir()
