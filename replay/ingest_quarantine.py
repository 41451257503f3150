"""The quarantine file of one ingested input: its rejected lines, each with its error.

Lines go to `<folder>/<time>-<source>-<file>.rejected.jsonl.tmp`, renamed to the final
name once complete (written atomically). A quarantine that cannot be written (a
read-only folder, a file where the folder should be, a full disk) is given up: the
reason is kept in `problem` and handed once to `on_problem`, and nothing is raised, so
that a failed copy never stops the good lines of the input being stored. It decides
nothing about which lines are rejected (`replay.ingest` does).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

_MAX_NAME_CHARS = 120


class Quarantine:
    """Rejected lines of one input file, written to a temporary file then renamed."""

    def __init__(
        self,
        folder: Path | None,
        source: str,
        input_path: Path,
        on_problem: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.folder = folder
        self.input_path = input_path
        self.on_problem = on_problem
        self.problem: str | None = None
        self.final: Path | None = None
        self._tmp: Path | None = None
        self._fh: IO[str] | None = None
        if folder is not None:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{source}-{input_path.name}")
            self.final = folder / f"{stamp}-{safe[:_MAX_NAME_CHARS]}.rejected.jsonl"

    def add(self, number: int, error: str, raw: bytes | None) -> None:
        """Copy line `number` (None: not copied, only its error) with its error."""
        if self.final is None or self.problem is not None:
            return
        entry: dict[str, Any] = {"file": str(self.input_path), "line": number, "error": error}
        if raw is None:
            entry["raw"] = None
        else:
            try:
                entry["raw"] = raw.decode("utf-8")
            except UnicodeDecodeError:
                entry["raw_base64"] = base64.b64encode(raw).decode("ascii")
        try:
            if self._fh is None:
                self.final.parent.mkdir(parents=True, exist_ok=True)
                self._tmp = self.final.with_name(self.final.name + ".tmp")
                self._fh = self._tmp.open("w", encoding="utf-8")
            self._fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
        except OSError as exc:
            self._give_up(exc)

    def close(self) -> Path | None:
        """Finish the file; its path, or None when nothing was (or could be) kept."""
        if self._fh is None or self._tmp is None or self.final is None or self.problem:
            return None
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
            os.replace(self._tmp, self.final)
        except OSError as exc:
            self._give_up(exc)
            return None
        return self.final

    def _give_up(self, exc: OSError) -> None:
        where = self.final.parent if self.final is not None else self.folder
        reason = f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else exc
        self.problem = (
            f"{self.input_path}: the rejected lines could not be copied to {where}: {reason}"
        )
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.unlink(missing_ok=True)
        self.on_problem(self.problem)
