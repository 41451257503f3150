"""The light commands (`ingest`, `status`, `adapters`, `rollback`, `db`, `init`, `model list`)
run without loading torch, transformers, vLLM or the world: each runs in-process in a fresh
interpreter that then reports which heavy modules it holds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers", "vllm", "lm_eval", "trl", "peft", "world.pretrain")

SCRIPT = """
import json, sys
from typer.testing import CliRunner
from daemon.cli import app
codes = []
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(app, args)
    codes.append(result.exit_code)
loaded = [m for m in json.loads(sys.argv[2]) if m in sys.modules]
print(json.dumps({"codes": codes, "loaded": loaded}))
"""


def run(commands: list[list[str]]) -> dict[str, list]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(commands), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_cli_loads_no_heavy_library() -> None:
    assert run([]) == {"codes": [], "loaded": []}


@pytest.mark.slow
def test_light_commands_load_no_heavy_library(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    logs = tmp_path / "logs.jsonl"
    logs.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "1+1?"},
                    {"role": "assistant", "content": "2"},
                ],
                "task": "add",
            }
        )
        + "\n",
        encoding="utf-8",
    )
    commands = [
        ["--home", home, "init"],
        ["--home", home, "ingest", str(logs)],
        ["--home", home, "status"],
        ["--home", home, "adapters", "list"],
        ["--home", home, "rollback"],
        ["--home", home, "db", "current"],
        ["--home", home, "model", "list"],
    ]
    result = run(commands)
    # rollback has nothing to roll back to (exit 1, refused): it still ran, without torch
    assert result["codes"] == [0, 0, 0, 0, 1, 0, 0]
    assert result["loaded"] == []
