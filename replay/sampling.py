"""Sampling the replay buffer by policy, without scanning the table.

Every item carries `rand_key`, a pseudo-random number in [0, 1) derived from the hash of its
content (`replay.buffer.rand_key_for`). `sample` reads the per-task counts (`replay_counts`),
shares k among the tasks, and per task reads a few short runs of consecutive items along the
(kind, task, rand_key) index from seeded random start points (wrapping around at 1.0), drops
duplicates and tops up until the task's share is met; only then does it fetch the chosen rows
by id. The cost grows with k, not with the table. This is an approximation of uniform
sampling: because keys are hashes a run is a random set of items and each item's chance is
about k/n, but picks are not independent (neighbours in key order are picked together, and
stay neighbours for a given table), and an item's chance varies with the key gap before it,
by roughly 1/sqrt(run length) (runs are at most 64 long).

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

It only reads (`replay_items`, `replay_counts`): adding and evicting are `replay.buffer`'s.
It supports SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, Literal, get_args

from sqlalchemy import Connection, Engine

from replay.allocation import proportional, water_fill
from replay.buffer import Kind, check_kind, kind_counts, param_mark

Policy = Literal["uniform", "stratified", "recency", "priority"]
POLICIES: tuple[str, ...] = get_args(Policy)

POOL_FACTOR = 4
"""recency / priority draw a uniform candidate pool this many times `k`."""

_MIN_WINDOWS = 8  # a task's share is read as at least this many runs (when it is that big)
_MAX_WINDOW = 64  # ... and no run is longer than this
_TOPUP_ROUNDS = 3  # rounds of fresh random runs before a final sequential walk
_FETCH_CHUNK = 500  # ids per `WHERE id IN (...)`
_ZERO = timedelta(0)
_TINY = 5e-324  # stands in for a uniform draw of exactly 0

_Raw = Any  # a selected row: (rand_key, id)


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


# --------------------------------------------------------------------------- reading


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
        p = param_mark(conn)
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
    p = param_mark(conn)
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
    p = param_mark(conn)
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
    check_kind(kind)
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
        per_task = kind_counts(conn, kind)
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
            quotas = proportional(sizes, want, alloc_rng)
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
