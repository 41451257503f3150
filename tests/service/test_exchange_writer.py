"""The proxy's exchange writer: rows off the request path, batched, none lost."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
from sqlalchemy import Engine, func, select

from daemon.service import exchange_writer
from daemon.service.exchange import Exchange, Target
from daemon.service.exchange_writer import ExchangeWriter
from replay.db import session_scope
from replay.models import Interaction

LIMIT = 1_048_576


def finished(text: str) -> Exchange:
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    exchange = Exchange(body, Target("base", "base", None))
    exchange.take_answer({"choices": [{"message": {"content": f"re: {text}"}}]})
    exchange.end()
    return exchange


def stored(engine: Engine) -> list[str]:
    with session_scope(engine) as session:
        rows = session.execute(select(Interaction).order_by(Interaction.id)).scalars()
        return [row.messages[0]["content"] for row in rows]


def test_exchanges_that_queue_while_a_batch_is_written_go_in_one_transaction(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    first_started, release = threading.Event(), threading.Event()
    real = exchange_writer.store_exchanges

    def slow_first(engine: Engine, exchanges: Sequence[Exchange], limit: int) -> int:
        batches.append(len(exchanges))
        if len(batches) == 1:
            first_started.set()
            assert release.wait(10)
        return real(engine, exchanges, limit)

    monkeypatch.setattr(exchange_writer, "store_exchanges", slow_first)
    writer = ExchangeWriter(sqlite_engine, LIMIT, batch=8)
    writer.submit(finished("q0"))
    assert first_started.wait(10)
    for i in range(1, 21):  # queue up while the first row is being written
        writer.submit(finished(f"q{i}"))
    release.set()
    writer.close()
    assert batches == [1, 8, 8, 4]
    assert stored(sqlite_engine) == [f"q{i}" for i in range(21)]


def test_a_batch_the_database_refuses_is_stored_row_by_row(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(engine: Engine, exchanges: Sequence[Exchange], limit: int) -> int:
        raise RuntimeError("database is locked")

    monkeypatch.setattr(exchange_writer, "store_exchanges", refuse)
    writer = ExchangeWriter(sqlite_engine, LIMIT)
    for i in range(3):
        writer.submit(finished(f"q{i}"))
    writer.close()
    assert sorted(stored(sqlite_engine)) == ["q0", "q1", "q2"]


def test_a_refused_row_costs_no_other_and_names_its_request(
    sqlite_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    too_big = finished("x" * 2000)
    writer = ExchangeWriter(sqlite_engine, max_record_bytes=1000)
    for exchange in (finished("a"), too_big, finished("b")):
        writer.submit(exchange)
    writer.close()
    assert stored(sqlite_engine) == ["a", "b"]
    assert f"request {too_big.request_id} not stored" in caplog.text


def test_close_stores_what_is_queued_and_a_late_exchange_is_stored_at_once(
    sqlite_engine: Engine,
) -> None:
    writer = ExchangeWriter(sqlite_engine, LIMIT)
    for i in range(50):
        writer.submit(finished(f"q{i}"))
    writer.close()
    assert len(stored(sqlite_engine)) == 50
    writer.submit(finished("late"))  # a stream that ended while the app shut down
    with session_scope(sqlite_engine) as session:
        assert session.execute(select(func.count()).select_from(Interaction)).scalar_one() == 51
