"""Tests of the replay buffer: adding, counts, eviction (`replay.buffer`), sampling policies
(`replay.sampling`) and the allocation maths (`replay.allocation`).

Database tests run on SQLite and PostgreSQL (`db_engine`); the allocation maths is
checked on its own with hypothesis. Statistical checks use bounds several standard
deviations wide, on fixed seeds, so they are deterministic and not flaky.
"""

from __future__ import annotations

import itertools
import json
import random
import sqlite3
import statistics
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, event, select, text

from replay import buffer, sampling
from replay.allocation import proportional, water_fill
from replay.buffer import (
    NewReplayItem,
    add_items,
    counts,
    evict,
    eviction_quotas,
    rand_key_for,
)
from replay.db import make_engine
from replay.models import ReplayItem
from replay.records import content_hash
from replay.sampling import ReplayRow, sample

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICIES = ("uniform", "stratified", "recency", "priority")


def make_items(
    task: str,
    n: int,
    *,
    kind: buffer.Kind = "sft",
    start: datetime = T0,
    step: timedelta = timedelta(minutes=1),
    priority: float = 1.0,
    offset: int = 0,
) -> list[NewReplayItem]:
    return [
        NewReplayItem(
            kind=kind,
            task=task,
            payload={"task": task, "i": offset + i},
            priority=priority,
            added_at=start + i * step,
        )
        for i in range(n)
    ]


def real_counts(engine: Engine) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT kind, task, COUNT(*) FROM replay_items GROUP BY kind, task")
        )
        for kind, task, n in rows:
            out.setdefault(kind, {})[task] = n
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}


def all_rows(engine: Engine, kind: str = "sft") -> list[tuple[int, str, datetime]]:
    query = (
        select(ReplayItem.id, ReplayItem.task, ReplayItem.added_at)
        .where(ReplayItem.kind == kind)
        .order_by(ReplayItem.id)
    )
    with engine.connect() as conn:
        return [(i, t, a) for i, t, a in conn.execute(query)]


# --------------------------------------------------------------------------- adding


def test_add_items_writes_rows_and_counts(db_engine: Engine) -> None:
    added = add_items(db_engine, make_items("a", 30) + make_items("b", 5))
    added += add_items(db_engine, make_items("a", 7, offset=100) + make_items("b", 3, kind="pair"))
    assert added == 45
    expected = {"pair": {"b": 3}, "sft": {"a": 37, "b": 5}}
    assert counts(db_engine) == expected
    assert real_counts(db_engine) == expected
    assert counts(db_engine, "pair") == {"pair": {"b": 3}}
    assert counts(db_engine, "prompt") == {}
    assert add_items(db_engine, []) == 0


def test_stored_row_round_trips(db_engine: Engine) -> None:
    when = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    payload = {"messages": [{"role": "user", "content": "héllo"}], "n": [1, 2.5, None]}
    item = NewReplayItem("pair", "t", payload, source="unit", priority=2.5, added_at=when)
    add_items(db_engine, [item])
    (row,) = sample(db_engine, "pair", 5, seed=0)
    assert isinstance(row, ReplayRow)
    assert (row.kind, row.task, row.source, row.priority) == ("pair", "t", "unit", 2.5)
    assert row.added_at == when and row.added_at.tzinfo is not None
    assert row.payload == payload
    assert json.loads(row.payload_json) == payload
    with db_engine.connect() as conn:
        stored_hash, key = conn.execute(
            text("SELECT content_hash, rand_key FROM replay_items")
        ).one()
    assert stored_hash == content_hash(["pair", "t", payload])
    assert key == rand_key_for(stored_hash)

    east = timezone(timedelta(hours=2))
    add_items(db_engine, [NewReplayItem("prompt", "t", {"p": 1}, added_at=when.astimezone(east))])
    (row,) = sample(db_engine, "prompt", 5, seed=0)
    assert row.added_at == when and row.added_at.utcoffset() == timedelta(0)


def test_added_at_defaults_to_now(db_engine: Engine) -> None:
    before = datetime.now(UTC)
    add_items(db_engine, [NewReplayItem("sft", "t", {"x": 1})])
    after = datetime.now(UTC)
    (row,) = sample(db_engine, "sft", 1, seed=0)
    assert before - timedelta(seconds=1) <= row.added_at <= after + timedelta(seconds=1)


def test_rand_key_is_deterministic_and_in_unit_interval() -> None:
    assert rand_key_for("0" * 64) == 0.0
    assert rand_key_for("f" * 64) < 1.0
    digest = content_hash(["sft", "t", {"a": 1}])
    assert rand_key_for(digest) == rand_key_for(content_hash(["sft", "t", {"a": 1}]))
    keys = [rand_key_for(content_hash(["sft", "t", {"i": i}])) for i in range(2000)]
    assert all(0.0 <= k < 1.0 for k in keys)
    assert 0.45 < statistics.fmean(keys) < 0.55
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize(
    ("item", "field"),
    [
        (NewReplayItem("nope", "t", {}), "kind"),  # type: ignore[arg-type]
        (NewReplayItem("sft", "", {}), "task"),
        (NewReplayItem("sft", "   ", {}), "task"),
        (NewReplayItem("sft", "x" * 201, {}), "task"),
        (NewReplayItem("sft", "t", {}, source=""), "source"),
        (NewReplayItem("sft", "t", ["not", "a", "dict"]), "payload"),  # type: ignore[arg-type]
        (NewReplayItem("sft", "t", {"when": datetime(2026, 1, 1)}), "payload"),
        (NewReplayItem("sft", "t", {"x": float("nan")}), "payload"),
        (NewReplayItem("sft", "t", {}, priority=0.0), "priority"),
        (NewReplayItem("sft", "t", {}, priority=-1.0), "priority"),
        (NewReplayItem("sft", "t", {}, priority=float("nan")), "priority"),
        (NewReplayItem("sft", "t", {}, priority=float("inf")), "priority"),
        (NewReplayItem("sft", "t", {}, priority=True), "priority"),
        (NewReplayItem("sft", "t", {}, added_at=datetime(2026, 1, 1)), "added_at"),
    ],
)
def test_add_items_rejects_bad_input_naming_index_and_field(
    db_engine: Engine, item: NewReplayItem, field: str
) -> None:
    good = make_items("t", 2)
    with pytest.raises(ValueError, match=rf"item 2: {field}"):
        add_items(db_engine, [*good, item])
    assert real_counts(db_engine) == {}
    assert counts(db_engine) == {}


# --------------------------------------------------------------------------- sampling


def test_sample_is_reproducible_per_seed(db_engine: Engine) -> None:
    add_items(
        db_engine,
        make_items("big", 1500)
        + make_items("mid", 400, priority=3.0)
        + make_items("small", 40, start=T0 + timedelta(days=3)),
    )
    now = T0 + timedelta(days=4)
    for policy in POLICIES:
        first = sample(db_engine, "sft", 120, policy=policy, seed=7, now=now)  # type: ignore[arg-type]
        again = sample(db_engine, "sft", 120, policy=policy, seed=7, now=now)  # type: ignore[arg-type]
        other = sample(db_engine, "sft", 120, policy=policy, seed=8, now=now)  # type: ignore[arg-type]
        assert len(first) == 120
        assert [r.id for r in first] == [r.id for r in again], policy
        assert [r.id for r in first] == sorted(r.id for r in first), policy
        assert len({r.id for r in first}) == 120, policy
        assert {r.id for r in first} != {r.id for r in other}, policy


def test_uniform_shares_follow_task_sizes(db_engine: Engine) -> None:
    add_items(db_engine, make_items("a", 2000) + make_items("b", 800) + make_items("c", 200))
    got = Counter(r.task for r in sample(db_engine, "sft", 300, seed=1))
    assert sum(got.values()) == 300
    # proportional allocation with randomized rounding: 200 / 80 / 20, off by at most one
    assert abs(got["a"] - 200) <= 1
    assert abs(got["b"] - 80) <= 1
    assert abs(got["c"] - 20) <= 1


def test_uniform_inclusion_is_spread_over_all_items(db_engine: Engine) -> None:
    """Over many seeds every item is drawn about k/n of the time: no region is starved
    and none is favoured (a sampler stuck at one start point fails this)."""
    add_items(db_engine, make_items("only", 600))
    hits: Counter[int] = Counter()
    runs = 60
    for seed in range(runs):
        rows = sample(db_engine, "sft", 60, seed=seed)
        assert len({r.id for r in rows}) == 60
        hits.update(r.id for r in rows)
    ids = [i for i, _, _ in all_rows(db_engine)]
    mean = runs * 60 / 600  # 6 draws per item on average
    never = sum(1 for i in ids if hits[i] == 0)
    assert never < 0.08 * len(ids)  # Poisson(6) alone leaves ~0.25%; windows widen it
    assert max(hits.values()) < 4 * mean
    # the first and second halves of the key space are drawn about equally
    keys = _keys(db_engine)
    low = sum(hits[i] for i in ids if keys[i] < 0.5)
    high = sum(hits[i] for i in ids if keys[i] >= 0.5)
    assert 0.8 < low / high < 1.25


def _keys(engine: Engine) -> dict[int, float]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT id, rand_key FROM replay_items")).all())


def test_stratified_gives_a_small_task_an_equal_share(db_engine: Engine) -> None:
    sizes = {"huge": 1800, "large": 900, "medium": 270, "tiny": 30}  # tiny is 1%
    for task, n in sizes.items():
        add_items(db_engine, make_items(task, n))
    k = 80
    tiny_strat, tiny_uni = [], []
    for seed in range(5):
        strat = Counter(r.task for r in sample(db_engine, "sft", k, policy="stratified", seed=seed))
        uni = Counter(r.task for r in sample(db_engine, "sft", k, policy="uniform", seed=seed))
        assert sum(strat.values()) == k
        for task in sizes:
            assert 0.8 * k / 4 <= strat[task] <= 1.2 * k / 4, (task, strat)
        tiny_strat.append(strat["tiny"])
        tiny_uni.append(uni["tiny"])
    assert statistics.fmean(tiny_strat) >= 18
    assert statistics.fmean(tiny_uni) <= 2  # 1% of 80


def test_stratified_caps_a_task_at_what_it_holds(db_engine: Engine) -> None:
    add_items(db_engine, make_items("big", 1000) + make_items("few", 5))
    got = Counter(r.task for r in sample(db_engine, "sft", 100, policy="stratified", seed=3))
    assert got == {"few": 5, "big": 95}


def test_recency_prefers_new_items(db_engine: Engine) -> None:
    items = make_items("a", 1500, step=timedelta(hours=1))  # spread over ~62 days
    items += make_items("b", 500, step=timedelta(hours=3), offset=10_000)
    add_items(db_engine, items)
    now = T0 + timedelta(days=63)
    ages = [(now - a).total_seconds() / 86400 for _, _, a in all_rows(db_engine)]
    rows = sample(db_engine, "sft", 100, policy="recency", seed=5, half_life_days=5.0, now=now)
    assert len(rows) == 100
    sample_age = statistics.fmean((now - r.added_at).total_seconds() / 86400 for r in rows)
    # Exact weighted sampling would give ~0.12 of the mean age; choosing 100 out of a
    # uniform pool of 400 cannot go below ~0.25 and gives ~0.38 (the documented limit).
    assert sample_age < 0.5 * statistics.fmean(ages)
    uniform = sample(db_engine, "sft", 100, policy="uniform", seed=5)
    uniform_age = statistics.fmean((now - r.added_at).total_seconds() / 86400 for r in uniform)
    assert uniform_age > 1.8 * sample_age


def test_priority_prefers_high_priority(db_engine: Engine) -> None:
    add_items(
        db_engine,
        make_items("a", 1000, priority=1.0) + make_items("a", 1000, priority=10.0, offset=5000),
    )
    high = []
    flat = []
    for seed in range(3):
        rows = sample(db_engine, "sft", 100, policy="priority", seed=seed)
        high.append(sum(r.priority == 10.0 for r in rows) / len(rows))
        rows = sample(db_engine, "sft", 100, policy="priority", seed=seed, alpha=0.0)
        flat.append(sum(r.priority == 10.0 for r in rows) / len(rows))
    assert statistics.fmean(high) > 0.75
    assert 0.3 < statistics.fmean(flat) < 0.7


@pytest.mark.parametrize("policy", POLICIES)
def test_k_beyond_size_returns_everything_once(db_engine: Engine, policy: str) -> None:
    items = make_items("a", 40) + make_items("b", 3) + make_items("c", 1, kind="pair")
    items += [NewReplayItem("sft", "a", {"same": True})] * 2  # identical content, twice
    add_items(db_engine, items)
    rows = sample(db_engine, "sft", 1000, policy=policy, seed=0)  # type: ignore[arg-type]
    ids = [r.id for r in rows]
    assert len(ids) == len(set(ids)) == 45
    assert ids == [i for i, _, _ in all_rows(db_engine)]
    assert all(r.kind == "sft" for r in rows)


@pytest.mark.parametrize("k", [1, 7, 59, 60, 61, 119, 120, 121, 200, 239, 240, 241])
def test_sample_returns_exactly_k_distinct_even_with_tied_keys(db_engine: Engine, k: int) -> None:
    """Items of equal content share a rand_key: runs must step over ties, not loop."""
    items = make_items("t", 160) + [NewReplayItem("sft", "t", {"dup": 1})] * 80
    add_items(db_engine, items)
    for seed in range(3):
        rows = sample(db_engine, "sft", k, seed=seed)
        assert len(rows) == min(k, 240)
        assert len({r.id for r in rows}) == len(rows)


def test_runs_follow_rand_key_then_id_order_through_ties(db_engine: Engine) -> None:
    """A run is exactly the next `limit` items in (rand_key, id) order, wherever it
    starts or stops inside groups of tied keys (checked against a sort in Python)."""
    items = make_items("t", 120)
    for j in range(4):
        items += [NewReplayItem("sft", "t", {"dup": j})] * (10 + 15 * j)
    add_items(db_engine, items)
    with db_engine.connect() as conn:
        order = sorted(
            conn.execute(
                select(ReplayItem.rand_key, ReplayItem.id).where(ReplayItem.task == "t")
            ).all()
        )
        cursor = conn.connection.cursor()
        reader = sampling._Reader(conn, cursor, "sft")
        rng = random.Random(0)
        for _ in range(150):
            i = rng.randrange(len(order))
            lo, after = order[i]
            if rng.random() < 0.3:
                lo, after = rng.random(), -1
            elif rng.random() < 0.3:
                after = -1
            hi = 2.0 if rng.random() < 0.7 else rng.random()
            limit = rng.randint(1, 90)
            expected = [
                (key, id_) for key, id_ in order if lo <= key < hi and (key > lo or id_ > after)
            ][:limit]
            got = [tuple(row) for row in reader.run("t", lo, after, hi, limit)]
            assert got == expected, (lo, after, hi, limit)
        cursor.close()


def test_walk_steps_over_long_runs_of_tied_keys(db_engine: Engine) -> None:
    """The last-resort walk continues after (rand_key, id), so 200 equal keys, more than
    one read chunk, are all reached and none twice; it wraps around once and stops."""
    add_items(db_engine, make_items("t", 50) + [NewReplayItem("sft", "t", {"dup": 1})] * 200)
    ids = {i for i, _, _ in all_rows(db_engine)}
    with db_engine.connect() as conn:
        cursor = conn.connection.cursor()
        reader = sampling._Reader(conn, cursor, "sft")
        for start in (0.0, 0.3, rand_key_for(content_hash(["sft", "t", {"dup": 1}])), 0.99):
            taken: dict[int, object] = {}
            for n in range(1, 251):  # one at a time: each walk reads past what is taken
                reader.walk("t", start, 1, taken)
                assert len(taken) == n
            assert set(taken) == ids
            reader.walk("t", start, 1, taken)  # nothing left: one lap, then stop
            taken = {}
            reader.walk("t", start, 1000, taken)
            assert set(taken) == ids
        cursor.close()


def test_sample_restricted_to_tasks(db_engine: Engine) -> None:
    add_items(db_engine, make_items("a", 100) + make_items("b", 100) + make_items("c", 100))
    rows = sample(db_engine, "sft", 50, policy="stratified", seed=0, tasks=["a", "c", "zzz"])
    assert Counter(r.task for r in rows) == {"a": 25, "c": 25}
    assert sample(db_engine, "sft", 50, seed=0, tasks=[]) == []
    assert sample(db_engine, "sft", 50, seed=0, tasks=["zzz"]) == []


def test_sample_of_empty_kind_or_zero_k(db_engine: Engine) -> None:
    add_items(db_engine, make_items("a", 10))
    assert sample(db_engine, "prompt", 10, seed=0) == []
    assert sample(db_engine, "sft", 0, seed=0) == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "bad"}, "kind"),
        ({"k": -1}, "k"),
        ({"k": 2.5}, "k"),
        ({"policy": "lifo"}, "policy"),
        ({"half_life_days": 0.0}, "half_life_days"),
        ({"half_life_days": float("inf")}, "half_life_days"),
        ({"alpha": -0.5}, "alpha"),
        ({"now": datetime(2026, 1, 1)}, "now"),
        ({"tasks": "a"}, "tasks"),
    ],
)
def test_sample_rejects_bad_arguments(
    sqlite_engine: Engine, kwargs: dict[str, object], field: str
) -> None:
    args: dict[str, object] = {"kind": "sft", "k": 3, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=field):
        sample(sqlite_engine, **args)  # type: ignore[arg-type]


def test_sampling_never_scans_the_table(sqlite_engine: Engine) -> None:
    """Every statement sample() runs is an index search (SQLite's plan), never a scan."""
    add_items(sqlite_engine, make_items("a", 1500) + make_items("b", 300) + make_items("c", 9))
    statements: list[str] = []
    engine = make_engine(sqlite_engine.url.render_as_string(hide_password=False))

    @event.listens_for(engine, "connect")
    def _trace(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.set_trace_callback(statements.append)

    try:
        for policy in POLICIES:
            assert len(sample(engine, "sft", 150, policy=policy, seed=1)) == 150  # type: ignore[arg-type]
        with engine.connect() as conn:
            selects = [q for q in statements if q.lstrip().upper().startswith("SELECT")]
            plans = {q: _plan(conn, q) for q in selects if "replay_items" in q}
    finally:
        engine.dispose()
    assert len(plans) > 10
    for query, plan in plans.items():
        assert "SCAN" not in plan, (query, plan)
        assert "SEARCH replay_items USING" in plan, (query, plan)
    runs = [p for q, p in plans.items() if "rand_key >=" in q]
    assert runs and all("COVERING INDEX ix_replay_items_kind_task_rand_key" in p for p in runs)


def _plan(conn: Connection, sql: str) -> str:
    rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql).all()
    return " | ".join(str(r[-1]) for r in rows)


# --------------------------------------------------------------------------- eviction


def test_evict_trims_largest_tasks_oldest_first(db_engine: Engine) -> None:
    # "old" is big and early, "new" mid-sized and recent, "rare" tiny
    add_items(db_engine, make_items("old", 1000, start=T0))
    add_items(db_engine, make_items("new", 300, start=T0 + timedelta(days=30)))
    add_items(db_engine, make_items("rare", 20, start=T0 + timedelta(days=1)))
    before = {i: (t, a) for i, t, a in all_rows(db_engine)}

    removed = evict(db_engine, "sft", capacity=600)

    after = {i: (t, a) for i, t, a in all_rows(db_engine)}
    assert removed == len(before) - len(after) == 720
    assert (
        counts(db_engine) == real_counts(db_engine) == {"sft": {"new": 290, "old": 290, "rare": 20}}
    )
    for task in ("old", "new"):
        kept = [a for i, (t, a) in after.items() if t == task]
        gone = [a for i, (t, a) in before.items() if t == task and i not in after]
        assert gone and max(gone) <= min(kept), task  # the oldest went
    assert evict(db_engine, "sft", capacity=600) == 0


def test_evict_breaks_added_at_ties_by_id(db_engine: Engine) -> None:
    add_items(db_engine, make_items("a", 50, step=timedelta(0)))
    ids = [i for i, _, _ in all_rows(db_engine)]
    assert evict(db_engine, "sft", capacity=20) == 30
    assert [i for i, _, _ in all_rows(db_engine)] == ids[30:]


def test_evict_keeps_every_task_at_its_floor(db_engine: Engine) -> None:
    sizes = {"a": 900, "b": 60, "c": 45, "d": 8}
    for task, n in sizes.items():
        add_items(db_engine, make_items(task, n))
    evict(db_engine, "sft", capacity=300)
    left = real_counts(db_engine)["sft"]
    assert sum(left.values()) <= 300
    assert left == counts(db_engine)["sft"]
    for task, n in sizes.items():
        assert left[task] >= min(n, 50), (task, left)
    assert left["a"] > left["b"]  # the big task is cut to the level, not below others


def test_evict_below_floor_total_gives_fair_shares(db_engine: Engine) -> None:
    for task, n in {"a": 500, "b": 200, "c": 12}.items():
        add_items(db_engine, make_items(task, n))
    # capacity 60 < 3 tasks * 50: everyone gets a fair share of 20 (c keeps its 12)
    assert evict(db_engine, "sft", capacity=60) == 712 - 60
    assert real_counts(db_engine) == counts(db_engine) == {"sft": {"a": 24, "b": 24, "c": 12}}


def test_evict_leaves_other_kinds_alone_and_then_counts_hold(db_engine: Engine) -> None:
    add_items(db_engine, make_items("a", 100) + make_items("a", 100, kind="pair"))
    assert evict(db_engine, "sft", capacity=10) == 90
    add_items(db_engine, make_items("a", 5, offset=1000) + make_items("z", 4))
    assert (
        counts(db_engine)
        == real_counts(db_engine)
        == {
            "pair": {"a": 100},
            "sft": {"a": 15, "z": 4},
        }
    )
    assert evict(db_engine, "sft", capacity=0) == 19
    assert counts(db_engine) == real_counts(db_engine) == {"pair": {"a": 100}}
    assert sample(db_engine, "sft", 10, seed=0) == []


def test_evict_rejects_bad_arguments(sqlite_engine: Engine) -> None:
    with pytest.raises(ValueError, match="kind"):
        evict(sqlite_engine, "bad", 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="capacity"):
        evict(sqlite_engine, "sft", -1)


# --------------------------------------------------------------------------- allocation maths

sizes_st = st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(sizes=sizes_st, total=st.integers(min_value=0, max_value=3000), seed=st.integers(0, 99))
def test_water_fill_is_max_min_fair(sizes: list[int], total: int, seed: int) -> None:
    order = list(range(len(sizes)))
    random.Random(seed).shuffle(order)
    quotas = water_fill(sizes, total, order)
    assert sum(quotas) == min(total, sum(sizes))
    assert all(0 <= q <= s for q, s in zip(quotas, sizes, strict=True))
    # any bin below its size is within one of the largest quota: no one is starved
    top = max(quotas)
    assert all(q == s or q >= top - 1 for q, s in zip(quotas, sizes, strict=True))


@settings(max_examples=300, deadline=None)
@given(sizes=sizes_st, capacity=st.integers(min_value=0, max_value=3000))
def test_eviction_quotas_respect_capacity_and_floor(sizes: list[int], capacity: int) -> None:
    quotas = eviction_quotas(sizes, capacity)
    assert sum(quotas) == min(capacity, sum(sizes))
    fair = capacity // len(sizes)
    assert all(min(s, fair) <= q <= s for q, s in zip(quotas, sizes, strict=True))
    # a bigger task never keeps fewer than a smaller one
    pairs = sorted(zip(sizes, quotas, strict=True))
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(pairs))


@settings(max_examples=300, deadline=None)
@given(sizes=sizes_st, data=st.data())
def test_proportional_allocation_is_exact_in_sum_and_close(
    sizes: list[int], data: st.DataObject
) -> None:
    total = sum(sizes)
    if total == 0:
        return
    k = data.draw(st.integers(min_value=0, max_value=total))
    quotas = proportional(sizes, k, random.Random(data.draw(st.integers(0, 99))))
    assert sum(quotas) == k
    for q, s in zip(quotas, sizes, strict=True):
        assert 0 <= q <= s
        assert abs(q - k * s / total) < 1
