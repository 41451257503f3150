"""A generation backend that is a client of an OpenAI-compatible server (vLLM's, or another).

The server already serves the base model; this client asks `/v1/chat/completions` for `n`
completions per prompt (one request per prompt) and manages LoRA adapters at runtime through
vLLM's `/v1/load_lora_adapter` and `/v1/unload_lora_adapter` (the server needs
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` and `--enable-lora`). Every adapter version is served
under its own name. Requests time out; connection failures and 502/503/504 answers are retried
with exponential backoff; other failures raise `BackendError` naming the URL and the status.
Standard library only (urllib). It does not start or stop the server, and the server applies
its own chat template and stop tokens.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from stages.generate.api import AdapterRef, Chat, SamplingParams

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({502, 503, 504})


class BackendError(RuntimeError):
    """A request to the server failed; `url` and `status` (None: no HTTP answer) say which."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


def _decode(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


class OpenAIBackend:
    """A `GenerationBackend` over HTTP.

    base: the model name the server serves the base under (vLLM: its `--model` value, or
        `--served-model-name`).
    base_url: the server's root, e.g. "http://127.0.0.1:8000" (a trailing "/v1" is accepted).
    api_key: sent as a bearer token when given.
    timeout: seconds per request. retries: extra attempts after a connection error or a
        502/503/504. backoff: the first wait between attempts in seconds, doubled each time.
    extra_body: extra fields merged into every chat request (e.g. vLLM's "top_k").
    concurrency: chat requests in flight at once (the server batches them).
    """

    def __init__(
        self,
        base: str | Path,
        *,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 3,
        backoff: float = 0.5,
        extra_body: dict[str, Any] | None = None,
        concurrency: int = 8,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        root = base_url.rstrip("/")
        self.base_url = root.removesuffix("/v1")
        self.model = str(base)
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.extra_body = dict(extra_body or {})
        self.concurrency = concurrency
        self._adapters: dict[str, Path] = {}
        self._sleep: Callable[[float], None] = time.sleep

    # -- HTTP -------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One request with retries: the decoded JSON answer, the text of a non-JSON answer
        (vLLM's adapter endpoints answer in plain text), or None for an empty body."""
        url = f"{self.base_url}{path}"
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        attempt = 0
        while True:
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
                return _decode(raw)
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")[:500]
                if exc.code not in RETRY_STATUSES or attempt >= self.retries:
                    raise BackendError(
                        f"{method} {url} failed with HTTP {exc.code}: {detail}",
                        url=url,
                        status=exc.code,
                    ) from exc
                reason = f"HTTP {exc.code}"
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                if attempt >= self.retries:
                    raise BackendError(
                        f"{method} {url} failed after {attempt + 1} attempts: "
                        f"{getattr(exc, 'reason', exc)}",
                        url=url,
                    ) from exc
                reason = str(getattr(exc, "reason", exc))
            delay = self.backoff * 2**attempt
            log.warning("%s %s: %s; retrying in %.1f s", method, url, reason, delay)
            self._sleep(delay)
            attempt += 1

    def wait_ready(self, timeout: float = 120.0, interval: float = 1.0) -> None:
        """Block until `GET /v1/models` answers, or raise `BackendError` after `timeout` s."""
        url = f"{self.base_url}/v1/models"
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=min(self.timeout, 10.0)):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                last = exc
            self._sleep(interval)
        raise BackendError(f"{url} not ready after {timeout:.0f} s: {last}", url=url)

    def served_models(self) -> list[str]:
        """The model ids the server lists (the base and every loaded adapter)."""
        answer = self._request("GET", "/v1/models")
        return [entry["id"] for entry in answer.get("data", [])]

    # -- adapters ---------------------------------------------------------------------------

    @property
    def adapters(self) -> dict[str, Path]:
        """Adapters this client loaded: name -> folder (as the server sees it)."""
        return dict(self._adapters)

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Have the server load the adapter at `path` (a path on the server) as model `name`.

        Loading a name this client already loaded from the same path is a no-op; a name the
        server already has counts as loaded.
        """
        path = Path(path)
        known = self._adapters.get(name)
        if known is not None:
            if known != path:
                raise ValueError(
                    f"adapter name {name!r} is already loaded from {known}, not {path}: "
                    "give every adapter version its own name"
                )
            return
        try:
            self._request(
                "POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)}
            )
        except BackendError as exc:
            if exc.status != 400 or "already been loaded" not in str(exc):
                raise
            log.info("adapter %s was already loaded on %s", name, self.base_url)
        self._adapters[name] = path
        log.info("loaded adapter %s from %s on %s", name, path, self.base_url)

    def unload_adapter(self, name: str) -> None:
        """Have the server drop adapter `name`."""
        self._request("POST", "/v1/unload_lora_adapter", {"lora_name": name})
        self._adapters.pop(name, None)
        log.info("unloaded adapter %s on %s", name, self.base_url)

    # -- generation -------------------------------------------------------------------------

    def _chat_body(self, chat: Chat, params: SamplingParams, model: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": list(chat),
            "n": params.n,
            "temperature": params.temperature,
            "top_p": params.top_p if not params.greedy else 1.0,
            "max_tokens": params.max_new_tokens,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if params.ignore_eos:
            body["ignore_eos"] = True  # a vLLM extension
        body.update(self.extra_body)
        return body

    def generate(
        self,
        prompts: list[Chat],
        params: SamplingParams,
        adapter: AdapterRef | None = None,
    ) -> list[list[str]]:
        """`params.n` completions per prompt; loads `adapter` on the server on first use."""
        model = self.model
        if adapter is not None:
            self.load_adapter(adapter.name, adapter.path)
            model = adapter.name
        url = f"{self.base_url}/v1/chat/completions"

        def one(chat: Chat) -> list[str]:
            answer = self._request(
                "POST", "/v1/chat/completions", self._chat_body(chat, params, model)
            )
            choices = sorted(answer["choices"], key=lambda choice: choice.get("index", 0))
            if len(choices) != params.n:
                raise BackendError(
                    f"{url} returned {len(choices)} choices, expected {params.n}",
                    url=url,
                    status=200,
                )
            return [choice["message"]["content"] or "" for choice in choices]

        if len(prompts) <= 1 or self.concurrency == 1:
            return [one(chat) for chat in prompts]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            return list(pool.map(one, prompts))

    def close(self) -> None:
        """Nothing to release (one connection per request); adapters stay on the server."""
