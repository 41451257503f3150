"""The logging proxy of `tutord run`: an OpenAI-compatible front for the model server.

`make_proxy_router` builds two routes, forwarded to `model.server_url` (e.g. a vLLM server):

- `POST /v1/chat/completions`: the client's `model` (any value) is replaced by what production
  is: the adapter's version name (`v3`, the name tutord loads it under) or, for the bare base,
  the base model's served name (`daemon.policy.base_model`, as `OpenAIBackend` uses it).
  Production is read from the database at most every `PRODUCTION_TTL_S` seconds, and at once
  after this process moved it (a promotion or rollback by the daemon or its API); a move made
  by another process (`tutord rollback`, a second daemon) is seen within that time. The
  answer comes back as the server gave it: its JSON and status, or with `"stream": true`
  its SSE bytes as they arrive;
- `GET /v1/models`: the server's list, as it is.

Each answered chat exchange is stored as one interaction (source `proxy`, external id a fresh
request id, sent back in the `X-Tutord-Interaction-Id` header before the body): the request's
messages plus the reply (choice 0's text; with `n` > 1 the other choices are not stored),
`adapter` the version that served it (`base` for the bare base), and `meta` holding `params`
(what the client sent besides messages, model and stream), `requested_model`,
`upstream_model`, `stream`, `latency_ms`, `time_to_first_token_ms` (streaming), `finish_reason`,
`usage`, `upstream_status`, `client_disconnected` and, when the stream broke, `upstream_error`.
A client that goes away mid-stream stops the relay (and the request to the server); what had
arrived is stored. A stream the server breaks off ends with an SSE `error` event naming the
server, and is stored as far as it got. The row is written once, after the exchange ends
and its answer is sent, by one writer thread that stores what has queued in one transaction
(`daemon/service/exchange_writer.py`); the app's shutdown waits for it. The exchange,
its record, reading it from an SSE stream and storing it are in `daemon/service/exchange.py`,
whose `interaction_id_for_request` finds the row by request id (for `POST /v1/feedback` given
a `request_id` instead of an interaction id).

If the server answers 404 for production's adapter (it restarted and forgot runtime-loaded
adapters, or production moved before the adapter was loaded), the proxy loads it
(`/v1/load_lora_adapter`, as `daemon/adapter_serving.py` does) and retries once.

It does not check tokens (the app mounting it passes `dependencies`), forward the client's
headers (its bearer token is tutord's), start the model server, or store an exchange without
a reply: an unreachable server gives 502 naming its URL, a 5xx gives 502 with the server's
answer, other errors pass through as they are. A conversation `replay.records` refuses (e.g.
image content parts, no user message) is forwarded but not stored, and its answer has no
`X-Tutord-Interaction-Id`. It imports no model library.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.params import Depends
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from daemon import adapters
from daemon.home import Home, HomeError
from daemon.models import ProductionPointer
from daemon.policy import base_model
from daemon.service.exchange import Exchange, SSEReader, Target, storable
from daemon.service.exchange_writer import ExchangeWriter
from daemon.settings import Settings
from stages import registry

log = logging.getLogger(__name__)

HEADER = "X-Tutord-Interaction-Id"
"""The response header carrying the request id (the stored row's external id)."""
CONNECT_TIMEOUT_S = 5.0
UPSTREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)
"""What a failed exchange with the model server raises (unreachable, cut off, timed out)."""
PRODUCTION_TTL_S = 0.5
"""How long the proxy serves the production it read before reading it again (moves made by
this process are seen at once). Reading it at every request cost a database read and a
worker-thread hop per request."""
_PRODUCTION = select(ProductionPointer.version).where(ProductionPointer.id == 1)
_DETAIL_CHARS = 500


# ------------------------------------------------------------------ the model server


@dataclass(frozen=True)
class Answer:
    """A whole answer of the model server: status, body and content type."""

    status_code: int
    content: bytes
    content_type: str | None

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


async def read_answer(response: aiohttp.ClientResponse) -> Answer:
    """Read a response whole and give its connection back."""
    try:
        content = await response.read()
    finally:
        response.release()
    return Answer(response.status, content, response.headers.get("content-type"))


class Upstream:
    """The model server: its URL, a shared HTTP client (aiohttp: it costs the proxy a quarter
    of httpx's CPU per request, 125 against 556 µs measured on 2026-12-04), and what
    production is called there."""

    def __init__(
        self, engine: Engine, home: Home, settings: Settings, client: aiohttp.ClientSession | None
    ) -> None:
        url = settings.model.server_url
        if not url:
            raise ValueError("the proxy needs model.server_url (an OpenAI-compatible server)")
        self.base_url = url.rstrip("/").removesuffix("/v1")
        self.chat_url = f"{self.base_url}/v1/chat/completions"
        self.engine = engine
        self.home = home
        self.settings = settings
        self._given = client
        self._owned: aiohttp.ClientSession | None = None
        self._owned_loop: asyncio.AbstractEventLoop | None = None
        self._base_name: str | None = None
        self._last: Target | None = None
        self._read_at = float("-inf")
        self._moves_seen = -1

    def client(self) -> aiohttp.ClientSession:
        """The given client, else one made on first use (again if the event loop changed)."""
        if self._given is not None:
            return self._given
        loop = asyncio.get_running_loop()
        if self._owned is None or self._owned_loop is not loop:
            self._owned = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
                connector=aiohttp.TCPConnector(limit=1000),
                auto_decompress=True,
            )
            self._owned_loop = loop
        return self._owned

    async def aclose(self) -> None:
        if self._owned is not None:
            await self._owned.close()
            self._owned = None

    def base_name(self) -> str:
        if self._base_name is None:
            self._base_name = base_model(self.home, self.settings)
        return self._base_name

    def cached_target(self) -> Target | None:
        """Production as last read, while that read is fresh and this process has not moved
        production since; else None (call `target`)."""
        fresh = time.monotonic() - self._read_at < PRODUCTION_TTL_S
        if fresh and self._moves_seen == adapters.moves_made_here():
            return self._last
        return None

    def target(self) -> Target:
        """Production now (one primary-key read): its version name, or the base's name.
        While the database cannot be read, the last production seen (if any) serves."""
        moves, read_at = adapters.moves_made_here(), time.monotonic()  # before the read
        try:
            with self.engine.connect() as conn:  # `adapters.production` without an ORM session
                version = conn.execute(_PRODUCTION).scalar_one()
        except SQLAlchemyError as exc:
            if self._last is None:
                raise
            log.warning("proxy: cannot read production (%s); using %s", exc, self._last.adapter)
            return self._last
        if version is None:
            self._last = Target(self.base_name(), adapters.label(None), None)
        else:
            name = registry.version_name(version)
            self._last = Target(name, name, version)
        self._moves_seen, self._read_at = moves, read_at
        return self._last

    async def send_chat(self, exchange: Exchange) -> aiohttp.ClientResponse:
        """Send the chat request; on a 404 for production's adapter, load it and retry once.
        The response's body is not read yet (a stream is relayed as it comes); a refusal
        whose load failed comes back read, so it can still be answered."""
        answer = await self._send(exchange)
        version = exchange.target.version
        if answer.status != 404 or version is None:
            return answer
        await answer.read()  # the refusal stays readable if the load fails
        if await self._load(version):
            answer.release()
            answer = await self._send(exchange)
        return answer

    async def _send(self, exchange: Exchange) -> aiohttp.ClientResponse:
        return await self.client().post(
            self.chat_url,
            data=exchange.payload(),
            headers={"Content-Type": "application/json"},
        )

    async def _load(self, version: int) -> bool:
        """Have the server load `version` under its name (as `daemon/adapter_serving.py`
        does), once its folder verifies (a server would read pickle weights a tampered folder
        holds)."""
        name = registry.version_name(version)
        path = registry.adapter_path(self.home.adapters, version)
        try:
            await run_in_threadpool(registry.verify, path)
        except registry.RegistryError as exc:
            log.error("proxy: not loading %s on %s: %s", name, self.base_url, exc)
            return False
        body = {"lora_name": name, "lora_path": str(path)}
        try:
            answer = await read_answer(
                await self.client().post(f"{self.base_url}/v1/load_lora_adapter", json=body)
            )
        except UPSTREAM_ERRORS as exc:
            log.warning("proxy: cannot load %s on %s: %s", name, self.base_url, exc)
            return False
        if answer.status_code == 200 or "already been loaded" in answer.text:
            log.info("proxy: loaded %s on %s", name, self.base_url)
            return True
        log.warning("proxy: loading %s: HTTP %s %s", name, answer.status_code, answer.text[:200])
        return False


# ------------------------------------------------------------------ answers


def _error(status: int, message: str, kind: str, upstream: str) -> JSONResponse:
    error = {"message": message, "type": kind, "code": status, "upstream": upstream}
    return JSONResponse({"error": error}, status_code=status)


def unreachable(url: str, exc: Exception) -> JSONResponse:
    """502: the model server could not be reached (nothing is stored)."""
    reason = str(exc) or type(exc).__name__
    return _error(502, f"the model server at {url} cannot be reached: {reason}", "bad_gateway", url)


def upstream_failed(url: str, answer: Answer) -> Response:
    """A failed answer: 5xx becomes 502 naming the server; others pass through as they are."""
    if answer.status_code >= 500:
        detail = answer.text[:_DETAIL_CHARS]
        message = f"the model server at {url} answered HTTP {answer.status_code}: {detail}"
        return _error(502, message, "bad_gateway", url)
    return Response(answer.content, status_code=answer.status_code, media_type=answer.content_type)


class RelayResponse(StreamingResponse):
    """Relays an upstream SSE answer chunk by chunk, reading the exchange from it on the way;
    stops when the client goes away; stores the exchange once the relay is over."""

    def __init__(
        self,
        exchange: Exchange,
        upstream: aiohttp.ClientResponse,
        url: str,
        writer: ExchangeWriter,
    ) -> None:
        self.exchange = exchange
        self.upstream = upstream
        self.url = url
        self.writer = writer
        self.sent_all = False
        super().__init__(
            self._chunks(),
            media_type=upstream.headers.get("content-type", "text/event-stream"),
            headers={HEADER: exchange.request_id} if exchange.storable else None,
        )

    async def _chunks(self) -> AsyncIterator[bytes]:
        reader = SSEReader(self.exchange)
        try:
            async for chunk in self.upstream.content.iter_any():  # decoded, as it is relayed
                reader.feed(chunk)
                yield chunk
        except UPSTREAM_ERRORS as exc:
            reason = str(exc) or type(exc).__name__
            self.exchange.upstream_error = reason
            message = f"the model server at {self.url} broke off the stream: {reason}"
            error = {"message": message, "type": "bad_gateway", "code": 502, "upstream": self.url}
            yield b"data: " + orjson.dumps({"error": error}) + b"\n\n"
        self.exchange.end()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._watch, receive, group.cancel_scope)
                try:
                    await self.stream_response(send)
                    self.sent_all = True
                except OSError:  # ASGI 2.4 servers: sending to a client that went away
                    self.exchange.client_disconnected = True
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._finish()

    async def _watch(self, receive: Receive, scope: anyio.CancelScope) -> None:
        await self.listen_for_disconnect(receive)
        if not self.sent_all:
            self.exchange.client_disconnected = True
            scope.cancel()

    async def _finish(self) -> None:
        await self.body_iterator.aclose()  # type: ignore[attr-defined]
        if self.upstream.content.at_eof():
            self.upstream.release()
        else:  # cut short (the client left): close the connection, so the server stops too
            self.upstream.close()
        self.exchange.end()
        if self.exchange.storable:
            self.writer.submit(self.exchange)


async def relay_json(upstream: Upstream, exchange: Exchange, writer: ExchangeWriter) -> Response:
    """Forward a non-streaming request; the exchange is stored after the answer is sent."""
    try:
        answer = await read_answer(await upstream.send_chat(exchange))
    except UPSTREAM_ERRORS as exc:
        return unreachable(upstream.chat_url, exc)
    exchange.end()
    exchange.upstream_status = answer.status_code
    if answer.status_code != 200:
        return upstream_failed(upstream.chat_url, answer)
    response = Response(answer.content, media_type=answer.content_type or "application/json")
    if not exchange.storable:
        return response
    try:
        exchange.take_answer(orjson.loads(answer.content))
    except (orjson.JSONDecodeError, ValueError, AttributeError) as exc:
        log.warning(
            "proxy: request %s: unreadable answer, not stored: %s", exchange.request_id, exc
        )
        return response
    response.headers[HEADER] = exchange.request_id
    response.background = BackgroundTask(_submit, writer, exchange)
    return response


async def _submit(writer: ExchangeWriter, exchange: Exchange) -> None:
    """Queue the exchange once its answer is sent (a coroutine: no worker-thread hop)."""
    writer.submit(exchange)


async def relay_stream(upstream: Upstream, exchange: Exchange, writer: ExchangeWriter) -> Response:
    """Open a streaming request; a 200 is relayed by `RelayResponse`, anything else answered."""
    try:
        answer = await upstream.send_chat(exchange)
    except UPSTREAM_ERRORS as exc:
        return unreachable(upstream.chat_url, exc)
    exchange.upstream_status = answer.status
    if answer.status != 200:
        try:
            whole = await read_answer(answer)
        except UPSTREAM_ERRORS as exc:
            return unreachable(upstream.chat_url, exc)
        return upstream_failed(upstream.chat_url, whole)
    return RelayResponse(exchange, answer, upstream.chat_url, writer)


async def _request_body(request: Request) -> dict[str, Any] | None:
    """The request's JSON object, or None when it is not one."""
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


# ------------------------------------------------------------------ the router


def make_proxy_router(
    engine: Engine,
    home: Home,
    settings: Settings,
    *,
    client: aiohttp.ClientSession | None = None,
    dependencies: Sequence[Depends] | None = None,
) -> APIRouter:
    """The proxy's routes over `settings.model.server_url` (`ValueError` when it is unset).

    `client` is used as given (and not closed); without one, the router makes its own on first
    use and closes it when the app that includes the router shuts down.
    """
    upstream = Upstream(engine, home, settings, client)
    writer = ExchangeWriter(engine, settings.ingest.max_line_bytes)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await upstream.aclose()
            await anyio.to_thread.run_sync(writer.close)

    router = APIRouter(dependencies=list(dependencies or ()), lifespan=lifespan)

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        started = time.perf_counter()
        body = await _request_body(request)
        if body is None:
            error = {"message": "the body must be a JSON object", "type": "invalid_request_error"}
            return JSONResponse({"error": error}, status_code=400)
        try:
            target = upstream.cached_target() or await run_in_threadpool(upstream.target)
        except (HomeError, SQLAlchemyError) as exc:
            return _error(503, str(exc), "service_unavailable", upstream.base_url)
        exchange = Exchange(body, target, started=started, storable=storable(body))
        relay = relay_stream if body.get("stream") else relay_json
        return await relay(upstream, exchange, writer)

    @router.get("/v1/models")
    async def models() -> Response:
        url = f"{upstream.base_url}/v1/models"
        try:
            answer = await read_answer(await upstream.client().get(url))
        except UPSTREAM_ERRORS as exc:
            return unreachable(url, exc)
        if answer.status_code != 200:
            return upstream_failed(url, answer)
        return Response(answer.content, media_type=answer.content_type)

    return router
