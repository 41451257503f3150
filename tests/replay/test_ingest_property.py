"""Property tests of ingest on hostile input.

1. The line reader (`replay.ingest_read`), with chunk sizes shrunk to a few bytes so that
   every line end, BOM and gzip member straddles reads, yields exactly the lines a plain
   reference split gives, and after damage exactly those completed before it.
2. Whole files of generated lines (times in and out of range, numeric or ISO; OpenAI
   `created`; integers beyond 64 bits; ids around the length limit; garbage) with a BOM,
   LF / CRLF / CR line ends, blank lines, gzip and damage, ingested on SQLite and
   PostgreSQL: no exception, every good line before the damage stored with the value the
   documented rules give, every bad one quarantined with its line number and field.
"""

from __future__ import annotations

import gzip
import io
import json
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from replay import ingest_read
from replay.ingest_read import LineReader, ReadFailure
from replay.models import Interaction
from replay.records import MAX_ID_CHARS
from tests.replay.test_ingest import run

BOM = b"\xef\xbb\xbf"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FIRST_SECOND = -62_135_596_800  # 0001-01-01T00:00:00Z
LAST_SECOND = 253_402_300_799  # 9999-12-31T23:59:59Z
ENDS = {"LF": b"\n", "CRLF": b"\r\n", "CR": b"\r"}
FAST = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def reference_lines(data: bytes, max_bytes: int) -> list[tuple[int, bytes | None]]:
    """What the reader must yield for complete `data`: the obvious, slow way."""
    text = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    parts = text.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    out: list[tuple[int, bytes | None]] = []
    for number, line in enumerate(parts, start=1):
        if not line.strip():
            continue  # blank, whatever its length
        if len(line) > max_bytes:
            out.append((number, None))
            continue
        if number == 1 and line.startswith(BOM):
            line = line[len(BOM) :]
        if line.strip():
            out.append((number, line))
    return out


def read_all(data: bytes, max_bytes: int) -> tuple[list[tuple[int, bytes | None]], str | None, int]:
    reader = LineReader(io.BytesIO(data), max_bytes)
    got: list[tuple[int, bytes | None]] = []
    try:
        got.extend(reader)
    except ReadFailure as exc:
        return got, str(exc), reader.number
    return got, None, reader.number


line_bytes = st.one_of(
    st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")),
    st.sampled_from([b"", b" ", b"\t \x0c", b"{}", BOM, BOM + b"{}", b"x" * 30]),
)


@FAST
@given(
    lines=st.lists(st.tuples(line_bytes, st.sampled_from(list(ENDS.values()))), max_size=30),
    last_end=st.booleans(),
    bom=st.booleans(),
    max_bytes=st.integers(1, 20),
    chunk=st.integers(1, 9),
    packing=st.sampled_from(["plain", "gzip", "two members"]),
    cut=st.none() | st.floats(0.2, 0.99),
)
def test_the_reader_splits_like_the_reference_at_any_chunk_size(
    monkeypatch: pytest.MonkeyPatch,
    lines: list[tuple[bytes, bytes]],
    last_end: bool,
    bom: bool,
    max_bytes: int,
    chunk: int,
    packing: str,
    cut: float | None,
) -> None:
    monkeypatch.setattr(ingest_read, "_PLAIN_CHUNK", chunk)
    monkeypatch.setattr(ingest_read, "_GZIP_IN_CHUNK", chunk)
    monkeypatch.setattr(ingest_read, "_GZIP_OUT_CHUNK", chunk + 1)
    data = (BOM if bom else b"") + b"".join(line + end for line, end in lines)
    if lines and not last_end:
        data = data[: -len(lines[-1][1])]
    if packing == "plain":
        raw = data
    elif packing == "gzip":
        raw = gzip.compress(data)
    else:
        raw = gzip.compress(data[: len(data) // 2]) + gzip.compress(data[len(data) // 2 :])
        raw += b"\0" * 3  # zero padding after the last member, as some writers leave

    assume(packing != "plain" or not data.startswith(b"\x1f\x8b"))  # that would be gzip
    if cut is None or packing == "plain":
        got, failure, _ = read_all(raw, max_bytes)
        assert failure is None
        assert got == reference_lines(data, max_bytes)
        return

    # A truncated gzip file: the lines completed in what decompresses, then the failure.
    damaged = raw[: max(10, int(len(raw) * cut))]
    inflater = zlib.decompressobj(31)
    prefix = inflater.decompress(damaged)
    while inflater.eof and inflater.unused_data.lstrip(b"\0"):
        rest = inflater.unused_data.lstrip(b"\0")
        inflater = zlib.decompressobj(31)
        prefix += inflater.decompress(rest)
    got, failure, number = read_all(damaged, max_bytes)
    if inflater.eof:  # the cut fell between members or in the padding: a valid file
        assert failure is None and got == reference_lines(prefix, max_bytes)
        return
    assert failure is not None and "gzip" in failure
    normalized = prefix.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    complete = normalized.count(b"\n")
    assert number == complete
    expected = [item for item in reference_lines(data, max_bytes) if item[0] <= complete]
    # A line cut by the damage but already over the limit is reported over the limit.
    assert got in (expected, [*expected, (complete + 1, None)])


# --- whole files, on both databases ----------------------------------------------------------


@dataclass
class Line:
    """One generated line: its JSON, and what ingest must make of it."""

    obj: Any  # a dict, or raw bytes (garbage)
    field: str | None = None  # None: good; else the field its rejection names ("" none)
    occurred_at: datetime | None = None  # for good lines with a time
    meta: dict[str, Any] | None = None  # for good lines with metadata


def _chat(i: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]


def _time_of(seconds: int) -> datetime | None:
    if not FIRST_SECOND <= seconds <= LAST_SECOND:
        return None
    days, rest = divmod(seconds, 86_400)
    return EPOCH + timedelta(days=days, seconds=rest)


@st.composite
def numeric_time(draw: st.DrawFn) -> Line:
    seconds = draw(
        st.one_of(
            st.integers(-(2**70), 2**70),
            st.integers(FIRST_SECOND - 3, FIRST_SECOND + 3),
            st.integers(LAST_SECOND - 3, LAST_SECOND + 3),
            st.integers(2 * 10**10, 4 * 10**10),  # once read as milliseconds
        )
    )
    as_text = draw(st.booleans())
    when = _time_of(seconds)
    obj = {"messages": _chat("t"), "timestamp": str(seconds) if as_text else seconds}
    return Line(obj, None if when else "timestamp", when)


@st.composite
def iso_time(draw: st.DrawFn) -> Line:
    year = draw(st.sampled_from([1, 2, 2025, 9998, 9999]))
    month = draw(st.sampled_from([1, 12]))
    day = 1 if month == 1 else 31
    clock = draw(st.sampled_from(["00:00:00", "00:59:59", "23:00:00", "23:59:59"]))
    minutes = draw(st.integers(-23 * 60, 23 * 60).map(lambda m: m - m % 15))
    sign = "-" if minutes < 0 else "+"
    zone = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    text = f"{year:04d}-{month:02d}-{day:02d}T{clock}{zone}"
    local = datetime.fromisoformat(f"{year:04d}-{month:02d}-{day:02d}T{clock}")
    try:
        when: datetime | None = (local - timedelta(minutes=minutes)).replace(tzinfo=UTC)
    except OverflowError:
        when = None
    return Line({"messages": _chat("i"), "timestamp": text}, None if when else "timestamp", when)


@st.composite
def openai_created(draw: st.DrawFn) -> Line:
    created = draw(
        st.one_of(
            st.integers(-(2**65), 2**65),
            st.integers(LAST_SECOND - 2, LAST_SECOND + 2),
            st.integers(FIRST_SECOND - 2, FIRST_SECOND + 2),
        )
    )
    when = _time_of(created)
    obj = {
        "request": {"messages": [{"role": "user", "content": "q"}]},
        "response": {
            "created": created,
            "choices": [{"message": {"role": "assistant", "content": "a"}}],
        },
    }
    return Line(obj, None if when else "response.created", when)


def _kept(value: Any) -> Any:
    """An integer as the documented rule stores it."""
    return value if -(2**63) <= value <= 2**64 - 1 else str(value)


@st.composite
def big_integers(draw: st.DrawFn) -> Line:
    values = draw(st.lists(st.integers(-(2**80), 2**80), min_size=1, max_size=4))
    meta = {"v": values, "one": values[0], "deep": {"x": [values[-1]]}}
    expected = {
        "v": [_kept(v) for v in values],
        "one": _kept(values[0]),
        "deep": {"x": [_kept(values[-1])]},
    }
    return Line({"messages": _chat("b"), "metadata": meta}, None, meta=expected)


@st.composite
def long_id(draw: st.DrawFn) -> Line:
    length = draw(st.integers(MAX_ID_CHARS - 3, MAX_ID_CHARS + 3))
    return Line({"messages": _chat("l"), "id": length}, None if length <= MAX_ID_CHARS else "id")


garbage = st.sampled_from([b"{broken", b"\xff\xfe{}", b"[1, 2]", b'{"messages": []}']).map(
    lambda raw: Line(raw, "")
)
plain = st.just(None).map(lambda _: Line({"messages": _chat("p")}))
any_line = st.one_of(numeric_time(), iso_time(), openai_created(), big_integers(), long_id())
any_line = st.one_of(any_line, garbage, plain)


@FAST
@given(
    lines=st.lists(st.tuples(any_line, st.integers(0, 2)), min_size=1, max_size=12),
    end=st.sampled_from(list(ENDS)),
    bom=st.booleans(),
    packing=st.sampled_from(["plain", "gzip", "damaged gzip"]),
    damage_after=st.integers(0, 12),
)
def test_generated_files_keep_every_good_line_and_quarantine_every_bad_one(
    db_engine: Engine,
    tmp_path: Path,
    lines: list[tuple[Line, int]],
    end: str,
    bom: bool,
    packing: str,
    damage_after: int,
) -> None:
    source = uuid.uuid4().hex[:12]
    sep = ENDS[end]
    chunks: list[bytes] = [BOM] if bom else []
    numbered: dict[int, Line] = {}
    ids: dict[int, str] = {}
    number = 0
    for i, (line, blanks) in enumerate(lines):
        chunks.append(sep * blanks)
        number += blanks + 1
        numbered[number] = line
        if isinstance(line.obj, dict):
            obj = dict(line.obj)
            given_id = obj.get("id")
            # Every record gets a unique id; an int `id` asks for a string of that length.
            tag = f"{source}-{i}-"
            obj["id"] = tag + "x" * (given_id - len(tag)) if isinstance(given_id, int) else tag
            ids[number] = obj["id"]
            chunks.append(json.dumps(obj).encode() + sep)
        else:
            chunks.append(line.obj + sep)
    data = b"".join(chunks)

    damage_line: int | None = None
    path = tmp_path / f"{source}.jsonl"
    if packing == "plain":
        path.write_bytes(data)
    elif packing == "gzip":
        path.write_bytes(gzip.compress(data))
    else:
        # The first `damage_after` lines, flushed to a byte boundary, then an invalid block.
        keep = b"".join(chunks[: (1 if bom else 0) + 2 * min(damage_after, len(lines))])
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        path.write_bytes(compressor.compress(keep) + compressor.flush(zlib.Z_FULL_FLUSH) + b"\x07")
        damage_line = keep.replace(b"\r\n", b"\n").replace(b"\r", b"\n").count(b"\n") + 1

    report = run(db_engine, [path], tmp_path, source=source, batch_size=3)

    seen = {n: line for n, line in numbered.items() if damage_line is None or n < damage_line}
    good = {n: line for n, line in seen.items() if line.field is None}
    bad = {n: line for n, line in seen.items() if line.field is not None}
    assert report.ingested == len(good)
    assert report.rejected == len(bad) + (damage_line is not None)
    assert report.ingested + report.duplicates + report.rejected == report.read

    entries: dict[int, dict[str, Any]] = {}
    for qfile in report.quarantine_files:
        for text in Path(qfile).read_text(encoding="utf-8").splitlines():
            entry = json.loads(text)
            entries[entry["line"]] = entry
    assert set(entries) == set(bad) | ({damage_line} if damage_line else set())
    for n, line in bad.items():
        if line.field:
            assert entries[n]["error"].startswith(f"{line.field}: "), entries[n]

    with db_engine.connect() as conn:
        rows = {
            row.external_id: row
            for row in conn.execute(select(Interaction).where(Interaction.source == source))
        }
    assert len(rows) == len(good)
    for n, line in good.items():
        row = rows[ids[n]]
        if line.occurred_at is not None:
            assert row.occurred_at == line.occurred_at
        if line.meta is not None:
            assert row.meta == line.meta
