"""Named leases in the database (APScheduler style: `acquired_by`, `acquired_until`).

A lease makes "only one cycle at a time per database" hold across processes and
machines. A holder renews its lease while it works; an expired lease can be taken by
anyone, and a lease whose holder is a dead process on this same host is taken over at
once (so a killed `tutord cycle` does not block the next one until expiry).
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import timedelta

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.exc import IntegrityError

from daemon.models import Lease
from replay.db import session_scope
from replay.models import utcnow


class LeaseHeld(Exception):
    """Someone else holds the lease."""


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
