"""Two `tutord run` processes on one PostgreSQL database: exactly one leads; after `kill -9`
of the leader, and after SIGSTOP past the TTL then SIGCONT, the other takes over within the
TTL with a larger fencing token; cutting the leader's connections (`pg_terminate_backend`)
does not make two leaders."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from replay.db import make_engine
from tests.cli_support import run_tutord, start_run

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.xdist_group("leaders")]

TTL = 3.0


@pytest.fixture
def shared(pg_url: str, tmp_path: Path) -> Iterator[tuple[list[Path], Engine]]:
    homes = []
    for name in ("a", "b"):
        home = tmp_path / name
        assert run_tutord(home, "init").returncode == 0
        (home / "tutord.toml").write_text(
            f"database_url = {pg_url!r}\n[service]\nlease_ttl_s = {TTL}\nstop_timeout_s = 10\n"
        )
        homes.append(home)
    assert run_tutord(homes[0], "db", "upgrade").returncode == 0
    engine = make_engine(pg_url)
    yield homes, engine
    engine.dispose()


def leader(engine: Engine) -> tuple[int, int] | None:
    """(pid, token) of the live leader lease, or None."""
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT acquired_by, token FROM leases WHERE name = 'leader' "
                "AND acquired_until > now()"
            )
        ).first()
    return None if row is None else (int(row[0].split(":")[1]), int(row[1]))


def wait_leader(engine: Engine, seconds: float, not_pid: int | None = None) -> tuple[int, int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now = leader(engine)
        if now is not None and now[0] != not_pid:
            return now
        time.sleep(0.1)
    raise AssertionError(f"no new leader within {seconds} s (now {leader(engine)})")


def test_one_leader_and_takeover_within_the_ttl(shared: tuple[list[Path], Engine]) -> None:
    homes, engine = shared
    procs = {p.pid: p for p in (start_run(homes[0]), start_run(homes[1]))}
    try:
        pid, token = wait_leader(engine, 180)
        assert pid in procs
        time.sleep(TTL)  # the follower keeps following while the leader renews
        assert leader(engine) == (pid, token)

        # Its connections cut: no second leader, the lease stays with one live process.
        with engine.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = :name"
                ),
                {"name": f"tutord-{pid}"},
            )
        time.sleep(TTL)
        now = leader(engine)
        assert now is not None and now[0] in procs

        # SIGSTOP past the TTL: the other takes over; on SIGCONT the old one follows.
        pid, token = now
        procs[pid].send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        new_pid, new_token = wait_leader(engine, TTL + 3, not_pid=pid)
        assert time.monotonic() - stopped < TTL + 3 and new_token > token
        procs[pid].send_signal(signal.SIGCONT)
        time.sleep(TTL)
        assert leader(engine) == (new_pid, new_token)

        # kill -9 of the leader: the other takes over within the TTL.
        procs[new_pid].kill()
        procs[new_pid].wait(10)
        killed = time.monotonic()
        last_pid, last_token = wait_leader(engine, TTL + 3, not_pid=new_pid)
        assert last_pid == pid and last_token > new_token
        assert time.monotonic() - killed < TTL + 3
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
