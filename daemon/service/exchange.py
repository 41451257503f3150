"""One chat exchange of the logging proxy (`daemon/service/proxy.py`), and storing it.

`Exchange` is a chat request and what came back, as far as it got: the reply text of
choice 0 (from a JSON answer, `take_answer`, or the `data:` events of an SSE stream, which
`SSEReader` feeds to `take_event` from bytes split anywhere), finish reason, usage, timings
and what went wrong. `record` turns it into the interaction record `tutord ingest` reads
(`meta` as `daemon/service/proxy.py` describes); `store_exchange` stores it as one row
(source `proxy`, external id its request id) in one transaction, logging and never raising;
`interaction_id_for_request` finds that row again. `storable` says beforehand whether
`replay.records` will accept the conversation.

It does not talk to the model server or to the client, and it imports no web framework:
`daemon/service/proxy.py` relays, and decides when an exchange is stored.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Engine

from replay.ingest import ingest_records, stored_ids
from replay.records import NormalizedRecord, RecordError, parse_record

log = logging.getLogger(__name__)

SOURCE = "proxy"
"""The source name of the interactions the proxy stores."""
_NOT_PARAMS = frozenset({"messages", "model", "stream"})


# ------------------------------------------------------------------ finding a stored exchange


def interaction_id_for_request(engine: Engine, request_id: str) -> int | None:
    """The id of the interaction the proxy stored for `request_id` (None: none, or not yet)."""
    key = NormalizedRecord("interactions", request_id, "", {}, {}).record_key(SOURCE)
    return stored_ids(engine, [("interactions", key)])[0]


# ------------------------------------------------------------------ one exchange


@dataclass(frozen=True)
class Target:
    """Whom a request goes to: `model` is the name sent upstream, `adapter` the stored label."""

    model: str
    adapter: str
    version: int | None


@dataclass
class Exchange:
    """One chat request and what came back, as far as it got."""

    body: dict[str, Any]
    target: Target
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.perf_counter)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    first_token: float | None = None
    ended: float | None = None
    upstream_status: int | None = None
    upstream_error: Any = None
    client_disconnected: bool = False
    storable: bool = True

    def payload(self) -> bytes:
        """The request body sent upstream: the client's, addressed to the target."""
        return orjson.dumps({**self.body, "model": self.target.model})

    def take_answer(self, answer: Any) -> None:
        """Read a non-streaming answer's choice 0, finish reason and usage."""
        choice = _choice_zero(answer.get("choices")) if isinstance(answer, dict) else None
        if choice is None:
            raise ValueError("the answer has no choice 0")
        self.parts.append((choice.get("message") or {}).get("content") or "")
        self.finish_reason = choice.get("finish_reason")
        self.usage = answer.get("usage")

    def take_event(self, event: Any) -> None:
        """Read one streamed chunk: choice 0's delta text, finish reason; usage; an error."""
        if not isinstance(event, dict):
            return
        if event.get("usage"):
            self.usage = event["usage"]
        if event.get("error"):
            self.upstream_error = event["error"]
        choice = _choice_zero(event.get("choices"))
        if choice is None:
            return
        text = (choice.get("delta") or {}).get("content")
        if text:
            if self.first_token is None:
                self.first_token = time.perf_counter()
            self.parts.append(text)
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]

    def end(self) -> None:
        if self.ended is None:
            self.ended = time.perf_counter()

    def meta(self) -> dict[str, Any]:
        ended = self.ended if self.ended is not None else time.perf_counter()
        meta = {
            "params": {k: v for k, v in self.body.items() if k not in _NOT_PARAMS},
            "requested_model": self.body.get("model"),
            "upstream_model": self.target.model,
            "stream": bool(self.body.get("stream")),
            "latency_ms": _ms(ended - self.started),
            "time_to_first_token_ms": None
            if self.first_token is None
            else _ms(self.first_token - self.started),
            "finish_reason": self.finish_reason,
            "usage": self.usage,
            "upstream_status": self.upstream_status,
            "client_disconnected": self.client_disconnected,
        }
        if self.upstream_error is not None:
            meta["upstream_error"] = self.upstream_error
        return meta

    def record(self) -> dict[str, Any]:
        """The interaction record (the shape `tutord ingest` reads) of this exchange."""
        messages = self.body.get("messages")
        reply = {"role": "assistant", "content": "".join(self.parts)}
        return {
            "id": self.request_id,
            "timestamp": self.started_at.isoformat(),
            "messages": [*(messages if isinstance(messages, list) else []), reply],
            "adapter": self.target.adapter,
            "metadata": self.meta(),
        }


def storable(body: dict[str, Any]) -> bool:
    """Whether the request's messages make an interaction `replay.records` accepts once the
    reply is added (checked before forwarding: the header promises a row)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return False
    try:
        parse_record({"messages": [*messages, {"role": "assistant", "content": ""}]})
    except RecordError as exc:
        log.info("proxy: a conversation that cannot be stored is forwarded unlogged: %s", exc)
        return False
    return True


def _choice_zero(choices: Any) -> dict[str, Any] | None:
    if not isinstance(choices, list):
        return None
    for choice in choices:
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            return choice
    return None


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def store_exchanges(engine: Engine, exchanges: Sequence[Exchange], max_record_bytes: int) -> int:
    """Store exchanges as interactions in one transaction; log each one refused; return how
    many were stored. A database failure raises (nothing of the batch is stored)."""
    result = ingest_records(
        engine, [e.record() for e in exchanges], source=SOURCE, max_record_bytes=max_record_bytes
    )
    for error in result.errors:
        where = f"{error.field}: " if error.field else ""
        request_id = exchanges[error.index].request_id
        log.warning("proxy: request %s not stored: %s%s", request_id, where, error.message)
    return len(exchanges) - len(result.errors)


def store_exchange(engine: Engine, exchange: Exchange, max_record_bytes: int) -> None:
    """Store the exchange as one interaction (one insert, one transaction); log, never raise."""
    try:
        store_exchanges(engine, [exchange], max_record_bytes)
    except Exception:
        log.exception("proxy: cannot store request %s", exchange.request_id)


class SSEReader:
    """Feeds the `data:` events of an SSE byte stream, split anywhere, to an exchange."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.pending = b""

    def feed(self, chunk: bytes) -> None:
        *lines, self.pending = (self.pending + chunk).split(b"\n")
        for line in lines:
            self._line(line.strip())

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return
        data = line[5:].strip()
        if not data or data == b"[DONE]":
            return
        with contextlib.suppress(orjson.JSONDecodeError):
            self.exchange.take_event(orjson.loads(data))
