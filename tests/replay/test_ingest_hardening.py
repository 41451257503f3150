"""Ingest of hostile and damaged input, on SQLite and PostgreSQL (`db_engine`).

Each case once made ingest crash, drop good lines or store a wrong value: timestamps
out of range, milliseconds-sized seconds, integers beyond 64 bits, damaged gzip data,
read errors, quarantines that cannot be written, a BOM, CR line ends, blank-line
floods, non-regular files, over-long ids and unbounded batches.
"""

from __future__ import annotations

import gzip
import json
import os
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from replay import ingest as ingest_module
from replay import ingest_quarantine
from replay.ingest import MAX_BATCH_SIZE, IngestReport, _Writer
from replay.models import Interaction
from replay.records import MAX_ID_CHARS
from tests.replay.test_ingest import count, interaction, run, write_jsonl

CHAT = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]


def openai_line(i: int, created: Any) -> dict[str, Any]:
    return {
        "id": f"o{i}",
        "request": {"model": "m", "messages": [{"role": "user", "content": "q"}]},
        "response": {
            "created": created,
            "choices": [{"message": {"role": "assistant", "content": "a"}}],
        },
    }


def stored(engine: Engine, **where: Any) -> dict[str, Interaction]:
    """Stored interactions by external id (source 'test' unless given)."""
    source = where.get("source", "test")
    with engine.connect() as conn:
        rows = conn.execute(select(Interaction).where(Interaction.source == source)).all()
    return {row.external_id: row for row in rows}


def quarantined(report: IngestReport) -> dict[int, dict[str, Any]]:
    entries: dict[int, dict[str, Any]] = {}
    for qfile in report.quarantine_files:
        for line in Path(qfile).read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            entries[entry["line"]] = entry
    return entries


def assert_consistent(report: IngestReport) -> None:
    assert report.ingested + report.duplicates + report.rejected == report.read


# --- times -----------------------------------------------------------------------------

BAD_TIMES: list[tuple[dict[str, Any], str]] = [
    (interaction(100, timestamp="0001-01-01T00:00:00+01:00"), "timestamp"),
    (interaction(101, timestamp="9999-12-31T23:59:59-01:00"), "timestamp"),
    (interaction(102, timestamp=2**62), "timestamp"),
    (interaction(103, timestamp=10**400), "timestamp"),  # an integer beyond 64 bits
    (interaction(104, timestamp=1.0e300), "timestamp"),
    (interaction(105, timestamp=-62_135_596_801), "timestamp"),  # one second before year 1
    (interaction(106, timestamp=1_764_000_000_000), "timestamp"),  # milliseconds
    (interaction(107, timestamp="1764000000000"), "timestamp"),
    (openai_line(108, 10**15), "response.created"),
    (openai_line(109, -62_135_596_801 - 366 * 86_400), "response.created"),  # year 0
    (openai_line(110, 2**62), "response.created"),
    (openai_line(111, 10**30), "response.created"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "timestamp": 10**17}, "timestamp"),
]
GOOD_TIMES: list[tuple[dict[str, Any], datetime]] = [
    (interaction(200, timestamp="0001-01-01T00:00:00Z"), datetime(1, 1, 1, tzinfo=UTC)),
    (interaction(201, timestamp="0001-01-01T00:30:00+00:30"), datetime(1, 1, 1, tzinfo=UTC)),
    (
        interaction(202, timestamp="9999-12-31T23:59:59Z"),
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
    ),
    (interaction(203, timestamp=253_402_300_799), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
    (interaction(204, timestamp=-62_135_596_800), datetime(1, 1, 1, tzinfo=UTC)),
    # Past 2e10 seconds a number is still seconds: year 2920, not 1970.
    (interaction(205, timestamp=30_000_000_000), datetime(2920, 8, 30, 5, 20, tzinfo=UTC)),
    (interaction(206, timestamp="30000000000"), datetime(2920, 8, 30, 5, 20, tzinfo=UTC)),
    (interaction(207, timestamp=1.5), datetime(1970, 1, 1, 0, 0, 1, 500_000, tzinfo=UTC)),
    (openai_line(208, 1_764_000_000), datetime(2025, 11, 24, 16, 0, tzinfo=UTC)),
    (openai_line(209, 253_402_300_799), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
]


def test_times_out_of_range_cost_only_their_line(db_engine: Engine, tmp_path: Path) -> None:
    # One bad time early on once ended the file ("cannot read the file"): 1 of 1002 kept.
    lines: list[Any] = [interaction(0)]
    lines += [line for line, _ in BAD_TIMES]
    lines += [line for line, _ in GOOD_TIMES]
    lines += [interaction(1000 + i) for i in range(1000)]
    path = write_jsonl(tmp_path / "times.jsonl", lines)
    report = run(db_engine, [path], tmp_path, batch_size=64)

    assert_consistent(report)
    assert report.rejected == len(BAD_TIMES)
    assert report.ingested == 1 + len(GOOD_TIMES) + 1000
    entries = quarantined(report)
    assert sorted(entries) == list(range(2, 2 + len(BAD_TIMES)))
    for number, (_, field) in enumerate(BAD_TIMES, start=2):
        assert entries[number]["error"].startswith(f"{field}: "), entries[number]
        assert "outside years 1 to 9999" in entries[number]["error"]
        assert json.loads(entries[number]["raw"]) == lines[number - 1]
    assert "looks like milliseconds" in entries[8]["error"]

    rows = stored(db_engine)
    assert len(rows) == 1 + len(GOOD_TIMES) + 1000
    for line, expected in GOOD_TIMES:
        assert rows[line["id"]].occurred_at == expected, line
    assert rows["o208"].meta["openai"]["response"]["created"] == 1_764_000_000


# --- numbers -----------------------------------------------------------------------------


def test_integers_beyond_64_bits_keep_their_value_as_strings(
    db_engine: Engine, tmp_path: Path
) -> None:
    meta = {
        "big": 2**70,
        "small": -(2**63) - 1,
        "u64_max": 2**64 - 1,
        "i64_min": -(2**63),
        "nested": [{"x": 10**30}, 12345678901234567890123],
        "float": 1.5,
        "digits_in_text": "1234567890123456789012345",
    }
    lines: list[Any] = [
        interaction(1, metadata=meta),
        interaction(2, extra_top_level=2**100),  # unknown keys go under metadata
        {"id": 10**25, "messages": CHAT},  # an id beyond 64 bits: its digits
        json.dumps(interaction(3))[:-1] + ', "x": 1e400}',  # too large for a float
        json.dumps(interaction(4))[:-1] + ', "metadata": {"deep": [1, -2e999]}}',
    ]
    path = write_jsonl(tmp_path / "numbers.jsonl", lines)
    report = run(db_engine, [path], tmp_path)

    assert_consistent(report)
    assert (report.ingested, report.rejected) == (3, 2)
    rows = stored(db_engine)
    assert rows["r1"].meta == {
        "big": str(2**70),
        "small": str(-(2**63) - 1),
        "u64_max": 2**64 - 1,
        "i64_min": -(2**63),
        "nested": [{"x": str(10**30)}, "12345678901234567890123"],
        "float": 1.5,
        "digits_in_text": "1234567890123456789012345",
    }
    assert rows["r2"].meta == {"extra_top_level": str(2**100)}
    assert str(10**25) in rows
    errors = {e.line: e.message for e in report.errors}
    assert errors[4] == "x: the number is too large for a 64-bit float"
    assert errors[5] == "metadata.deep[1]: the number is too large for a 64-bit float"


# --- line ends, BOM ------------------------------------------------------------------------


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_bom_and_any_line_end_are_accepted(db_engine: Engine, tmp_path: Path, end: bytes) -> None:
    body = [json.dumps(interaction(i)).encode() for i in range(5)]
    body[2] = b"{not json"
    data = b"\xef\xbb\xbf" + end.join(body) + end
    path = tmp_path / "bom.jsonl"
    path.write_bytes(data)
    report = run(db_engine, [path], tmp_path)
    assert (report.read, report.ingested, report.rejected) == (5, 4, 1)
    assert [(e.line, e.message.split(":")[0]) for e in report.errors] == [(3, "not JSON")]
    assert set(stored(db_engine)) == {"r0", "r1", "r3", "r4"}

    gz = tmp_path / "bom.jsonl.gz"  # the same inside gzip
    gz.write_bytes(gzip.compress(data.replace(b"r0", b"g0")))
    report = run(db_engine, [gz], tmp_path)
    assert (report.ingested, report.duplicates, report.rejected) == (1, 3, 1)


def test_a_bom_on_a_later_line_is_accepted_too(db_engine: Engine, tmp_path: Path) -> None:
    # `cat a.jsonl b.jsonl` of two files saved with a BOM.
    path = tmp_path / "cat.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + json.dumps(interaction(1)).encode()
        + b"\n\xef\xbb\xbf"
        + json.dumps(interaction(2)).encode()
        + b"\n"
    )
    report = run(db_engine, [path], tmp_path)
    assert (report.ingested, report.rejected) == (2, 0)


def test_a_gzip_flood_of_blank_lines_is_read_quickly(db_engine: Engine, tmp_path: Path) -> None:
    # 256 MiB of newlines is 255 KiB of gzip; it once took a Python loop turn per line.
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\n" * (1 << 20)
    parts = [compressor.compress(block) for _ in range(256)]
    parts.append(compressor.compress(json.dumps(interaction(1)).encode() + b"\n"))
    parts.append(compressor.flush())
    path = tmp_path / "blank.jsonl.gz"
    path.write_bytes(b"".join(parts))
    assert path.stat().st_size < 300_000

    started = time.monotonic()
    report = run(db_engine, [path], tmp_path)
    elapsed = time.monotonic() - started
    assert (report.read, report.ingested, report.rejected) == (1, 1, 0)
    assert elapsed < 30, f"{elapsed:.1f} s for 256 MiB of blank lines"


# --- damaged files --------------------------------------------------------------------------


def _gzip_with_invalid_block(body: bytes, tail: bytes = b"") -> bytes:
    """`body` compressed and flushed to a byte boundary, then a deflate block of the
    invalid type 3, then `tail`: the damage starts exactly after `body`."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    return compressor.compress(body) + compressor.flush(zlib.Z_FULL_FLUSH) + b"\x07" + tail


def test_corrupt_gzip_keeps_every_line_before_the_damage(db_engine: Engine, tmp_path: Path) -> None:
    body = b"".join(json.dumps(interaction(i)).encode() + b"\n" for i in range(1001))
    path = tmp_path / "corrupt.jsonl.gz"
    path.write_bytes(_gzip_with_invalid_block(body, os.urandom(5000)))
    report = run(db_engine, [path], tmp_path)

    assert_consistent(report)
    assert (report.ingested, report.rejected) == (1001, 1)
    [error] = report.errors
    assert error.line == 1002
    assert "the gzip data is damaged (invalid block type)" in error.message
    assert quarantined(report)[1002]["raw"] is None
    assert count(db_engine, Interaction) == 1001


@pytest.mark.parametrize("damage", ["crc", "trailing garbage", "truncated member"])
def test_other_gzip_damage_keeps_every_line(db_engine: Engine, tmp_path: Path, damage: str) -> None:
    body = b"".join(json.dumps(interaction(i)).encode() + b"\n" for i in range(300))
    data = gzip.compress(body)
    if damage == "crc":
        data = data[:-8] + bytes([data[-8] ^ 0xFF]) + data[-7:]
    elif damage == "trailing garbage":
        data += b"\0\0not gzip"
    else:
        data += gzip.compress(b"more\n" * 1000)[:12]  # a second member cut in its header
    path = tmp_path / "damaged.jsonl.gz"
    path.write_bytes(data)
    report = run(db_engine, [path], tmp_path)
    assert (report.ingested, report.rejected) == (300, 1)
    assert report.errors[0].line == 301
    assert report.errors[0].message.startswith("cannot read the file from this line on")


class _FailingFile:
    """A file whose reads fail with EIO once `good` bytes have been read."""

    def __init__(self, inner: Any, good: int) -> None:
        self.inner, self.left = inner, good

    def read(self, size: int) -> bytes:
        if self.left <= 0:
            raise OSError(5, "Input/output error")
        data: bytes = self.inner.read(min(size, self.left))
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.inner.close()


def test_a_read_error_keeps_every_line_before_it(
    db_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [json.dumps(interaction(i)).encode() + b"\n" for i in range(2000)]
    path = tmp_path / "eio.jsonl"
    path.write_bytes(b"".join(lines))
    good = sum(len(line) for line in lines[:1500]) + 10  # into line 1501
    real_open = ingest_module.open_log

    def failing_open(p: Path) -> tuple[Any, int]:
        fh, size = real_open(p)
        return _FailingFile(fh, good), size

    monkeypatch.setattr(ingest_module, "open_log", failing_open)
    report = run(db_engine, [path], tmp_path)
    assert (report.ingested, report.rejected) == (1500, 1)
    assert report.errors[0].line == 1501
    assert "read error: Input/output error" in report.errors[0].message


# --- the quarantine ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["a file in its place", "under a file", "rename fails"])
def test_a_quarantine_that_cannot_be_written_costs_no_good_line(
    db_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    qdir = tmp_path / "quarantine"
    if how == "a file in its place":
        qdir.write_text("not a folder")
    elif how == "under a file":
        (tmp_path / "afile").write_text("x")
        qdir = tmp_path / "afile" / "quarantine"
    else:
        qdir.mkdir()

        def refuse(src: Any, dst: Any) -> None:
            raise PermissionError(13, "Permission denied", str(dst))

        monkeypatch.setattr(ingest_quarantine.os, "replace", refuse)
    lines: list[Any] = [interaction(0), "{broken"] + [interaction(i) for i in range(1, 1000)]
    path = write_jsonl(tmp_path / "a.jsonl", lines)
    report = ingest_module.ingest_files(db_engine, [path], source="test", quarantine_dir=qdir)

    assert (report.ingested, report.rejected) == (1000, 1)
    assert report.errors[0].line == 2
    assert report.quarantine_files == []
    [problem] = report.quarantine_errors
    assert problem.startswith(f"{path}: the rejected lines could not be copied to {qdir}")
    assert count(db_engine, Interaction) == 1000
    if qdir.is_dir():
        assert list(qdir.iterdir()) == []  # no temporary file left behind


# --- what is not a regular file ---------------------------------------------------------------


def test_folders_fifos_and_missing_files_are_named_and_skipped(
    db_engine: Engine, tmp_path: Path
) -> None:
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    link = tmp_path / "dangling.jsonl"
    link.symlink_to(tmp_path / "gone")
    good = write_jsonl(tmp_path / "good.jsonl", [interaction(i) for i in range(3)])
    paths = [folder, fifo, tmp_path / "missing.jsonl", link, good]

    started = time.monotonic()
    report = run(db_engine, paths, tmp_path)
    assert time.monotonic() - started < 20  # the FIFO, with no writer, was not waited on
    assert report.ingested == 3
    assert [(e.file, e.line, e.message) for e in report.errors] == [
        (str(folder), 0, "cannot read the file: is a folder, not a file"),
        (str(fifo), 0, "cannot read the file: is a named pipe (FIFO), not a regular file"),
        (str(tmp_path / "missing.jsonl"), 0, "cannot read the file: no such file"),
        (str(link), 0, "cannot read the file: no such file"),
    ]
    assert report.rejected == 4 and report.files == [str(p) for p in paths]
    assert ingest_module.file_problem(folder) == "is a folder, not a file"
    assert ingest_module.file_problem(fifo) == "is a named pipe (FIFO), not a regular file"
    assert ingest_module.file_problem(link) == "is a symbolic link to a missing file"
    assert ingest_module.file_problem(tmp_path / "nope") == "no such file"
    assert ingest_module.file_problem(good) is None


# --- ids and batches --------------------------------------------------------------------------


def test_id_length_is_the_same_limit_on_both_databases(db_engine: Engine, tmp_path: Path) -> None:
    longest = "i" * MAX_ID_CHARS
    lines: list[Any] = [
        interaction(0, id=longest),
        interaction(1, id="j" * (MAX_ID_CHARS + 1)),
        interaction(2, id="k" * 100_000),
    ]
    path = write_jsonl(tmp_path / "ids.jsonl", lines)
    source = "s" * 200  # the longest source with the longest id still has one identity
    report = run(db_engine, [path], tmp_path, source=source, max_line_bytes=200_000)
    assert (report.ingested, report.rejected) == (1, 2)
    assert [e.line for e in report.errors] == [2, 3]
    assert all(
        e.message.startswith(f"id: String should have at most {MAX_ID_CHARS} characters")
        for e in report.errors
    )
    assert set(stored(db_engine, source=source)) == {longest}
    again = run(db_engine, [path], tmp_path, source=source, max_line_bytes=200_000)
    assert (again.ingested, again.duplicates) == (0, 1)


def test_batch_size_is_bounded(db_engine: Engine, tmp_path: Path) -> None:
    report = IngestReport()
    assert _Writer(db_engine, "s", report, 10**12).batch_size == MAX_BATCH_SIZE
    with pytest.raises(ValueError, match="batch_size"):
        _Writer(db_engine, "s", report, 0)
    with pytest.raises(ValueError, match="source"):
        _Writer(db_engine, "x" * 201, report, 10)
    path = write_jsonl(tmp_path / "a.jsonl", [interaction(i) for i in range(3)])
    assert run(db_engine, [path], tmp_path, batch_size=10**12).ingested == 3
