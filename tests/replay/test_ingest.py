"""Ingest of JSONL logs into the database (replay.ingest), on SQLite and PostgreSQL."""

from __future__ import annotations

import gzip
import json
import uuid
import zlib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from replay.ingest import IngestReport, ingest_files
from replay.models import Interaction, PreferencePair

CHAT = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]


def interaction(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"r{i}",
        "messages": [
            {"role": "user", "content": f"{i}+1?"},
            {"role": "assistant", "content": str(i + 1)},
        ],
        "task": "add",
        **extra,
    }


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    with path.open("wb") as fh:
        for line in lines:
            if isinstance(line, bytes):
                fh.write(line + b"\n")
            elif isinstance(line, str):
                fh.write(line.encode("utf-8") + b"\n")
            else:
                fh.write(json.dumps(line).encode("utf-8") + b"\n")
    return path


def run(engine: Engine, paths: list[Path], tmp_path: Path, **kw: Any) -> IngestReport:
    kw.setdefault("source", "test")
    return ingest_files(engine, paths, quarantine_dir=tmp_path / "quarantine", **kw)


def count(engine: Engine, model: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


def test_each_shape_is_stored(db_engine: Engine, tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            interaction(1, feedback={"rating": 1}, reference="2", extra_key="kept"),
            {"prompt": "1+1?", "chosen": "2", "rejected": "3", "task": "add"},
            {
                "request": {"messages": [{"role": "user", "content": "q"}]},
                "response": {
                    "model": "v1",
                    "choices": [{"message": {"role": "assistant", "content": "a"}}],
                },
            },
        ],
    )
    report = run(db_engine, [path], tmp_path)
    assert (report.read, report.ingested, report.rejected, report.duplicates) == (3, 3, 0, 0)
    assert (report.ingested_interactions, report.ingested_pairs) == (2, 1)
    with db_engine.connect() as conn:
        first = conn.execute(select(Interaction).where(Interaction.external_id == "r1")).one()
        assert first.messages[1]["content"] == "2"
        assert first.feedback_rating == 1 and first.reference == "2"
        assert first.meta == {"extra_key": "kept"}
        assert first.source == "test" and first.record_key == "id:test:r1"
        assert first.received_at.tzinfo is not None
        openai = conn.execute(select(Interaction).where(Interaction.adapter == "v1")).one()
        assert openai.messages[-1] == {"role": "assistant", "content": "a"}
        pair = conn.execute(select(PreferencePair)).one()
        assert (pair.chosen, pair.rejected, pair.origin) == ("2", "3", "ingest")
    assert not report.quarantine_files


def test_bad_lines_are_reported_quarantined_and_good_lines_kept(
    db_engine: Engine, tmp_path: Path
) -> None:
    lines: list[Any] = [
        interaction(1),
        "this is not json",
        "[1, 2, 3]",
        b'{"messages": "\xff\xfe"}',
        {"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]},
        {"messages": []},
        {"messages": CHAT, "feedback": {"rating": 5}},
        {"prompt": "q", "chosen": "a"},
        "",
        interaction(2, padding="x" * 600),
        interaction(3),
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    report = run(db_engine, [path], tmp_path, max_line_bytes=500)
    assert report.ingested == 2  # r1 and r3; r2 is over the size limit
    assert report.rejected == 8
    assert report.read == 10  # the blank line is not a record
    where = {e.line: e.message for e in report.errors}
    assert where[2].startswith("not JSON")
    assert "JSON object" in where[3]
    assert where[4].startswith("not UTF-8")
    assert where[5].startswith("messages[1].role:")
    assert where[6].startswith("messages:") and "empty" in where[6]
    assert where[7].startswith("feedback.rating:")
    assert where[8].startswith("rejected:")
    assert "longer than 500 bytes" in where[10]
    assert all(e.file == str(path) for e in report.errors)
    assert count(db_engine, Interaction) == 2

    [qfile] = report.quarantine_files
    entries = [json.loads(line) for line in Path(qfile).read_text().splitlines()]
    assert [e["line"] for e in entries] == [2, 3, 4, 5, 6, 7, 8, 10]
    assert entries[0]["raw"] == "this is not json"
    assert "raw_base64" in entries[2]  # the non-UTF-8 line is kept byte for byte
    assert entries[7]["raw"] is None  # oversize lines are not copied
    assert all(e["error"] for e in entries)
    assert not list((tmp_path / "quarantine").glob("*.tmp"))


def test_gzip_input(db_engine: Engine, tmp_path: Path) -> None:
    plain = write_jsonl(tmp_path / "a.jsonl", [interaction(i) for i in range(50)])
    gz = tmp_path / "a.jsonl.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    report = run(db_engine, [gz], tmp_path)
    assert report.ingested == 50 and report.rejected == 0


def test_truncated_gzip_keeps_what_was_readable(db_engine: Engine, tmp_path: Path) -> None:
    plain = write_jsonl(tmp_path / "a.jsonl", [interaction(i) for i in range(2000)])
    data = gzip.compress(plain.read_bytes())
    gz = tmp_path / "cut.jsonl.gz"
    gz.write_bytes(data[: len(data) // 2])
    complete = zlib.decompressobj(31).decompress(data[: len(data) // 2]).count(b"\n")
    report = run(db_engine, [gz], tmp_path)
    assert report.rejected == 1
    assert report.errors[0].line == complete + 1  # where reading stopped
    assert report.errors[0].message == (
        "cannot read the file from this line on: the gzip data ends early (the file is truncated)"
    )
    assert 0 < report.ingested == complete < 2000  # every complete line before the cut
    assert count(db_engine, Interaction) == report.ingested


def test_same_file_twice_adds_nothing(db_engine: Engine, tmp_path: Path) -> None:
    records = [interaction(i) for i in range(30)]
    records += [{"messages": CHAT, "task": f"t{i}"} for i in range(10)]  # no id: hashed
    path = write_jsonl(tmp_path / "a.jsonl", records)
    first = run(db_engine, [path], tmp_path, batch_size=7)
    second = run(db_engine, [path], tmp_path, batch_size=7)
    assert (first.ingested, first.duplicates) == (40, 0)
    assert (second.ingested, second.duplicates) == (0, 40)
    assert count(db_engine, Interaction) == 40


def test_identity_is_id_within_source_else_content(db_engine: Engine, tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "a.jsonl",
        [
            interaction(1),
            interaction(1, task="changed"),  # same id, same source: a duplicate
            {"messages": CHAT},
            {"messages": CHAT},  # same content, no id: a duplicate
        ],
    )
    report = run(db_engine, [path], tmp_path, source="app")
    assert (report.ingested, report.duplicates) == (2, 2)
    # The same ids from another source are other records; hashed records stay duplicates.
    report = run(db_engine, [path], tmp_path, source="other-app")
    assert (report.ingested, report.duplicates) == (1, 3)
    assert count(db_engine, Interaction) == 3


def test_several_files_and_progress(db_engine: Engine, tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [interaction(i) for i in range(5000)])
    b = write_jsonl(tmp_path / "b.jsonl", [interaction(i + 5000) for i in range(10)])
    seen: dict[str, list[int]] = {}

    def on_file(path: Path, size: int) -> Any:
        seen[path.name] = []
        return seen[path.name].append

    report = run(db_engine, [a, b], tmp_path, on_file=on_file)
    assert report.ingested == 5010
    assert report.files == [str(a), str(b)]
    assert seen["a.jsonl"][-1] == a.stat().st_size
    assert len(seen["a.jsonl"]) > 2 and seen["a.jsonl"] == sorted(seen["a.jsonl"])


# --- property: arbitrary lines never crash the ingest and never cost a good line ---

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(), children, max_size=3)
    ),
    max_leaves=8,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "bot"]), "content": st.text()}
    ),
    max_size=3,
)
garbage_line = st.one_of(
    st.binary(max_size=60),
    st.text(max_size=60),
    json_values.map(json.dumps),
    st.fixed_dictionaries(
        {"messages": messages},
        optional={
            "feedback": json_values,
            "task": json_values,
            "timestamp": json_values,
            "id": json_values,
        },
    ).map(json.dumps),
    st.fixed_dictionaries(
        {"prompt": json_values, "chosen": json_values, "rejected": json_values}
    ).map(json.dumps),
    st.fixed_dictionaries({"request": json_values, "response": json_values}).map(json.dumps),
)
good_line = st.builds(
    lambda q, a, rating: {
        "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
        "feedback": {"rating": rating},
    },
    st.text(max_size=40),
    st.text(max_size=40),
    st.sampled_from([-1, 0, 1]),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(st.tuples(st.booleans(), good_line, garbage_line), min_size=1, max_size=25))
def test_arbitrary_lines_never_crash_or_lose_good_lines(
    db_engine: Engine, tmp_path: Path, mix: list[tuple[bool, dict[str, Any], Any]]
) -> None:
    source = uuid.uuid4().hex
    lines: list[bytes] = []
    good_ids: list[str] = []
    for i, (is_good, good, garbage) in enumerate(mix):
        if is_good:
            good_ids.append(f"{source}-{i}")
            lines.append(json.dumps({**good, "id": good_ids[-1]}).encode())
        else:
            raw = (
                garbage if isinstance(garbage, bytes) else garbage.encode("utf-8", "surrogatepass")
            )
            lines.append(raw.replace(b"\n", b" ").replace(b"\r", b" "))
    path = tmp_path / f"{source}.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    report = run(db_engine, [path], tmp_path, source=source, batch_size=4)

    assert report.ingested + report.duplicates + report.rejected == report.read
    assert report.read == sum(1 for line in lines if line.strip())
    with db_engine.connect() as conn:
        stored = set(
            conn.execute(
                select(Interaction.external_id).where(Interaction.source == source)
            ).scalars()
        )
    assert set(good_ids) <= stored


def test_a_row_the_database_refuses_costs_only_itself(db_engine: Engine, tmp_path: Path) -> None:
    # PostgreSQL text cannot hold NUL; SQLite can. Either way no other line is lost.
    lines = [interaction(1), interaction(2, reference="a\u0000b"), interaction(3)]
    path = write_jsonl(tmp_path / "nul.jsonl", lines)
    report = run(db_engine, [path], tmp_path)
    if db_engine.dialect.name == "postgresql":
        assert (report.ingested, report.rejected) == (2, 1)
        assert report.errors[0].line == 2
        assert "database refused" in report.errors[0].message
        assert len(report.quarantine_files) == 1
    else:
        assert (report.ingested, report.rejected) == (3, 0)
    assert count(db_engine, Interaction) == report.ingested
