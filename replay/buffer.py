"""The replay buffer's contents: add training rows, count them per task, evict to a capacity.

Rows live in `replay_items`; `replay_counts` holds how many each (kind, task) has and is
kept in step inside the same transaction as every insert and delete, so sampling and
eviction read per-task counts from it instead of counting the big table. Every item
carries `rand_key`, a pseudo-random number in [0, 1) derived from the hash of its content
(`rand_key_for`), which `replay.sampling` reads along an index.

`evict` trims a kind down to a capacity by removing the oldest items of the largest tasks
first (water-filling, `replay.allocation.water_fill`).

It does not sample (`replay.sampling`), and nothing here decides when to evict or what to
add: `daemon/` does. This module reads and writes only `replay_items` and `replay_counts`,
and supports SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from sqlalchemy import Connection, Engine, Table, insert

from replay.allocation import water_fill
from replay.models import ReplayCount, ReplayItem
from replay.records import content_hash

Kind = Literal["sft", "pair", "prompt"]
KINDS: tuple[str, ...] = get_args(Kind)

_ITEMS: Table = ReplayItem.__table__  # type: ignore[assignment]
_COUNTS: Table = ReplayCount.__table__  # type: ignore[assignment]
_MAX_LABEL = 200  # String(200) columns: task, source
_DELETE_CHUNK = 50_000


@dataclass(frozen=True, slots=True)
class NewReplayItem:
    """A row to add: `payload` is what the stage trains on and must be JSON-serializable.

    `added_at` defaults to the time of the `add_items` call (UTC, timezone-aware).
    """

    kind: Kind
    task: str
    payload: dict[str, Any]
    source: str = "tutord"
    priority: float = 1.0
    added_at: datetime | None = None


# --------------------------------------------------------------------------- adding


def rand_key_for(digest: str) -> float:
    """The rand_key of a content hash (hex sha256): its top 53 bits as a float in [0, 1)."""
    return (int(digest[:16], 16) >> 11) / float(1 << 53)


def _check_label(value: Any, index: int, field: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"item {index}: {field} must be a non-empty string, got {value!r}")
    if len(value) > _MAX_LABEL:
        raise ValueError(f"item {index}: {field} is longer than {_MAX_LABEL} characters")


def _item_row(item: NewReplayItem, index: int, now: datetime) -> dict[str, Any]:
    if item.kind not in KINDS:
        raise ValueError(f"item {index}: kind must be one of {KINDS}, got {item.kind!r}")
    _check_label(item.task, index, "task")
    _check_label(item.source, index, "source")
    if not isinstance(item.payload, dict):
        raise ValueError(f"item {index}: payload must be a dict, got {type(item.payload).__name__}")
    try:  # what the JSON column will store; NaN is refused as PostgreSQL's json refuses it
        json.dumps(item.payload, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"item {index}: payload is not plain JSON: {exc}") from None
    priority = item.priority
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int | float)
        or not math.isfinite(priority)
        or priority <= 0
    ):
        raise ValueError(f"item {index}: priority must be a finite number > 0, got {priority!r}")
    added_at = now if item.added_at is None else item.added_at
    if not isinstance(added_at, datetime) or added_at.tzinfo is None:
        raise ValueError(f"item {index}: added_at must be a timezone-aware datetime")
    digest = content_hash([item.kind, item.task, item.payload])
    return {
        "kind": item.kind,
        "task": item.task,
        "source": item.source,
        "payload": item.payload,
        "content_hash": digest,
        "priority": float(priority),
        "rand_key": rand_key_for(digest),
        "added_at": added_at,
    }


def _dialect_insert(conn: Connection) -> Any:
    name = conn.dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    elif name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        raise NotImplementedError(f"the replay buffer supports SQLite and PostgreSQL, not {name}")
    return dialect_insert


def _add_counts(conn: Connection, deltas: dict[tuple[str, str], int]) -> None:
    """Upsert n = n + delta per (kind, task), in key order (a fixed lock order)."""
    if not deltas:
        return
    stmt = _dialect_insert(conn)(_COUNTS)
    stmt = stmt.on_conflict_do_update(
        index_elements=[_COUNTS.c.kind, _COUNTS.c.task],
        set_={"n": _COUNTS.c.n + stmt.excluded.n},
    )
    conn.execute(stmt, [{"kind": k, "task": t, "n": n} for (k, t), n in sorted(deltas.items())])


def add_items(engine: Engine, items: Iterable[NewReplayItem]) -> int:
    """Insert `items` and bump their (kind, task) counts, in one transaction; return how many.

    All items are validated first: a bad one raises ValueError naming its index and
    field, and nothing is written. Identical content is not merged: adding the same item
    twice stores it twice (with the same content_hash and rand_key).
    """
    now = datetime.now(UTC)
    rows = [_item_row(item, i, now) for i, item in enumerate(items)]
    if not rows:
        return 0
    deltas: dict[tuple[str, str], int] = {}
    for row in rows:
        key = (row["kind"], row["task"])
        deltas[key] = deltas.get(key, 0) + 1
    with engine.begin() as conn:
        _dialect_insert(conn)  # refuse unsupported backends before writing anything
        conn.execute(insert(_ITEMS), rows)
        _add_counts(conn, deltas)
    return len(rows)


# --------------------------------------------------------------------------- counts


def check_kind(kind: Any) -> None:
    """Raise ValueError unless `kind` is one of `KINDS`."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def kind_counts(conn: Connection, kind: str) -> dict[str, int]:
    """{task: n} of one kind from `replay_counts` (empty tasks left out), on `conn`."""
    result = conn.exec_driver_sql(
        f"SELECT task, n FROM replay_counts WHERE kind = {param_mark(conn)} AND n > 0", (kind,)
    )
    return {task: int(n) for task, n in result}


def counts(engine: Engine, kind: Kind | None = None) -> dict[str, dict[str, int]]:
    """How many items each task holds, per kind: {kind: {task: n}} (empty tasks left out)."""
    if kind is not None:
        check_kind(kind)
    with engine.connect() as conn:
        if kind is None:
            result = conn.exec_driver_sql("SELECT kind, task, n FROM replay_counts WHERE n > 0")
        else:
            mark = param_mark(conn)
            result = conn.exec_driver_sql(
                f"SELECT kind, task, n FROM replay_counts WHERE kind = {mark} AND n > 0", (kind,)
            )
        out: dict[str, dict[str, int]] = {}
        for k, task, n in result:
            out.setdefault(k, {})[task] = int(n)
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}


def param_mark(conn: Connection) -> str:
    """The DBAPI placeholder of `conn`'s driver ("?" or "%s") for raw SQL."""
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


# --------------------------------------------------------------------------- eviction


def eviction_quotas(sizes: Sequence[int], capacity: int) -> list[int]:
    """How many items each task keeps when `capacity` must hold them all: water-filling.

    Each task keeps min(size, level), the level being as high as the capacity allows, so
    the largest tasks lose items first and every task keeps at least
    min(size, capacity // tasks). Leftover units go to the largest tasks.
    """
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    return water_fill(sizes, capacity, order)


def evict(engine: Engine, kind: Kind, capacity: int) -> int:
    """Trim `kind` to at most `capacity` items; return how many were removed.

    Per task, the quota comes from water-filling (`eviction_quotas`), and the task's
    oldest items (by added_at, then id) above its quota are deleted, with the counts, in
    one transaction. Water-filling keeps every task at or above
    min(its count, capacity // number of tasks): the largest tasks shrink first and a
    small task is never evicted away.
    """
    check_kind(kind)
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
        raise ValueError(f"capacity must be an integer >= 0, got {capacity!r}")
    removed = 0
    with engine.begin() as conn:
        per_task = kind_counts(conn, kind)
        names = sorted(per_task)
        sizes = [per_task[t] for t in names]
        if sum(sizes) <= capacity:
            return 0
        quotas = eviction_quotas(sizes, capacity)
        p = param_mark(conn)
        delete_sql = (
            f"DELETE FROM replay_items WHERE id IN (SELECT id FROM replay_items"
            f" WHERE kind = {p} AND task = {p} ORDER BY added_at, id LIMIT {p})"
        )
        update_sql = f"UPDATE replay_counts SET n = n - {p} WHERE kind = {p} AND task = {p}"
        for task, size, quota in zip(names, sizes, quotas, strict=True):
            excess = size - quota
            gone = 0
            while excess > 0:
                step = min(excess, _DELETE_CHUNK)
                deleted = conn.exec_driver_sql(delete_sql, (kind, task, step)).rowcount
                gone += deleted
                excess -= step
                if deleted < step:  # the counts row was ahead of the table
                    break
            if gone:
                conn.exec_driver_sql(update_sql, (gone, kind, task))
                removed += gone
    return removed
