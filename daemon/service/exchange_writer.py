"""Stores the proxy's finished exchanges off the request path, many rows per transaction.

The proxy hands each finished exchange to `ExchangeWriter.submit`, which only puts it on a
queue: no thread hop and no database work while a request is answered. One writer thread
takes what has queued (up to `batch` exchanges) and stores it with one
`replay.ingest.ingest_records` call, one transaction. Under load rows are written in
batches, so the cost of a row falls (one insert statement of many rows, one commit) and the
writer holds the interpreter less often; alone, a row is written as soon as it arrives.

`close` stops taking exchanges, stores what is queued and waits for the thread (bounded by
its timeout); the proxy calls it when the app shuts down. A batch the database refuses as a
whole (it cannot be reached, say) is tried again row by row, so one bad row costs no other;
a row that still fails is logged with its request id, never raised into the server.

It does not read exchanges from a stream, build their records (`daemon/service/exchange.py`)
or decide what is stored (`storable`).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence

from sqlalchemy import Engine

from daemon.service.exchange import Exchange, store_exchange, store_exchanges

log = logging.getLogger(__name__)

_STOP = None


class ExchangeWriter:
    """A queue of finished exchanges and the one thread that stores them."""

    def __init__(self, engine: Engine, max_record_bytes: int, batch: int = 256) -> None:
        self.engine = engine
        self.max_record_bytes = max_record_bytes
        self.batch = batch
        self._queue: queue.SimpleQueue[Exchange | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, exchange: Exchange) -> None:
        """Queue `exchange` to be stored (at once when the writer is closed)."""
        with self._lock:
            if self._closed:
                closed = True
            else:
                closed = False
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="tutord-exchange-writer", daemon=True
                    )
                    self._thread.start()
                self._queue.put(exchange)
        if closed:  # a request that ends while the app shuts down still leaves its row
            self._write([exchange])

    def close(self, timeout: float = 30.0) -> None:
        """Store what is queued and stop the thread (waits at most `timeout` seconds)."""
        with self._lock:
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._queue.put(_STOP)
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.error("proxy: exchanges still being stored after %.0f s", timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batch = [] if first is _STOP else [first]
            stop = first is _STOP
            while not stop and len(batch) < self.batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                else:
                    batch.append(more)
            if batch:
                self._write(batch)  # type: ignore[arg-type]
            if stop:
                return

    def _write(self, batch: Sequence[Exchange]) -> None:
        try:
            store_exchanges(self.engine, batch, self.max_record_bytes)
        except Exception as exc:  # the batch as a whole: try each row alone
            log.warning("proxy: storing %d exchanges failed (%s); one by one", len(batch), exc)
            for exchange in batch:
                store_exchange(self.engine, exchange, self.max_record_bytes)
