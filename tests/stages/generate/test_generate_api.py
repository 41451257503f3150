"""The generation interface without a model server: records, the factory, the shared chat
helpers, and the HTTP client's errors and retries (against a scripted local stub)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from stages.generate import AdapterRef, GenerationBackend, SamplingParams, make_backend
from stages.generate.chat import decode_completion, encode_prompts, stop_token_ids
from stages.generate.openai_http import BackendError, OpenAIBackend
from world.tokenizer import build_tokenizer


def test_sampling_params_validation() -> None:
    assert SamplingParams().greedy
    assert SamplingParams(temperature=0.7, n=4, seed=1).n == 4
    with pytest.raises(ValueError, match="temperature > 0"):
        SamplingParams(n=2)
    for bad in ({"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"max_new_tokens": 0}, {"n": 0}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
    with pytest.raises(AttributeError):
        SamplingParams().n = 3  # type: ignore[misc]


def test_adapter_ref() -> None:
    ref = AdapterRef("v1", "some/folder")  # type: ignore[arg-type]
    assert ref.path == Path("some/folder")
    assert ref == AdapterRef("v1", Path("some/folder"))
    with pytest.raises(ValueError):
        AdapterRef("", Path("x"))


def test_factory(tiny_model_dir: Path) -> None:
    backend = make_backend("transformers", str(tiny_model_dir), device="cpu")
    assert isinstance(backend, GenerationBackend)
    backend.close()
    assert type(make_backend(None, str(tiny_model_dir))).__name__ == "TransformersBackend"
    client = make_backend("openai", "served-name", base_url="http://127.0.0.1:9/v1")
    assert isinstance(client, OpenAIBackend)
    assert client.base_url == "http://127.0.0.1:9"
    with pytest.raises(ValueError, match="unknown backend kind"):
        make_backend("tgi", "x")  # type: ignore[arg-type]


def test_chat_helpers() -> None:
    tokenizer = build_tokenizer()
    chat = [{"role": "user", "content": "1+2="}]
    [ids] = encode_prompts(tokenizer, [chat])
    assert tokenizer.decode(ids) == "<|bos|><|user|>1+2=<|end|><|assistant|>"
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    assert stop_token_ids(tokenizer) == [end]
    text_ids = tokenizer("3 x", add_special_tokens=False)["input_ids"]
    assert decode_completion(tokenizer, [*text_ids, end, *text_ids], [end]) == "3 x"
    assert decode_completion(tokenizer, [*text_ids, end, *text_ids]) == "3 x3 x"


class Stub:
    """A local HTTP server answering from a script of (status, body) pairs, recording requests."""

    def __init__(self, script: list[tuple[int, object]]) -> None:
        self.script = list(script)
        self.requests: list[tuple[str, str, object]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                stub.requests.append((self.command, self.path, body))
                status, payload = stub.script.pop(0) if stub.script else (500, "script ended")
                raw = payload if isinstance(payload, str) else json.dumps(payload)
                self.send_response(status)
                self.send_header("Content-Length", str(len(raw.encode())))
                self.end_headers()
                self.wfile.write(raw.encode())

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_factory() -> Iterator:
    stubs: list[Stub] = []

    def make(script: list[tuple[int, object]]) -> Stub:
        stubs.append(Stub(script))
        return stubs[-1]

    yield make
    for stub in stubs:
        stub.close()


def completion(*texts: str) -> dict:
    return {
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": t}}
            for i, t in enumerate(texts)
        ]
    }


CHAT = [{"role": "user", "content": "hi"}]


def test_http_generate_request_shape(stub_factory) -> None:
    stub = stub_factory(
        [(200, completion("b", "a")), (200, "Success: loaded"), (200, completion("c"))]
    )
    client = OpenAIBackend("base-model", base_url=stub.url, api_key="k", concurrency=1)
    params = SamplingParams(temperature=0.5, top_p=0.9, n=2, max_new_tokens=7, seed=3)
    assert client.generate([CHAT], params) == [["b", "a"]]
    method, path, body = stub.requests[0]
    assert (method, path) == ("POST", "/v1/chat/completions")
    assert body == {
        "model": "base-model",
        "messages": CHAT,
        "n": 2,
        "temperature": 0.5,
        "top_p": 0.9,
        "max_tokens": 7,
        "seed": 3,
    }
    adapter = AdapterRef("v7", Path("/adapters/v7"))
    assert client.generate([CHAT], SamplingParams(), adapter) == [["c"]]
    assert stub.requests[1][1:] == (
        "/v1/load_lora_adapter",
        {"lora_name": "v7", "lora_path": "/adapters/v7"},
    )
    assert stub.requests[2][2]["model"] == "v7"
    with pytest.raises(ValueError, match="its own name"):
        client.load_adapter("v7", "/adapters/other")


def test_http_error_names_url_and_status(stub_factory) -> None:
    stub = stub_factory([(400, {"error": {"message": "bad things"}})])
    client = OpenAIBackend("m", base_url=stub.url)
    with pytest.raises(BackendError) as excinfo:
        client.generate([CHAT], SamplingParams())
    assert excinfo.value.status == 400
    assert f"{stub.url}/v1/chat/completions" in str(excinfo.value)
    assert "HTTP 400" in str(excinfo.value) and "bad things" in str(excinfo.value)
    assert len(stub.requests) == 1  # a client error is not retried


def test_http_retries_unavailable_then_succeeds(stub_factory) -> None:
    stub = stub_factory([(503, "busy"), (502, "proxy"), (200, completion("ok"))])
    client = OpenAIBackend("m", base_url=stub.url, retries=3, backoff=0.01)
    waits: list[float] = []
    client._sleep = waits.append
    assert client.generate([CHAT], SamplingParams()) == [["ok"]]
    assert waits == [0.01, 0.02]


def test_http_already_loaded_adapter_counts_as_loaded(stub_factory) -> None:
    message = {"error": {"message": "The lora adapter 'v1' has already been loaded."}}
    stub = stub_factory([(400, message)])
    client = OpenAIBackend("m", base_url=stub.url)
    client.load_adapter("v1", "/a/v1")
    assert client.adapters == {"v1": Path("/a/v1")}


def test_http_connection_refused_retries_then_fails() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # closed again: nothing listens there now
    client = OpenAIBackend("m", base_url=f"http://127.0.0.1:{port}", retries=2, backoff=0.5)
    waits: list[float] = []
    client._sleep = waits.append
    with pytest.raises(BackendError) as excinfo:
        client.generate([CHAT], SamplingParams())
    assert waits == [0.5, 1.0]
    assert excinfo.value.status is None
    assert f"127.0.0.1:{port}/v1/chat/completions" in str(excinfo.value)
    assert "3 attempts" in str(excinfo.value)
