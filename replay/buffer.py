"""The replay buffer: add training rows, sample them by policy, evict to a capacity.

Rows live in `replay_items`; `replay_counts` holds how many each (kind, task) has and is
kept in step inside the same transaction as every insert and delete, so sampling and
eviction read per-task counts from it instead of counting the big table.

Sampling never scans the table. Every item carries `rand_key`, a pseudo-random number in
[0, 1) derived from the hash of its content. `sample` reads the per-task counts, shares k
among the tasks, and per task reads a few short runs of consecutive items along the
(kind, task, rand_key) index from seeded random start points (wrapping around at 1.0),
drops duplicates and tops up until the task's share is met; only then does it fetch the
chosen rows by id. The cost grows with k, not with the table. This is an approximation
of uniform sampling: because keys are hashes a run is a random set of items and each
item's chance is about k/n, but picks are not independent (neighbours in key order are
picked together, and stay neighbours for a given table), and an item's chance varies
with the key gap before it, by roughly 1/sqrt(run length) (runs are at most 64 long).

Policies:

- `uniform`: k is shared among tasks in proportion to their counts (seeded randomized
  rounding), so the sample looks like the buffer.
- `stratified`: each task gets an equal share, capped at what it holds, the rest spread
  over the others, so a small old task is not drowned by a big new one.
- `recency` / `priority`: a uniform candidate pool of POOL_FACTOR * k (4k) items is drawn
  as for `uniform`, then k of them are chosen without replacement with weights
  exp(-ln2 * age / half_life) or priority**alpha (Efraimidis-Spirakis keys). That is
  exact weighted sampling within the pool only, an approximation over the buffer (exact
  when the pool is the whole buffer, i.e. 4k >= its size). Since k is a quarter of a
  uniform pool, weights sharper than that (a half-life much shorter than the time the
  buffer spans, a large alpha) come out flatter than exact weighted sampling would give,
  and a rare heavy item is often not in the pool at all.

The same seed on the same table gives the same rows; rows come back ordered by id, with
the payload decoded lazily (`ReplayRow.payload`). A sample taken while an eviction runs
may come back short.

`evict` trims a kind down to a capacity by removing the oldest items of the largest tasks
first (water-filling). Nothing here decides when to evict or what to add: `daemon/` does.
This module reads and writes only `replay_items` and `replay_counts`, and supports SQLite
and PostgreSQL.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, Literal, get_args

from sqlalchemy import Connection, Engine, Table, insert

from replay.models import ReplayCount, ReplayItem
from replay.records import content_hash

Kind = Literal["sft", "pair", "prompt"]
Policy = Literal["uniform", "stratified", "recency", "priority"]
KINDS: tuple[str, ...] = get_args(Kind)
POLICIES: tuple[str, ...] = get_args(Policy)

POOL_FACTOR = 4
"""recency / priority draw a uniform candidate pool this many times `k`."""

_ITEMS: Table = ReplayItem.__table__  # type: ignore[assignment]
_COUNTS: Table = ReplayCount.__table__  # type: ignore[assignment]
_MAX_LABEL = 200  # String(200) columns: task, source
_MIN_WINDOWS = 8  # a task's share is read as at least this many runs (when it is that big)
_MAX_WINDOW = 64  # ... and no run is longer than this
_TOPUP_ROUNDS = 3  # rounds of fresh random runs before a final sequential walk
_DELETE_CHUNK = 50_000

_FETCH_CHUNK = 500  # ids per `WHERE id IN (...)`
_ZERO = timedelta(0)
_TINY = 5e-324  # stands in for a uniform draw of exactly 0

_Raw = Any  # a selected row: (rand_key, id)


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


@dataclass(frozen=True, init=False)
class ReplayRow:
    """One sampled row, as stored.

    `payload_json` is the payload's JSON text as the database holds it; `payload` decodes
    it on first access (and keeps it). Decoding is most of the cost of a large sample,
    and a caller that writes rows to a JSONL file can use the text as it is.
    """

    id: int
    kind: Kind
    task: str
    source: str
    payload_json: str = field(repr=False)
    priority: float
    added_at: datetime

    def __init__(
        self,
        id: int,
        kind: Kind,
        task: str,
        source: str,
        payload_json: str,
        priority: float,
        added_at: datetime,
    ) -> None:
        # One dict update instead of the seven object.__setattr__ calls of a frozen
        # dataclass's own __init__: samples build thousands of rows.
        self.__dict__.update(
            id=id,
            kind=kind,
            task=task,
            source=source,
            payload_json=payload_json,
            priority=priority,
            added_at=added_at,
        )

    @cached_property
    def payload(self) -> dict[str, Any]:
        """The payload, decoded from `payload_json` on first access."""
        value: dict[str, Any] = json.loads(self.payload_json)
        return value


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


def _check_kind(kind: Any) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _kind_counts(conn: Connection, kind: str) -> dict[str, int]:
    result = conn.exec_driver_sql(
        f"SELECT task, n FROM replay_counts WHERE kind = {_mark(conn)} AND n > 0", (kind,)
    )
    return {task: int(n) for task, n in result}


def counts(engine: Engine, kind: Kind | None = None) -> dict[str, dict[str, int]]:
    """How many items each task holds, per kind: {kind: {task: n}} (empty tasks left out)."""
    if kind is not None:
        _check_kind(kind)
    with engine.connect() as conn:
        if kind is None:
            result = conn.exec_driver_sql("SELECT kind, task, n FROM replay_counts WHERE n > 0")
        else:
            mark = _mark(conn)
            result = conn.exec_driver_sql(
                f"SELECT kind, task, n FROM replay_counts WHERE kind = {mark} AND n > 0", (kind,)
            )
        out: dict[str, dict[str, int]] = {}
        for k, task, n in result:
            out.setdefault(k, {})[task] = int(n)
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}


# --------------------------------------------------------------------------- allocation


def water_fill(sizes: Sequence[int], total: int, extra_order: Sequence[int]) -> list[int]:
    """Share `total` among bins of capacity `sizes` as evenly as possible (max-min fair).

    Each bin gets min(size, level); the units left over by the integer level go one each
    to uncapped bins in `extra_order` (a permutation of the bin indexes). If `total`
    exceeds the sum of sizes every bin is simply full.
    """
    quotas = [0] * len(sizes)
    remaining = total
    open_bins = sorted(range(len(sizes)), key=lambda i: sizes[i])
    while open_bins:
        share = remaining // len(open_bins)
        smallest = open_bins[0]
        if sizes[smallest] <= share:
            quotas[smallest] = sizes[smallest]
            remaining -= sizes[smallest]
            open_bins.pop(0)
            continue
        for i in open_bins:
            quotas[i] = share
        extra = remaining - share * len(open_bins)
        uncapped = set(open_bins)
        for i in extra_order:
            if extra == 0:
                break
            if i in uncapped:
                quotas[i] += 1
                extra -= 1
        break
    return quotas


def _proportional(sizes: Sequence[int], k: int, rng: random.Random) -> list[int]:
    """Share k (at most the sum of sizes) in proportion to sizes.

    Each bin gets floor(k * size / total) and the units left over go to bins chosen by
    systematic sampling on the fractional parts, so each bin's expected share is exactly
    k * size / total and no bin gets more than its size (integer arithmetic throughout).
    """
    total = sum(sizes)
    quotas = [k * s // total for s in sizes]
    rests = [k * s % total for s in sizes]  # sum(rests) == (k - sum(quotas)) * total
    if sum(quotas) < k:
        point = min(int(rng.random() * total), total - 1)  # uniform over 0..total-1
        cumulative = 0
        for i, rest in enumerate(rests):  # each rest < total: at most one point per bin
            if cumulative <= point < cumulative + rest:
                quotas[i] += 1
                point += total
            cumulative += rest
    return quotas


# --------------------------------------------------------------------------- reading


def _mark(conn: Connection) -> str:
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def _epoch_sql(conn: Connection) -> str:
    """SQL for added_at as seconds since 1970 (a float), computed by the database."""
    if conn.dialect.name == "sqlite":
        return "(julianday(added_at) - 2440587.5) * 86400.0"
    return "CAST(EXTRACT(EPOCH FROM added_at) AS DOUBLE PRECISION)"


class _Reader:
    """Reads runs of one kind's items of one task in (rand_key, id) order, along the index.

    Rows are (rand_key, id) tuples, which the index holds (runs are index-only reads on
    SQLite) and which sort in the runs' order. Every query orders by the index's own
    columns only (`ORDER BY rand_key`), so no backend has to sort a task's rows,
    whatever its statistics say; ties in rand_key (items of identical content) are put
    in id order here, and a run whose limit falls inside a tie group reads that whole
    group to cut it at the right id.
    """

    def __init__(self, conn: Connection, cursor: Any, kind: str) -> None:
        p = _mark(conn)
        self.cursor = cursor  # a DBAPI cursor: SQLAlchemy's result objects cost more here
        self.kind = kind
        head = f"SELECT rand_key, id FROM replay_items WHERE kind = {p} AND task = {p}"
        self.sql_all = f"{head} ORDER BY rand_key"
        self.sql_from = f"{head} AND rand_key >= {p} AND rand_key < {p} ORDER BY rand_key LIMIT {p}"
        self.sql_after = f"{head} AND rand_key > {p} AND rand_key < {p} ORDER BY rand_key LIMIT {p}"
        # a tie group is read whole (no ORDER BY id, which could tempt a planner to walk the
        # primary key) and cut here; groups are copies of one item, normally a handful
        self.sql_tied = f"{head} AND rand_key = {p} AND id > {p}"

    def _fetch(self, sql: str, params: tuple[Any, ...]) -> list[_Raw]:
        self.cursor.execute(sql, params)
        return list(self.cursor.fetchall())

    def tied(self, task: str, key: float, after_id: int, limit: int) -> list[_Raw]:
        rows = self._fetch(self.sql_tied, (self.kind, task, key, after_id))
        rows.sort()
        return rows[:limit]

    def all(self, task: str) -> list[_Raw]:
        rows = self._fetch(self.sql_all, (self.kind, task))
        rows.sort()
        return rows

    def run(self, task: str, lo: float, after_id: int, hi: float, limit: int) -> list[_Raw]:
        """Up to `limit` items with keys in [lo, hi) in (rand_key, id) order, starting after
        the position (lo, after_id); after_id -1 starts at lo itself."""
        if lo >= hi:
            return []
        rows: list[_Raw] = []
        if after_id >= 0:  # resume inside the tie group at lo
            rows = self.tied(task, lo, after_id, limit)
            if len(rows) == limit:
                return rows
        need = limit - len(rows)
        sql = self.sql_from if after_id < 0 else self.sql_after
        more = self._fetch(sql, (self.kind, task, lo, hi, need + 1))
        if len(more) > need:
            edge = more[need - 1][0]
            if more[need][0] == edge:  # the limit cuts a tie group: take its lowest ids
                more = [r for r in more[:need] if r[0] != edge]
                more += self.tied(task, edge, -1, need - len(more))
            else:
                more = more[:need]
        more.sort()
        return rows + more

    def window(self, task: str, start: float, m: int) -> list[_Raw]:
        """m consecutive items from key `start`, wrapping around past the end."""
        rows = self.run(task, start, -1, 2.0, m)
        if len(rows) < m:
            rows += self.run(task, 0.0, -1, start, m - len(rows))
        return rows

    def walk(self, task: str, start: float, want: int, taken: dict[int, _Raw]) -> None:
        """Add items to `taken` walking from `start` (wrapping once) until it gains `want`."""
        chunk = max(2 * want, _MAX_WINDOW)
        for lo0, hi in ((start, 2.0), (0.0, start)):
            lo, after = lo0, -1
            while want > 0:
                rows = self.run(task, lo, after, hi, chunk)
                for row in rows:
                    if row[1] not in taken:
                        taken[row[1]] = row
                        want -= 1
                        if want == 0:
                            return
                if len(rows) < chunk:
                    break
                lo, after = rows[-1]


def _utc_from_db(value: Any) -> datetime:
    """A stored added_at as an aware UTC datetime (SQLite gives text, PostgreSQL datetimes)."""
    if isinstance(value, str):
        try:  # SQLAlchemy stores UTC on SQLite without an offset; this is the fast path
            return datetime.fromisoformat(value + "+00:00")
        except ValueError:
            value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value if value.utcoffset() == _ZERO else value.astimezone(UTC)


def _fetch_columns(conn: Connection, cursor: Any, column: str, ids: list[int]) -> list[Any]:
    """(id, column) of `ids`, ordered by id (ids deleted meanwhile are missing)."""
    p = _mark(conn)
    ids = sorted(ids)
    out: list[Any] = []
    for lo in range(0, len(ids), _FETCH_CHUNK):
        chunk = ids[lo : lo + _FETCH_CHUNK]
        cursor.execute(
            f"SELECT id, {column} FROM replay_items WHERE id IN ({', '.join([p] * len(chunk))})",
            tuple(chunk),
        )
        out += cursor.fetchall()
    out.sort()
    return out


def _fetch_rows(conn: Connection, cursor: Any, kind: str, ids: list[int]) -> list[ReplayRow]:
    """The full rows of `ids`, ordered by id (ids deleted meanwhile are missing)."""
    p = _mark(conn)
    ids = sorted(ids)
    out: list[ReplayRow] = []
    for lo in range(0, len(ids), _FETCH_CHUNK):
        chunk = ids[lo : lo + _FETCH_CHUNK]
        cursor.execute(
            "SELECT id, task, source, CAST(payload AS TEXT), priority, added_at"
            f" FROM replay_items WHERE id IN ({', '.join([p] * len(chunk))})",
            tuple(chunk),
        )
        out += [
            ReplayRow(id_, kind, task, source, payload, priority, _utc_from_db(added_at))  # type: ignore[arg-type]
            for id_, task, source, payload, priority, added_at in cursor.fetchall()
        ]
    out.sort(key=lambda r: r.id)
    return out


def _task_rng(seed: int, kind: str, task: str, purpose: str) -> random.Random:
    return random.Random(f"tutord.replay:{seed}:{kind}:{purpose}:{task}")


def _sample_task(reader: _Reader, task: str, n: int, a: int, rng: random.Random) -> list[_Raw]:
    """About-uniform sample of `a` items of one task that holds `n` (by its counts row)."""
    if a <= 0:
        return []
    if 2 * a >= n:  # half the task or more: read it all (bounded by 2a) and choose
        return _trim(reader.all(task), a, rng)
    n_windows = min(a, max(_MIN_WINDOWS, math.ceil(a / _MAX_WINDOW)))
    m = math.ceil(a / n_windows)
    taken: dict[int, _Raw] = {}
    for start in sorted(rng.random() for _ in range(n_windows)):
        for row in reader.window(task, start, m):
            taken.setdefault(row[1], row)
    for _ in range(_TOPUP_ROUNDS):
        short = a - len(taken)
        if short <= 0:
            break
        runs = math.ceil(short / m)
        size = math.ceil(short / runs)
        for start in sorted(rng.random() for _ in range(runs)):
            for row in reader.window(task, start, size):
                taken.setdefault(row[1], row)
    if len(taken) < a:
        reader.walk(task, rng.random(), a - len(taken), taken)
    return _trim(list(taken.values()), a, rng)


def _trim(rows: list[_Raw], a: int, rng: random.Random) -> list[_Raw]:
    """A random `a` of `rows` (all of them if there are no more), in their order."""
    extra = len(rows) - a
    if extra <= 0:
        return rows
    if extra >= a:
        return rng.sample(rows, a)
    drop = set(rng.sample(range(len(rows)), extra))
    return [row for i, row in enumerate(rows) if i not in drop]


def _choose_weighted(
    ids: list[int], log_weight: list[float], k: int, rng: random.Random
) -> list[int]:
    """k of `ids` without replacement, P proportional to exp(log_weight) (Efraimidis-Spirakis).

    The key u**(1/w), largest wins, is compared as log(-log u) - log w, smallest wins,
    which neither underflows nor overflows for extreme weights.
    """
    log, rand = math.log, rng.random
    keys = [log(-log(rand() or _TINY)) - lw for lw in log_weight]
    best = sorted(range(len(ids)), key=keys.__getitem__)[:k]
    return [ids[i] for i in best]


def sample(
    engine: Engine,
    kind: Kind,
    k: int,
    *,
    policy: Policy = "uniform",
    seed: int,
    half_life_days: float = 7.0,
    alpha: float = 1.0,
    tasks: list[str] | None = None,
    now: datetime | None = None,
) -> list[ReplayRow]:
    """Up to `k` distinct items of `kind` chosen by `policy` (see the module docstring).

    `tasks` restricts the choice to those tasks (unknown ones hold nothing). When the
    buffer (or the chosen tasks) hold k items or fewer, all of them come back. The result
    is ordered by id and depends only on the table's content and the arguments.
    `half_life_days` is for `recency` (age measured from `now`, default: the current
    time; items dated after `now` count as age 0), `alpha` for `priority` (0 gives uniform
    over the pool). An eviction running at the same time may make a sample come back short.
    """
    _check_kind(kind)
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an integer >= 0, got {k!r}")
    if not (math.isfinite(half_life_days) and half_life_days > 0):
        raise ValueError(f"half_life_days must be a finite number > 0, got {half_life_days!r}")
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    if now is not None and (not isinstance(now, datetime) or now.tzinfo is None):
        raise ValueError("now must be a timezone-aware datetime")
    if isinstance(tasks, str):
        raise ValueError("tasks must be a list of task names, not a string")
    if k == 0:
        return []
    weighted = policy in ("recency", "priority")
    ref = (now or datetime.now(UTC)).timestamp()

    with engine.connect() as conn:
        per_task = _kind_counts(conn, kind)
        if tasks is not None:
            wanted = set(tasks)
            per_task = {t: n for t, n in per_task.items() if t in wanted}
        names = sorted(per_task)
        sizes = [per_task[t] for t in names]
        total = sum(sizes)
        if total == 0:
            return []
        alloc_rng = random.Random(f"tutord.replay:{seed}:{kind}:{policy}:alloc")
        want = min(total, POOL_FACTOR * k) if weighted else k
        if want >= total:
            quotas = list(sizes)
        elif policy == "stratified":
            order = list(range(len(names)))
            alloc_rng.shuffle(order)
            quotas = water_fill(sizes, want, order)
        else:
            quotas = _proportional(sizes, want, alloc_rng)
        cursor = conn.connection.cursor()
        try:
            reader = _Reader(conn, cursor, kind)
            purpose = "pool" if weighted else "take"
            picked: list[_Raw] = []
            for task, n, a in zip(names, sizes, quotas, strict=True):
                picked += _sample_task(reader, task, n, a, _task_rng(seed, kind, task, purpose))
            ids = [r[1] for r in picked]
            if weighted and len(ids) > k:
                if policy == "priority":
                    weights = _fetch_columns(conn, cursor, "priority", ids)
                    log_w = [alpha * math.log(w) for _, w in weights]
                else:
                    weights = _fetch_columns(conn, cursor, _epoch_sql(conn), ids)
                    decay = math.log(2) / (half_life_days * 86400.0)
                    log_w = [-decay * max(0.0, ref - t) for _, t in weights]
                es_rng = random.Random(f"tutord.replay:{seed}:{kind}:{policy}:choose")
                ids = _choose_weighted([i for i, _ in weights], log_w, k, es_rng)
            return _fetch_rows(conn, cursor, kind, ids)
        finally:
            cursor.close()


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
    _check_kind(kind)
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
        raise ValueError(f"capacity must be an integer >= 0, got {capacity!r}")
    removed = 0
    with engine.begin() as conn:
        per_task = _kind_counts(conn, kind)
        names = sorted(per_task)
        sizes = [per_task[t] for t in names]
        if sum(sizes) <= capacity:
            return 0
        quotas = eviction_quotas(sizes, capacity)
        p = _mark(conn)
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
