"""Named leases in the database (APScheduler style: `acquired_by`, `acquired_until`).

A lease makes "only one cycle at a time per database" hold across processes and
machines. A holder renews its lease while it works; an expired lease can be taken by
anyone, and a lease whose holder is a dead process on this same host is taken over at
once (so a killed `tutord cycle` does not block the next one until expiry).

The fence: a process that leads through a lease with a fencing token
(`daemon/service/leader.py`) installs a `Fence`; `check_fence(session)`, called inside the
transaction of every write that matters, then raises `LeaseLost` unless the lease row still
names this process under that token and has not expired by the database's clock. Without
a fence installed (`tutord cycle`, tests) it does nothing.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from daemon.models import Lease
from replay.db import session_scope
from replay.models import utcnow


class LeaseHeld(Exception):
    """Someone else holds the lease."""


class LeaseLost(LeaseHeld):
    """This process's fencing token is stale: another process took the lease over."""


@dataclass(frozen=True)
class Fence:
    name: str
    holder: str
    token: int


_fence: Fence | None = None


def set_fence(fence: Fence | None) -> None:
    """Install (or, with None, remove) the process-wide fence."""
    global _fence
    _fence = fence


def db_now(conn: Connection | Session) -> datetime:
    """The database's clock, as an aware UTC datetime."""
    value = conn.execute(select(func.current_timestamp())).scalar_one()
    if isinstance(value, str):  # SQLite: 'YYYY-MM-DD HH:MM:SS' in UTC
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def check_fence(session: Session) -> None:
    """Raise `LeaseLost` unless the installed fence's lease is still ours (no fence: pass).
    The lease row is locked until the caller's transaction ends, so no takeover can slip in
    between this check and the caller's write."""
    fence = _fence
    if fence is None:
        return
    row = session.execute(
        select(Lease.acquired_by, Lease.acquired_until, Lease.token)
        .where(Lease.name == fence.name)
        .with_for_update()
    ).first()
    if row is None or row.acquired_by != fence.holder or row.token != fence.token:
        holder = "nobody" if row is None else f"{row.acquired_by} (token {row.token})"
        raise LeaseLost(
            f"lease {fence.name!r} is now held by {holder}; this process's token "
            f"{fence.token} is stale: refusing to write"
        )
    if row.acquired_until <= db_now(session):
        raise LeaseLost(f"lease {fence.name!r} expired before this write: refusing to write")


def release_token(engine: Engine, name: str, holder: str, token: int) -> None:
    """Give up a fenced lease: it expires now (the token stays, so it keeps growing)."""
    with session_scope(engine) as s:
        s.execute(
            update(Lease)
            .where(Lease.name == name, Lease.acquired_by == holder, Lease.token == token)
            .values(acquired_until=db_now(s))
        )


def holder_id() -> str:
    """`host:pid:random`: unique per process, and tells whether the holder is local."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _dead_local_holder(acquired_by: str) -> bool:
    host, _, rest = acquired_by.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def acquire(engine: Engine, name: str, holder: str, ttl: timedelta) -> None:
    """Take the lease `name` for `ttl`, or raise `LeaseHeld` naming its holder."""
    now = utcnow()
    with session_scope(engine) as s:
        current = s.execute(select(Lease).where(Lease.name == name)).scalar_one_or_none()
        if current is None:
            s.add(Lease(name=name, acquired_by=holder, acquired_until=now + ttl, acquired_at=now))
            try:
                s.flush()
            except IntegrityError:
                raise LeaseHeld(f"lease {name!r} was just taken by another process") from None
            return
        free = (
            current.acquired_by == holder
            or current.acquired_until <= now
            or _dead_local_holder(current.acquired_by)
        )
        if not free:
            raise LeaseHeld(
                f"lease {name!r} is held by {current.acquired_by} until "
                f"{current.acquired_until.isoformat(timespec='seconds')}"
            )
        taken = s.execute(
            update(Lease)
            .where(Lease.name == name, Lease.acquired_by == current.acquired_by)
            .values(acquired_by=holder, acquired_until=now + ttl, acquired_at=now)
        ).rowcount
        if taken != 1:
            raise LeaseHeld(f"lease {name!r} was just taken by another process")


def renew(engine: Engine, name: str, holder: str, ttl: timedelta) -> None:
    """Extend our lease; raise `LeaseHeld` if we lost it."""
    with session_scope(engine) as s:
        done = s.execute(
            update(Lease)
            .where(Lease.name == name, Lease.acquired_by == holder)
            .values(acquired_until=utcnow() + ttl)
        ).rowcount
    if done != 1:
        raise LeaseHeld(f"lease {name!r} is no longer ours")


def release(engine: Engine, name: str, holder: str) -> None:
    with session_scope(engine) as s:
        s.execute(delete(Lease).where(Lease.name == name, Lease.acquired_by == holder))
