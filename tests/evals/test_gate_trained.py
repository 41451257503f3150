"""The gate on real trained adapters: a candidate trained on wrong answers is rejected with
the reason naming the task; a better one passes; production's evaluation is reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.cache import EvalCache
from evals.gate import GateRules, gate
from evals.run import evaluate
from evals.tasks import write_suite
from stages.generate.api import AdapterRef
from stages.launch import LaunchConfig, run_stage
from tests.task_support import arith
from world.pretrain import bootstrap
from world.tasks import families

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("gate-trained")]


def sft(
    base: Path, rows: list[dict[str, object]], out: Path, parent: str | None, steps: int
) -> Path:
    out.mkdir(parents=True)
    data = out / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "base_model": str(base),
        "parent_adapter": parent,
        "train_file": str(data),
        "output_dir": str(out / "run"),
        "max_steps": steps,
        "learning_rate": 0.003,
        "per_device_batch_size": 16,
        "threads": 1,
    }
    (out / "config.json").write_text(json.dumps(config))
    result = run_stage("sft", out / "config.json", LaunchConfig(threads=1, timeout_s=600))
    assert result.status == "completed", result.reason
    return Path(result.adapter_path)  # type: ignore[arg-type]


def rows(answer_offset: int) -> list[dict[str, object]]:
    out = []
    for p in families()["add"].sample_problems(400, seed=3, split="train"):
        value = int(p.answer) + answer_offset
        out.append(
            {"messages": [*p.messages(), {"role": "assistant", "content": f"{p.a}+{p.b}={value}"}]}
        )
    return out


def test_worse_rejected_better_promoted_cache_reused(tmp_path: Path) -> None:
    base = tmp_path / "base"
    bootstrap(base, max_steps=300, seed=0, threads=1)
    good = sft(base, rows(0), tmp_path / "good", None, 250)
    bad = sft(base, rows(3), tmp_path / "bad", str(good), 150)
    suite = write_suite(tmp_path / "suite", arith("add"), 100, seed=0)
    cache = EvalCache(tmp_path / "cache")
    base_run = evaluate(base, None, suite, cache=cache)
    good_run = evaluate(base, AdapterRef("good", good), suite, cache=cache)
    bad_run = evaluate(base, AdapterRef("bad", bad), suite, cache=cache)
    rules = GateRules(tolerance=0.02, alpha=0.05)

    better = gate(base_run, good_run, rules)
    assert better.passed, better.reason
    assert good_run.score("tutord_add") > base_run.score("tutord_add") + 0.1

    worse = gate(good_run, bad_run, rules)
    assert not worse.passed
    assert "regression on tutord_add" in worse.reason
    assert worse.task("tutord_add").regression

    again = evaluate(base, AdapterRef("good", good), suite, cache=cache)
    assert (
        again.from_cache and again.tasks["tutord_add"].items == good_run.tasks["tutord_add"].items
    )
