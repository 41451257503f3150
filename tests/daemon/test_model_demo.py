"""The real-model demo's pieces: its tasks' prompts, its traffic, its `tutord.toml`."""

from __future__ import annotations

from pathlib import Path

from daemon.home import Home
from daemon.model_demo import HELDOUT_PERCENT, MIX, task_rows, traffic, write_config
from daemon.settings import load_settings
from daemon.tasks import in_heldout_bucket


def test_task_rows_are_distinct_two_digit_questions_with_exact_references() -> None:
    rows = task_rows("diff2")
    assert len(rows) == len({r["prompt"] for r in rows}) == 800
    for row in rows:
        a, b = (int(x) for x in row["prompt"].removeprefix("What is ").rstrip("?").split(" - "))
        assert 10 <= b <= a <= 99 and row["reference"] == str(a - b)
    assert task_rows("sum2") == task_rows("sum2") != task_rows("sum2", seed=1)


def test_each_task_holds_out_enough_items_for_the_gate_to_see_the_tolerance() -> None:
    for name in ("sum2", "diff2"):
        held = [r for r in task_rows(name) if in_heldout_bucket(r["prompt"], HELDOUT_PERCENT)]
        # ~300 items: a drop of 0.05 is detectable (84, at 10%, could not tell it)
        assert 280 <= len(held) <= 360


def test_traffic_is_mostly_bare_with_some_ratings_and_right_corrections() -> None:
    logs = traffic("sum2", 2000, seed=3)
    rated = [r for r in logs if "rating" in r.get("feedback", {})]
    corrected = [r for r in logs if "correction" in r.get("feedback", {})]
    bare = len(logs) - len(rated) - len(corrected)
    assert abs(bare / len(logs) - MIX["bare"]) < 0.06
    assert abs(len(rated) / len(logs) - MIX["rated"]) < 0.05
    assert 0.04 < len(corrected) / len(logs) <= MIX["corrected"]
    for r in corrected:
        a, b = (int(x) for x in r["messages"][0]["content"][8:-1].split(" + "))
        assert r["feedback"]["correction"] == str(a + b)
        assert not r["messages"][1]["content"].endswith(f" {a + b}")
    assert all(r["task"] == "sum2" for r in logs)


def test_the_config_declares_the_tasks_so_far_and_loads(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.create()
    write_config(home, "smol", ["sum2"], rehearsal=True)
    settings = load_settings(tmp_path)
    assert settings.model.base == "smol"
    assert set(settings.tasks) == {"retention", "sum2"}
    assert settings.tasks["retention"].grader == "contains"
    assert settings.tasks["retention"].heldout_percent == 100  # gated, never trained on
    assert settings.tasks["sum2"].heldout_percent == HELDOUT_PERCENT
    assert settings.replay.ratio == 0.5 and settings.replay.rehearsal_prompts == "shipped"
    assert settings.train.sft.protect_tasks == ("rehearsal",)
    write_config(home, "smol", ["sum2", "diff2"], rehearsal=False)
    settings = load_settings(tmp_path)
    assert set(settings.tasks) == {"retention", "sum2", "diff2"}
    assert settings.tasks["retention"].heldout_percent == 100
    assert settings.replay.ratio == 0.0 and settings.replay.rehearsal_prompts == ""
    assert settings.train.sft.protect_tasks == ()  # no rehearsal rows to protect
