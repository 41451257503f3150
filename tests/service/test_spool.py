"""The spool folder (`daemon/service/spool.py`) in-process: a file with rejected lines goes
to `failed/` with `NAME.errors.json` carrying every error the ingest reported, the
per-line errors and the warnings that its quarantine could not be written, beside the
counts. Database tests run on SQLite and PostgreSQL (`db_engine`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sqlalchemy import Engine

from daemon.service.spool import DONE, FAILED, scan_spool
from daemon.settings import IngestSettings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ANSWER = {"role": "assistant", "content": "fine"}


def spool_with_bad_lines(tmp_path: Path) -> Path:
    folder = tmp_path / "spool"
    folder.mkdir()
    shutil.copy(EXAMPLES / "bad-lines.jsonl", folder / "bad.jsonl")
    return folder


def test_a_failed_file_carries_its_quarantine_errors(db_engine: Engine, tmp_path: Path) -> None:
    folder = spool_with_bad_lines(tmp_path)
    blocked = tmp_path / "quarantine"
    blocked.write_text("a file where the quarantine folder should be")
    scan = scan_spool(db_engine, folder, blocked)
    assert scan.failed == ["bad.jsonl"] and scan.ingested == 1 and scan.rejected == 4
    errors = json.loads((folder / FAILED / "bad.jsonl.errors.json").read_text())
    assert (errors["read"], errors["ingested"], errors["rejected"]) == (5, 1, 4)
    assert [e["line"] for e in errors["errors"]] == [1, 2, 3, 4]
    assert errors["quarantine_files"] == []
    [problem] = errors["quarantine_errors"]
    assert str(blocked) in problem
    assert (folder / FAILED / "bad.jsonl").exists() and not (folder / "bad.jsonl").exists()


def test_a_failed_file_with_a_working_quarantine_says_where_its_lines_went(
    db_engine: Engine, tmp_path: Path
) -> None:
    folder = spool_with_bad_lines(tmp_path)
    quarantine = tmp_path / "quarantine"
    scan_spool(db_engine, folder, quarantine)
    errors = json.loads((folder / FAILED / "bad.jsonl.errors.json").read_text())
    assert errors["quarantine_errors"] == []
    [copied] = errors["quarantine_files"]
    assert Path(copied).parent == quarantine
    assert len(Path(copied).read_text().splitlines()) == 4


def test_the_spool_reads_with_the_ingest_settings(db_engine: Engine, tmp_path: Path) -> None:
    """`ingest.max_line_bytes` holds for spooled files as for `tutord ingest`: a line over it
    is rejected (and the file fails), one under it is stored."""
    folder = tmp_path / "spool"
    folder.mkdir()
    line = json.dumps({"messages": [{"role": "user", "content": "x" * 300}, ANSWER]})
    (folder / "long.jsonl").write_text(line + "\n")
    scan = scan_spool(db_engine, folder, tmp_path / "q", IngestSettings(max_line_bytes=200))
    assert scan.failed == ["long.jsonl"] and scan.rejected == 1
    (folder / "again.jsonl").write_text(line + "\n")
    scan = scan_spool(db_engine, folder, tmp_path / "q", IngestSettings(max_line_bytes=1000))
    assert scan.done == ["again.jsonl"] and scan.ingested == 1
    assert (folder / DONE / "again.jsonl").exists()
