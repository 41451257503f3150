"""Helpers for tests that start a server process: a free port, stopping its process group,
and a vLLM OpenAI-compatible server on CPU."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (it has worker children), then SIGKILL it."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        except ProcessLookupError:
            pass
    with contextlib.suppress(ProcessLookupError):  # children that outlived the leader
        os.killpg(process.pid, signal.SIGKILL)


START_TIMEOUT_S = 240.0


@contextlib.contextmanager
def vllm_server(model: Path, log_path: Path, max_lora_rank: int) -> Iterator[str]:
    """A vLLM OpenAI-compatible server of `model` on CPU with runtime LoRA loading; yields
    its root URL once it answers, fails the test with the log's tail if it never does, and
    stops the whole process group afterwards."""
    import pytest

    from stages.generate.openai_http import BackendError, OpenAIBackend

    port = free_port()
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model),
        "--dtype", "float32", "--enforce-eager", "--gpu-memory-utilization", "0.1",
        "--enable-lora", "--max-lora-rank", str(max_lora_rank),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        client = OpenAIBackend(str(model), base_url=url, timeout=5)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                pytest.fail(f"vLLM server exited with {process.returncode}:\n{tail}")
            try:
                client.wait_ready(timeout=2, interval=0.5)
                break
            except BackendError:
                if time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    pytest.fail(f"vLLM server not ready after {START_TIMEOUT_S} s:\n{tail}")
        yield url
    finally:
        stop_process_group(process)
