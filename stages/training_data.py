"""A stage's training rows: read from its JSONL file, checked, summarized, made a `Dataset`.

It does not know any stage's row format beyond the columns a stage says it requires (the
stage modules turn rows into what their TRL trainer wants), and writes no file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stages.stage_io import DatasetSummary, read_jsonl, summarize_dataset


def load_rows(
    path: str | Path, required: Sequence[str]
) -> tuple[list[dict[str, Any]], DatasetSummary]:
    """The rows of a JSONL training file, each with every column of the file (missing ones
    None), and its summary. A row without one of the `required` columns is an error."""
    rows = read_jsonl(path)
    if not rows:
        raise ValueError(f"{path}: no training rows")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    for number, row in enumerate(rows, start=1):
        missing = [key for key in required if row.get(key) in (None, "", [])]
        if missing:
            raise ValueError(f"{path}: row {number} has no {', '.join(missing)}")
    full = [{key: row.get(key) for key in columns} for row in rows]
    return full, summarize_dataset(path, rows)


def to_dataset(rows: list[dict[str, Any]]) -> Any:
    """A `datasets.Dataset` in memory (no cache files) from rows with the same columns."""
    from datasets import Dataset

    return Dataset.from_list(rows)
