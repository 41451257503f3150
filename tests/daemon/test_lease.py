"""Leases: one holder at a time, expiry, takeover from a dead local process (both backends)."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import Engine

from daemon import lease
from daemon.lease import LeaseHeld

TTL = timedelta(minutes=5)


def test_one_holder_at_a_time_then_release(db_engine: Engine) -> None:
    a, b = lease.holder_id(), lease.holder_id()
    lease.acquire(db_engine, "cycle", a, TTL)
    lease.acquire(db_engine, "cycle", a, TTL)  # re-entrant for its holder
    with pytest.raises(LeaseHeld, match=a):
        lease.acquire(db_engine, "cycle", b, TTL)
    lease.acquire(db_engine, "other", b, TTL)  # names are independent
    lease.renew(db_engine, "cycle", a, TTL)
    with pytest.raises(LeaseHeld):
        lease.renew(db_engine, "cycle", b, TTL)
    lease.release(db_engine, "cycle", a)
    lease.acquire(db_engine, "cycle", b, TTL)


def test_expired_lease_can_be_taken(db_engine: Engine) -> None:
    a, b = lease.holder_id(), lease.holder_id()
    lease.acquire(db_engine, "cycle", a, timedelta(seconds=-1))
    lease.acquire(db_engine, "cycle", b, TTL)
    with pytest.raises(LeaseHeld):
        lease.renew(db_engine, "cycle", a, TTL)


def test_lease_of_a_dead_local_process_is_taken_over(db_engine: Engine) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = f"{lease.holder_id().split(':')[0]}:{proc.stdout.strip()}:deadbeef"
    lease.acquire(db_engine, "cycle", dead, TTL)
    successor = lease.holder_id()
    lease.acquire(db_engine, "cycle", successor, TTL)
    # A live holder on another host is respected until expiry.
    lease.release(db_engine, "cycle", successor)
    lease.acquire(db_engine, "cycle", "elsewhere:1:x", TTL)
    with pytest.raises(LeaseHeld):
        lease.acquire(db_engine, "cycle", lease.holder_id(), TTL)
