"""Ingest of interaction-log files (JSONL, optionally gzip) into the database.

Each non-blank line is decoded, parsed and validated (`replay.records`); good records
are written in bulk (one INSERT ... ON CONFLICT DO NOTHING per batch, no ORM objects),
bad lines are reported with their line number and field and copied, with the error,
into a quarantine file. A bad line never costs a good one, and neither does a damaged
file (every line before the damage is kept; the damage is reported as a rejection at
the line where reading stopped), a file that cannot be opened (reported, the next file
is read), nor a quarantine that cannot be written (reported in `quarantine_errors`).
Ingesting the same file twice adds nothing: a record's identity is its id within its
source, else the hash of its canonical content.

Reading lines is `replay.ingest_read`, decoding them `replay.ingest_json`, validating
them `replay.records`, the quarantine file `replay.ingest_quarantine`.

`ingest_records` stores an in-memory batch (the HTTP API's) the same way, reporting each
rejected item by its index instead of quarantining it.

It does not decide where files come from (CLI, spool folder, HTTP: see `daemon/`).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Table, select
from sqlalchemy.exc import DBAPIError

from replay.ingest_json import loads_line
from replay.ingest_quarantine import Quarantine
from replay.ingest_read import LineReader, ProgressFn, ReadFailure, file_problem, open_log
from replay.models import Interaction, PreferencePair
from replay.records import MAX_LABEL_CHARS, NormalizedRecord, RecordError, parse_record

__all__ = [
    "MAX_BATCH_SIZE",
    "BatchResult",
    "IngestReport",
    "ItemError",
    "LineError",
    "ProgressFn",
    "file_problem",
    "ingest_files",
    "ingest_records",
    "parse_line",
    "stored_ids",
]

MAX_REPORTED_ERRORS = 20
MAX_BATCH_SIZE = 50_000
"""Most records written per transaction: a larger `batch_size` is written in batches of
this size (it bounds the memory held for one batch, up to its lines' size each)."""
_ID_CHUNK = 500
_PREVIEW_BYTES = 2_000
_TABLES: dict[str, Table] = {
    "interactions": Interaction.__table__,  # type: ignore[dict-item]
    "preference_pairs": PreferencePair.__table__,  # type: ignore[dict-item]
}


@dataclass(frozen=True)
class LineError:
    """One rejected line: where it was and why. Line 0 stands for the whole file (one that
    cannot be opened)."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass
class IngestReport:
    """What an ingest did. `errors` holds the first few rejections; every rejected line is
    quarantined, unless the quarantine could not be written (`quarantine_errors` says why);
    a file that could not be opened is a rejection at line 0, not quarantined."""

    files: list[str] = field(default_factory=list)
    read: int = 0
    ingested: int = 0
    ingested_interactions: int = 0
    ingested_pairs: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: list[LineError] = field(default_factory=list)
    quarantine_files: list[str] = field(default_factory=list)
    quarantine_errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "read": self.read,
            "ingested": self.ingested,
            "ingested_interactions": self.ingested_interactions,
            "ingested_pairs": self.ingested_pairs,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "errors": [{"file": e.file, "line": e.line, "message": e.message} for e in self.errors],
            "quarantine_files": self.quarantine_files,
            "quarantine_errors": self.quarantine_errors,
        }


def parse_line(raw: bytes) -> NormalizedRecord:
    """Decode and validate one line; raise `RecordError` saying what is wrong."""
    return parse_record(loads_line(raw))


class _BulkInsert:
    """`INSERT ... ON CONFLICT (record_key) DO NOTHING` for one table, run as a DBAPI executemany.

    This is the ingest's hot path, so it skips SQLAlchemy's per-row parameter
    processing: JSON columns arrive already serialized (`NormalizedRecord.encoded`) and
    other values go through each column type's own bind processor, which keeps what
    is stored identical to what the ORM writes and reads back.
    """

    def __init__(self, engine: Engine, table: Table, json_columns: tuple[str, ...]) -> None:
        dialect = engine.dialect
        if dialect.name not in ("sqlite", "postgresql"):
            raise NotImplementedError(f"ingest supports SQLite and PostgreSQL, not {dialect.name}")
        self.columns = [c.name for c in table.columns if c.name != "id"]
        self.json_columns = json_columns
        self.processors: dict[str, Callable[[Any], Any]] = {}
        for col in table.columns:
            if col.name in self.columns and col.name not in json_columns:
                proc = col.type.dialect_impl(dialect).bind_processor(dialect)
                if proc is not None:
                    # Only timestamps have processors on SQLite and PostgreSQL; they repeat
                    # (one receipt time per file, log times per second), so memoize.
                    self.processors[col.name] = functools.lru_cache(maxsize=4096)(proc)
        quote = dialect.identifier_preparer.quote
        mark = "?" if dialect.name == "sqlite" else "%s"
        marks = [
            f"{mark}::json" if dialect.name == "postgresql" and c in json_columns else mark
            for c in self.columns
        ]
        self.sql = (
            f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in self.columns)}) "
            f"VALUES ({', '.join(marks)}) ON CONFLICT ({quote('record_key')}) DO NOTHING"
        )

    def params(self, *parts: dict[str, Any]) -> tuple[Any, ...]:
        """The parameter tuple of one row from dicts of column values (later ones win)."""
        row: dict[str, Any] = {}
        for part in parts:
            row.update(part)
        for name, proc in self.processors.items():
            value = row.get(name)
            if value is not None:
                row[name] = proc(value)
        return tuple(map(row.get, self.columns))

    def execute(self, conn: Connection, rows: list[tuple[Any, ...]]) -> int:
        """Insert `rows`; return how many were new (the rest hit an existing key)."""
        result = conn.exec_driver_sql(self.sql, rows)
        return int(result.rowcount)


RejectFn = Callable[[int, str, bytes], None]
"""Called with (line number, error, raw line) for a record the database refused."""


@dataclass(frozen=True, slots=True)
class _Pending:
    params: tuple[Any, ...]
    line: int
    raw: bytes


class _Writer:
    """Collects normalized records and writes them in batches, one transaction each.

    If the database refuses a batch (a value one backend cannot hold, such as a NUL
    character in PostgreSQL text), the batch is retried one row at a time, so that
    only the refused rows are rejected, with the database's reason.
    """

    def __init__(self, engine: Engine, source: str, report: IngestReport, batch_size: int):
        if not 0 < len(source) <= MAX_LABEL_CHARS:
            raise ValueError(f"a source name must be 1 to {MAX_LABEL_CHARS} characters")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        batch_size = min(batch_size, MAX_BATCH_SIZE)
        self.engine = engine
        self.source = source
        self.report = report
        self.batch_size = batch_size
        self.pending: dict[str, dict[str, _Pending]] = {t: {} for t in _TABLES}
        self.count = 0
        self.reject: RejectFn = lambda line, message, raw: None
        self.inserts = {
            "interactions": _BulkInsert(engine, _TABLES["interactions"], ("messages", "meta")),
            "preference_pairs": _BulkInsert(
                engine, _TABLES["preference_pairs"], ("prompt", "meta")
            ),
        }

    def add(self, record: NormalizedRecord, received_at: datetime, line: int, raw: bytes) -> None:
        key = record.record_key(self.source)
        bucket = self.pending[record.table]
        if key in bucket:
            self.report.duplicates += 1
        else:
            extra = {
                "record_key": key,
                "source": self.source,
                "external_id": record.external_id,
                "content_hash": record.content_hash,
                "received_at" if record.table == "interactions" else "created_at": received_at,
            }
            params = self.inserts[record.table].params(record.row, record.encoded, extra)
            bucket[key] = _Pending(params, line, raw)
            self.count += 1
        if self.count >= self.batch_size:
            self.flush()

    def _count(self, table: str, attempted: int, inserted: int) -> None:
        self.report.duplicates += attempted - inserted
        self.report.ingested += inserted
        if table == "interactions":
            self.report.ingested_interactions += inserted
        else:
            self.report.ingested_pairs += inserted

    def flush(self) -> None:
        if not self.count:
            return
        try:
            with self.engine.begin() as conn:
                done = [
                    (table, len(rows), self.inserts[table].execute(conn, [r.params for r in rows]))
                    for table, rows in ((t, list(b.values())) for t, b in self.pending.items())
                    if rows
                ]
            for table, attempted, inserted in done:
                self._count(table, attempted, inserted)
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            self._flush_one_by_one()
        self.pending = {t: {} for t in _TABLES}
        self.count = 0

    def _flush_one_by_one(self) -> None:
        for table, bucket in self.pending.items():
            for row in bucket.values():
                try:
                    with self.engine.begin() as conn:
                        inserted = self.inserts[table].execute(conn, [row.params])
                except DBAPIError as exc:
                    if exc.connection_invalidated:
                        raise
                    reason = str(exc.orig).strip().splitlines()[0]
                    self.reject(row.line, f"the database refused the record: {reason}", row.raw)
                    continue
                self._count(table, 1, inserted)


def ingest_files(
    engine: Engine,
    paths: list[Path],
    *,
    source: str,
    quarantine_dir: Path | None,
    max_line_bytes: int = 1_048_576,
    batch_size: int = 5_000,
    on_file: Callable[[Path, int], ProgressFn] | None = None,
) -> IngestReport:
    """Ingest each file in turn; return one report over all of them.

    `on_file(path, size)` may return a progress callback for that file. Batches are
    committed as they fill (at most `MAX_BATCH_SIZE` records each), so an interrupted
    ingest keeps what it wrote, and running it again adds only what is missing. Raises
    ValueError for a source name of no or over 200 characters or a batch_size below 1;
    database errors other than a refused record propagate.
    """
    report = IngestReport()
    writer = _Writer(engine, source, report, batch_size)
    with _gc_paused():
        for path in paths:
            _ingest_file(path, writer, report, source, quarantine_dir, max_line_bytes, on_file)
    return report


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector during a bulk load.

    Parsing allocates millions of short-lived dicts; the collector's repeated passes
    over them cost about as much as the parsing itself (measured: 30 vs 16 us/line).
    They are freed by reference counting anyway; one collection runs at the end.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
            gc.collect(0)


def _ingest_file(
    path: Path,
    writer: _Writer,
    report: IngestReport,
    source: str,
    quarantine_dir: Path | None,
    max_line_bytes: int,
    on_file: Callable[[Path, int], ProgressFn] | None,
) -> None:
    """Ingest one file into `writer`, adding to `report`; rejected lines go to quarantine."""
    report.files.append(str(path))
    try:
        fh, size = open_log(path)
    except ReadFailure as exc:
        report.read += 1
        report.rejected += 1
        _note(report, LineError(str(path), 0, f"cannot read the file: {exc}"))
        return
    quarantine = Quarantine(quarantine_dir, source, path, report.quarantine_errors.append)
    received_at = datetime.now(UTC)
    writer.reject = lambda number, message, raw: _reject(
        report, quarantine, path, number, message, raw
    )
    try:
        progress = on_file(path, size) if on_file else None
        reader = LineReader(fh, max_line_bytes, progress)
        lines = iter(reader)
        while True:
            try:
                number, line = next(lines)
            except StopIteration:
                break
            except ReadFailure as exc:
                # Every line before the damage was read; the rest of the file is lost.
                message = f"cannot read the file from this line on: {exc}"
                _reject(report, quarantine, path, reader.number + 1, message, None)
                break
            if line is None:
                message = f"line is longer than {max_line_bytes} bytes"
                _reject(report, quarantine, path, number, message, None)
                continue
            report.read += 1
            try:
                record = parse_line(line)
            except RecordError as exc:
                _reject(report, quarantine, path, number, str(exc), line)
                continue
            writer.add(record, received_at, number, line)
        writer.flush()
    finally:
        fh.close()
        kept = quarantine.close()
        if kept is not None:
            report.quarantine_files.append(str(kept))
    if progress is not None:
        progress(size)


def _note(report: IngestReport, error: LineError) -> None:
    if len(report.errors) < MAX_REPORTED_ERRORS:
        report.errors.append(error)


def _reject(
    report: IngestReport,
    quarantine: Quarantine,
    path: Path,
    number: int,
    message: str,
    raw: bytes | None,
) -> None:
    report.rejected += 1
    if raw is None:
        report.read += 1
    _note(report, LineError(str(path), number, message))
    quarantine.add(number, message, raw)


@dataclass(frozen=True)
class ItemError:
    """One rejected item of an in-memory batch: its index, the field (when known), why."""

    index: int
    field: str | None
    message: str


@dataclass
class BatchResult:
    """What `ingest_records` did: the report, each rejected item, and per item the identity
    (table, record key) it was stored or found under (None: rejected)."""

    report: IngestReport
    errors: list[ItemError]
    keys: list[tuple[str, str] | None]


def ingest_records(
    engine: Engine,
    records: Sequence[Any],
    *,
    source: str,
    max_record_bytes: int = 1_048_576,
    batch_size: int = 5_000,
) -> BatchResult:
    """Validate and store an in-memory batch exactly as `ingest_files` stores a file's lines.

    Each item is the bytes of one JSON line or a decoded JSON value (serialized again and
    read as a line). Nothing is quarantined: every rejection comes back with its index.
    """
    report = IngestReport(read=len(records))
    result = BatchResult(report, [], [None] * len(records))
    writer = _Writer(engine, source, report, batch_size)
    writer.reject = lambda index, message, raw: _reject_item(result, index, None, message)
    received_at = datetime.now(UTC)
    for index, item in enumerate(records):
        try:
            raw = _item_bytes(item, max_record_bytes)
            record = parse_line(raw)
        except RecordError as exc:
            _reject_item(result, index, exc.field, exc.args[0])
            continue
        result.keys[index] = (record.table, record.record_key(source))
        writer.add(record, received_at, index, raw)
    writer.flush()
    return result


def _item_bytes(item: Any, max_bytes: int) -> bytes:
    if isinstance(item, bytes):
        raw = item
    else:
        try:
            raw = orjson.dumps(item)
        except orjson.JSONEncodeError:
            # orjson holds no integer beyond 64 bits; the standard library writes it
            # exactly, and the line decoder then keeps it as a string (`ingest_json`).
            try:
                raw = json.dumps(item, ensure_ascii=False, allow_nan=False).encode("utf-8")
            except (TypeError, ValueError, RecursionError) as exc:
                raise RecordError(f"cannot be serialized as JSON: {exc}") from None
    if len(raw) > max_bytes:
        raise RecordError(f"record is longer than {max_bytes} bytes")
    return raw


def _reject_item(result: BatchResult, index: int, field: str | None, message: str) -> None:
    result.errors.append(ItemError(index, field, message))
    result.keys[index] = None
    result.report.rejected += 1
    if len(result.report.errors) < MAX_REPORTED_ERRORS:
        text = f"{field}: {message}" if field else message
        result.report.errors.append(LineError("(batch)", index, text))


def stored_ids(engine: Engine, keys: Sequence[tuple[str, str] | None]) -> list[int | None]:
    """The row id stored under each (table, record key); None for None or a key not found."""
    found: dict[tuple[str, str], int] = {}
    with engine.connect() as conn:
        for name, table in _TABLES.items():
            wanted = sorted({key for t, key in filter(None, keys) if t == name})
            for start in range(0, len(wanted), _ID_CHUNK):
                chunk = wanted[start : start + _ID_CHUNK]
                query = select(table.c.id, table.c.record_key).where(table.c.record_key.in_(chunk))
                found.update(((name, key), int(row_id)) for row_id, key in conn.execute(query))
    return [None if key is None else found.get(key) for key in keys]
