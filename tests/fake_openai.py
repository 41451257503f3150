"""A fake OpenAI-compatible model server (vLLM's adapter routes included) for tests that
need one answering over real HTTP: FastAPI under uvicorn on 127.0.0.1, in a thread.

It records every adapter load and chat request in order, each with what `observe()` saw at
that moment (e.g. the production pointer), so a test can tell what happened before what.
It answers `n` choices per chat request, serves the base and the adapters it loaded, and
can be told to refuse loads (HTTP 500) or to forget what it loaded (404 under that name).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from tests.server_support import free_port


@dataclass
class Event:
    """One request: `kind` 'load' or 'chat', the adapter or model name, and what the
    observer returned when it arrived."""

    kind: str
    name: str
    seen: Any


@dataclass
class FakeOpenAI:
    base: str
    observe: Callable[[], Any] = lambda: None
    refuse_loads: bool = False
    answer_adapters: bool = True
    served: set[str] = field(default_factory=set)
    events: list[Event] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()
        app.post("/v1/load_lora_adapter")(self.load)
        app.post("/v1/chat/completions")(self.chat)
        app.get("/v1/models")(self.models)
        return app

    def names(self, kind: str) -> list[str]:
        return [e.name for e in self.events if e.kind == kind]

    # Plain (not async) handlers: FastAPI runs them in a thread, so `observe` may block.
    def load(self, body: dict[str, Any]) -> Response:
        name = body["lora_name"]
        self.events.append(Event("load", name, self.observe()))
        if self.refuse_loads:
            return JSONResponse({"error": {"message": "out of adapter slots"}}, 500)
        self.served.add(name)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    def chat(self, body: dict[str, Any]) -> Response:
        model = body["model"]
        self.events.append(Event("chat", model, self.observe()))
        known = model == self.base or (model in self.served and self.answer_adapters)
        if not known:
            error = {"message": f"The model `{model}` does not exist.", "code": 404}
            return JSONResponse({"error": error}, status_code=404)
        n = int(body.get("n", 1))
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": f"answer {i}"},
                "finish_reason": "stop",
            }
            for i in range(n)
        ]
        return JSONResponse({"id": "c1", "object": "chat.completion", "choices": choices})

    def models(self) -> dict[str, Any]:
        ids = [self.base, *sorted(self.served)]
        return {"object": "list", "data": [{"id": m, "object": "model"} for m in ids]}


@contextlib.contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """An ASGI `app` under uvicorn on a free port of 127.0.0.1, in a thread; yields its root
    URL and stops the server on exit."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def serving(fake: FakeOpenAI) -> contextlib.AbstractContextManager[str]:
    """`fake` under uvicorn on a free port of 127.0.0.1; yields its root URL."""
    return serve_app(fake.app())
