"""The spool folder: log files dropped there are ingested and moved out of the way.

`scan_spool` ingests every complete file in the folder (oldest first) with `tutord
ingest`'s reader and validation (`replay.ingest.ingest_files`, source `spool`). A file whose
every line was stored (or was a duplicate) moves to `done/`; a file with rejected lines
moves to `failed/` with `<name>.errors.json` beside it (its good lines are stored all the
same, and its bad lines are in the quarantine as with `tutord ingest`); that file carries
the per-line errors and the ingest's `quarantine_errors`, the warnings that a quarantine
write failed. A file is complete when its name does not start with '.' and does not end in
`.tmp` or `.part`: writers write under such a name and rename. When the database fails, the
file stays where it is for the next scan. A name already taken in `done/` or `failed/` gets
a numeric suffix.

It does not schedule itself (`daemon/service/runner.py` does) or watch with inotify.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from daemon.settings import IngestSettings
from replay.ingest import IngestReport, ingest_files
from stages.atomic import write_atomic

log = logging.getLogger(__name__)

DONE = "done"
FAILED = "failed"
INCOMPLETE_SUFFIXES = (".tmp", ".part")


@dataclass
class SpoolScan:
    """What one scan did: file names moved to done/ and failed/, and what was stored."""

    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    ingested: int = 0
    rejected: int = 0


def waiting(folder: Path) -> list[Path]:
    """Complete files waiting in the spool folder, oldest first."""
    if not folder.is_dir():
        return []
    files = [
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(INCOMPLETE_SUFFIXES)
    ]
    return sorted(files, key=lambda p: (p.stat().st_mtime, p.name))


def _free_name(folder: Path, name: str) -> Path:
    target = folder / name
    n = 1
    while target.exists() or target.with_name(target.name + ".errors.json").exists():
        target = folder / f"{name}.{n}"
        n += 1
    return target


def _move(path: Path, sub: str) -> Path:
    folder = path.parent / sub
    folder.mkdir(exist_ok=True)
    target = _free_name(folder, path.name)
    path.rename(target)
    return target


ERROR_KEYS = (
    "read",
    "ingested",
    "duplicates",
    "rejected",
    "errors",
    "quarantine_files",
    "quarantine_errors",
)
"""What `<name>.errors.json` holds, from the ingest report: the counts, the per-line errors,
where the rejected lines were copied, and why some could not be (a quarantine write that
failed)."""


def _errors_json(report: IngestReport) -> str:
    data = report.to_dict()
    return json.dumps({k: data[k] for k in ERROR_KEYS}, indent=1)


def scan_spool(
    engine: Engine,
    folder: Path,
    quarantine_dir: Path | None,
    ingest: IngestSettings | None = None,
) -> SpoolScan:
    """Ingest and move every complete file waiting in `folder`, read as `tutord ingest`
    reads with the `ingest` settings (longest line, rows per transaction)."""
    scan = SpoolScan()
    ingest = ingest or IngestSettings()
    for path in waiting(folder):
        try:
            report = ingest_files(
                engine,
                [path],
                source="spool",
                quarantine_dir=quarantine_dir,
                max_line_bytes=ingest.max_line_bytes,
                batch_size=ingest.batch_size,
            )
        except SQLAlchemyError as exc:
            log.error("spool: %s stays for the next scan: the database failed: %s", path, exc)
            break
        scan.ingested += report.ingested
        scan.rejected += report.rejected
        if report.rejected:
            target = _move(path, FAILED)
            write_atomic(target.with_name(target.name + ".errors.json"), _errors_json(report))
            scan.failed.append(target.name)
            for problem in report.quarantine_errors:
                log.warning("spool: %s: %s", path.name, problem)
            log.warning(
                "spool: %s: %d stored, %d rejected -> %s",
                path.name,
                report.ingested,
                report.rejected,
                target,
            )
        else:
            target = _move(path, DONE)
            scan.done.append(target.name)
            log.info(
                "spool: %s: %d stored, %d duplicates", path.name, report.ingested, report.duplicates
            )
    return scan
