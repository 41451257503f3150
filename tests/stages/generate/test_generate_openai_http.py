"""The OpenAI-compatible HTTP backend against a real vLLM server started here (127.0.0.1 only,
one per module, always killed): chat completions, runtime LoRA load / use / unload, and the
same greedy text as the transformers backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stages.generate.api import AdapterRef, SamplingParams
from stages.generate.hf import TransformersBackend
from stages.generate.openai_http import BackendError, OpenAIBackend
from tests.server_support import vllm_server

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

GREEDY = SamplingParams(max_new_tokens=24)


@pytest.fixture(scope="module")
def server(
    require_vllm: None, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The root URL of a vLLM OpenAI-compatible server serving the tiny model with LoRA."""
    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    with vllm_server(tiny_model_dir, log_path, 8) as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str, tiny_model_dir: Path) -> OpenAIBackend:
    return OpenAIBackend(str(tiny_model_dir), base_url=server, timeout=60)


@pytest.fixture(scope="module")
def hf_backend(tiny_model_dir: Path) -> TransformersBackend:
    return TransformersBackend(tiny_model_dir, device="cpu")


def test_chat_completion(client: OpenAIBackend, prompts: list, hf_backend: TransformersBackend):
    assert client.served_models() == [client.model]
    assert client.generate(prompts, GREEDY) == hf_backend.generate(prompts, GREEDY)
    sampled = client.generate(prompts[:2], SamplingParams(temperature=1.0, n=3, seed=5))
    assert [len(group) for group in sampled] == [3, 3]
    again = client.generate(prompts[:2], SamplingParams(temperature=1.0, n=3, seed=5))
    assert again == sampled


def test_load_use_unload_adapter(
    client: OpenAIBackend,
    prompts: list,
    hf_backend: TransformersBackend,
    tiny_adapter: AdapterRef,
    other_adapter: AdapterRef,
) -> None:
    client.load_adapter(tiny_adapter.name, tiny_adapter.path)
    client.load_adapter(tiny_adapter.name, tiny_adapter.path)  # idempotent
    assert tiny_adapter.name in client.served_models()
    expected = hf_backend.generate(prompts, GREEDY, tiny_adapter)
    assert expected != hf_backend.generate(prompts, GREEDY)
    assert client.generate(prompts, GREEDY, tiny_adapter) == expected
    # a second version under its own name, loaded on first use
    assert client.generate(prompts, GREEDY, other_adapter) == hf_backend.generate(
        prompts, GREEDY, other_adapter
    )
    client.unload_adapter(tiny_adapter.name)
    assert tiny_adapter.name not in client.served_models()
    assert other_adapter.name in client.served_models()
    with pytest.raises(BackendError) as excinfo:
        client._request(
            "POST",
            "/v1/chat/completions",
            client._chat_body(prompts[0], GREEDY, tiny_adapter.name),
        )
    assert excinfo.value.status == 404
    assert "/v1/chat/completions" in str(excinfo.value)
    with pytest.raises(BackendError, match="404"):
        client.unload_adapter(tiny_adapter.name)
