"""One leader per database: the `leader` lease with its fencing token, on every backend."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from daemon import adapters, lease
from daemon.service.leader import AlreadyRunning, FileLeadership, LeaseLeadership

TTL = timedelta(seconds=3)
"""Long enough that a busy CI worker (the other one running the suite) does not see it run
out between two steps meant to happen within it: with 1 s it did, once."""


def test_a_follower_takes_over_an_expired_lease_and_fences_the_old_leader(
    db_engine: Engine, tmp_path: Path
) -> None:
    first = LeaseLeadership(db_engine, "host:1:a", TTL)
    second = LeaseLeadership(db_engine, "host:2:b", TTL)
    try:
        assert first.try_acquire() and first.token == 1
        assert not second.try_acquire() and not second.is_leader
        assert first.renew() and first.try_acquire()  # staying leader keeps the token
        assert first.token == 1
        time.sleep(TTL.total_seconds() + 0.3)  # the leader stalls past its TTL
        assert second.try_acquire() and second.token == 2
        # The old leader's fence is stale: it cannot move production.
        lease.set_fence(lease.Fence("leader", "host:1:a", 1))
        with pytest.raises(lease.LeaseLost, match="token 1 is stale"):
            adapters.move_production(
                db_engine, None, kind="rollback", actor="t", reason=None, adapters_dir=tmp_path
            )
        assert not first.renew() and not first.is_leader
        lease.set_fence(lease.Fence("leader", "host:2:b", 2))
        move = adapters.move_production(
            db_engine, None, kind="rollback", actor="t", reason=None, adapters_dir=tmp_path
        )
        assert move.actor == "t"
        second.release()
        assert first.try_acquire() and first.token == 3  # the token only grows
    finally:
        lease.set_fence(None)


def test_one_daemon_per_home_on_sqlite(tmp_path: Path) -> None:
    first = FileLeadership(tmp_path, "host:1:a")
    second = FileLeadership(tmp_path, "host:2:b")
    assert first.try_acquire()
    with pytest.raises(AlreadyRunning, match="locked by host:1:a"):
        second.try_acquire()
    first.release()
    assert second.try_acquire()
    second.release()
