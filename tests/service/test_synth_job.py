"""The `synth` job of `tutord run` (`daemon/service/jobs.py`): off by default; on its
`service.synth_cron` schedule `run_once` runs it (the leader only), it stores a synthesis
run made with the production policy through the model server (a fake OpenAI-compatible
one here), its run is recorded in `service_jobs`, and it is not due again before its next
time. It waits while a cycle is unfinished, and in a running service it never overlaps a
cycle (`daemon/service/runner.py`). Database tests run on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from daemon import lease
from daemon.home import Home
from daemon.models import Cycle, ServiceJob
from daemon.service.jobs import is_due, make_jobs
from daemon.service.runner import Service, run_once
from daemon.settings import Settings
from replay.db import session_scope
from replay.ingest import ingest_records
from replay.models import Sample, SynthRun, utcnow
from tests.fake_openai import FakeOpenAI, serving

NIGHTLY = "0 3 * * *"


@pytest.fixture(autouse=True)
def no_fence_left() -> Iterator[None]:
    """`run_once` on PostgreSQL leads through the lease and leaves its (now stale) fence
    installed, as a process that stops leading does: later tests must not inherit it."""
    yield
    lease.set_fence(None)


@pytest.fixture
def server(base: Path) -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI(str(base))
    with serving(fake) as url:
        yield fake, url


def settings_for(base: Path, url: str, **service: object) -> Settings:
    return Settings(
        model={"base": str(base), "backend": "openai", "server_url": url},
        synth={"prompts": 3, "n": 2, "max_new_tokens": 8},
        service=service,
    )


def traffic(engine: Engine, count: int = 5) -> None:
    """Logged interactions: the prompts a synthesis run draws from."""
    records = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": str(2 * i)},
            ]
        }
        for i in range(count)
    ]
    assert ingest_records(engine, records, source="test").errors == []


def count(engine: Engine, model: type) -> int:
    with session_scope(engine) as s:
        return int(s.execute(select(func.count()).select_from(model)).scalar_one())


def synth_record(engine: Engine) -> ServiceJob | None:
    with session_scope(engine) as s:
        row = s.get(ServiceJob, "synth")
        if row is not None:
            s.expunge(row)
        return row


def test_synth_is_off_by_default(sqlite_engine: Engine, home: Home) -> None:
    jobs = {j.id: j for j in make_jobs(sqlite_engine, home, Settings(), leading=lambda: True)}
    assert "synth" in jobs and not jobs["synth"].enabled
    assert not is_due(sqlite_engine, jobs["synth"])


def test_once_runs_synth_when_due_and_stores_a_synth_run(
    db_engine: Engine, home: Home, base: Path, server: tuple[FakeOpenAI, str]
) -> None:
    fake, url = server
    traffic(db_engine)
    settings = settings_for(base, url, synth_cron=NIGHTLY)
    outcomes = run_once(db_engine, home, settings)
    assert outcomes["synth"] == "ok"
    assert count(db_engine, SynthRun) == 1
    assert count(db_engine, Sample) > 0
    assert fake.names("chat") and set(fake.names("chat")) == {str(base)}  # production: base
    record = synth_record(db_engine)
    assert record is not None and record.last_outcome == "ok" and record.runs == 1
    assert record.last_message.startswith("synthesis run 1 (base):")

    # Not due again before the next 03:00 UTC; due once that has passed.
    assert "synth" not in run_once(db_engine, home, settings)
    assert count(db_engine, SynthRun) == 1
    job = next(
        j for j in make_jobs(db_engine, home, settings, leading=lambda: True) if j.id == "synth"
    )
    assert is_due(db_engine, job, now=utcnow() + timedelta(days=1))

    # A second run draws with another seed (the number of runs stored so far).
    assert job.run().startswith("synthesis run 2 (base):")
    with session_scope(db_engine) as s:
        seeds = list(s.execute(select(SynthRun.seed).order_by(SynthRun.id)).scalars())
    assert seeds == [0, 1]


def test_synth_waits_for_an_unfinished_cycle_and_for_leadership(
    sqlite_engine: Engine, home: Home, base: Path, server: tuple[FakeOpenAI, str]
) -> None:
    fake, url = server
    traffic(sqlite_engine)
    settings = settings_for(base, url, synth_cron=NIGHTLY)
    with session_scope(sqlite_engine) as s:
        s.add(Cycle(state="train"))  # a stop or crash left it: it resumes first
    led = {j.id: j for j in make_jobs(sqlite_engine, home, settings, leading=lambda: True)}
    assert led["synth"].run() == "skipped: cycle 1 is unfinished (it resumes first)"
    followed = {j.id: j for j in make_jobs(sqlite_engine, home, settings, leading=lambda: False)}
    assert followed["synth"].run().startswith("idle: not the leader")
    assert count(sqlite_engine, SynthRun) == 0 and fake.events == []


def test_in_the_service_synth_and_cycles_never_overlap(
    sqlite_engine: Engine, home: Home, base: Path, server: tuple[FakeOpenAI, str]
) -> None:
    _, url = server
    settings = settings_for(base, url, synth_cron=NIGHTLY, cycle_cron=NIGHTLY)
    service = Service(sqlite_engine, home, lambda: settings)
    jobs = {j.id: j for j in service.jobs()}
    assert service.cycle_lock.acquire(blocking=False)
    try:
        service.model_job = "cycle"
        assert jobs["synth"].run() == "skipped: a cycle is running"
        service.model_job = "synth"
        assert jobs["cycle"].run() == "skipped: synthesis is running"
        assert jobs["cycle-check"].run() == "skipped: synthesis is running"
    finally:
        service.model_job = None
        service.cycle_lock.release()
    assert count(sqlite_engine, SynthRun) == 0
